//! sg-control: the control centre's reference tool for remote configuration and commands
//! (docs/remote.md). Signs with the same key directory as sg-receiver.
//!
//! Prints the box's answer as JSON on stdout. Exit 0: applied / ok; 3: rejected, rolled
//! back or failed; 4: no answer in time; 2: usage.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use storeguard_centre::control::Control;
use storeguard_centre::{CENTRE_KEY_FILE, CENTRE_PUB_FILE};
use storeguard_proto::DeviceKey;
use storeguard_proto::remote::{CmdStatus, ConfigState};
use storeguard_proto::session::TlsFiles;

#[derive(Parser)]
#[command(
    name = "sg-control",
    version,
    about = "Sends signed config and commands to a storeguard box"
)]
struct Args {
    #[arg(long)]
    broker: String,
    /// The control centre's key directory (centre_ed25519.key), as for sg-receiver.
    #[arg(long, value_name = "DIR")]
    key_dir: PathBuf,
    #[arg(long)]
    site: String,
    #[arg(long)]
    device: String,
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// How long to wait for the box's answer.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish a config file as the desired config (retained) and wait for the report.
    Push {
        file: PathBuf,
        #[arg(long)]
        version: u64,
        /// Expire the message after this long (e.g. 10m); default: never.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        /// Also write the signed payload here (to inspect it, or to replay it in a test).
        #[arg(long)]
        save_payload: Option<PathBuf>,
        /// Publish and exit without waiting for the report.
        #[arg(long)]
        no_wait: bool,
    },
    /// Send a command and wait for its result.
    Cmd {
        name: String,
        /// Arguments as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Default: a fresh id. Reuse one to see the box answer from its stored result.
        #[arg(long)]
        request_id: Option<String>,
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        expires_in: Duration,
        /// Send it N times (fresh ids) and print the round trips' p50/p95 on stderr.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STOREGUARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(a)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("sg-control: {e:#}");
            std::process::ExitCode::from(if e.to_string().contains("timed out") {
                4
            } else {
                1
            })
        }
    }
}

async fn run(a: Args) -> anyhow::Result<u8> {
    let key = DeviceKey::load_or_create_named(&a.key_dir, CENTRE_KEY_FILE, CENTRE_PUB_FILE)?;
    let tls = TlsFiles {
        ca: a.tls_ca.clone(),
        ..Default::default()
    };
    let mut c = Control::connect(&a.broker, tls, &a.site, &a.device, key).await?;
    match a.cmd {
        Cmd::Push {
            file,
            version,
            expires_in,
            save_payload,
            no_wait,
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let t = Instant::now();
            let payload = c.desired(version, &text, expires_in);
            if let Some(p) = &save_payload {
                std::fs::write(p, &payload).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            }
            if no_wait {
                c.publish_only(payload).await?;
                return Ok(0);
            }
            let r = c.push_config(version, payload, a.timeout).await?;
            eprintln!(
                "sg-control: reported {:?} after {:.0} ms",
                r.state,
                t.elapsed().as_secs_f64() * 1e3
            );
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(if r.state == ConfigState::Applied {
                0
            } else {
                3
            })
        }
        Cmd::Cmd {
            name,
            args,
            request_id,
            expires_in,
            repeat,
        } => {
            let args: serde_json::Value =
                serde_json::from_str(&args).map_err(|e| anyhow::anyhow!("--args: {e}"))?;
            let mut times = Vec::new();
            let mut last = None;
            for i in 0..repeat.max(1) {
                let id = match (&request_id, repeat) {
                    (Some(id), 1) => id.clone(),
                    (Some(id), _) => format!("{id}-{i}"),
                    (None, _) => format!("r{}-{i}", storeguard_proto::topics::now_ns()),
                };
                let t = Instant::now();
                let payload = c.command(&id, args.clone(), expires_in);
                let r = c.run_command(&name, &id, payload, a.timeout).await?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
                last = Some(r);
            }
            let r = last.expect("ran once");
            if repeat > 1 {
                let mut s = times.clone();
                s.sort_by(f64::total_cmp);
                let pct = |p: f64| s[((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1];
                eprintln!(
                    "sg-control: {name} x{}: round trip p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
                    s.len(),
                    pct(0.5),
                    pct(0.95),
                    pct(1.0)
                );
            }
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(if r.status == CmdStatus::Ok { 0 } else { 3 })
        }
    }
}
