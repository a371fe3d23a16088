//! Panic-button commands: list, test press, raw edge injection (tests), live watch.

use super::{Caller, CmdError, Reply};
use crate::button::service::InjectError;
use crate::state::State;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use storeguard_base::{now_ns, utc_ms};
use tokio::sync::broadcast;

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

/// A press through the same edge path as a real one: press, hold, release.
#[derive(Debug)]
pub struct Press {
    pub button: String,
    pub test: bool,
    pub hold: Duration,
}

impl Press {
    pub const DEFAULT_HOLD: Duration = Duration::from_millis(200);
    /// Debounce plus one commit, with room for a loaded box.
    const CONFIRM: Duration = Duration::from_secs(5);

    /// Injects the press and waits (briefly) for what became of it: the event recorded,
    /// or refused by the database. A press merged into one still held records nothing
    /// new; after `CONFIRM` the reply says only that it was injected.
    pub async fn apply(self, st: &Arc<State>, caller: Caller) -> Result<Reply, CmdError> {
        let mut outcome = st.incidents.watch.subscribe();
        st.buttons()
            .press(&self.button, self.hold, self.test)
            .map_err(refused)?;
        tracing::info!(button = %self.button, test = self.test, uid = ?caller.uid, via = ?caller.via, "press injected");
        let name = self.button.as_str();
        let recorded = tokio::time::timeout(self.hold + Self::CONFIRM, async {
            loop {
                match outcome.recv().await {
                    Ok(v) if v["button"] != name => {}
                    Ok(v) if v["kind"] == "not_recorded" => {
                        return Err(v["error"].as_str().unwrap_or("unknown").to_string());
                    }
                    Ok(v) if v["event_id"].is_string() => return Ok(v["event_id"].clone()),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Ok(Value::Null),
                }
            }
        })
        .await;
        let event_id = match recorded {
            Ok(Ok(id)) => id,
            Ok(Err(why)) => {
                return Err(CmdError::Unavailable(format!(
                    "the press on {name} was NOT recorded: {why}; the daemon keeps trying to record it"
                )));
            }
            Err(_) => Value::Null,
        };
        Ok(Reply::Accepted(json!({
            "button": self.button,
            "test": self.test,
            "hold_ms": self.hold.as_millis() as u64,
            "event_id": event_id,
        })))
    }
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
