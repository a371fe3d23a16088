//! `evidence package`: a police-ready package of every camera of an event, or of a range,
//! written by the daemon to a folder or `.zip` (`evidence::package`), with progress
//! streamed back. Every attempt, refused and failed ones included, is audited.

use super::{Caller, CmdError, Reply, Via, blocking, time_arg};
use crate::evidence::package::{self, Built, Dest, PackageError, Refusal, Requester, Scope};
use crate::state::State;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storeguard_base::now_ns;

/// The request as the control socket receives it (`POST /v1/packages`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub cameras: Vec<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// Absolute path of the folder or `.zip` to create.
    pub out: PathBuf,
}

/// Progress lines go out at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

impl Package {
    fn scope(&self) -> Result<Scope, CmdError> {
        match (&self.event, self.cameras.is_empty(), &self.from, &self.to) {
            (Some(ev), true, None, None) => Ok(Scope::Event(ev.clone())),
            (None, false, Some(from), Some(to)) => Ok(Scope::Range {
                cameras: self.cameras.clone(),
                from_ns: time_arg("--from", from)?,
                to_ns: time_arg("--to", to)?,
            }),
            _ => Err(CmdError::Invalid(
                "give either --event ID, or --cameras A,B with --from and --to".into(),
            )),
        }
    }

    fn target(&self) -> String {
        self.event.clone().unwrap_or_else(|| self.cameras.join(","))
    }

