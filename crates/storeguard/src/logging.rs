//! Log setup: journald when systemd started us (it sets JOURNAL_STREAM), readable text on
//! stderr otherwise. `STOREGUARD_LOG` takes an env-filter expression (`info`, `storeguard=debug`).

use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_env("STOREGUARD_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(j) = tracing_journald::layer()
    {
        let _ = registry
            .with(j.with_syslog_identifier("storeguard".into()))
            .try_init();
        return;
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = registry.with(fmt).try_init();
}
