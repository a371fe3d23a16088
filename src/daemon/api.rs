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
    fn status(&self) -> Response {
        let s = &self.state;
        let loaded = s.config();
        let cameras: Vec<_> = loaded
            .config
            .cameras
            .iter()
            .map(|c| json!({ "id": c.id, "name": c.name, "state": if c.enabled { "configured" } else { "disabled" } }))
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
