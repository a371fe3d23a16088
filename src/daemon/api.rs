//! Routes of the control socket. Each handler is thin: it reads state or calls the
//! owning module, and turns errors into a status and a message for the technician.

use super::State;
use crate::control::{BoxFuture, Request, Response, Service};
use crate::recording::utc_ms;
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
                ("GET", ["v1", "doctor"]) => self.doctor().await,
                ("GET", ["v1", "outbox"]) => self.outbox().await,
                ("GET", ["v1", "buttons"]) => {
                    Response::ok(json!({ "buttons": self.buttons().status() }))
                }
                ("POST", ["v1", "buttons", name, "press"]) => self.press(name, &req),
                ("POST", ["v1", "buttons", name, "edges"]) => self.edges(name, &req),
                ("GET", ["v1", "buttons", "watch"]) => self.watch(),
                ("GET", ["v1", "events"]) => self.events(&req).await,
                ("POST", ["v1", "clips"]) => self.export(&req).await,
                ("GET", ["v1", "evidence", uid, what]) => self.evidence_file(uid, what).await,
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
    async fn outbox(&self) -> Response {
        let s = self.state.clone();
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
            let uplink = s.uplink.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Ok(match uplink {
                Some(u) => u.status(),
                None => json!({ "configured": false, "outbox": s.store.outbox_stats()? }),
            })
        })
        .await;
        match r {
            Ok(Ok(v)) => Response::ok(v),
            Ok(Err(e)) => Response::error(500, format!("{e:#}")),
            Err(e) => Response::error(500, e.to_string()),
        }
    }

    /// Server-side health checks for `storeguard doctor`: each is (status, check, detail).
    async fn doctor(&self) -> Response {
        let s = self.state.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut checks = Vec::new();
            let mut add = |status: &str, check: &str, detail: String| checks.push(json!({ "status": status, "check": check, "detail": detail }));
            match s.store.integrity_check() {
                Ok(p) if p.is_empty() => add("ok", "database", format!("integrity ok, schema v{}", s.store.schema_version().unwrap_or(-1))),
                Ok(p) => add("fail", "database", p.join("; ")),
                Err(e) => add("fail", "database", e.to_string()),
            }
            let ring = s.recorder.ring_status();
            let free_pct = if ring.fs_total_bytes > 0 { ring.fs_free_bytes as f64 * 100.0 / ring.fs_total_bytes as f64 } else { 0.0 };
            add(
                if ring.locked_over_budget { "fail" } else if free_pct < 2.0 { "warn" } else { "ok" },
                "disk",
                format!(
                    "{:.1} GiB used of {:.1} GiB budget, {:.1} GiB locked, {:.1}% of the filesystem free",
                    ring.used_bytes as f64 / 1073741824.0,
                    ring.budget_bytes as f64 / 1073741824.0,
                    ring.locked_bytes as f64 / 1073741824.0,
                    free_pct
                ),
            );
            let target = s.config().config.health.retention_target_days;
            for (cam, days) in crate::recording::ring::retention_shortfalls(&ring, target) {
                add("warn", "retention", format!("{cam}: its share holds about {days:.1} days at the current bitrate, target {target}"));
            }
            for c in s.cameras.health() {
                match c.state {
                    "recording" => add("ok", "camera", format!("{} recording {} {}x{} {:.0} kbit/s", c.id, c.codec.unwrap_or("-"), c.width, c.height, c.bitrate_kbps)),
                    "disabled" => add("ok", "camera", format!("{} disabled in config", c.id)),
                    st => add("fail", "camera", format!("{} {st}: {}", c.id, c.last_error.unwrap_or_default())),
                }
            }
            for b in s.buttons.lock().unwrap_or_else(|p| p.into_inner()).status() {
                let st = if b.state == "failed" || b.state == "stuck" || b.state == "wiring-fault" { "fail" } else { "ok" };
                add(st, "button", format!("{} ({}): {}{}", b.name, b.source, b.state, b.error.map(|e| format!(": {e}")).unwrap_or_default()));
            }
            if let Ok(stats) = s.store.outbox_stats() {
                let depth: u64 = stats.iter().map(|c| c.depth).sum();
                let oldest = stats.iter().filter_map(|c| c.oldest_ns).min();
                let age = oldest.map(|o| (crate::recording::now_ns() - o) / 1_000_000_000).unwrap_or(0);
                add(if age > 3600 { "warn" } else { "ok" }, "outbox", format!("{depth} queued, oldest {age} s"));
            }
            add("ok", "device key", format!("{} ({})", s.incidents.key.key_id(), s.incidents.key.public_key_b64()));
            checks
        })
        .await;
        match r {
            Ok(c) => Response::ok(json!({ "checks": c })),
            Err(e) => Response::error(500, e.to_string()),
        }
    }

    fn buttons(&self) -> std::sync::MutexGuard<'_, crate::button::service::Buttons> {
        self.state.buttons.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn press(&self, name: &str, req: &Request) -> Response {
        let test = req.query("test").is_some_and(|v| v != "false" && v != "0");
        let hold = req
            .query("hold_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(200u64);
        let r = self
            .buttons()
            .press(name, std::time::Duration::from_millis(hold), test);
        match r {
            Ok(()) => {
                tracing::info!(
                    button = name,
                    test,
                    uid = req.peer.uid,
                    "press injected through the control socket"
                );
                Response::Json(
                    202,
                    json!({ "button": name, "test": test, "hold_ms": hold }),
                )
            }
            Err(e) => Response::error(404, e),
        }
    }

    /// Test hook: replays a script of raw edges (`<offset> on|off` per line, see
    /// `button::sim`) through the button's debounce machine. Always marked as a test.
    fn edges(&self, name: &str, req: &Request) -> Response {
        #[derive(serde::Deserialize)]
        struct Body {
            script: String,
        }
        let b: Body = match req.json() {
            Ok(b) => b,
            Err(r) => return r,
        };
        let edges = match crate::button::sim::parse_script(&b.script) {
            Ok(e) => e,
            Err(e) => return Response::error(400, e.to_string()),
        };
        let n = edges.len();
        match self.buttons().inject(name, edges, true) {
            Ok(()) => {
                tracing::info!(
                    button = name,
                    edges = n,
                    uid = req.peer.uid,
                    "test edges injected through the control socket"
                );
                Response::Json(202, json!({ "button": name, "test": true, "edges": n }))
            }
            Err(e) if e.starts_with("no button") => Response::error(404, e),
            Err(e) if e.contains("at most") => Response::error(400, e),
            Err(e) => Response::error(503, e),
        }
    }

    fn watch(&self) -> Response {
        let mut rx = self.state.incidents.watch.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(64);
        let mut stop = self.state.shutdown.subscribe();
        tokio::spawn(async move {
            let _ = tx
                .send(json!({ "kind": "watching", "at": utc_ms(crate::recording::now_ns()) }))
                .await;
            loop {
                tokio::select! {
                    _ = crate::daemon::stopped(&mut stop) => return,
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
        Response::Stream(out)
    }

    async fn events(&self, req: &Request) -> Response {
        let since = match req.query("since").map(parse_time).transpose() {
            Ok(s) => s.unwrap_or(0),
            Err(e) => return Response::error(400, format!("since: {e}")),
        };
        let limit = req
            .query("limit")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100usize);
        let store = self.state.store.clone();
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<serde_json::Value>> {
            let mut out = Vec::new();
            for e in store.events_since(since, limit)? {
                let clips: Vec<_> = store
                    .clips_of_event(e.id)?
                    .into_iter()
                    .map(|c| json!({ "id": c.uid, "camera": c.camera, "state": c.state, "path": c.path, "sha256": c.sha256, "error": c.error }))
                    .collect();
                out.push(json!({ "id": e.uid, "kind": e.kind, "source": e.source, "at": utc_ms(e.at_ns), "test": e.test, "detail": e.detail, "clips": clips }));
            }
            Ok(out)
        })
        .await;
        match r {
            Ok(Ok(v)) => Response::ok(json!({ "events": v })),
            Ok(Err(e)) => Response::error(500, format!("{e:#}")),
            Err(e) => Response::error(500, e.to_string()),
        }
    }

    /// Cuts a clip of any range still in the ring (a police request for earlier
    /// footage), with the same manifest and signature as a press, and audits it.
    async fn export(&self, req: &Request) -> Response {
        #[derive(serde::Deserialize)]
        struct Body {
            camera: String,
            from: String,
            to: String,
            #[serde(default)]
            destination: String,
        }
        let b: Body = match req.json() {
            Ok(b) => b,
            Err(r) => return r,
        };
        let cfg = self.state.config().config;
        let Some(cam) = cfg.camera(&b.camera).cloned() else {
            let known: Vec<_> = cfg.cameras.iter().map(|c| c.id.as_str()).collect();
            return Response::error(
                404,
                format!(
                    "no camera {:?} (configured: {})",
                    b.camera,
                    known.join(", ")
                ),
            );
        };
        let (from, to) = match (parse_time(&b.from), parse_time(&b.to)) {
            (Ok(f), Ok(t)) if f < t => (f, t),
            (Ok(_), Ok(_)) => return Response::error(400, "--from must be before --to"),
            (Err(e), _) => return Response::error(400, format!("--from: {e}")),
            (_, Err(e)) => return Response::error(400, format!("--to: {e}")),
        };
        let now = crate::recording::now_ns();
        if to > now {
            return Response::error(
                400,
                format!("--to {} is in the future (now {})", utc_ms(to), utc_ms(now)),
            );
        }
        let st = self.state.clone();
        let peer = req.peer;
        let r = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, (u16, String)> {
            use crate::evidence::clip;
            let store = &st.store;
            let e500 = |e: crate::store::StoreError| (500, e.to_string());
            st.recorder.sync_now(&cam.id);
            let uid = format!("exp-{}-{}", chrono::DateTime::from_timestamp_nanos(now).format("%Y%m%dT%H%M%S%3fZ"), cam.id);
            let lock = store.add_retention_lock(&cam.id, from, to, &format!("export {uid}"), now).map_err(e500)?;
            let nc = crate::store::events::NewClip { uid: uid.clone(), camera: cam.id.clone(), from_ns: from, to_ns: to };
            let id = store.insert_clip(&nc, None, Some(lock), now).map_err(e500)?;
            let spec = clip::ClipSpec {
                uid: &uid,
                camera_id: &cam.id,
                camera_name: &cam.name,
                from_ns: from,
                to_ns: to,
                event: clip::event_ref(&uid, crate::evidence::manifest::EventKind::ManualExport, false),
            };
            let sealed = match clip::cut(store, &st.incidents.key, &st.config().config.site, &spec) {
                Ok(s) => s,
                Err(e) => {
                    let _ = store.fail_clip(id, &e.to_string());
                    let _ = store.remove_retention_lock(lock);
                    let code = if matches!(e, clip::ClipError::NoFootage { .. }) { 404 } else { 500 };
                    return Err((code, e.to_string()));
                }
            };
            let m = &sealed.manifest;
            store.seal_clip(id, &sealed.rel_path, &m.file.sha256, m.file.size, None, now, Default::default()).map_err(e500)?;
            let detail = json!({ "clip": uid, "from": utc_ms(from), "to": utc_ms(to), "sha256": m.file.sha256, "destination": b.destination });
            store
                .audit(now, Some(peer.uid), peer.pid, "clip_export", &cam.id, &detail.to_string())
                .map_err(e500)?;
            tracing::info!(clip = %uid, camera = %cam.id, uid = peer.uid, destination = %b.destination, "evidence exported");
            Ok(json!({ "clip": uid, "file": m.file, "manifest": m, "path": sealed.path, "manifest_path": sealed.manifest_path }))
        })
        .await;
        match r {
            Ok(Ok(v)) => Response::ok(v),
            Ok(Err((code, msg))) => Response::error(code, msg),
            Err(e) => Response::error(500, e.to_string()),
        }
    }

    async fn evidence_file(&self, uid: &str, what: &str) -> Response {
        let store = self.state.store.clone();
        let u = uid.to_string();
        let row = tokio::task::spawn_blocking(move || store.clip(&u)).await;
        let Ok(Ok(Some(clip))) = row else {
            return Response::error(404, format!("no clip {uid}"));
        };
        let Some(rel) = clip.path else {
            return Response::error(
                404,
                format!(
                    "clip {uid} is {}: {}",
                    clip.state,
                    clip.error.unwrap_or_default()
                ),
            );
        };
        let path = self.state.store.data_dir().join(rel);
        match what {
            "clip" => Response::File(path, "video/mp4"),
            "manifest" => Response::File(crate::evidence::sidecar_path(&path), "application/json"),
            _ => Response::error(404, "use /clip or /manifest"),
        }
    }

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
                    .map(|g| json!({ "start": utc_ms(g.start_ns), "end": g.end_ns.map(utc_ms), "reason": g.reason }))
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
        // Every configured camera, even before the supervisor's first look at it.
        let health = s.cameras.health();
        let cameras: Vec<_> = loaded
            .config
            .cameras
            .iter()
            .map(|c| match health.iter().find(|h| h.id == c.id) {
                Some(h) => json!({ "id": h.id, "name": h.name, "state": h.state, "last_error": h.last_error }),
                None => json!({ "id": c.id, "name": c.name, "state": if c.enabled { "starting" } else { "disabled" }, "last_error": null }),
            })
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
            "public_key": s.incidents.key.public_key_b64(),
            "key_id": s.incidents.key.key_id(),
            "buttons": self.buttons().status(),
            "uplink": self.state.uplink.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|u| {
                let v = u.status();
                json!({ "broker": v["broker"], "connected": v["connected"], "last_error": v["last_error"] })
            }),
        }))
    }
}

/// Accepts RFC 3339 (`2026-11-22T10:00:00Z`, any offset) or local time without an
/// offset (`2026-11-22 10:00:00`), as a technician would type it.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return d.timestamp_nanos_opt().ok_or_else(|| "out of range".into());
    }
    for f in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(n) = chrono::NaiveDateTime::parse_from_str(t, f) {
            use chrono::TimeZone;
            if let Some(d) = chrono::Local.from_local_datetime(&n).earliest() {
                return d.timestamp_nanos_opt().ok_or_else(|| "out of range".into());
            }
        }
    }
    Err(format!(
        "{s:?} is not a time; use RFC 3339 like 2026-11-22T14:05:00Z or local \"2026-11-22 14:05:00\""
    ))
}
