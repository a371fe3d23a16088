//! Human-readable rendering of daemon replies. Times are stored and sent as UTC;
//! only here are they shown in the box's local time zone.

use chrono::{DateTime, Local};
use serde_json::Value;
use std::fmt::Write;

pub fn local_time(rfc3339: &str) -> String {
    DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            t.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S %Z")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339.to_string())
}

pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

pub fn status(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "storeguard {}  pid {}", s(&v["version"]), s(&v["pid"]));
    let _ = writeln!(
        o,
        "site        {} / device {}",
        s(&v["site_id"]),
        s(&v["device_id"])
    );
    let _ = writeln!(
        o,
        "up          {} (since {})",
        duration(v["uptime_s"].as_u64().unwrap_or(0)),
        local_time(v["started_at"].as_str().unwrap_or(""))
    );
    let _ = writeln!(
        o,
        "config      {} (version {})",
        s(&v["config"]["path"]),
        s(&v["config"]["version"])
    );
    let _ = writeln!(
        o,
        "data        {} (schema v{})",
        s(&v["data_dir"]),
        s(&v["schema_version"])
    );
    if let Some(k) = v.get("public_key") {
        let _ = writeln!(o, "device key  {}", s(k));
    }
    let c = &v["clock"];
    if c.is_object() {
        let state = if c["synced"].as_bool().unwrap_or(false) {
            format!(
                "synchronised, error bound {:.1} ms",
                c["error_bound_ms"].as_f64().unwrap_or(0.0)
            )
        } else {
            format!(
                "NOT synchronised (maxerror {:.0} ms){}",
                c["maxerror_ms"].as_f64().unwrap_or(0.0),
                c["unsynchronised_since"]
                    .as_str()
                    .map(|t| format!(" since {}", local_time(t)))
                    .unwrap_or_default()
            )
        };
        let _ = writeln!(o, "clock       {state}");
        if let Some(st) = c["last_step"].as_object() {
            let _ = writeln!(
                o,
                "last step   {:+.3} s at {} ({})",
                st["size_ms"].as_i64().unwrap_or(0) as f64 / 1000.0,
                local_time(st["at"].as_str().unwrap_or("")),
                st["cause"].as_str().unwrap_or("")
            );
        }
        let z = &c["zone"];
        let _ = writeln!(
            o,
            "time zone   {} UTC{}{}",
            s(&z["name"]),
            s(&z["utc_offset"]),
            z["next_change"]
                .as_object()
                .map(|n| format!(
                    ", changes to UTC{} at {}",
                    n["utc_offset"].as_str().unwrap_or(""),
                    local_time(n["at"].as_str().unwrap_or(""))
                ))
                .unwrap_or_default()
        );
    }
    let cams = v["cameras"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(o, "cameras     {}", cams.len());
    for c in cams {
        let _ = writeln!(
            o,
            "  {:<12} {:<14} {}",
            s(&c["id"]),
            s(&c["state"]),
            s(&c["name"])
        );
    }
    o
}

