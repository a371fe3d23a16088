//! `storeguard`: the daemon (`run`) and the technician's subcommands, which talk to the
//! daemon over its control socket. Errors print their whole chain; the exit code says
//! what kind of failure it was (see `exit.rs` and README.md).

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    storeguard::logging::init(if args.is_daemon() { "info" } else { "warn" });
    match cli::dispatch(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = storeguard::exit::code_of(&e);
            report(&e);
            ExitCode::from(code)
        }
    }
}

fn report(e: &anyhow::Error) {
    // Config errors are already one line per problem, `file:line:col: field: msg`; a
    // prefix on the first line only would break editors and scripts that parse them.
    if let Some(c) = e.downcast_ref::<storeguard::config::ConfigError>() {
        eprintln!("{c}");
        return;
    }
    eprintln!("storeguard: error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
