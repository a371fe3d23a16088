//! The systemd watchdog: pinged only while the daemon's own checks pass, so a wedged
//! daemon gets restarted instead of being kept alive by a timer that still runs.

use crate::state::{State, notify};
use anyhow::{Context, Result};
use sd_notify::NotifyState;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use storeguard_base::Shutdown;

/// What must hold for the daemon to count as alive.
pub trait Checks: Send + 'static {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>;
}

/// Where pings go.
pub trait Pinger: Send + 'static {
    fn ping(&self);
}

/// The daemon's checks: the camera supervisor runs and the database answers in 5 s.
pub struct DaemonChecks(pub Arc<State>);

impl Checks for DaemonChecks {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> {
        Box::pin(async move {
            anyhow::ensure!(
                self.0.cameras.is_alive(),
                "camera supervisor thread has stopped"
            );
            let store = self.0.store.clone();
            let q = tokio::task::spawn_blocking(move || store.meta_get("config_version"));
            tokio::time::timeout(Duration::from_secs(5), q)
                .await
                .context("database did not answer within 5 s")???;
            Ok(())
        })
    }
}

/// `WATCHDOG=1` to systemd.
pub struct Systemd;

impl Pinger for Systemd {
    fn ping(&self) {
        notify(&[NotifyState::Watchdog]);
    }
}

/// Checks every `period / 3` and pings only after a passing check. Returns at once when
/// systemd set no watchdog (`period` None), and at shutdown.
pub async fn run(
    checks: impl Checks,
    pinger: impl Pinger,
    period: Option<Duration>,
    mut shutdown: Shutdown,
) {
    let Some(period) = period else {
        return;
    };
    let mut tick = tokio::time::interval(period / 3);
    loop {
        tokio::select! {
            _ = shutdown.stopped() => return,
            _ = tick.tick() => {}
        }
        match checks.check().await {
            Ok(()) => pinger.ping(),
            Err(e) => tracing::warn!("health check failed, withholding watchdog ping: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    struct Flaky(Arc<AtomicBool>);
    impl Checks for Flaky {
        fn check(&self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> {
            let ok = self.0.load(Ordering::SeqCst);
            Box::pin(async move {
                anyhow::ensure!(ok, "database did not answer");
                Ok(())
            })
        }
    }
    struct Count(Arc<AtomicUsize>);
    impl Pinger for Count {
        fn ping(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_stop_while_a_check_fails_and_resume_after() {
        let ok = Arc::new(AtomicBool::new(true));
        let pings = Arc::new(AtomicUsize::new(0));
        let (trigger, shutdown) = storeguard_base::shutdown::channel();
        let task = tokio::spawn(run(
            Flaky(ok.clone()),
            Count(pings.clone()),
            Some(Duration::from_secs(3)),
            shutdown,
        ));
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let healthy = pings.load(Ordering::SeqCst);
        assert!(healthy >= 3, "{healthy} pings while healthy");
        ok.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let at_failure = pings.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            pings.load(Ordering::SeqCst),
            at_failure,
            "pinged while failing"
        );
        ok.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            pings.load(Ordering::SeqCst) > at_failure,
            "no ping after recovery"
        );
        trigger.fire();
        task.await.unwrap();
    }
}
