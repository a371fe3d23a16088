//! `doctor`, the daemon's half: database, disk, retention, cameras, buttons, outbox and
//! the device key, each as (status, check, detail).

use super::{CmdError, Reply, blocking};
use crate::state::State;
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;
use storeguard_base::now_ns;

#[derive(Debug, Default)]
pub struct Doctor;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `ok`, `warn` or `fail`.
    pub status: &'static str,
    pub check: &'static str,
    pub detail: String,
}

impl Doctor {
    pub async fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        let s = st.clone();
        let checks = blocking(move || Ok(checks(&s))).await?;
        Ok(Reply::Json(json!({ "checks": checks })))
    }
}

fn checks(s: &State) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut add = |status, check, detail: String| {
        checks.push(Check {
            status,
            check,
            detail,
        })
    };
    // The bundled SQLite, on purpose: Debian 12's sqlite3 CLI (3.40.1) reports a false
    // "NULL value in keyframe.utc_ns" on our WITHOUT ROWID table (docs/persistence.md).
    let sqlite = rusqlite::version();
    match s.store.integrity_check() {
        Ok(p) if p.is_empty() => add(
            "ok",
            "database",
            format!(
                "integrity ok (bundled SQLite {sqlite}), schema v{}",
                s.store.schema_version().unwrap_or(-1)
            ),
        ),
        Ok(p) => add(
            "fail",
            "database",
            format!("{} (bundled SQLite {sqlite})", p.join("; ")),
        ),
        Err(e) => add("fail", "database", e.to_string()),
    }
    let (status, detail) = crate::timekeep::doctor_line(&s.time.status());
    add(status, "clock", detail);
    let ring = s.recorder.ring_status();
    let free_pct = if ring.fs_total_bytes > 0 {
        ring.fs_free_bytes as f64 * 100.0 / ring.fs_total_bytes as f64
    } else {
        0.0
    };
    add(
        if ring.locked_over_budget {
            "fail"
        } else if free_pct < 2.0 {
            "warn"
        } else {
            "ok"
        },
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
        add(
            "warn",
            "retention",
            format!(
                "{cam}: its share holds about {days:.1} days at the current bitrate, target {target}"
            ),
        );
    }
    for c in s.cameras.health() {
        match c.state {
            "recording" => add(
                "ok",
                "camera",
                format!(
                    "{} recording {} {}x{} {:.0} kbit/s",
                    c.id,
                    c.codec.unwrap_or("-"),
                    c.width,
                    c.height,
                    c.bitrate_kbps
                ),
            ),
            "disabled" => add("ok", "camera", format!("{} disabled in config", c.id)),
            st => add(
                "fail",
                "camera",
                format!("{} {st}: {}", c.id, c.last_error.unwrap_or_default()),
            ),
        }
    }
    for b in s.buttons().status() {
        let st = if matches!(b.state.as_str(), "failed" | "stuck" | "wiring-fault") {
            "fail"
        } else {
            "ok"
        };
        let err = b.error.map(|e| format!(": {e}")).unwrap_or_default();
        add(
            st,
            "button",
            format!("{} ({}): {}{err}", b.name, b.source, b.state),
        );
    }
    if let Ok(stats) = s.store.outbox_stats() {
        let depth: u64 = stats.iter().map(|c| c.depth).sum();
        let oldest = stats.iter().filter_map(|c| c.oldest_ns).min();
        let age = oldest.map(|o| (now_ns() - o) / 1_000_000_000).unwrap_or(0);
        add(
            if age > 3600 { "warn" } else { "ok" },
            "outbox",
            format!("{depth} queued, oldest {age} s"),
        );
    }
    let cfg = s.config().config;
    let trusted: Vec<String> = cfg.trust.keys().ids().map(str::to_string).collect();
    match (s.uplink().as_ref(), s.uplink_refused().clone()) {
        (Some(u), _) => {
            let v = u.status();
            let connected = v["connected"].as_bool().unwrap_or(false);
            let rejected = v["inbound"]["rejected"].as_u64().unwrap_or(0);
            add(
                if !connected {
                    "fail"
                } else if rejected > 0 {
                    "warn"
                } else {
                    "ok"
                },
                "uplink",
                format!(
                    "{} {}{}; trusted control-centre keys: {}; inbound messages refused: {rejected}{}",
                    v["broker"].as_str().unwrap_or("?"),
                    if connected {
                        "connected"
                    } else {
                        "not connected"
                    },
                    v["last_error"]
                        .as_str()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default(),
                    trusted.join(", "),
                    v["inbound"]["last_rejected"]
                        .as_str()
                        .map(|e| format!(" (last: {e})"))
                        .unwrap_or_default(),
                ),
            )
        }
        (None, Some(why)) => add("fail", "uplink", format!("not started: {why}")),
        (None, None) => add(
            "warn",
            "uplink",
            "no [uplink] configured: alerts and evidence stay on this box".into(),
        ),
    }
    let key = &s.incidents.key;
    add(
        "ok",
        "device key",
        format!("{} ({})", key.key_id(), key.public_key_b64()),
    );
    checks
}
