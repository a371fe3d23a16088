//! sg-receiver: the control-centre reference receiver (see docs/mqtt.md).
//!
//! Stdout: one `ALERT ...` line per new alert, one `CLIP ... verified` line per verified
//! clip and one `PACKAGE ... verified` line per verified evidence package; logs go to
//! stderr (`STOREGUARD_LOG=debug` for more).

use clap::Parser;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use storeguard_centre::{CENTRE_KEY_FILE, CENTRE_PUB_FILE, ReceiverOpts, run};
use storeguard_proto::DeviceKey;

#[derive(Parser)]
#[command(
    name = "sg-receiver",
    version,
    about = "Receives storeguard alerts, evidence clips and evidence packages over MQTT"
)]
struct Args {
    /// Broker URL: mqtt://host[:port] or mqtts://host[:port].
    #[arg(long)]
    broker: String,
    /// Output directory: alerts.jsonl, health.jsonl, clips/, packages/, trust/.
    #[arg(long)]
    out: PathBuf,
    /// Directory of the receipt-signing key (`centre_ed25519.key`, raw 32-byte seed, mode
    /// 0600; created if missing). Boxes trust `centre_ed25519.pub` in
    /// `trust.control_centre_keys`.
    #[arg(long, value_name = "DIR")]
    key_dir: PathBuf,
    /// MQTT client id; the session is persistent, so keep it stable.
    #[arg(long, default_value = "sg-receiver")]
    client_id: String,
    #[arg(long)]
    username: Option<String>,
    #[arg(long, env = "SG_RECEIVER_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// CA certificate(s) for mqtts:// (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Pin a device's public key: DEVICE_ID=BASE64 (repeatable). Unpinned devices are
    /// trusted on first use and pinned under OUT/trust/.
    #[arg(long = "pubkey", value_name = "DEVICE=KEY")]
    pubkeys: Vec<String>,
    /// Ceiling of the reconnect backoff, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
}

fn main() -> std::process::ExitCode {
    init_logging();
    let a = Args::parse();
    let mut pubkeys = HashMap::new();
    for p in &a.pubkeys {
        let Some((dev, key)) = p.split_once('=') else {
            eprintln!("sg-receiver: --pubkey {p:?}: expected DEVICE_ID=BASE64");
            return std::process::ExitCode::from(2);
        };
        // base64 may end in '=': split at the first one only.
        pubkeys.insert(dev.to_string(), key.to_string());
    }
    let mut opts = ReceiverOpts::new(a.broker, a.out);
    opts.client_id = a.client_id;
    opts.username = a.username;
    opts.password = a.password;
    opts.tls.ca = a.tls_ca;
    opts.tls.cert = a.tls_cert;
    opts.tls.key = a.tls_key;
    opts.pubkeys = pubkeys;
    opts.max_backoff = a.max_backoff;
    match DeviceKey::load_or_create_named(&a.key_dir, CENTRE_KEY_FILE, CENTRE_PUB_FILE) {
        Ok(k) => {
            tracing::info!(key_id = %k.key_id(), public_key = %k.public_key_b64(), "receipt signing key");
            opts.signing_key = Some(Arc::new(k));
        }
        Err(e) => {
            eprintln!(
                "sg-receiver: --key-dir {}: {}",
                a.key_dir.display(),
                storeguard_base::error::chain(&e)
            );
            return std::process::ExitCode::from(78);
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sg-receiver: {e}");
            return std::process::ExitCode::from(70);
        }
    };
    let stop = async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    match rt.block_on(run(opts, stop)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sg-receiver: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Logs to stderr; `STOREGUARD_LOG` filters (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STOREGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
