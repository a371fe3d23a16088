//! `events`: presses, faults and other events, newest first, with their clips.

use super::{CmdError, Reply, blocking};
use crate::state::State;
use serde_json::json;
use std::sync::Arc;
use storeguard_base::utc_ms;

/// The most events one call returns.
pub const MAX_LIMIT: usize = 10_000;

#[derive(Debug)]
pub struct Events {
    /// UTC nanoseconds; 0 for all.
    pub since_ns: i64,
    pub limit: usize,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            since_ns: 0,
            limit: 100,
        }
    }
}

impl Events {
    pub async fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return Err(CmdError::Invalid(format!(
                "limit: {} is out of range 1..={MAX_LIMIT}",
                self.limit
            )));
        }
        let store = st.store.clone();
        blocking(move || {
            let mut out = Vec::new();
            let events = store
                .events_since(self.since_ns, self.limit)
                .map_err(CmdError::internal)?;
            for e in events {
                let clips: Vec<_> = store
                    .clips_of_event(e.id)
                    .map_err(CmdError::internal)?
                    .into_iter()
                    .map(|c| {
                        // The receipt itself (verbatim, signed) for whoever must prove delivery.
                        let receipt = c.receipt.as_ref().map(|r| json!({
                            "key_id": c.receipt_key,
                            "at": c.acked_ns.map(utc_ms),
                            "signed": serde_json::from_str::<serde_json::Value>(r).unwrap_or_else(|_| json!(r)),
                        }));
                        json!({ "id": c.uid, "camera": c.camera, "state": c.state, "path": c.path, "sha256": c.sha256, "error": c.error, "receipt": receipt })
                    })
                    .collect();
                out.push(json!({ "id": e.uid, "kind": e.kind, "source": e.source, "at": utc_ms(e.at_ns), "test": e.test, "time": e.time, "detail": e.detail, "clips": clips }));
            }
            Ok(Reply::Json(json!({ "events": out })))
        })
        .await
    }
}
