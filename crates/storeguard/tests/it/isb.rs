//! The ISB panic button, end to end: a press injected into the daemon's debounce machine
//! → event + alert committed together → a sealed, signed MP4 clip per mapped camera that
//! plays, brackets its window and verifies offline. Real binary, real fake cameras over
//! RTSP, real files; ffprobe and sha256sum check the output independently.
//!
//! `cargo test --test it`. Benchmarks (figures go to stdout):
//! `cargo test --release --test it -- --ignored --nocapture --test-threads 1 bench_`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use storeguard_base::now_ns;
use storeguard_fixtures::harness::*;
use storeguard_fixtures::{FakeCamFleet, FleetOptions, FleetSource};

pub(crate) const SEC: i64 = 1_000_000_000;
/// Waits that include a clip's post-roll and the cut itself.
pub(crate) const CLIP_WAIT: Duration = Duration::from_secs(60);

fn fleet(opts: FleetOptions) -> FakeCamFleet {
    FakeCamFleet::spawn(&storeguard_fixtures::fixture_bin("fakecam"), &opts)
        .expect("fakecam fleet starts")
}

/// Test-pattern cameras at 15 fps with a keyframe every 15 frames: one GOP is 1 s.
pub(crate) fn pattern_fleet(cameras: u32) -> FakeCamFleet {
    fleet(FleetOptions {
        cameras,
        width: 320,
        height: 180,
        fps: 15,
        gop: 15,
        ..Default::default()
    })
}

/// Cameras showing real footage (people walking, 768×576 at 10 fps), so the bitrate is
/// close to what the encoder is asked for; the test pattern compresses to a fifth.
fn footage_fleet(cameras: u32, gop: u32, kbps: u32) -> FakeCamFleet {
    fleet(FleetOptions {
        cameras,
        fps: 10,
        gop,
        bitrate_kbps: kbps,
        source: FleetSource::File(storeguard_fixtures::media::vtest()),
        cache_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("fakecam-cache")),
        ..Default::default()
    })
}

/// A config with cameras `cam1..N` at `urls`, `storage` lines added to `[storage]`, and
/// the given `[[buttons]]` tables.
pub(crate) fn isb_config(urls: &[String], storage: &str, buttons: &str) -> String {
    let mut s = format!(
        "[site]\nsite_id = \"isb-store\"\ndevice_id = \"isb-box\"\n\n\
         [storage]\ndata_dir = \"data\"\n{storage}\n\n[control]\nsocket = \"control.sock\"\n"
    );
    for (i, url) in urls.iter().enumerate() {
        s.push_str(&format!(
            "\n[[cameras]]\nid = \"cam{n}\"\nname = \"Camera {n}\"\nurl = \"{url}\"\n",
            n = i + 1
        ));
    }
    s.push_str(buttons);
    s
}

pub(crate) fn button(name: &str, wiring: &str, cameras: &[&str], extra: &str) -> String {
    let cams: Vec<String> = cameras.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "\n[[buttons]]\nname = \"{name}\"\nchip = \"sim\"\nline = 0\nwiring = \"{wiring}\"\n\
         cameras = [{}]\n{extra}\n",
        cams.join(", ")
    )
}

pub(crate) fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn parse_ns(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .timestamp_nanos_opt()
        .unwrap()
}

/// `button press NAME --test --hold-ms N`, which must be accepted.
#[track_caller]
pub(crate) fn press(site: &Site, name: &str, hold_ms: u64) {
    site.cli(&[
        "button",
        "press",
        name,
        "--test",
        "--hold-ms",
        &hold_ms.to_string(),
    ])
    .expect(0);
}

/// Replays raw edges (`<offset> on|off` lines) into a button's debounce machine.
#[track_caller]
fn inject_edges(site: &Site, name: &str, script: &str) {
    let client = storeguard::control::client::Client::new(&site.socket());
    let path = format!("/v1/buttons/{name}/edges");
    let v = client
        .call("POST", &path, Some(&json!({ "script": script })))
        .unwrap_or_else(|e| panic!("POST {path}: {e:#}"));
    assert_eq!(v["test"], json!(true), "{v}");
}

#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) uid: String,
    pub(crate) kind: String,
    pub(crate) source: String,
    pub(crate) at_ns: i64,
    pub(crate) test: bool,
}

