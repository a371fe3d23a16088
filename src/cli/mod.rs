//! Command-line surface. Subcommands other than `run`, `config validate` and
//! `config show` go through the daemon's control socket; they never open the database.

mod output;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::Value;
use std::path::{Path, PathBuf};
use storeguard::config::{self, Config};
use storeguard::control::client::Client;
use storeguard::exit;

#[derive(Parser, Debug)]
#[command(
    name = "storeguard",
    version,
    about = "In-store recorder, panic button and evidence agent"
)]
pub struct Args {
    /// Config file.
    #[arg(long, global = true, env = "STOREGUARD_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Control socket (default: control.socket from the config, else /run/storeguard/control.sock).
    #[arg(long, global = true, env = "STOREGUARD_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon in the foreground (systemd: Type=notify).
    Run,
    /// Daemon uptime, version, config version and camera states.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check, show or reload configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Validate config files without starting anything; exit 78 when any is invalid.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the effective config (defaults filled in, secrets masked).
    Show,
    /// Ask the running daemon to re-read its config file (same as SIGHUP).
    Reload,
}

impl Args {
    pub fn is_daemon(&self) -> bool {
        matches!(self.cmd, Cmd::Run)
    }

    fn client(&self) -> Client {
        let socket = self.socket.clone().unwrap_or_else(|| {
            // The config may be unreadable to a technician; the default path still works.
            // It may also be invalid (that is when `config reload` is run to find out), so
            // only control.socket is read, not the whole file validated.
            let base = self.config.parent().unwrap_or(Path::new("."));
            std::fs::read_to_string(&self.config)
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
                .and_then(|t| Some(PathBuf::from(t.get("control")?.get("socket")?.as_str()?)))
                .map(|p| base.join(p))
                .unwrap_or_else(|| PathBuf::from(config::DEFAULT_SOCKET))
        });
        Client::new(&socket)
    }
}

pub fn dispatch(args: Args) -> Result<u8> {
    match &args.cmd {
        Cmd::Run => storeguard::daemon::run(&args.config).map(|_| exit::OK),
        Cmd::Status { json } => {
            let v = args.client().call("GET", "/v1/status", None)?;
            print(*json, &v, output::status);
            Ok(exit::OK)
        }
        Cmd::Config(ConfigCmd::Validate { paths }) => Ok(validate(paths)),
        Cmd::Config(ConfigCmd::Show) => {
            let loaded = Config::load(&args.config)?;
            println!("# {} (version {})", loaded.path.display(), loaded.version);
            print!("{}", loaded.config.to_toml_masked());
            Ok(exit::OK)
        }
        Cmd::Config(ConfigCmd::Reload) => {
            // The daemon answers 422 when it refuses the file: that is a config error (78).
            let v = args
                .client()
                .call("POST", "/v1/config/reload", None)
                .map_err(|e| match exit::code_of(&e) {
                    exit::DATAERR => exit::coded(exit::CONFIG, e.to_string()),
                    _ => e,
                })?;
            let changed = v["changed"].as_bool().unwrap_or(false);
            println!(
                "config {} (version {}, was {})",
                if changed { "reloaded" } else { "unchanged" },
                v["version"].as_str().unwrap_or("?"),
                v["previous"].as_str().unwrap_or("?")
            );
            Ok(exit::OK)
        }
    }
}

fn validate(paths: &[PathBuf]) -> u8 {
    let mut code = exit::OK;
    for p in paths {
        match Config::load(p) {
            Ok(l) => println!(
                "{}: ok ({} cameras, {} buttons, version {})",
                p.display(),
                l.config.cameras.len(),
                l.config.buttons.len(),
                l.version
            ),
            Err(e) => {
                eprintln!("{e}");
                code = exit::CONFIG;
            }
        }
    }
    code
}

fn print(json: bool, v: &Value, human: fn(&Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        print!("{}", human(v));
    }
}
