//! `status`: who this box is, how long it has run, and the state of its parts.

use super::{CmdError, Reply, blocking};
use crate::state::State;
use serde_json::json;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Status;

impl Status {
    pub async fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        let s = st.clone();
        // Both are queries: off the async workers like every store call.
        let (schema, uplink) = blocking(move || {
            let uplink = match (s.uplink().as_ref(), s.uplink_refused().clone()) {
                (Some(u), _) => {
                    let v = u.status();
                    Some(
                        json!({ "broker": v["broker"], "connected": v["connected"], "last_error": v["last_error"], "inbound_rejected": v["inbound"]["rejected"] }),
                    )
                }
                (None, Some(why)) => Some(json!({ "running": false, "refused": why })),
                (None, None) => None,
            };
            Ok((s.store.schema_version().unwrap_or(-1), uplink))
        })
        .await?;
        let loaded = st.config();
        // Every configured camera, even before the supervisor's first look at it.
        let health = st.cameras.health();
        let cameras: Vec<_> = loaded
            .config
            .cameras
            .iter()
            .map(|c| match health.iter().find(|h| h.id == c.id) {
                Some(h) => json!({ "id": h.id, "name": h.name, "state": h.state, "last_error": h.last_error }),
                None => json!({ "id": c.id, "name": c.name, "state": if c.enabled { "starting" } else { "disabled" }, "last_error": null }),
            })
            .collect();
        Ok(Reply::Json(json!({
            "version": storeguard_base::VERSION,
            "pid": std::process::id(),
            "started_at": st.started_utc.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "uptime_s": st.started.elapsed().as_secs(),
            "site_id": loaded.config.site.site_id,
            "device_id": loaded.config.site.device_id,
            "config": { "path": loaded.path, "version": loaded.version },
            "data_dir": st.store.data_dir(),
            "schema_version": schema,
            "cameras": cameras,
            "public_key": st.incidents.key.public_key_b64(),
            "key_id": st.incidents.key.key_id(),
            "buttons": st.buttons().status(),
            "uplink": uplink,
            "clock": crate::timekeep::status_json(&st.time.status()),
        })))
    }
}
