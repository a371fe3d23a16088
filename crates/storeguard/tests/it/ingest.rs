//! The two ingests (retina, the default, and the gstreamer fallback) against the real
//! fake-camera fleet, and the camera quirks retina is there for, played by
//! `storeguard_fixtures::quirks` in front of fakecam. The recording suite itself runs on
//! retina; some of it runs here again on the fallback.

use super::recording::{Seg, cameras, fleet, segments, small, stop};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use storeguard_base::now_ns;
use storeguard_fixtures::harness::*;
use storeguard_fixtures::quirks::{QuirkProxy, Quirks, RtpInfo};
use storeguard_fixtures::{FakeCamFleet, FleetOptions};

const SEC: i64 = 1_000_000_000;
const FPS: u32 = 15;

/// `(id, url, ingest)` cameras, 4 s segments, 1 s syncs.
fn config(cams: &[(&str, String, &str)]) -> String {
    let mut s = "[site]\nsite_id = \"ingest-test\"\ndevice_id = \"ingest-box\"\n\n[storage]\ndata_dir = \"data\"\nsegment_length = \"4s\"\nsync_interval = \"1s\"\n\n[control]\nsocket = \"control.sock\"\n".to_string();
    for (id, url, ingest) in cams {
        s.push_str(&format!(
            "\n[[cameras]]\nid = \"{id}\"\nurl = \"{url}\"\ningest = \"{ingest}\"\n"
        ));
    }
    s
}

fn camera(v: &Value, id: &str) -> Value {
    v["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no camera {id} in {v}"))
}

fn recording(site: &Site, ids: &[&str]) -> bool {
    let v = cameras(site);
    ids.iter().all(|id| {
        v["cameras"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == *id && c["state"] == "recording")
    })
}

fn start(site: &Site, ids: &[&str]) -> Daemon {
    let d = site.start();
    wait_until_within(
        &format!("{ids:?} recording"),
        Duration::from_secs(60),
        || recording(site, ids),
    );
    d
}