pub(crate) fn events(db: &Connection) -> Vec<Event> {
    let mut st = db
        .prepare("SELECT uid, kind, source, at_ns, test FROM event ORDER BY id")
        .unwrap();
    st.query_map([], |r| {
        Ok(Event {
            uid: r.get(0)?,
            kind: r.get(1)?,
            source: r.get(2)?,
            at_ns: r.get(3)?,
            test: r.get(4)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

pub(crate) fn count_events(db: &Connection, source: &str, kind: &str) -> usize {
    events(db)
        .iter()
        .filter(|e| e.source == source && e.kind == kind)
        .count()
}

/// (class, topic, payload) of every message still in the outbox (nothing drains it here).
fn outbox(db: &Connection) -> Vec<(i64, String, Value)> {
    let mut st = db
        .prepare("SELECT class, topic, payload FROM outbox ORDER BY id")
        .unwrap();
    st.query_map([], |r| {
        let p: Vec<u8> = r.get(2)?;
        Ok((r.get(0)?, r.get(1)?, serde_json::from_slice(&p).unwrap()))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// The alert (class 0) for an event, checked against the event row.
#[track_caller]
fn alert_for(db: &Connection, ev: &Event) -> Value {
    let alerts: Vec<Value> = outbox(db)
        .into_iter()
        .filter(|(class, topic, p)| *class == 0 && topic == "alert" && p["event_id"] == ev.uid)
        .map(|(_, _, p)| p)
        .collect();
    assert_eq!(alerts.len(), 1, "one alert for {}: {alerts:?}", ev.uid);
    let a = alerts.into_iter().next().unwrap();
    assert_eq!(a["kind"], json!(ev.kind), "{a}");
    assert_eq!(a["button"], json!(ev.source), "{a}");
    assert_eq!(a["test"], json!(ev.test), "{a}");
    assert_eq!(a["site_id"], "isb-store");
    assert_eq!(a["device_id"], "isb-box");
    // `at` is the event time to the millisecond.
    assert_eq!(parse_ns(&a["at"]), ev.at_ns / 1_000_000 * 1_000_000, "{a}");
    a
}

#[derive(Debug, Clone)]
pub(crate) struct Clip {
    pub(crate) uid: String,
    pub(crate) camera: String,
    pub(crate) from_ns: i64,
    pub(crate) to_ns: i64,
    pub(crate) state: String,
    pub(crate) path: Option<String>,
    pub(crate) sha256: Option<String>,
    pub(crate) lock_id: Option<i64>,
    pub(crate) error: Option<String>,
    pub(crate) sealed_ns: Option<i64>,
}

pub(crate) fn clips_of(db: &Connection, event_uid: &str) -> Vec<Clip> {
    let mut st = db
        .prepare(
            "SELECT c.uid, c.camera, c.from_ns, c.to_ns, c.state, c.path, c.sha256, c.lock_id, c.error, c.sealed_ns
             FROM clip c JOIN event e ON c.event = e.id WHERE e.uid = ?1 ORDER BY c.id",
        )
        .unwrap();
    st.query_map([event_uid], |r| {
        Ok(Clip {
            uid: r.get(0)?,
            camera: r.get(1)?,
            from_ns: r.get(2)?,
            to_ns: r.get(3)?,
            state: r.get(4)?,
            path: r.get(5)?,
            sha256: r.get(6)?,
            lock_id: r.get(7)?,
            error: r.get(8)?,
            sealed_ns: r.get(9)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Waits until every clip of the event is sealed (fails at once if one failed).
#[track_caller]
pub(crate) fn wait_sealed(
    db: &Connection,
    event_uid: &str,
    n: usize,
    limit: Duration,
) -> Vec<Clip> {
    let mut clips = Vec::new();
    wait_until_within(&format!("{n} sealed clips for {event_uid}"), limit, || {
        clips = clips_of(db, event_uid);
        if let Some(f) = clips.iter().find(|c| c.state == "failed") {
            panic!("clip {} failed: {:?}", f.uid, f.error);
        }
        clips.len() == n && clips.iter().all(|c| c.state == "sealed")
    });
    clips
}

/// Waits until `camera` has footage from at least `span` ago in the index; on timeout,
/// shows what the daemon says about its cameras.
#[track_caller]
pub(crate) fn wait_recorded(site: &Site, db: &Connection, camera: &str, span: Duration) {
    let limit = Duration::from_secs(40);
    let end = Instant::now() + limit;
    loop {
        let r: Option<(i64, i64)> = db
            .query_row(
                "SELECT min(start_ns), max(end_ns) FROM segment WHERE camera = ?1",
                [camera],
                |r| Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?)),
            )
            .unwrap();
        if r.is_some_and(|(start, end)| end - start >= span.as_nanos() as i64) {
            return;
        }
        if Instant::now() >= end {
            let cams = site.cli(&["cameras", "--json"]);
            panic!(
                "{camera} did not record {span:?} within {limit:?} (index: {r:?})\n{}",
                cams.all()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn the_event(db: &Connection, source: &str, kind: &str) -> Event {
    let mut evs: Vec<Event> = events(db)
        .into_iter()
        .filter(|e| e.source == source && e.kind == kind)
        .collect();
    assert_eq!(evs.len(), 1, "one {kind} event from {source}: {evs:?}");
    evs.remove(0)
}

#[track_caller]
pub(crate) fn wait_event(db: &Connection, source: &str, kind: &str) -> Event {
    wait_until(&format!("a {kind} event from {source}"), || {
        count_events(db, source, kind) > 0
    });
    the_event(db, source, kind)
}

pub(crate) fn manifest_of(clip: &Path) -> Value {
    let text = std::fs::read_to_string(storeguard::evidence::sidecar_path(clip)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Checks that a sealed clip plays, is faststart H.264, matches its hash everywhere, has
/// a manifest for its clip row, and verifies. Returns (manifest, probe).
#[track_caller]
fn check_sealed(site: &Site, clip: &Clip) -> (PathBuf, Value, Probe) {
    let path = site
        .data_dir()
        .join(clip.path.as_deref().expect("sealed clip has a path"));
    let m = manifest_of(&path);
    eprintln!("{}: {m}", path.display());
    let p = ffprobe_clean(&path);
    assert_eq!(p.codec, "h264", "{p:?}");
    assert_eq!(
        (p.width, p.height),
        (m["width"].as_u64().unwrap(), m["height"].as_u64().unwrap())
    );
    assert!(p.frames > 0 && p.frames as usize == p.pts.len(), "{p:?}");
    let boxes = top_level_boxes(&path);
    let moov = boxes.iter().position(|b| b == "moov");
    let mdat = boxes.iter().position(|b| b == "mdat");
    assert!(
        moov.is_some() && mdat.is_some() && moov < mdat,
        "moov before mdat: {boxes:?}"
    );
    let sum = sha256sum(&path);
    assert_eq!(m["file"]["sha256"], json!(sum));
    assert_eq!(clip.sha256.as_deref(), Some(sum.as_str()));
    assert_eq!(
        m["file"]["size"],
        json!(std::fs::metadata(&path).unwrap().len())
    );
    assert_eq!(m["camera"]["id"], json!(clip.camera));
    assert_eq!(m["codec"], "h264");
    assert_eq!(
        parse_ns(&m["requested"]["from"]),
        clip.from_ns / 1_000_000 * 1_000_000
    );
    assert_eq!(
        parse_ns(&m["requested"]["to"]),
        clip.to_ns / 1_000_000 * 1_000_000
    );
    // The footage is free to age out again once the clip holds it.
    assert_eq!(clip.lock_id, None);
    // Every hole longer than the recorder's gap threshold (2 s) is stated in the manifest.
    let gaps: Vec<(f64, f64)> = m["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                parse_ns(&g["from"]) as f64 / 1e9,
                parse_ns(&g["to"]) as f64 / 1e9,
            )
        })
        .collect();
    let t0 = parse_ns(&m["actual"]["first_frame"]) as f64 / 1e9 - p.pts[0];
    let longest = p.pts.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    eprintln!("{} frames, longest step {longest:.3} s", p.frames);
    for w in p.pts.windows(2) {
        let (a, b) = (t0 + w[0], t0 + w[1]);
        assert!(
            b - a <= 2.1 || gaps.iter().any(|&(f, t)| f < b && t > a),
            "{:.3} s without frames at {a:.3} is not in the manifest's gaps: {m}",
            b - a
        );
    }
    site.cli(&["evidence", "verify", path.to_str().unwrap()])
        .expect(0);
    (path, m, p)
}

/// The clip starts at the keyframe at or before the window and ends just before the
/// first keyframe after it: within one GOP (plus a frame of rounding) on both sides.
#[track_caller]
fn assert_brackets(m: &Value, gop_ns: i64, frame_ns: i64) {
    let from = parse_ns(&m["requested"]["from"]);
    let to = parse_ns(&m["requested"]["to"]);
    let first = parse_ns(&m["actual"]["first_frame"]);
    let last = parse_ns(&m["actual"]["last_frame"]);
    let tol = frame_ns + 2_000_000;
    assert!(
        first <= from,
        "first frame {first} after window start {from}: {m}"
    );
    assert!(
        from - first <= gop_ns + tol,
        "first frame more than a GOP early: {m}"
    );
    assert!(
        last >= to - tol,
        "last frame {last} before window end {to} - 1 frame: {m}"
    );
    assert!(
        last - to <= gop_ns + tol,
        "last frame more than a GOP late: {m}"
    );
}

// ---------------------------------------------------------------------------------------

/// Debounce through the daemon: contact bounce and overlapping test presses make one
/// press; holds beyond `stuck_after` make one fault; normally-closed buttons work.
#[test]
fn bounce_burst_hold_and_nc_wiring_through_the_daemon() {
    let site = Site::new();
    // Nothing listens on port 9: the camera stays offline; only events matter here.
    let buttons = [
        button(
            "till",
            "normally-open",
            &["cam1"],
            "debounce = \"50ms\"\nstuck_after = \"1s\"\npost_roll = \"0s\"\npre_roll = \"0s\"",
        ),
        button(
            "bar",
            "normally-open",
            &["cam1"],
            "debounce = \"30ms\"\npost_roll = \"0s\"\npre_roll = \"0s\"",
        ),
        button(
            "door",
            "normally-closed",
            &["cam1"],
            "debounce = \"30ms\"\nstuck_after = \"1s\"\npost_roll = \"0s\"\npre_roll = \"0s\"",
        ),
    ]
    .concat();
    site.write_config(&isb_config(
        &["rtsp://127.0.0.1:9/none".into()],
        "budget = \"1GiB\"",
        &buttons,
    ));
    let _d = site.start();
    let db = site.db();

    // 1. A bouncy press and release: every level change inside 50 ms of the last.
    let script = "0ms on\n2ms off\n5ms on\n7ms off\n9ms on\n12ms off\n15ms on\n\
                  400ms off\n403ms on\n405ms off\n409ms on\n412ms off\n";
    let injected = Instant::now();
    inject_edges(&site, "till", script);
    let bounced = wait_event(&db, "till", "isb_press");
    assert!(bounced.test, "{bounced:?}");
    // Settled: the script's last edge plus the debounce period has passed, released again.
    wait_until("till released", || {
        injected.elapsed() > Duration::from_millis(412 + 50 + 300)
            && site.status()["buttons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["name"] == "till" && b["state"] == "idle")
    });
    assert_eq!(
        count_events(&db, "till", "isb_press"),
        1,
        "{:?}",
        events(&db)
    );
    let a = alert_for(&db, &bounced);
    assert_eq!(a["test"], json!(true));
    assert_eq!(a["cameras"], json!(["cam1"]));

    // 2. Five `button press` calls at once (overlapping 2 s holds): one press.
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..5 {
            s.spawn(|| press(&site, "bar", 2000));
        }
    });
    let spread = started.elapsed();
    let bar = wait_event(&db, "bar", "isb_press");
    assert!(bar.test);
    alert_for(&db, &bar);

    // 3. Held past stuck_after: the press raises its alarm, then one stuck fault.
    press(&site, "till", 1500);
    // 4. Normally-closed: a press opens the loop; held open (a cut wire) is a wiring fault.
    press(&site, "door", 200);
    let door = wait_event(&db, "door", "isb_press");
    assert!(door.test);
    alert_for(&db, &door);
    wait_until("door released", || {
        site.status()["buttons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "door" && b["state"] == "idle")
    });
    press(&site, "door", 1500);

    // The clears come rearm_after (2 s) after the release: the end of both sequences.
    wait_until("stuck_cleared on till", || {
        count_events(&db, "till", "stuck_cleared") == 1
    });
    wait_until("wiring_restored on door", || {
        count_events(&db, "door", "wiring_restored") == 1
    });
    assert_eq!(
        count_events(&db, "till", "isb_press"),
        2,
        "{:?}",
        events(&db)
    );
    let stuck = the_event(&db, "till", "stuck_fault");
    assert!(stuck.test, "a fault from a test hold is a test: {stuck:?}");
    alert_for(&db, &stuck);
    assert_eq!(
        count_events(&db, "door", "isb_press"),
        2,
        "{:?}",
        events(&db)
    );
    let cut = the_event(&db, "door", "wiring_fault");
    assert!(cut.test, "{cut:?}");
    alert_for(&db, &cut);
    // Clears are recorded but raise no alert.
    let cleared = the_event(&db, "till", "stuck_cleared");
    assert!(
        !outbox(&db)
            .iter()
            .any(|(_, _, p)| p["event_id"] == cleared.uid)
    );
    // The burst of CLI presses must have overlapped for "one press" to be the right answer.
    assert!(spread < Duration::from_secs(2), "5 presses took {spread:?}");
    assert_eq!(
        count_events(&db, "bar", "isb_press"),
        1,
        "{:?}",
        events(&db)
    );

    // A press creates its clip jobs in the same transaction as the event.
    assert_eq!(clips_of(&db, &bounced.uid).len(), 1);
    assert!(clips_of(&db, &stuck.uid).is_empty());

    // `events --json` shows the same.
    let out = site.cli(&["events", "--json"]);
    out.expect(0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let listed = v["events"].as_array().unwrap();
    assert_eq!(listed.len(), events(&db).len(), "{v}");
    assert!(
        listed
            .iter()
            .any(|e| e["id"] == json!(bounced.uid) && e["test"] == json!(true))
    );

    // Script mistakes are refused with the line at fault; unknown buttons name the known.
    let client = storeguard::control::client::Client::new(&site.socket());
    let e = client
        .call(
            "POST",
            "/v1/buttons/till/edges",
            Some(&json!({ "script": "0ms on\nsoon off\n" })),
        )
        .unwrap_err();
    assert!(format!("{e:#}").contains("line 2"), "{e:#}");
    let e = site.cli(&["button", "press", "nope", "--test"]);
    e.expect(65);
    assert!(e.all().contains("bar, door, till"), "{}", e.all());
}

/// A press on a recording camera: alert in the outbox at once, then a sealed clip that
/// crosses a segment boundary, brackets its window, plays, and verifies — and fails to
/// verify after any one-byte change or under the wrong key. Manual export on the same
/// daemon: outside the ring a clear error, inside it a verified copy and an audit row.
#[test]
fn press_seals_a_verifiable_clip_and_export_is_audited() {
    let cams = pattern_fleet(1);
    let site = Site::new();
    site.write_config(&isb_config(
        &[cams.url(1)],
        "budget = \"1GiB\"\nsegment_length = \"4s\"",
        &button(
            "till",
            "normally-open",
            &["cam1"],
            "pre_roll = \"3s\"\npost_roll = \"3s\"",
        ),
    ));
    let _d = site.start();
    let db = site.db();
    wait_recorded(&site, &db, "cam1", Duration::from_secs(5));

    let before = now_ns();
    press(&site, "till", 200);
    let ev = wait_event(&db, "till", "isb_press");
    assert!(ev.test);
    // The event time is the edge's, mapped to UTC: between the CLI call and now.
    assert!(ev.at_ns >= before - SEC && ev.at_ns <= now_ns(), "{ev:?}");
    let alert = alert_for(&db, &ev);
    let clips = clips_of(&db, &ev.uid);
    assert_eq!(clips.len(), 1);
    assert_eq!(alert["clips"], json!([clips[0].uid]));
    // Before the clip is sealed its window is locked against eviction.
    let lock: Option<(i64, i64)> = db
        .query_row(
            "SELECT from_ns, to_ns FROM retention_lock WHERE id = ?1",
            [clips[0].lock_id.expect("pending clip holds a lock")],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .unwrap();
    assert_eq!(lock, Some((ev.at_ns - 3 * SEC, ev.at_ns + 3 * SEC)));

    let clip = wait_sealed(&db, &ev.uid, 1, CLIP_WAIT).remove(0);
    let (path, m, probe) = check_sealed(&site, &clip);
    assert_brackets(&m, SEC, SEC / 15);
    assert_eq!(
        m["event"],
        json!({ "id": ev.uid, "kind": "isb_press", "test": true })
    );
    assert_eq!(m["gaps"], json!([]));
    assert_eq!(m["site_id"], "isb-store");
    // Every frame between the first and the last, at 15 fps.
    let span =
        (parse_ns(&m["actual"]["last_frame"]) - parse_ns(&m["actual"]["first_frame"])) as f64 / 1e9;
    let expected = (span * 15.0).round() as u64 + 1;
    assert!(
        probe.frames.abs_diff(expected) <= 1,
        "{} frames, expected {expected}",
        probe.frames
    );
    assert!(
        (probe.pts.last().unwrap() - probe.pts[0] - span).abs() < 0.01,
        "{probe:?}"
    );
    // A 6 s window with 4 s segments always spans a segment boundary.
    let segs: i64 = db
        .query_row(
            "SELECT count(*) FROM segment WHERE camera = 'cam1' AND end_ns > ?1 AND start_ns < ?2",
            params![clip.from_ns, clip.to_ns],
            |r| r.get(0),
        )
        .unwrap();
    assert!(segs >= 2, "window covers {segs} segment(s)");

    // The manifest went upstream as evidence (class 1) in the sealing transaction.
    let announced: Vec<Value> = outbox(&db)
        .into_iter()
        .filter(|(c, t, _)| *c == 1 && *t == format!("evidence/{}/manifest", clip.uid))
        .map(|(_, _, p)| p)
        .collect();
    assert_eq!(announced.len(), 1);
    assert_eq!(announced[0]["manifest"], m);

    // Verification: the key the daemon reports; a tampered clip or manifest; a wrong key.
    let status = site.status();
    let pubkey = status["public_key"].as_str().unwrap().to_string();
    assert_eq!(m["signature"]["public_key"], json!(pubkey));
    let ok = site.cli(&[
        "evidence",
        "verify",
        path.to_str().unwrap(),
        "--pubkey",
        &pubkey,
    ]);
    ok.expect(0);
    assert!(
        ok.stdout.contains("matches the expected public key"),
        "{}",
        ok.stdout
    );

    let work = tempfile::tempdir().unwrap();
    let name = path.file_name().unwrap();
    let copy = work.path().join(name);
    let copy_manifest = storeguard::evidence::sidecar_path(&copy);
    let reset = || {
        std::fs::copy(&path, &copy).unwrap();
        std::fs::copy(storeguard::evidence::sidecar_path(&path), &copy_manifest).unwrap();
    };
    let verify = |extra: &[&str]| {
        let mut args = vec!["evidence", "verify", copy.to_str().unwrap()];
        args.extend_from_slice(extra);
        site.cli(&args)
    };
    reset();
    verify(&[]).expect(0);

    let mut bytes = std::fs::read(&copy).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&copy, &bytes).unwrap();
    let bad = verify(&[]);
    bad.expect(65);
    assert!(bad.all().contains("hash mismatch"), "{}", bad.all());
    assert!(
        bad.all().contains(&sha256sum(&copy)),
        "names the hash found: {}",
        bad.all()
    );

    reset();
    let text = std::fs::read_to_string(&copy_manifest).unwrap();
    let at = text.find("\"name\":\"Camera 1\"").unwrap() + "\"name\":\"Camera ".len();
    let mut bytes = text.into_bytes();
    bytes[at] = b'7';
    std::fs::write(&copy_manifest, &bytes).unwrap();
    let bad = verify(&[]);
    bad.expect(65);
    assert!(bad.all().contains("altered after signing"), "{}", bad.all());

    reset();
    let other = tempfile::tempdir().unwrap();
    let other_key = storeguard::evidence::DeviceKey::load_or_create(other.path()).unwrap();
    let bad = verify(&["--pubkey", &other_key.public_key_b64()]);
    bad.expect(65);
    assert!(bad.all().contains("not the expected key"), "{}", bad.all());

    // Any Ed25519 tool can check it: the signed bytes are the sidecar without its
    // trailing newline and with the final `,"signature":{...}` removed.
    reset();
    let text = std::fs::read_to_string(&copy_manifest).unwrap();
    let body = text.strip_suffix('\n').expect("sidecar ends in a newline");
    let cut = body.rfind(",\"signature\":").unwrap();
    let signed = format!("{}}}", &body[..cut]);
    let sig = B64
        .decode(m["signature"]["value"].as_str().unwrap())
        .unwrap();
    let key: [u8; 32] = B64.decode(&pubkey).unwrap().try_into().unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify_strict(
            signed.as_bytes(),
            &ed25519_dalek::Signature::from_slice(&sig).unwrap(),
        )
        .expect("signature over the documented bytes");
    let recipe = tempfile::tempdir().unwrap();
    if doc_recipe_accepts(recipe.path(), &copy, &pubkey).is_some() {
        assert_eq!(
            doc_recipe_accepts(recipe.path(), &copy, &other_key.public_key_b64()),
            Some(false)
        );
        let mut bytes = std::fs::read(&copy).unwrap();
        bytes[100] ^= 0x80;
        std::fs::write(&copy, &bytes).unwrap();
        assert_eq!(
            doc_recipe_accepts(recipe.path(), &copy, &pubkey),
            Some(false)
        );
    }

    // Manual export: a range the ring never held is refused, saying what it does hold.
    let out_dir = work.path().join("export");
    let old_from = rfc3339(now_ns() - 3600 * SEC);
    let old_to = rfc3339(now_ns() - 3590 * SEC);
    let bad = site.cli(&[
        "clip",
        "--camera",
        "cam1",
        "--from",
        &old_from,
        "--to",
        &old_to,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    bad.expect(65);
    let msg = bad.all();
    assert!(msg.contains("no footage for camera cam1"), "{msg}");
    assert!(msg.contains("the ring holds cam1 from 20"), "{msg}");

    let future = rfc3339(now_ns() + 60 * SEC);
    let bad = site.cli(&[
        "clip",
        "--camera",
        "cam1",
        "--from",
        &rfc3339(ev.at_ns),
        "--to",
        &future,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    bad.expect(65);
    assert!(bad.all().contains("in the future"), "{}", bad.all());
    let bad = site.cli(&[
        "clip",
        "--camera",
        "cam9",
        "--from",
        &old_from,
        "--to",
        &old_to,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    bad.expect(65);
    assert!(bad.all().contains("configured: cam1"), "{}", bad.all());

    // Inside the ring: a verified copy in the directory and an audit row with our uid.
    let from = rfc3339(ev.at_ns - 2 * SEC);
    let to = rfc3339(ev.at_ns);
    let out = site.cli(&[
        "clip",
        "--camera",
        "cam1",
        "--from",
        &from,
        "--to",
        &to,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    out.expect(0);
    let exported = PathBuf::from(out.stdout.lines().next().unwrap());
    assert!(exported.starts_with(&out_dir), "{}", out.stdout);
    ffprobe_clean(&exported);
    site.cli(&[
        "evidence",
        "verify",
        exported.to_str().unwrap(),
        "--pubkey",
        &pubkey,
    ])
    .expect(0);
    let em = manifest_of(&exported);
    assert_eq!(em["event"]["kind"], "manual_export");
    assert_brackets(&em, SEC, SEC / 15);
    let audit: Vec<(i64, String, String, String)> = db
        .prepare("SELECT uid, action, target, detail FROM audit")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    let (uid, action, target, detail) = &audit[0];
    assert_eq!(*uid, unsafe { libc::getuid() } as i64);
    assert_eq!((action.as_str(), target.as_str()), ("clip_export", "cam1"));
    let detail: Value = serde_json::from_str(detail).unwrap();
    assert_eq!(detail["sha256"], em["file"]["sha256"]);
    assert_eq!(
        detail["destination"],
        json!(std::fs::canonicalize(&out_dir).unwrap())
    );
}

/// Runs the shell recipe from docs/evidence.md (coreutils + OpenSSL, no storeguard) on a
/// clip in `dir`; returns whether it accepted it. `None` without openssl.
fn doc_recipe_accepts(dir: &Path, clip: &Path, pubkey: &str) -> Option<bool> {
    let m = storeguard::evidence::sidecar_path(clip);
    let (ok, text) = storeguard_fixtures::harness::run_doc_recipe(
        "evidence.md",
        "verify-recipe",
        dir,
        &[
            ("CLIP", clip.as_os_str()),
            ("M", m.as_os_str()),
            ("PUBKEY", std::ffi::OsStr::new(pubkey)),
        ],
    )?;
    if ok {
        assert!(text.contains("Signature Verified Successfully"), "{text}");
    }
    Some(ok)
}

/// The camera drops out for ~3 s inside the window: the clip still plays across the
/// hole, keeps wall-clock time, and the manifest states the gap and why.
#[test]
fn clip_across_a_camera_gap_states_the_gap() {
    let cams = pattern_fleet(1);
    let site = Site::new();
    site.write_config(&isb_config(
        &[cams.url(1)],
        "budget = \"1GiB\"\nsegment_length = \"4s\"",
        &button(
            "till",
            "normally-open",
            &["cam1"],
            "pre_roll = \"2s\"\npost_roll = \"9s\"",
        ),
    ));
    let _d = site.start();
    let db = site.db();
    wait_recorded(&site, &db, "cam1", Duration::from_secs(3));

    press(&site, "till", 200);
    let ev = wait_event(&db, "till", "isb_press");
    std::thread::sleep(Duration::from_millis(500));
    cams.stop(1).unwrap();
    let stopped = now_ns();
    std::thread::sleep(Duration::from_secs(3));
    cams.start(1).unwrap();
    let restarted = now_ns();

    let clip = wait_sealed(&db, &ev.uid, 1, CLIP_WAIT).remove(0);
    let (_, m, probe) = check_sealed(&site, &clip);
    assert_brackets(&m, SEC, SEC / 15);
    let gaps = m["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{m}");
    let (g_from, g_to) = (parse_ns(&gaps[0]["from"]), parse_ns(&gaps[0]["to"]));
    let reason = gaps[0]["reason"].as_str().unwrap();
    assert!(!reason.is_empty(), "{m}");
    // The hole covers the time the camera was stopped, and lies inside the window.
    assert!(
        g_from <= stopped + SEC / 2 && g_to >= restarted - SEC / 2,
        "{m}"
    );
    assert!(
        g_from >= clip.from_ns / 1_000_000 * 1_000_000 && g_to <= clip.to_ns,
        "{m}"
    );
    // The MP4 keeps the hole in its timeline rather than closing it up.
    let hole = probe
        .pts
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max);
    let stated = (g_to - g_from) as f64 / 1e9;
    assert!(
        hole >= stated - 0.2,
        "largest frame step {hole} s, gap {stated} s"
    );
    let span =
        (parse_ns(&m["actual"]["last_frame"]) - parse_ns(&m["actual"]["first_frame"])) as f64 / 1e9;
    assert!(
        (probe.pts.last().unwrap() - probe.pts[0] - span).abs() < 0.01,
        "{probe:?}"
    );
}

/// The daemon dies (SIGKILL) while a clip is pending, and an earlier attempt left an
/// unsealed MP4 at the clip's path (a crash between the remux's rename and the sealing
/// commit). After a restart the job is picked up again and sealed from the locked footage.
#[test]
fn pending_clip_survives_a_crash_and_a_leftover_file() {
    let cams = pattern_fleet(1);
    let site = Site::new();
    site.write_config(&isb_config(
        &[cams.url(1)],
        "budget = \"1GiB\"\nsegment_length = \"4s\"",
        &button(
            "till",
            "normally-open",
            &["cam1"],
            "pre_roll = \"3s\"\npost_roll = \"5s\"",
        ),
    ));
    let mut d = site.start();
    let db = site.db();
    wait_recorded(&site, &db, "cam1", Duration::from_secs(4));
    press(&site, "till", 200);
    let ev = wait_event(&db, "till", "isb_press");
    let pending = clips_of(&db, &ev.uid).remove(0);
    assert_eq!(pending.state, "pending");
    d.signal(libc::SIGKILL);
    d.wait_exit(DEADLINE).expect("killed daemon exits");

    let day = chrono::DateTime::from_timestamp_nanos(pending.from_ns).format("%Y%m%d");
    let leftover = site
        .data_dir()
        .join(format!("evidence/{day}/{}.mp4", pending.uid));
    std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    std::fs::write(&leftover, b"half a remux from before the crash").unwrap();

    let _d = site.start();
    let clip = wait_sealed(&db, &ev.uid, 1, CLIP_WAIT).remove(0);
    let (path, m, _) = check_sealed(&site, &clip);
    assert_eq!(path, leftover);
    assert_brackets(&m, SEC, SEC / 15);
}

/// With the ring squeezed into 1 MiB (about 8 s of this footage), a 16 s window is
/// bigger than the whole budget: eviction must skip the locked window until the clip is
/// sealed, and the clip is complete.
#[test]
fn press_under_retention_pressure_keeps_its_window() {
    let cams = footage_fleet(1, 10, 1000);
    let site = Site::new();
    site.write_config(&isb_config(
        &[cams.url(1)],
        "budget = \"1MiB\"\nsegment_length = \"2s\"",
        &button(
            "till",
            "normally-open",
            &["cam1"],
            "pre_roll = \"4s\"\npost_roll = \"12s\"",
        ),
    ));
    let _d = site.start();
    let db = site.db();
    // Wait until the ring is full and has evicted its first segment.
    let first: String = {
        let mut p = None;
        wait_until("a first segment", || {
            p = db
                .query_row(
                    "SELECT path FROM segment ORDER BY start_ns LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .unwrap();
            p.is_some()
        });
        p.unwrap()
    };
    wait_until_within(
        "the ring to evict its first segment",
        Duration::from_secs(40),
        || {
            let n: i64 = db
                .query_row(
                    "SELECT count(*) FROM segment WHERE path = ?1",
                    [&first],
                    |r| r.get(0),
                )
                .unwrap();
            n == 0
        },
    );
    assert!(!site.data_dir().join(&first).exists());

    press(&site, "till", 200);
    let ev = wait_event(&db, "till", "isb_press");
    let clip = wait_sealed(&db, &ev.uid, 1, CLIP_WAIT).remove(0);
    let (_, m, probe) = check_sealed(&site, &clip);
    assert_brackets(&m, SEC, SEC / 10);
    assert_eq!(m["gaps"], json!([]));
    let span =
        (parse_ns(&m["actual"]["last_frame"]) - parse_ns(&m["actual"]["first_frame"])) as f64 / 1e9;
    assert!(span >= 16.0 - 0.1, "clip spans {span} s of a 16 s window");
    let expected = (span * 10.0).round() as u64 + 1;
    assert!(
        probe.frames.abs_diff(expected) <= 1,
        "{} frames, expected {expected}",
        probe.frames
    );
    // The pressure was real: with only the locked window left, the ring had to run
    // over budget rather than touch it.
    let over: i64 = db
        .query_row(
            "SELECT count(*) FROM health_event WHERE kind = 'ring_locked_over_budget'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(over > 0, "the window never exceeded the budget");
    // Sealed: the lock is gone and the window's segments may age out again.
    let locks: i64 = db
        .query_row("SELECT count(*) FROM retention_lock", [], |r| r.get(0))
        .unwrap();
    assert_eq!(locks, 0);
}

// --- benchmarks ------------------------------------------------------------------------

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().unwrap()
    );
}

/// Simulated edge → alert committed in the outbox, in process: the daemon's own button
/// thread (`Buttons`, sim source, software debounce 1 ms) feeds `Incidents::on_signal`,
/// which commits event + alert + 4 clip jobs with locks in one fsynced transaction. Run
/// with an empty outbox, and with the outbox full of telemetry (uplink down for a while:
/// 100 000 messages of 1 KB, the default message limit).
#[test]
#[ignore = "benchmark"]
fn bench_alert_latency() {
    for backlog in [0, 100_000] {
        alert_latency(200, backlog);
    }
}

fn alert_latency(n: usize, backlog: usize) {
    use storeguard::button::ButtonEvent;
    use storeguard::button::monotonic_now_ns;
    use storeguard::button::service::Buttons;
    use storeguard::evidence::incident::Incidents;

    let site = Site::new();
    let urls: Vec<String> = (1..=4)
        .map(|i| format!("rtsp://127.0.0.1:9/cam{i}"))
        .collect();
    site.write_config(&isb_config(
        &urls,
        "",
        &button(
            "till",
            "normally-open",
            &["cam1", "cam2", "cam3", "cam4"],
            "debounce = \"1ms\"",
        ),
    ));
    let cfg = storeguard::config::Config::load(&site.config_path())
        .unwrap()
        .config;
    let store = storeguard::store::Store::open(&cfg.storage.data_dir).unwrap();
    if backlog > 0 {
        let mut db = site.db();
        let tx = db.transaction().unwrap();
        let payload = vec![b'x'; 1000];
        for i in 0..backlog {
            tx.execute(
                "INSERT INTO outbox(class, topic, payload, retain, created_ns) VALUES (3, 'health', ?1, 0, ?2)",
                params![payload, i as i64],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let recorder =
        std::sync::Arc::new(storeguard::recording::Recorder::start(store.clone(), &cfg).unwrap());
    let key = storeguard::evidence::DeviceKey::load_or_create(&cfg.storage.data_dir.join("keys"))
        .unwrap();
    let incidents = std::sync::Arc::new(Incidents {
        store: store.clone(),
        recorder,
        key: std::sync::Arc::new(key),
        watch: tokio::sync::broadcast::channel(256).0,
        clips_changed: tokio::sync::Notify::new(),
        outbox_changed: tokio::sync::Notify::new(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut buttons = Buttons::start(&cfg.buttons, tx);
    let (mut edge_to_commit, mut signal_to_commit, mut edge_to_signal) =
        (Vec::new(), Vec::new(), Vec::new());
    const WARMUP: usize = 5;
    rt.block_on(async {
        for _ in 0..n + WARMUP {
            buttons
                .press("till", Duration::from_millis(5), true)
                .unwrap();
            loop {
                let sig = rx.recv().await.unwrap();
                let got = monotonic_now_ns();
                let pressed = matches!(sig.event, ButtonEvent::Pressed { .. });
                let edge = sig.event.ts_ns();
                if let Some(t) = storeguard::daemon::button_trigger(&sig, &cfg) {
                    incidents.trigger(t, &cfg.site).await.unwrap();
                }
                let done = monotonic_now_ns();
                if pressed {
                    edge_to_commit.push((done - edge) as f64 / 1e6);
                    signal_to_commit.push((done - got) as f64 / 1e6);
                    edge_to_signal.push((got - edge) as f64 / 1e6);
                } else {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    buttons.shutdown();
    assert_eq!(store.events_since(0, 10_000).unwrap().len(), n + WARMUP);
    // The first few warm up SQLite's page cache and the runtime.
    let skip = |v: Vec<f64>| v[WARMUP..].to_vec();
    println!(
        "alert latency over {n} presses (debounce 1 ms, 4 cameras per press, outbox backlog {backlog}):"
    );
    summary("  edge -> alert committed", skip(edge_to_commit));
    summary("  edge -> signal (debounce + thread)", skip(edge_to_signal));
    summary(
        "  signal -> alert committed (one fsynced tx)",
        skip(signal_to_commit),
    );
}

/// End of post-roll → sealed clip (`clip.sealed_ns - clip.to_ns`), for 90 s clips from 4
/// cameras at once, three presses 10 s apart, 768×576 footage at 2 Mbit/s, GOP 2 s.
#[test]
#[ignore = "benchmark"]
fn bench_clip_seal_latency() {
    let cams = footage_fleet(4, 20, 2000);
    let site = Site::new();
    let urls: Vec<String> = (1..=4).map(|i| cams.url(i)).collect();
    site.write_config(&isb_config(
        &urls,
        "budget = \"4GiB\"",
        &button(
            "till",
            "normally-open",
            &["cam1", "cam2", "cam3", "cam4"],
            "pre_roll = \"30s\"\npost_roll = \"60s\"",
        ),
    ));
    let d = site.start();
    let db = site.db();
    for c in 1..=4 {
        wait_recorded(&site, &db, &format!("cam{c}"), Duration::from_secs(32));
    }
    for i in 0..3 {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(10));
        }
        press(&site, "till", 200);
    }
    wait_until_within("3 presses", Duration::from_secs(10), || {
        count_events(&db, "till", "isb_press") == 3
    });
    let mut lat = Vec::new();
    let mut sizes = Vec::new();
    for ev in events(&db) {
        for c in wait_sealed(&db, &ev.uid, 4, Duration::from_secs(180)) {
            let (_, m, _) = check_sealed(&site, &c);
            assert_brackets(&m, 2 * SEC, SEC / 10);
            let span = parse_ns(&m["actual"]["last_frame"]) - parse_ns(&m["actual"]["first_frame"]);
            assert!(span >= 90 * SEC - SEC / 10, "{m}");
            lat.push((c.sealed_ns.unwrap() - c.to_ns) as f64 / 1e6);
            sizes.push(m["file"]["size"].as_u64().unwrap());
        }
    }
    let cut_ms: Vec<f64> = d
        .log()
        .lines()
        .filter(|l| l.contains("evidence clip sealed"))
        .filter_map(|l| {
            l.split("ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    println!(
        "90 s clips, 4 cameras x 3 presses, {:.1} MB average:",
        sizes.iter().sum::<u64>() as f64 / sizes.len() as f64 / 1e6
    );
    summary("  end of post-roll -> sealed", lat);
    if !cut_ms.is_empty() {
        summary("  cut+hash+sign (daemon log)", cut_ms);
    }
}
