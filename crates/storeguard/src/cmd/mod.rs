//! The command layer: every operation on the running daemon, one module each, in the
//! spirit of mini-redis's `cmd/`.
//!
//! A command is a typed value with its own arguments ([`Command`]); `apply` runs it
//! against the daemon [`State`] on behalf of a [`Caller`] and returns a [`Reply`] or a
//! [`CmdError`]. Transports are thin: the control socket (`control::routes`) turns an HTTP
//! request into a `Command` and the reply back into HTTP; MQTT commands will do the same
//! with a topic and a payload. Blocking work (SQLite, files, remuxing) runs through
//! [`blocking`], never on the async workers.

pub mod buttons;
pub mod cameras;
pub mod config;
pub mod detector;
pub mod doctor;
pub mod events;
pub mod export;
pub mod outbox;
pub mod package;
pub mod snapshot;
pub mod status;

use crate::state::State;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

/// Who asked, for logs and the audit trail.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    pub via: Via,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    ControlSocket,
    /// A signed command from the control centre over MQTT.
    Remote,
}

/// Every operation the daemon offers.
#[derive(Debug)]
pub enum Command {
    Status(status::Status),
    Cameras(cameras::Cameras),
    Doctor(doctor::Doctor),
    Outbox(outbox::Outbox),
    Buttons(buttons::List),
    Press(buttons::Press),
    Edges(buttons::Edges),
    Watch(buttons::Watch),
    Events(events::Events),
    Export(export::ClipExport),
    EvidenceFile(export::EvidenceFile),
    Package(package::Package),
    ConfigShow(config::Show),
    Snapshot(snapshot::Snapshot),
    ConfigStatus(config::RemoteStatus),
    Reload(config::Reload),
    DetectorFault(detector::DetectorFault),
}

/// What a command gives back.
pub enum Reply {
    /// A JSON document (`status` is 202 for accepted asynchronous work).
    Json(Value),
    Accepted(Value),
    /// Newline-delimited JSON until the sender is dropped.
    Stream(tokio::sync::mpsc::Receiver<Value>),
    /// A file's bytes and its media type.
    File(PathBuf, &'static str),
    /// Bytes made for this request, and their media type.
    Bytes(Vec<u8>, &'static str),
}

/// Why a command did not run. The message says what was wrong and where; the cause chain
/// of an internal error is kept, not pasted into the message.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The arguments are wrong (a transport maps this to 400).
    #[error("{0}")]
    Invalid(String),
    /// What it names does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// Well-formed but refused in the current state (422).
    #[error("{0}")]
    Refused(String),
    /// The part that would do it is not running (503).
    #[error("{0}")]
    Unavailable(String),
    /// Something broke inside the daemon (500).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl CmdError {
    pub fn internal(e: impl Into<anyhow::Error>) -> CmdError {
        CmdError::Internal(e.into())
    }

    /// The message with its whole cause chain, each cause once.
    pub fn message(&self) -> String {
        match self {
            CmdError::Internal(e) => format!("{e:#}"),
            e => e.to_string(),
        }
    }
}

impl Command {
    pub async fn apply(self, st: &Arc<State>, caller: Caller) -> Result<Reply, CmdError> {
        match self {
            Command::Status(c) => c.apply(st).await,
            Command::Cameras(c) => c.apply(st).await,
            Command::Doctor(c) => c.apply(st).await,
            Command::Outbox(c) => c.apply(st).await,
            Command::Buttons(c) => c.apply(st),
            Command::Press(c) => c.apply(st, caller).await,
            Command::Edges(c) => c.apply(st, caller),
            Command::Watch(c) => c.apply(st),
            Command::Events(c) => c.apply(st).await,
            Command::Export(c) => c.apply(st, caller).await,
            Command::EvidenceFile(c) => c.apply(st).await,
            Command::Package(c) => c.apply(st, caller).await,
            Command::ConfigShow(c) => c.apply(st),
            Command::Snapshot(c) => c.apply(st).await,
            Command::ConfigStatus(c) => c.apply(st).await,
            Command::Reload(c) => c.apply(st).await,
            Command::DetectorFault(c) => c.apply(st),
        }
    }
}

/// Runs blocking work (SQLite, files) off the async workers.
pub async fn blocking<T, F>(f: F) -> Result<T, CmdError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, CmdError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CmdError::internal(anyhow::anyhow!("command task failed: {e}")))?
}

/// A time argument (`--from`, `since`…): RFC 3339 or local time.
pub fn time_arg(field: &str, value: &str) -> Result<i64, CmdError> {
    storeguard_base::parse_time(value).map_err(|e| CmdError::Invalid(format!("{field}: {e}")))
}
