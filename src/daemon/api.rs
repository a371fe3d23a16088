//! Routes of the control socket. Each handler is thin: it reads state or calls the
//! owning module, and turns errors into a status and a message for the technician.

use super::State;
use crate::control::{BoxFuture, Request, Response, Service};
use serde_json::json;
use std::sync::Arc;

pub struct Api {
    pub state: Arc<State>,
}

impl Service for Api {
    fn handle(&self, req: Request) -> BoxFuture<'_, Response> {
        Box::pin(async move {
            let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
            match (req.method.as_str(), segs.as_slice()) {
                ("GET", ["v1", "status"]) => self.status(),
                ("GET", ["v1", "cameras"]) => self.cameras().await,
                ("GET", ["v1", "config"]) => Response::ok(json!({
                    "path": self.state.config().path,
                    "version": self.state.config().version,
                    "toml": self.state.config().config.to_toml_masked(),
                })),
                ("POST", ["v1", "config", "reload"]) => match super::reload(&self.state).await {
                    Ok(o) => Response::ok(o),
                    Err(e) => Response::error(422, format!("{e:#}")),
                },
                (_, ["v1", ..]) => {
                    Response::error(404, format!("no route {} {}", req.method, req.path))
                }
                _ => Response::error(
                    404,
                    format!("unknown path {} (the API lives under /v1/)", req.path),
                ),
            }
        })
    }
}

impl Api {
    async fn cameras(&self) -> Response {
        let s = self.state.clone();
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
            let ring = s.recorder.ring_status();
            let mut out = Vec::new();
            for h in s.cameras.health() {
                let gaps = s.store.recent_gaps(&h.id, 5)?;
                let r = ring.cameras.iter().find(|c| c.camera == h.id);
                let mut v = serde_json::to_value(&h)?;
                v["retention_days"] = json!(r.map(|r| (r.retention_days * 100.0).round() / 100.0));
                v["projected_days"] = json!(r.and_then(|r| r.projected_days).map(|d| d.round()));
                v["stored_bytes"] = json!(r.map(|r| r.bytes));
                v["recent_gaps"] = json!(gaps
                    .iter()
                    .map(|g| json!({ "start": utc(g.start_ns), "end": g.end_ns.map(utc), "reason": g.reason }))
                    .collect::<Vec<_>>());
                out.push(v);
            }
            Ok(json!({ "cameras": out, "ring": ring }))
        })
        .await;
        match r {
            Ok(Ok(v)) => Response::ok(v),
            Ok(Err(e)) => Response::error(500, format!("{e:#}")),
            Err(e) => Response::error(500, e.to_string()),
        }
    }

    fn status(&self) -> Response {
        let s = &self.state;
        let loaded = s.config();
        let cameras: Vec<_> = s
            .cameras
            .health()
            .into_iter()
            .map(|c| json!({ "id": c.id, "name": c.name, "state": c.state, "last_error": c.last_error }))
            .collect();
        Response::ok(json!({
            "version": crate::VERSION,
            "pid": std::process::id(),
            "started_at": s.started_utc.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "uptime_s": s.started.elapsed().as_secs(),
            "site_id": loaded.config.site.site_id,
            "device_id": loaded.config.site.device_id,
            "config": { "path": loaded.path, "version": loaded.version },
            "data_dir": s.store.data_dir(),
            "schema_version": s.store.schema_version().unwrap_or(-1),
            "cameras": cameras,
        }))
    }
}

pub fn utc(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