fn db(site: &Site) -> Connection {
    Connection::open_with_flags(
        site.data_dir().join("storeguard.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open the index read-only")
}

fn gap_reasons(c: &Connection, camera: &str) -> Vec<String> {
    let mut st = c
        .prepare("SELECT reason FROM gap WHERE camera = ?1 ORDER BY start_ns")
        .unwrap();
    st.query_map([camera], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// ffprobe decoding every frame: (errors, frames, codec).
fn probe(path: &Path) -> (String, i64, String) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=codec_name,nb_read_frames"])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let s = &v["streams"][0];
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        s["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        s["codec_name"].as_str().unwrap_or("").to_string(),
    )
}

/// Every segment of `id` decodes clean to exactly its indexed frames, in `codec`, and
/// they hold about the wall time from `from` to `to` at the fleet's frame rate.
#[track_caller]
fn check_recorded(site: &Site, id: &str, codec: &str, from: i64, to: i64) -> Vec<Seg> {
    let c = db(site);
    let segs = segments(&c, id);
    assert!(segs.len() >= 2, "{id}: {segs:?}");
    for s in &segs {
        let (errors, frames, got) = probe(&site.data_dir().join(&s.path));
        assert!(errors.is_empty(), "{id} {}: ffprobe: {errors}", s.path);
        assert_eq!(got, codec, "{id} {}", s.path);
        let indexed = if codec == "hevc" { "h265" } else { codec };
        assert_eq!(s.codec, indexed, "{id}: {s:?}");
        assert_eq!(
            frames, s.frames,
            "{id} {}: decoded vs indexed frames",
            s.path
        );
    }
    // UTC from RTCP or arrival: the first segment starts when recording started, give or
    // take the connect, not years off.
    assert!(
        (segs[0].start - from).abs() < 10 * SEC,
        "{id}: first segment at {} for a start at {from}",
        segs[0].start
    );
    assert!(
        (segs.last().unwrap().end - to).abs() < 3 * SEC,
        "{id}: {segs:?} vs {to}"
    );
    segs
}

// ---------------------------------------------------------------------------------------
// Both ingests, H.264 and H.265

#[test]
fn both_ingests_record_h264_and_h265() {
    let f = fleet(FleetOptions {
        h265_cameras: 1,
        ..small(1)
    });
    let site = Site::new();
    let cams = [
        ("h264r", f.url(1), "retina"),
        ("h264g", f.url(1), "gstreamer"),
        ("h265r", f.h265_url(1), "retina"),
        ("h265g", f.h265_url(1), "gstreamer"),
    ];
    site.write_config(&config(&cams));
    let ids = ["h264r", "h264g", "h265r", "h265g"];
    let from = now_ns();
    let mut d = start(&site, &ids);
    std::thread::sleep(Duration::from_secs(10));
    let v = cameras(&site);
    for (id, _, ingest) in &cams {
        let c = camera(&v, id);
        assert_eq!(c["ingest"], *ingest, "{c}");
        assert_eq!(c["state"], "recording", "{c}");
        assert_eq!(c["frames_dropped"], 0, "{c}");
        assert_eq!(
            (c["width"].as_u64(), c["height"].as_u64()),
            (Some(320), Some(180)),
            "{c}"
        );
    }
    let text = site.cli(&["cameras"]);
    text.expect(0);
    assert!(
        text.stdout.contains("INGEST") && text.stdout.contains("gstreamer"),
        "{}",
        text.stdout
    );
    let to = now_ns();
    stop(&mut d);
    for (id, _, _) in &cams {
        let codec = if id.starts_with("h265") {
            "hevc"
        } else {
            "h264"
        };
        check_recorded(&site, id, codec, from, to);
        assert!(gap_reasons(&db(&site), id).is_empty(), "{id}");
    }
}

// ---------------------------------------------------------------------------------------
// The recording suite's outage, kill -9 and bad-camera tests on the fallback

fn on_gstreamer(test: fn()) {
    crate::recording::INGEST.set(Some("gstreamer"));
    test();
}

#[test]
fn fallback_outage_is_one_gap() {
    on_gstreamer(crate::recording::a_camera_outage_is_one_gap_on_that_camera_only);
}

#[test]
fn fallback_kill_9_loses_at_most_a_sync_interval() {
    on_gstreamer(crate::recording::kill_9_mid_segment_loses_at_most_a_sync_interval);
}

#[test]
fn fallback_bad_cameras_report_clear_errors() {
    on_gstreamer(crate::recording::bad_cameras_report_clear_errors_while_good_ones_record);
}

// ---------------------------------------------------------------------------------------
// Quirks

fn proxy(f: &FakeCamFleet, q: Quirks) -> QuirkProxy {
    QuirkProxy::start(([127, 0, 0, 1], f.port()).into(), q).expect("quirk proxy starts")
}

#[test]
fn rtcp_for_an_unknown_ssrc_is_ignored() {
    let f = fleet(small(1));
    let p = proxy(
        &f,
        Quirks {
            unknown_ssrc_rtcp: true,
            ..Default::default()
        },
    );
    let site = Site::new();
    site.write_config(&config(&[("cam1", p.url("cam1"), "retina")]));
    let from = now_ns();
    let mut d = start(&site, &["cam1"]);
    std::thread::sleep(Duration::from_secs(10));
    let c = camera(&cameras(&site), "cam1");
    assert_eq!(c["state"], "recording", "{c}");
    assert_eq!(c["reconnects"], 0, "{c}");
    assert_eq!(c["clock_steps"], 0, "{c}");
    let to = now_ns();
    stop(&mut d);
    let injected = p.stats().injected_rtcp.load(Ordering::Relaxed);
    assert!(injected >= 5, "only {injected} stray sender reports sent");
    check_recorded(&site, "cam1", "h264", from, to);
    assert!(
        !d.log().contains("camera clock disagrees"),
        "a stray SR was taken for the camera's clock\n{}",
        d.log()
    );
}

#[test]
fn rtp_info_rtptime_missing_or_wrong_is_ignored() {
    let f = fleet(small(2));
    let missing = proxy(
        &f,
        Quirks {
            rtp_info: RtpInfo::NoRtptime,
            ..Default::default()
        },
    );
    let wrong = proxy(
        &f,
        Quirks {
            rtp_info: RtpInfo::WrongRtptime,
            ..Default::default()
        },
    );
    let site = Site::new();
    site.write_config(&config(&[
        ("missing", missing.url("cam1"), "retina"),
        ("wrong", wrong.url("cam2"), "retina"),
    ]));
    let from = now_ns();
    let mut d = start(&site, &["missing", "wrong"]);
    std::thread::sleep(Duration::from_secs(10));
    let v = cameras(&site);
    for id in ["missing", "wrong"] {
        let c = camera(&v, id);
        assert_eq!(c["reconnects"], 0, "{c}");
        assert_eq!(c["clock_steps"], 0, "{c}");
    }
    let to = now_ns();
    stop(&mut d);
    for p in [&missing, &wrong] {
        assert!(p.stats().rewritten_rtp_info.load(Ordering::Relaxed) >= 1);
    }
    for id in ["missing", "wrong"] {
        let segs = check_recorded(&site, id, "h264", from, to);
        let frames: i64 = segs.iter().map(|s| s.frames).sum();
        let span = (segs.last().unwrap().end - segs[0].start) as f64 / 1e9;
        assert!(
            (frames as f64 - span * FPS as f64).abs() <= span * FPS as f64 * 0.05 + 2.0,
            "{id}: {frames} frames in {span:.2} s"
        );
    }
}

#[test]
fn a_packet_lost_mid_frame_drops_frames_never_writes_half() {
    let f = fleet(FleetOptions {
        gop: 10,
        ..small(1)
    });
    let p = proxy(
        &f,
        Quirks {
            lose_mid_frame_every: Some(Duration::from_secs(2)),
            ..Default::default()
        },
    );
    let site = Site::new();
    site.write_config(&config(&[("cam1", p.url("cam1"), "retina")]));
    let from = now_ns();
    let mut d = start(&site, &["cam1"]);
    std::thread::sleep(Duration::from_secs(12));
    let c = camera(&cameras(&site), "cam1");
    let to = now_ns();
    stop(&mut d);
    let lost = p.stats().dropped_packets.load(Ordering::Relaxed);
    assert!(lost >= 4, "the proxy dropped only {lost} packets");
    let dropped = c["frames_dropped"].as_u64().unwrap();
    assert!(
        dropped >= lost,
        "{lost} packets lost but {dropped} frames dropped: {c}"
    );
    assert_eq!(
        c["reconnects"], 0,
        "a lost packet is no reason to reconnect: {c}"
    );
    // Every written frame decodes: nothing half, nothing referring to a lost picture.
    check_recorded(&site, "cam1", "h264", from, to);
    println!("{lost} packets lost mid-frame: {dropped} frames dropped");
}

#[test]
fn a_session_limit_is_freed_by_tearing_down_the_stale_session() {
    const LINGER: Duration = Duration::from_secs(40);
    let f = fleet(FleetOptions { gop: 5, ..small(1) });
    let p = proxy(
        &f,
        Quirks {
            session_limit: Some(LINGER),
            ..Default::default()
        },
    );
    let site = Site::new();
    site.write_config(&config(&[("cam1", p.url("cam1"), "retina")]));
    let mut d = start(&site, &["cam1"]);
    std::thread::sleep(Duration::from_secs(3));
    // A network drop: the camera still counts the old session for LINGER.
    let cut = Instant::now();
    p.cut();
    wait_until_within("cam1 seen offline", Duration::from_secs(10), || {
        camera(&cameras(&site), "cam1")["reconnects"].as_u64() >= Some(1)
            || camera(&cameras(&site), "cam1")["state"] != "recording"
    });
    wait_until_within("cam1 recording again", Duration::from_secs(20), || {
        let c = camera(&cameras(&site), "cam1");
        c["state"] == "recording" && c["reconnects"].as_u64() >= Some(1)
    });
    let back = cut.elapsed();
    assert!(
        back < LINGER / 4,
        "took {back:?} to record again: the stale session was not torn down"
    );
    let teardowns = p.stats().teardowns.load(Ordering::Relaxed);
    assert!(teardowns >= 1, "no TEARDOWN reached the camera");
    std::thread::sleep(Duration::from_secs(3));
    stop(&mut d);
    let reasons = gap_reasons(&db(&site), "cam1");
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("closed the connection"), "{reasons:?}");
    println!(
        "session limit: back in {back:?}; {teardowns} TEARDOWN(s), {} SETUP(s) refused",
        p.stats().refused_setups.load(Ordering::Relaxed)
    );
}
