//! The outage soak, short: `sg-soak` (crates/fixtures/src/bin/sg-soak.rs) with a
//! two-minute broker outage. The full hour is `scripts/soak.sh`; figures in
//! docs/reliability.md. Only load-tolerant properties are asserted: nothing lost or
//! twice, everything verified, the drain order, and the daemon's fds, threads, WAL and
//! outbox back within bounds — never how fast.

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;
use storeguard_fixtures::harness::wait_deadline;

#[test]
fn two_minute_broker_outage_loses_nothing_and_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut child = Command::new(storeguard_fixtures::fixture_bin("sg-soak"))
        .args(["--outage", "120", "--warmup", "10", "--settle", "10"])
        .args([
            "--cameras",
            "3",
            "--clip-cameras",
            "2",
            "--flap-every",
            "20",
        ])
        .args(["--sample-every", "2", "--drain-deadline", "600"])
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .expect("run sg-soak (cargo build --workspace --bins first)");
    // A deadline against a hang only: the run itself takes about three minutes.
    let status = wait_deadline(&mut child, Duration::from_secs(900)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("sg-soak did not finish within 15 minutes")
    });
    let printed = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    // The figures and progress, shown with --nocapture or when the test fails.
    eprintln!("{}{}", printed("stderr"), printed("stdout"));
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("sg-soak exited {status} without a report: {e}"));
    let r: Value = serde_json::from_str(&text).unwrap();
    let c = &r["checks"];
    assert_eq!(r["problems"], serde_json::json!([]), "{text}");
    assert!(status.success(), "sg-soak exited {status}\n{text}");

    // Every accepted press is an event whose alert is stored exactly once.
    assert!(r["presses"]["in_outage"].as_u64().unwrap() >= 10, "{text}");
    assert_eq!(r["presses"]["failed"], 0, "{text}");
    assert_eq!(c["alerts"]["stored"], c["events"], "{text}");
    for k in ["lost", "twice", "phantom"] {
        assert_eq!(c["alerts"][k], 0, "alerts {k}\n{text}");
    }
    assert_eq!(c["health"]["lost"], 0, "{text}");
    assert!(
        c["health"]["box"].as_u64().unwrap() > 0,
        "no telemetry: {text}"
    );
    // Every clip verified at the receiver and acknowledged on the box.
    assert!(c["clips"]["box"].as_u64().unwrap() >= 20, "{text}");
    assert_eq!(
        c["clips"]["verified_at_receiver"], c["clips"]["box"],
        "{text}"
    );
    assert_eq!(c["clips"]["problems"], 0, "{text}");
    // The backlog's alerts all arrived before the first chunk of its clips.
    assert_eq!(c["drain_order"]["alerts_before_chunks"], true, "{text}");
    assert!(r["backlog"]["sealed_clips"].as_u64().unwrap() > 0, "{text}");

    // Bounded: the outbox drained, fds and threads back, the WAL small.
    assert_eq!(
        r["after"]["outbox"],
        serde_json::json!([0, 0, 0, 0]),
        "{text}"
    );
    let diff = |k: &str| r["after"][k].as_i64().unwrap() - r["before"][k].as_i64().unwrap();
    assert!(diff("fds").abs() <= 6, "fds {}\n{text}", diff("fds"));
    assert!(
        diff("threads").abs() <= 3,
        "threads {}\n{text}",
        diff("threads")
    );
    assert!(
        r["wal_max_bytes"].as_u64().unwrap() <= 64 << 20,
        "WAL {}\n{text}",
        r["wal_max_bytes"]
    );
    assert!(
        r["max_alert_depth"].as_u64().unwrap() <= r["backlog"]["alerts"].as_u64().unwrap(),
        "{text}"
    );
}