    /// Streams `{"progress": …}` lines, then `{"done": …}` or `{"failed": {kind, error}}`.
    pub async fn apply(self, st: &Arc<State>, caller: Caller) -> Result<Reply, CmdError> {
        let scope = match self.scope() {
            Ok(s) => s,
            Err(e) => {
                let (st, target, out) = (st.clone(), self.target(), self.out.clone());
                let failed = Failed {
                    error: e,
                    at_destination: false,
                };
                return blocking(move || {
                    audit(&st, caller, &target, &Dest::Export(out), Err(&failed));
                    Err(failed.error)
                })
                .await;
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let st = st.clone();
        let target = self.target();
        tokio::spawn(blocking(move || {
            let mut last: Option<Instant> = None;
            let mut last_step = String::new();
            let mut progress = |p: package::Progress| {
                if p.step != last_step || last.is_none_or(|l| l.elapsed() >= PROGRESS_EVERY) {
                    last = Some(Instant::now());
                    last_step.clone_from(&p.step);
                    // A client that went away does not stop the export: it is audited.
                    let _ = tx.blocking_send(json!({ "progress": p }));
                }
            };
            let dest = Dest::Export(self.out.clone());
            let line = match export(&st, &scope, &target, &dest, caller, &mut progress) {
                Ok(b) => json!({ "done": done(&b) }),
                Err(e) => json!({ "failed": { "kind": e.kind(), "error": e.error.message() } }),
            };
            let _ = tx.blocking_send(line);
            Ok(())
        }));
        Ok(Reply::Stream(rx))
    }
}

/// The reply for a package made.
pub fn done(b: &Built) -> Value {
    json!({ "path": b.path, "manifest": b.manifest, "cut": b.cut })
}

fn requester(caller: Caller) -> Requester {
    Requester {
        uid: caller.uid,
        pid: caller.pid,
        via: match caller.via {
            Via::ControlSocket => "control_socket".into(),
            Via::Remote => "remote".into(),
        },
    }
}

/// Why a package was not made: the command error, and whether it went wrong at the
/// destination (full, read-only, failed verification) rather than being refused.
#[derive(Debug)]
pub struct Failed {
    pub error: CmdError,
    pub at_destination: bool,
}

impl From<Failed> for CmdError {
    fn from(f: Failed) -> CmdError {
        f.error
    }
}

impl Failed {
    /// `invalid`, `not_found`, `refused`, `destination`, `internal`.
    pub fn kind(&self) -> &'static str {
        if self.at_destination {
            return "destination";
        }
        match self.error {
            CmdError::Invalid(_) => "invalid",
            CmdError::NotFound(_) => "not_found",
            CmdError::Refused(_) => "refused",
            CmdError::Unavailable(_) => "unavailable",
            CmdError::Internal(_) => "internal",
        }
    }
}

/// Builds a package of `scope` at `dest` and audits the outcome, whatever it is. Blocking:
/// call it inside [`blocking`]. This is what a transport calls; MQTT's `package` command
/// uses [`upload_event_package`].
pub fn export(
    st: &State,
    scope: &Scope,
    target: &str,
    dest: &Dest,
    caller: Caller,
    progress: &mut dyn FnMut(package::Progress),
) -> Result<Built, Failed> {
    let cfg = st.config().config;
    let ctx = package::Ctx {
        store: &st.store,
        recorder: &st.recorder,
        key: &st.incidents.key,
        config: &cfg,
    };
    let r = package::build(&ctx, scope, dest, &requester(caller), progress).map_err(|e| {
        let at_destination = matches!(
            e,
            PackageError::Destination { .. } | PackageError::NotVerified { .. }
        );
        let error = match e {
            PackageError::Refused { why, message } => match why {
                Refusal::Request => CmdError::Invalid(message),
                Refusal::Unknown => CmdError::NotFound(message),
                Refusal::State => CmdError::Refused(message),
            },
            e if at_destination => CmdError::Refused(storeguard_base::error::chain(&e)),
            e => CmdError::internal(e),
        };
        Failed {
            error,
            at_destination,
        }
    });
    audit(st, caller, target, dest, r.as_ref());
    match &r {
        Ok(b) => {
            tracing::info!(package = %b.manifest.package_id, destination = %b.path.display(), uid = ?caller.uid, "evidence package exported")
        }
        Err(e) => {
            tracing::warn!(destination = %dest.shown(st.store.data_dir()).display(), uid = ?caller.uid, error = %e.error.message(), "evidence package not exported")
        }
    }
    r
}

/// The end of the latest window among the event's clips still being cut (UTC ns), or
/// `None` when none is (or there is no such event: building says so). Blocking.
pub fn cutting_until(st: &State, event: &str) -> Result<Option<i64>, CmdError> {
    let Some(ev) = st.store.event_by_uid(event).map_err(CmdError::internal)? else {
        return Ok(None);
    };
    let clips = st.store.clips_of_event(ev.id).map_err(CmdError::internal)?;
    Ok(clips
        .iter()
        .filter(|c| c.state == "pending")
        .map(|c| c.to_ns)
        .max())
}

/// A package made for the control centre and queued for upload.
#[derive(Debug, Clone)]
pub struct Uploading {
    pub built: Built,
    /// The zip archive: name, size, SHA-256 (what the receipt must name).
    pub file: storeguard_proto::manifest::FileRef,
}

/// Builds a `.zip` package of every camera of event `event` in the data directory's upload
/// spool, audits it like any export, and queues it for upload through the outbox (it then
/// goes like a clip: chunks, resume after outages and restarts, a signed receipt). For the
/// upstream `package` command. Blocking.
pub fn upload_event_package(
    st: &State,
    event: &str,
    request_id: &str,
    caller: Caller,
) -> Result<Uploading, CmdError> {
    let built = export(
        st,
        &Scope::Event(event.to_string()),
        event,
        &Dest::Upload,
        caller,
        &mut |_| {},
    )?;
    let file = package::queue_upload(&st.store, &built, Some(request_id)).map_err(|e| {
        tracing::error!(package = %built.manifest.package_id, "queuing the package upload: {}", storeguard_base::error::chain(&e));
        CmdError::internal(e)
    })?;
    tracing::info!(package = %built.manifest.package_id, bytes = file.size, "evidence package queued for upload");
    Ok(Uploading { built, file })
}

/// One audit row per attempt: who, where to, and the files with their hashes (or why not).
fn audit(st: &State, caller: Caller, target: &str, dest: &Dest, outcome: Result<&Built, &Failed>) {
    let detail = match outcome {
        Ok(b) => json!({
            "outcome": "exported",
            "destination": b.path,
            "package": b.manifest.package_id,
            "event": b.manifest.event.as_ref().map(|e| &e.id),
            "files": b.manifest.files,
            "cut": b.cut,
        }),
        Err(e) => json!({
            // Refused: nothing was written; failed: writing or checking the copy went wrong.
            "outcome": if e.at_destination || matches!(e.error, CmdError::Internal(_)) { "failed" } else { "refused" },
            "kind": e.kind(),
            "destination": dest.shown(st.store.data_dir()),
            "error": e.error.message(),
        }),
    };
    if let Err(e) = st.store.audit(
        now_ns(),
        caller.uid,
        caller.pid,
        "package_export",
        target,
        &detail.to_string(),
    ) {
        tracing::error!(error = %storeguard_base::error::chain(&e), "could not audit a package export");
    }
}
