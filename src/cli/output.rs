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
