//! `cameras`: per camera, its state, stream, bitrate, retention and recent gaps.

use super::{CmdError, Reply, blocking};
use crate::state::State;
use serde_json::json;
use std::sync::Arc;
use storeguard_base::utc_ms;

#[derive(Debug, Default)]
pub struct Cameras;

impl Cameras {
    pub async fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        let s = st.clone();
        blocking(move || {
            let ring = s.recorder.ring_status();
            let detection = s.detection();
            let mut out = Vec::new();
            for h in s.cameras.health() {
                let gaps = s.store.recent_gaps(&h.id, 5).map_err(CmdError::internal)?;
                let r = ring.cameras.iter().find(|c| c.camera == h.id);
                let mut v = serde_json::to_value(&h).map_err(CmdError::internal)?;
                v["retention_days"] = json!(r.map(|r| (r.retention_days * 100.0).round() / 100.0));
                v["projected_days"] = json!(r.and_then(|r| r.projected_days).map(|d| d.round()));
                v["stored_bytes"] = json!(r.map(|r| r.bytes));
                v["recent_gaps"] = json!(gaps
                    .iter()
                    .map(|g| json!({ "start": utc_ms(g.start_ns), "end": g.end_ns.map(utc_ms), "reason": g.reason }))
                    .collect::<Vec<_>>());
                v["detect"] = json!(detection.as_ref().and_then(|d| d.camera(&h.id)));
                out.push(v);
            }
            let summary = detection.as_ref().map(|d| d.summary());
            Ok(Reply::Json(json!({ "cameras": out, "ring": ring, "detection": summary })))
        })
        .await
    }
}
