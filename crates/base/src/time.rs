//! UTC time as integer nanoseconds since the Unix epoch, and its text forms.
//!
//! Everything is stored and sent as UTC; only the CLI shows local time.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// The system's wall clock now, in UTC nanoseconds (on the daemon's test clock, when
/// a test set one: `clock::set_test_override`).
pub fn now_ns() -> i64 {
    from_system_ns(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0))
}

// The test clock's wall-clock offset (`clock::set_test_override`); off in production.
static OFFSET_ON: AtomicBool = AtomicBool::new(false);
static OFFSET: AtomicI64 = AtomicI64::new(0);

pub(crate) fn set_test_offset(ns: i64) {
    OFFSET.store(ns, Ordering::SeqCst);
    OFFSET_ON.store(true, Ordering::SeqCst);
}

/// A reading of the system's wall clock taken elsewhere (a socket's receive time) on
/// this process's wall clock: the same unless a test clock is set.
pub fn from_system_ns(ns: i64) -> i64 {
    if OFFSET_ON.load(Ordering::Relaxed) {
        ns.wrapping_add(OFFSET.load(Ordering::Relaxed))
    } else {
        ns
    }
}

/// UTC with millisecond precision (`2026-11-22T10:00:00.123Z`): the one format every
/// interface (control socket, MQTT, manifests' neighbours, logs) uses.
pub fn utc_ms(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_ms_round_trips_through_parse_time() {
        let ns = 1_764_000_000_123_000_000;
        assert_eq!(utc_ms(ns), "2025-11-24T16:00:00.123Z");
        assert_eq!(parse_time(&utc_ms(ns)), Ok(ns));
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