pub fn cameras(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<10} {:<11} {:<9} {:<5} {:>9} {:>5} {:>7} {:>8} {:>5} {:>7} {:>9} {:>9}  last error",
        "CAMERA",
        "STATE",
        "INGEST",
        "CODEC",
        "SIZE",
        "FPS",
        "KBIT/S",
        "LAST",
        "RECON",
        "DROPPED",
        "RETAINED",
        "CLOCK"
    );
    for c in v["cameras"].as_array().into_iter().flatten() {
        let size = match (c["width"].as_u64(), c["height"].as_u64()) {
            (Some(w), Some(h)) if w > 0 => format!("{w}x{h}"),
            _ => "-".into(),
        };
        let age = c["last_frame_age_s"]
            .as_f64()
            .map(|a| format!("{a:.1}s"))
            .unwrap_or("-".into());
        let kept = c["retention_days"]
            .as_f64()
            .map(|d| format!("{d:.2}d"))
            .unwrap_or("-".into());
        // The camera's own clock against the box's (RTCP sender reports); `!` when off.
        let clock = c["clock_offset_ms"]
            .as_i64()
            .map(|ms| {
                format!(
                    "{:+.2}s{}",
                    ms as f64 / 1000.0,
                    if c["clock_off"].as_bool().unwrap_or(false) {
                        "!"
                    } else {
                        ""
                    }
                )
            })
            .unwrap_or("-".into());
        let _ = writeln!(
            o,
            "{:<10} {:<11} {:<9} {:<5} {:>9} {:>5} {:>7} {:>8} {:>5} {:>7} {:>9} {:>9}  {}",
            s(&c["id"]),
            s(&c["state"]),
            s(&c["ingest"]),
            s(&c["codec"]),
            size,
            s(&c["fps"]),
            s(&c["bitrate_kbps"]),
            age,
            s(&c["reconnects"]),
            s(&c["frames_dropped"]),
            kept,
            clock,
            c["last_error"].as_str().unwrap_or("")
        );
        let d = &c["detect"];
        if d.is_object() {
            let n = |k: &str| d[k].as_u64().unwrap_or(0);
            let tamper: Vec<&str> = d["tamper"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str())
                .collect();
            let _ = writeln!(
                o,
                "    detect: {} via {}, {}/s, {} inferences ({}), {} saved by motion, {} dropped, {} decode errors, {} people tracked{}{}",
                s(&d["source"]),
                d["decoder"].as_str().unwrap_or("-"),
                d["rate_per_s"].as_f64().unwrap_or(0.0),
                n("inferences"),
                d["last_inference_s_ago"]
                    .as_f64()
                    .map(|a| format!("last {a:.1}s ago"))
                    .unwrap_or("none yet".into()),
                n("skipped_static"),
                n("dropped"),
                n("decode_errors"),
                d["tracks"].as_array().map_or(0, |t| t.len()),
                if tamper.is_empty() {
                    String::new()
                } else {
                    format!(", TAMPER: {}", tamper.join(", "))
                },
                d["last_error"]
                    .as_str()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default()
            );
        }
        for g in c["recent_gaps"].as_array().into_iter().flatten() {
            let end = g["end"]
                .as_str()
                .map(local_time)
                .unwrap_or_else(|| "now".into());
            let _ = writeln!(
                o,
                "    gap {} .. {}  {}",
                local_time(g["start"].as_str().unwrap_or("")),
                end,
                s(&g["reason"])
            );
        }
    }
    let r = &v["ring"];
    let gib = |x: &Value| x.as_f64().unwrap_or(0.0) / (1u64 << 30) as f64;
    let _ = writeln!(
        o,
        "ring: {:.2} GiB used of {:.2} GiB budget ({:.2} GiB locked), {:.2} GiB free on disk",
        gib(&r["used_bytes"]),
        gib(&r["budget_bytes"]),
        gib(&r["locked_bytes"]),
        gib(&r["fs_free_bytes"])
    );
    o
}

pub fn watch_line(v: &Value) -> String {
    let at = local_time(v["at"].as_str().unwrap_or(""));
    let mut line = format!(
        "{at}  {:<16} {}",
        s(&v["kind"]),
        v["button"].as_str().unwrap_or("")
    );
    if v["test"].as_bool() == Some(true) {
        line.push_str("  (test)");
    }
    if let Some(id) = v["event_id"].as_str() {
        line.push_str(&format!("  event {id}"));
    }
    if let Some(p) = v["path"].as_str() {
        line.push_str(&format!("  {p}"));
    }
    if let Some(e) = v["error"].as_str() {
        line.push_str(&format!("  NOT recorded yet: {e}"));
    }
    line
}

/// The line under a clip or package the control centre confirmed.
fn confirmed(o: &mut String, receipt: &Value) {
    if let Some(r) = receipt.as_object() {
        let _ = writeln!(
            o,
            "      confirmed by the control centre at {} (receipt signed by key {})",
            local_time(r["at"].as_str().unwrap_or("")),
            r["key_id"].as_str().unwrap_or("?")
        );
    }
}

