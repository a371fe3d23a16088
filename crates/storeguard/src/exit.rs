//! Process exit codes (sysexits.h), shared by the daemon and the CLI so scripts and
//! systemd can tell "fix the config" from "try again later". Documented in README.md.

use std::fmt;

pub const OK: u8 = 0;
/// Any failure without a more specific code.
pub const FAILURE: u8 = 1;
/// Bad command line (clap's own code).
pub const USAGE: u8 = 2;
/// Input data was wrong: evidence failed verification, a clip range outside the ring.
pub const DATAERR: u8 = 65;
/// The daemon is not running (no control socket), or refused the request.
pub const UNAVAILABLE: u8 = 69;
/// Unexpected internal error (a bug).
pub const SOFTWARE: u8 = 70;
/// The operating system refused a resource: a thread, the async runtime.
pub const OSERR: u8 = 71;
/// Cannot create or write a needed file: data directory, socket path in use.
pub const CANTCREAT: u8 = 73;
/// I/O error on the data directory or database (corrupt or foreign files included).
pub const IOERR: u8 = 74;
/// Another instance holds the data directory; retry later.
pub const TEMPFAIL: u8 = 75;
/// The control socket refused the caller's credentials.
pub const NOPERM: u8 = 77;
/// Configuration error. systemd does not restart on it (RestartPreventExitStatus=78).
pub const CONFIG: u8 = 78;

/// An error that decides the exit code. Put it anywhere in an anyhow chain;
/// `main` finds the outermost one.
#[derive(Debug)]
pub struct Coded {
    pub code: u8,
    pub message: String,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

pub fn coded(code: u8, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded {
        code,
        message: message.into(),
    })
}

/// The exit code for an error chain: an explicit `Coded`, else one derived from known
/// error types, else FAILURE.
pub fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return c.code;
        }
        if cause.downcast_ref::<crate::config::ConfigError>().is_some() {
            return CONFIG;
        }
        if let Some(e) = cause.downcast_ref::<crate::store::StoreError>() {
            use crate::store::StoreError::*;
            return match e {
                Locked { .. } => TEMPFAIL,
                DataDir { .. } => CANTCREAT,
                _ => IOERR,
            };
        }
    }
    FAILURE
}
