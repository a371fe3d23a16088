//! The daemon speaks the systemd notify protocol: READY with a STATUS line once started,
//! WATCHDOG pings while its health checks pass, STOPPING on shutdown. The test plays
//! systemd's side with a real datagram socket.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use storeguard_fixtures::harness::*;

fn collect(sock: &UnixDatagram, until: impl Fn(&[String]) -> bool, limit: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    got
}

#[test]
fn ready_status_watchdog_and_stopping() {
    let site = Site::with_cameras(0);
    let path = site.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let log = std::fs::File::create(site.path("daemon.log")).unwrap();
    let mut child = command()
        .arg("--config")
        .arg(site.config_path())
        .arg("run")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "600000")
        .stderr(log)
        .spawn()
        .unwrap();

    let got = collect(
        &sock,
        |g| g.iter().filter(|l| *l == "WATCHDOG=1").count() >= 2,
        DEADLINE,
    );
    let log = || std::fs::read_to_string(site.path("daemon.log")).unwrap_or_default();
    assert!(
        got.iter().any(|l| l == "READY=1"),
        "no READY: {got:?}\n{}",
        log()
    );
    let status = got
        .iter()
        .find(|l| l.starts_with("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS: {got:?}"));
    assert!(status.contains("test-store"), "{status}");
    let ready_at = got.iter().position(|l| l == "READY=1").unwrap();
    let first_ping = got
        .iter()
        .position(|l| l == "WATCHDOG=1")
        .unwrap_or_else(|| panic!("no WATCHDOG: {got:?}"));
    assert!(first_ping > ready_at, "watchdog before READY: {got:?}");

    send_signal(child.id(), libc::SIGTERM);
    let got = collect(&sock, |g| g.iter().any(|l| l == "STOPPING=1"), DEADLINE);
    assert!(
        got.iter().any(|l| l == "STOPPING=1"),
        "no STOPPING: {got:?}\n{}",
        log()
    );
    let status = wait_deadline(&mut child, DEADLINE).expect("daemon exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", log());
}