pub fn events(v: &Value) -> String {
    let mut o = String::new();
    for e in v["events"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "{}  {:<14} {:<12}{}  {}",
            local_time(e["at"].as_str().unwrap_or("")),
            s(&e["kind"]),
            s(&e["source"]),
            if e["test"].as_bool() == Some(true) {
                " (test)"
            } else {
                ""
            },
            s(&e["id"])
        );
        let t = &e["time"];
        let clock = match t["synced"].as_bool() {
            Some(false) => "on an UNSYNCHRONISED box clock",
            _ => "on the synchronised box clock",
        };
        match t["recorded_at"].as_str() {
            Some(r) => {
                let _ = writeln!(
                    o,
                    "    time {clock}; corrected by a clock step (recorded as {r})"
                );
            }
            None if t["synced"] == false => {
                let _ = writeln!(o, "    time {clock}");
            }
            None => {}
        }
        for c in e["clips"].as_array().into_iter().flatten() {
            let _ = writeln!(
                o,
                "    clip {:<8} {:<8} {}{}",
                s(&c["camera"]),
                s(&c["state"]),
                c["path"].as_str().unwrap_or(""),
                c["error"]
                    .as_str()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default()
            );
            confirmed(&mut o, &c["receipt"]);
        }
        for p in e["packages"].as_array().into_iter().flatten() {
            let _ = writeln!(
                o,
                "    package {:<8} {}  ({} bytes, for the control centre)",
                s(&p["state"]),
                p["path"].as_str().unwrap_or(""),
                p["bytes"]
            );
            confirmed(&mut o, &p["receipt"]);
        }
    }
    if o.is_empty() {
        o.push_str("no events\n");
    }
    o
}

/// One image's detections, for `storeguard detect`.
pub struct Detected {
    pub path: std::path::PathBuf,
    pub width: u32,
    pub height: u32,
    pub ms: f64,
    pub detections: Vec<storeguard::detect::core::model::Detection>,
}

fn class_name(c: usize) -> String {
    if c == storeguard::detect::core::model::PERSON {
        "person".into()
    } else {
        format!("class {c}")
    }
}

pub fn detected(images: &[Detected]) -> String {
    let mut o = String::new();
    for d in images {
        let _ = writeln!(
            o,
            "{} ({}x{}): {} detection{} in {:.0} ms",
            d.path.display(),
            d.width,
            d.height,
            d.detections.len(),
            if d.detections.len() == 1 { "" } else { "s" },
            d.ms
        );
        for x in &d.detections {
            let r = &x.rect;
            let _ = writeln!(
                o,
                "  {:<7} {:.2}  x {:.0}..{:.0}  y {:.0}..{:.0}",
                class_name(x.class),
                x.score,
                r.x0,
                r.x1,
                r.y0,
                r.y1
            );
        }
    }
    o
}

pub fn detected_json(images: &[Detected]) -> Value {
    serde_json::json!({ "images": images.iter().map(|d| serde_json::json!({
        "path": d.path,
        "width": d.width,
        "height": d.height,
        "ms": (d.ms * 10.0).round() / 10.0,
        "detections": d.detections.iter().map(|x| serde_json::json!({
            "class": class_name(x.class),
            "score": (x.score * 1000.0).round() / 1000.0,
            "box": [x.rect.x0.round(), x.rect.y0.round(), x.rect.x1.round(), x.rect.y1.round()],
        })).collect::<Vec<_>>(),
    })).collect::<Vec<_>>() })
}

pub fn config_status(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "running   {} (version {})",
        s(&v["running"]["path"]),
        s(&v["running"]["version"])
    );
    if v["remote_enabled"].as_bool() != Some(true) {
        let _ = writeln!(o, "remote    off (no [uplink], or remote.enabled = false)");
    }
    for (label, key) in [
        ("applied", "applied"),
        ("pending", "pending"),
        ("rejected", "last_rejected"),
        ("rolled back", "last_rolled_back"),
    ] {
        let e = &v[key];
        if e.is_null() {
            let _ = writeln!(o, "{label:<9} -");
            continue;
        }
        let _ = writeln!(
            o,
            "{label:<9} version {} at {}",
            e["version"]
                .as_u64()
                .map_or("?".to_string(), |n| n.to_string()),
            local_time(e["at"].as_str().unwrap_or(""))
        );
        for r in e["reasons"].as_array().into_iter().flatten() {
            let _ = writeln!(o, "          {}", r.as_str().unwrap_or(""));
        }
    }
    o
}

pub fn receipt(path: &std::path::Path, r: &storeguard_proto::receipt::ReceiptReport) -> String {
    format!(
        "    receipt    {}: the control centre confirmed these bytes at {} (signed by key {} {})\n",
        path.display(),
        r.ack.at,
        r.key_id,
        if r.key_pinned {
            "matching --centre-key"
        } else {
            "named in the receipt; pass --centre-key to also check WHO signed"
        }
    )
}

