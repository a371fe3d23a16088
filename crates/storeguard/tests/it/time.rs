//! Trustworthy time (docs/time.md), driving the daemon's clock seam: the debug build's
//! test clock (`STOREGUARD_TEST_CLOCK`, a file with a wall-clock offset and an NTP
//! state) against a real fake camera, real files and the real index.

use super::recording::{fleet, small};
use rusqlite::Connection;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use storeguard_base::{now_ns, utc_ms};
use storeguard_fixtures::harness::*;
use storeguard_fixtures::quirks::{QuirkProxy, Quirks};

const SEC: i64 = 1_000_000_000;

fn set_clock(path: &Path, offset_ns: i64, synced: bool) {
    let tmp = path.with_extension("tmp");
    let maxerr = if synced { 20_000 } else { 16_000_000 };
    std::fs::write(
        &tmp,
        format!(r#"{{"offset_ns": {offset_ns}, "synced": {synced}, "maxerror_us": {maxerr}, "esterror_us": 1000}}"#),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn config(data_dir: &str, url: &str, health: &str) -> String {
    format!(
        "[site]\nsite_id = \"time-test\"\ndevice_id = \"time-box\"\n\n[storage]\ndata_dir = \"{data_dir}\"\nsegment_length = \"3s\"\n\n[control]\nsocket = \"control.sock\"\n\n[health]\n{health}\n\n[[cameras]]\nid = \"cam01\"\nurl = \"{url}\"\n{}",
        super::isb::button(
            "till",
            "normally-open",
            &["cam01"],
            "pre_roll = \"2s\"\npost_roll = \"6s\""
        )
    )
}

fn start(site: &Site, clock: &Path) -> Daemon {
    let d = site.start_env(&[("STOREGUARD_TEST_CLOCK", clock.as_os_str())]);
    wait_until_within("cam01 recording", Duration::from_secs(60), || {
        let out = site.cli(&["cameras", "--json"]);
        out.code() == Some(0) && out.stdout.contains("\"recording\"")
    });
    d
}

fn db(site: &Site) -> Connection {
    Connection::open_with_flags(
        site.data_dir().join("storeguard.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

fn count(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

type Row = (i64, i64, Option<i64>, Option<i64>, Option<i64>);

/// (start, end, recorded start, recorded end, step) per segment, in time order.
fn segments(c: &Connection) -> Vec<Row> {
    let mut st = c
        .prepare("SELECT start_ns, end_ns, recorded_start_ns, recorded_end_ns, clock_step FROM segment WHERE camera = 'cam01' AND state != 0 ORDER BY start_ns")
        .unwrap();
    st.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn status(site: &Site) -> Value {
    let out = site.cli(&["status", "--json"]);
    out.expect(0);
    serde_json::from_str(&out.stdout).unwrap()
}

fn manifests(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .collect()
}

#[test]
fn a_cold_boot_at_1970_then_ntp_corrects_the_recording_without_a_gap() {
    let cams = fleet(small(1));
    let site = Site::new();
    let clock = site.path("clock.json");
    // The box boots at 1970-01-01T00:01:40Z, unsynchronised.
    let boot_offset = 100 * SEC - now_ns();
    set_clock(&clock, boot_offset, false);
    site.write_config(&config(
        &site.data_dir().to_string_lossy(),
        &cams.url(1),
        "",
    ));
    let real_start = now_ns();
    let mut d = start(&site, &clock);
    let s = status(&site);
    assert_eq!(s["clock"]["synced"], false, "{s}");
    std::thread::sleep(Duration::from_secs(3));
    // A press on the 1970 clock; its post-roll runs past the step.
    let pressed_at = now_ns();
    super::isb::press(&site, "till", 100);
    std::thread::sleep(Duration::from_secs(4));
    // NTP arrives: the clock steps to the right time and is synchronised.
    let stepped_at = now_ns();
    set_clock(&clock, 0, true);
    let c = db(&site);
    wait_until_within("the step is recorded", Duration::from_secs(10), || {
        count(&c, "SELECT count(*) FROM clock_step") == 1
    });
    std::thread::sleep(Duration::from_secs(8));
    let (before, after, size, cause): (i64, i64, i64, String) = c
        .query_row(
            "SELECT before_ns, after_ns, size_ns, cause FROM clock_step",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert!(before < 3600 * SEC, "before {}", utc_ms(before));
    assert!(
        (after - stepped_at).abs() < 2 * SEC,
        "after {}",
        utc_ms(after)
    );
    assert!(
        (size + boot_offset).abs() < 10_000_000,
        "size {size} vs {}",
        -boot_offset
    );
    assert_eq!(cause, "NTP synchronised the clock");
    assert!(
        count(
            &c,
            "SELECT count(*) FROM health_event WHERE kind = 'clock_step'"
        ) == 1
    );

    // Wait for a segment boundary after the step to be committed.
    wait_until_within("segments after the step", Duration::from_secs(20), || {
        segments(&c).iter().filter(|s| s.4.is_none()).count() >= 2
    });
    let segs = segments(&c);
    let corrected: Vec<_> = segs.iter().filter(|s| s.4.is_some()).collect();
    assert!(corrected.len() >= 2, "{segs:?}");
    for s in &segs {
        assert!(
            s.0 > 1_700_000_000 * SEC,
            "every segment on the corrected clock: {s:?}"
        );
    }
    // Corrected times are right: the first frame is when recording really started.
    let first = segs[0];
    assert!(
        first.0 >= real_start - SEC && first.0 <= real_start + 30 * SEC,
        "first frame {} vs daemon start {}",
        utc_ms(first.0),
        utc_ms(real_start)
    );
    // The recorded values are kept (1970) and moved by exactly the step.
    for s in &corrected {
        let rs = s.2.expect("recorded start kept");
        assert!(rs < 3600 * SEC);
        assert_eq!(s.0 - rs, size);
    }
    // No gap, no overlap, no reorder across the step.
    for w in segs.windows(2) {
        let join = w[1].0 - w[0].1;
        assert!(
            join.abs() < 300_000_000,
            "join {join} ns between {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    assert_eq!(
        count(&c, "SELECT count(*) FROM gap WHERE camera = 'cam01'"),
        0
    );

    // A clip across the step uses the corrected times and says so.
    let out_dir = site.path("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let from = utc_ms(first.0 + SEC);
    let to = utc_ms(stepped_at + 4 * SEC);
    site.cli(&[
        "clip",
        "--camera",
        "cam01",
        "--from",
        &from,
        "--to",
        &to,
        "--out",
        &out_dir.to_string_lossy(),
    ])
    .expect(0);
    let m = &manifests(&out_dir)[0];
    let v: Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
    let t = &v["time"];
    assert_eq!(t["corrections"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(t["corrections"][0]["step_ms"], size / 1_000_000);
    // After NTP the camera's clock agrees with the box and is preferred.
    assert!(
        t["source"] == "box_ntp" || t["source"] == "camera_rtcp",
        "{t}"
    );
    assert!(t["error_bound_ms"].as_i64().is_some(), "{t}");
    let first_frame =
        chrono::DateTime::parse_from_rfc3339(v["actual"]["first_frame"].as_str().unwrap()).unwrap();
    let last_frame =
        chrono::DateTime::parse_from_rfc3339(v["actual"]["last_frame"].as_str().unwrap()).unwrap();
    let span = (last_frame - first_frame).num_milliseconds();
    let asked = (stepped_at + 4 * SEC - first.0 - SEC) / 1_000_000;
    assert!(
        (span - asked).abs() < 3000,
        "clip spans {span} ms for {asked} ms asked: no jump of the step inside"
    );
    let clip = PathBuf::from(m.to_string_lossy().trim_end_matches(".manifest.json"));
    let out = site.cli(&["evidence", "verify", &clip.to_string_lossy()]);
    out.expect(0);
    assert!(out.stdout.contains("correction +"), "{}", out.stdout);
    let s = status(&site);
    assert_eq!(s["clock"]["synced"], true, "{s}");
    assert!(s["clock"]["last_step"]["cause"].is_string(), "{s}");

    // The press: corrected to when it really happened, its recorded 1970 time kept, and
    // its clip cut on the corrected window and saying so.
    let mut ev = Value::Null;
    wait_until_within(
        "the press's clip is sealed",
        Duration::from_secs(40),
        || {
            let out = site.cli(&["events", "--json"]);
            ev = serde_json::from_str::<Value>(&out.stdout).unwrap()["events"][0].clone();
            ev["clips"][0]["state"] == "sealed"
        },
    );
    let at = super::isb::parse_ns(&ev["at"]);
    assert!(
        (at - pressed_at).abs() < 2 * SEC,
        "event at {} pressed {}",
        utc_ms(at),
        utc_ms(pressed_at)
    );
    assert!(
        ev["time"]["recorded_at"]
            .as_str()
            .unwrap()
            .starts_with("1970-01-01"),
        "{ev}"
    );
    assert_eq!(ev["time"]["synced"], false);
    let clip_path = site
        .data_dir()
        .join(ev["clips"][0]["path"].as_str().unwrap());
    let m: Value = serde_json::from_slice(
        &std::fs::read(storeguard::evidence::sidecar_path(&clip_path)).unwrap(),
    )
    .unwrap();
    assert_eq!(m["time"]["corrections"].as_array().unwrap().len(), 1, "{m}");
    let first = super::isb::parse_ns(&m["actual"]["first_frame"]);
    assert!(
        (first - (pressed_at - 2 * SEC)).abs() < 2 * SEC,
        "first frame {} for a press at {}",
        utc_ms(first),
        utc_ms(pressed_at)
    );
    super::recording::stop(&mut d);
}

#[test]
fn ntp_loss_and_return_are_marked_and_raised() {
    let cams = fleet(small(1));
    let site = Site::new();
    let clock = site.path("clock.json");
    set_clock(&clock, 0, true);
    site.write_config(&config(
        &site.data_dir().to_string_lossy(),
        &cams.url(1),
        "clock_unsynchronised_alert_after = \"2s\"",
    ));
    let mut d = start(&site, &clock);
    std::thread::sleep(Duration::from_secs(4));
    let c = db(&site);
    assert_eq!(status(&site)["clock"]["synced"], true);
    set_clock(&clock, 0, false);
    wait_until_within(
        "clock_unsynchronised raised",
        Duration::from_secs(15),
        || {
            count(
                &c,
                "SELECT count(*) FROM health_event WHERE kind = 'clock_unsynchronised'",
            ) == 1
        },
    );
    let s = status(&site);
    assert_eq!(s["clock"]["synced"], false, "{s}");
    assert!(s["clock"]["error_bound_ms"].is_null());
    let doc = site.cli(&["doctor"]);
    assert!(
        doc.stdout.contains("box clock NOT synchronised"),
        "{}",
        doc.stdout
    );
    wait_until_within("an unsynchronised segment", Duration::from_secs(15), || {
        count(
            &c,
            "SELECT count(*) FROM segment WHERE time_synced = 0 AND time_error_ns IS NULL",
        ) > 0
    });
    set_clock(&clock, 0, true);
    wait_until_within("clock_synchronised raised", Duration::from_secs(15), || {
        count(
            &c,
            "SELECT count(*) FROM health_event WHERE kind = 'clock_synchronised'",
        ) == 1
    });
    assert_eq!(
        count(&c, "SELECT count(*) FROM clock_step"),
        0,
        "loss and return are no step"
    );
    assert_eq!(status(&site)["clock"]["synced"], true);
    super::recording::stop(&mut d);
}

#[test]
fn a_camera_clock_5_s_off_is_reported_and_raised() {
    let cams = fleet(small(1));
    let proxy = QuirkProxy::start(
        ([127, 0, 0, 1], cams.port()).into(),
        Quirks {
            camera_clock_offset_ns: Some(5 * SEC),
            ..Default::default()
        },
    )
    .unwrap();
    let site = Site::new();
    let clock = site.path("clock.json");
    set_clock(&clock, 0, true);
    site.write_config(&config(
        &site.data_dir().to_string_lossy(),
        &proxy.url("cam1"),
        "",
    ));
    let mut d = start(&site, &clock);
    let c = db(&site);
    wait_until_within("camera_clock_off raised", Duration::from_secs(30), || {
        count(
            &c,
            "SELECT count(*) FROM health_event WHERE kind = 'camera_clock_off' AND camera = 'cam01'",
        ) == 1
    });
    let out = site.cli(&["cameras", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let cam = &v["cameras"][0];
    let off = cam["clock_offset_ms"].as_i64().unwrap();
    assert!((off - 5000).abs() < 1000, "{cam}");
    assert_eq!(cam["clock_off"], true);
    let table = site.cli(&["cameras"]);
    assert!(table.stdout.contains("s!"), "{}", table.stdout);
    // Recorded on box time, not the camera's wrong clock.
    assert_eq!(
        count(&c, "SELECT count(*) FROM segment WHERE time_source = 'ntp'"),
        0
    );
    super::recording::stop(&mut d);
}

#[test]
fn doctor_says_when_the_kernel_clock_is_unsynchronised() {
    let Ok(k) = storeguard_base::clock::kernel_ntp() else {
        return skip("doctor clock", "adjtimex not readable here");
    };
    let site = Site::with_cameras(0);
    let out = site.cli(&["doctor"]);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(" clock "))
        .unwrap_or_else(|| panic!("no clock line:\n{}", out.stdout))
        .to_string();
    if k.synced {
        assert!(line.starts_with("OK"), "{line}");
    } else {
        assert!(
            line.starts_with("WARN")
                && line.contains("NOT synchronised")
                && line.contains("STA_UNSYNC"),
            "{line}"
        );
    }
}
