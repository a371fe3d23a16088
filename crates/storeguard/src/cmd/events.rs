//! `events`: presses, faults and other events, newest first, with their clips and the
//! packages of them uploaded for the control centre.

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

/// The receipt itself (verbatim, signed) for whoever must prove delivery.
fn receipt(r: &Option<String>, key: &Option<String>, at: Option<i64>) -> Option<serde_json::Value> {
    r.as_ref().map(|r| {
        json!({
            "key_id": key,
            "at": at.map(utc_ms),
            "signed": serde_json::from_str::<serde_json::Value>(r).unwrap_or_else(|_| json!(r)),
        })
    })
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
                let clips = store.clips_of_event(e.id).map_err(CmdError::internal)?;
                let clips: Vec<_> = clips.into_iter().map(|c| {
                    let receipt = receipt(&c.receipt, &c.receipt_key, c.acked_ns);
                    json!({ "id": c.uid, "camera": c.camera, "state": c.state, "path": c.path, "sha256": c.sha256, "error": c.error, "receipt": receipt })
                }).collect();
                // Packages of it uploaded for the control centre (the `package` command).
                let packages = store.packages_of_event(&e.uid).map_err(CmdError::internal)?;
                let packages: Vec<_> = packages.into_iter().map(|p| {
                    let receipt = receipt(&p.receipt, &p.receipt_key, p.acked_ns);
                    json!({ "id": p.uid, "state": p.state, "path": p.path, "bytes": p.bytes, "sha256": p.sha256, "request_id": p.request_id, "receipt": receipt })
                }).collect();
                out.push(json!({ "id": e.uid, "kind": e.kind, "source": e.source, "at": utc_ms(e.at_ns), "test": e.test, "time": e.time, "detail": e.detail, "clips": clips, "packages": packages }));
            }
            Ok(Reply::Json(json!({ "events": out })))
        })
        .await
    }
}