/// The signed time quality of a clip, for `evidence verify`.
pub fn time_quality(t: Option<&storeguard_proto::manifest::TimeQuality>) -> String {
    let mut o = String::new();
    let Some(t) = t else {
        o.push_str("    time       not stated (sealed before storeguard recorded time quality)\n");
        return o;
    };
    let source = match t.source.as_str() {
        "box_ntp" => "the box clock, synchronised by NTP",
        "camera_rtcp" => {
            "the camera's own clock (RTCP sender reports), agreeing with the box clock"
        }
        "box_unsynchronised" => "arrival time on a box clock that was NOT synchronised",
        other => other,
    };
    let bound = match t.error_bound_ms {
        Some(ms) => format!("within ±{ms} ms"),
        None => "error unbounded".to_string(),
    };
    let _ = writeln!(o, "    time       {source}; {bound}");
    if t.corrections.is_empty() {
        let _ = writeln!(o, "    correction none");
    }
    for c in &t.corrections {
        let _ = writeln!(
            o,
            "    correction {:+.3} s at {} ({}): recorded times on the clock before it ({}) moved onto the clock after ({})",
            c.step_ms as f64 / 1000.0,
            c.at,
            c.cause,
            c.before,
            c.after
        );
    }
    o
}

pub fn verified(clip: &std::path::Path, r: &storeguard::evidence::VerifyReport) -> String {
    let m = &r.manifest;
    let t =
        |d: &chrono::DateTime<chrono::Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut o = String::new();
    let _ = writeln!(o, "OK  {}", clip.display());
    let _ = writeln!(
        o,
        "    sha256     {} ({} bytes) matches",
        m.file.sha256, m.file.size
    );
    let _ = writeln!(
        o,
        "    signature  ed25519 by key {} {}",
        r.key_id,
        if r.key_trusted {
            "(matches the expected public key)"
        } else {
            "(valid; pass --pubkey to also check WHO signed)"
        }
    );
    let _ = writeln!(
        o,
        "    site {} device {} camera {} {}",
        m.site_id, m.device_id, m.camera.id, m.camera.name
    );
    let _ = writeln!(
        o,
        "    footage    {} .. {} UTC ({} {}x{})",
        t(&m.actual.first_frame),
        t(&m.actual.last_frame),
        m.codec,
        m.width,
        m.height
    );
    let _ = writeln!(
        o,
        "    requested  {} .. {} UTC",
        t(&m.requested.from),
        t(&m.requested.to)
    );
    o.push_str(&time_quality(m.time.as_ref()));
    for g in &m.gaps {
        let _ = writeln!(
            o,
            "    gap        {} .. {}: {}",
            t(&g.from),
            t(&g.to),
            g.reason
        );
    }
    for w in &r.warnings {
        let _ = writeln!(o, "    warning    {w}");
    }
    o
}

pub fn outbox(v: &Value) -> String {
    let mut o = String::new();
    if v["configured"] == Value::Bool(false) {
        let _ = writeln!(
            o,
            "uplink: not configured (no [uplink] section); messages stay queued on this box"
        );
    } else {
        let _ = writeln!(
            o,
            "uplink: {} {}  connects {}  in flight {}/{}",
            s(&v["broker"]),
            if v["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "DISCONNECTED"
            },
            s(&v["connects"]),
            s(&v["in_flight"]),
            s(&v["window"])
        );
        if let Some(e) = v["last_error"].as_str() {
            let _ = writeln!(
                o,
                "last error: {e} (at {})",
                local_time(v["last_error_at"].as_str().unwrap_or(""))
            );
        }
        if let Some(u) = v["upload"].as_object() {
            let _ = writeln!(
                o,
                "uploading {}: {} of {} bytes acknowledged",
                s(&u["clip"]),
                s(&u["acked_offset"]),
                s(&u["total"])
            );
        }
    }
    let _ = writeln!(
        o,
        "{:<10} {:>7} {:>10} {:>10} {:>9} {:>9} {:>8}",
        "CLASS", "QUEUED", "BYTES", "OLDEST", "ACCEPTED", "DELIVERED", "DROPPED"
    );
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    for c in v["outbox"].as_array().into_iter().flatten() {
        let age = c["oldest_ns"]
            .as_i64()
            .map(|o| duration(((now - o).max(0) / 1_000_000_000) as u64))
            .unwrap_or("-".into());
        let _ = writeln!(
            o,
            "{:<10} {:>7} {:>10} {:>10} {:>9} {:>9} {:>8}",
            s(&c["class"]),
            s(&c["depth"]),
            s(&c["bytes"]),
            age,
            s(&c["accepted"]),
            s(&c["delivered"]),
            s(&c["dropped"])
        );
    }
    o
}
