//! Panic-button commands: list, test press, raw edge injection (tests), live watch.

use super::{Caller, CmdError, Reply};
use crate::button::service::InjectError;
use crate::state::State;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use storeguard_base::{now_ns, utc_ms};

fn refused(e: InjectError) -> CmdError {
    match e {
        InjectError::NoSuchButton { .. } => CmdError::NotFound(e.to_string()),
        InjectError::TooManyEdges { .. } | InjectError::TooLong { .. } => {
            CmdError::Invalid(e.to_string())
        }
        InjectError::NotRunning { .. } | InjectError::Stopped { .. } => {
            CmdError::Unavailable(e.to_string())
        }
    }
}

/// Every button and its state.
#[derive(Debug, Default)]
pub struct List;

impl List {
    pub fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        Ok(Reply::Json(json!({ "buttons": st.buttons().status() })))
    }
}

/// A press through the same edge path as a real one: press, hold, release. Accepted only
/// once its event (and alert) is committed, so an accepted press survives any crash.
#[derive(Debug)]
pub struct Press {
    pub button: String,
    pub test: bool,
    pub hold: Duration,
}

/// How long an injected press may take to become a committed event (debounce, commit).
const COMMIT_WAIT: Duration = Duration::from_secs(5);

impl Press {
    pub const DEFAULT_HOLD: Duration = Duration::from_millis(200);

    /// Injects the press and answers once its event is committed (naming it), or once the
    /// database refused it; a press merged into one still held answers with that press's
    /// event. Only a committed press is reported accepted.
    pub async fn apply(self, st: &Arc<State>, caller: Caller) -> Result<Reply, CmdError> {
        // Subscribed before injecting, so the event's notice cannot be missed.
        let mut events = st.incidents.watch.subscribe();
        st.buttons()
            .press(&self.button, self.hold, self.test)
            .map_err(refused)?;
        tracing::info!(button = %self.button, test = self.test, uid = ?caller.uid, via = ?caller.via, "press injected");
        let injected = std::time::Instant::now();
        let name = self.button.as_str();
        let committed = async {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(v) if v["button"] == name => {
                        if v["kind"] == "not_recorded" {
                            return Err(v["error"].as_str().unwrap_or("unknown").to_string());
                        }
                        if let Some(id) = v["event_id"].as_str() {
                            return Ok(Some((id.to_string(), v["kind"].clone())));
                        }
                        // Released after our own release without an event of ours: the
                        // press joined one already held, whose event it is.
                        if v["kind"] == "released" && injected.elapsed() >= self.hold {
                            return Ok(joined_press(st, &self.button).await);
                        }
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return Ok(None),
                }
            }
        };
        let wait = COMMIT_WAIT + self.hold;
        let (event_id, kind) = match tokio::time::timeout(wait, committed).await {
            Ok(Ok(Some(found))) => found,
            Ok(Err(why)) => {
                return Err(CmdError::Unavailable(format!(
                    "the press on {name} was NOT recorded: {why}; the daemon keeps trying to record it"
                )));
            }
            Ok(Ok(None)) | Err(_) => {
                return Err(CmdError::Unavailable(format!(
                    "press injected on {name} but no event was committed within {wait:?}; \
                     see the daemon's log"
                )));
            }
        };
        Ok(Reply::Accepted(json!({
            "button": self.button,
            "test": self.test,
            "hold_ms": self.hold.as_millis() as u64,
            "event_id": event_id,
            "kind": kind,
        })))
    }
}

/// The latest press event of `button`, which a press joining it belongs to.
async fn joined_press(st: &Arc<State>, button: &str) -> Option<(String, serde_json::Value)> {
    let store = st.store.clone();
    let button = button.to_string();
    // A held press started at most the longest injectable hold ago (ten minutes).
    let since = now_ns() - 11 * 60 * 1_000_000_000;
    let rows = tokio::task::spawn_blocking(move || store.events_since(since, 64))
        .await
        .ok()?
        .ok()?;
    rows.into_iter()
        .find(|e| e.source == button && e.kind == "isb_press")
        .map(|e| (e.uid, e.kind.into()))
}

/// Test hook: replays a script of raw edges (`<offset> on|off` per line, see
/// `button::sim`) through the button's debounce machine. Always marked as a test.
#[derive(Debug)]
pub struct Edges {
    pub button: String,
    pub script: String,
}

impl Edges {
    pub fn apply(self, st: &Arc<State>, caller: Caller) -> Result<Reply, CmdError> {
        let edges = crate::button::sim::parse_script(&self.script)
            .map_err(|e| CmdError::Invalid(format!("script: {e}")))?;
        let n = edges.len();
        st.buttons()
            .inject(&self.button, edges, true)
            .map_err(refused)?;
        tracing::info!(button = %self.button, edges = n, uid = ?caller.uid, "test edges injected");
        Ok(Reply::Accepted(
            json!({ "button": self.button, "test": true, "edges": n }),
        ))
    }
}

/// Presses, faults and clips as they happen, until the caller goes away.
#[derive(Debug, Default)]
pub struct Watch;

impl Watch {
    pub fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        let mut rx = st.incidents.watch.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(64);
        let mut stop = st.shutdown.subscribe();
        tokio::spawn(async move {
            let _ = tx
                .send(json!({ "kind": "watching", "at": utc_ms(now_ns()) }))
                .await;
            loop {
                tokio::select! {
                    _ = stop.stopped() => return,
                    _ = tx.closed() => return,
                    m = rx.recv() => match m {
                        Ok(v) => if tx.send(v).await.is_err() { return },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let _ = tx.send(json!({ "kind": "lagged", "missed": n })).await;
                        }
                        Err(_) => return,
                    },
                }
            }
        });
        Ok(Reply::Stream(out))
    }
}
