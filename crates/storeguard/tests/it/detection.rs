//! Detection in the daemon, on real footage through the real fake-camera fleet, GStreamer,
//! ONNX Runtime and the real model: tracks, events with best shots, the today image of a
//! press, the motion gate, tamper, and the detector's supervision.

use crate::detect::{model, onnxruntime};
use crate::isb::isb_config;
use crate::recording::{camera as cam, cameras};
use crate::uplink::Rx;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use storeguard_fixtures::broker::{BrokerOpts, MosquittoBroker};
use storeguard_fixtures::harness::Site;
use storeguard_fixtures::{FakeCamFleet, FleetOptions, FleetSource};

fn fleet(opts: FleetOptions) -> FakeCamFleet {
    FakeCamFleet::spawn(&storeguard_fixtures::fixture_bin("fakecam"), &opts)
        .expect("fakecam fleet starts")
}

/// vtest.avi (768×576, 10 fps, three people walking) with a keyframe every `gop` frames.
fn walkers(cameras: u32, gop: u32) -> FakeCamFleet {
    fleet(FleetOptions {
        cameras,
        fps: 10,
        gop,
        bitrate_kbps: 1500,
        source: FleetSource::File(storeguard_fixtures::media::vtest()),
        cache_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("fakecam-cache")),
        ..Default::default()
    })
}

/// `[detect]` on, with the repository's model and library, plus `extra` lines.
fn detect_section(extra: &str) -> String {
    format!(
        "\n[detect]\nenabled = true\nmodel = \"{}\"\nonnxruntime = \"{}\"\n{extra}\n",
        model().display(),
        onnxruntime().display()
    )
}

/// A zone over the whole picture, so every person tracked is an event.
const WHOLE_ZONE: &str = "[[cameras.detect.zones]]\nname = \"floor\"\n\
    polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\n";

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// Confirmed tracks now: (id, score, normalised box).
fn tracks(site: &Site, camera: &str) -> Vec<(u64, f64, [f64; 4])> {
    let v = cameras(site);
    cam(&v, camera)["detect"]["tracks"]
        .as_array()
        .unwrap_or_else(|| panic!("no detection on {camera}: {v}"))
        .iter()
        .filter(|t| t["confirmed"] == true)
        .map(|t| {
            let r: Vec<f64> = t["rect"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            (
                t["id"].as_u64().unwrap(),
                t["score"].as_f64().unwrap(),
                [r[0], r[1], r[2], r[3]],
            )
        })
        .collect()
}

fn detect_stat(site: &Site, camera: &str, key: &str) -> u64 {
    cam(&cameras(site), camera)["detect"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no detect.{key} for {camera}"))
}

/// The walkers are the three people near the camera: tall boxes, confident scores.
fn walker_ids(t: &[(u64, f64, [f64; 4])]) -> Vec<u64> {
    t.iter()
        .filter(|(_, s, r)| *s >= 0.6 && r[3] - r[1] >= 0.11)
        .map(|(id, _, _)| *id)
        .collect()
}

#[test]
fn the_three_walkers_are_tracked_each_with_one_id() {
    // A keyframe every 0.5 s: detection runs on the recording's keyframes only.
    let f = walkers(1, 5);
    let site = Site::new();
    let mut cfg = isb_config(&[f.url(1)], "", "");
    cfg.push_str(WHOLE_ZONE);
    // The store is closed all week: every person seen is a closed-hours alarm.
    cfg.push_str(&detect_section(
        "opening_hours = { time_zone = \"Europe/London\", hours = [\"mon-sun closed\"] }",
    ));
    site.write_config(&cfg);
    let _d = site.start();
    let mut first = Vec::new();
    wait_for(
        "three walkers tracked at once",
        Duration::from_secs(40),
        || {
            first = walker_ids(&tracks(&site, "cam1"));
            first.len() >= 3
        },
    );
    // Each keeps its id while it stays in view: sampled twice a second for 6 s, every
    // one of them is still there under the same id, or has left the view: through the
    // picture's edge, or behind someone (their box shrank to under 60 % of its height
    // before the track ended).
    let mut last_seen: std::collections::HashMap<u64, [f64; 4]> = Default::default();
    let mut tallest: std::collections::HashMap<u64, f64> = Default::default();
    let t = Instant::now();
    let mut samples = 0;
    let mut present: std::collections::HashMap<u64, u32> = Default::default();
    while t.elapsed() < Duration::from_secs(6) {
        for (id, _, r) in tracks(&site, "cam1") {
            if first.contains(&id) {
                *present.entry(id).or_default() += 1;
                last_seen.insert(id, r);
                let h = tallest.entry(id).or_default();
                *h = h.max(r[3] - r[1]);
            }
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    for id in &first {
        let n = present.get(id).copied().unwrap_or(0);
        let last = last_seen.get(id);
        let at_edge =
            last.is_some_and(|r| r[0] < 0.03 || r[2] > 0.97 || r[1] < 0.03 || r[3] > 0.97);
        let hidden = last.is_some_and(|r| r[3] - r[1] < 0.6 * tallest[id]);
        assert!(
            n == samples || at_edge || hidden,
            "walker track {id} was in {n} of {samples} samples and was last at {last:?} (tallest {:.2}), \
             neither at an edge nor hidden: it lost its id; {}",
            tallest.get(id).copied().unwrap_or(0.0),
            cam(&cameras(&site), "cam1")["detect"]
        );
    }
    let v = cameras(&site);
    let d = &cam(&v, "cam1")["detect"];
    assert_eq!(d["source"], "keyframes", "{d}");
    assert!(d["inferences"].as_u64().unwrap() > 5, "{d}");
    let text = site.cli(&["cameras"]);
    assert!(
        text.stdout.contains("detect: keyframes via avdec_h264"),
        "{}",
        text.stdout
    );
    // Events as presses are: listed, with a clip for the alarm kinds.
    let out = site.cli(&["events", "--json"]);
    out.expect(0);
    let ev: Value = serde_json::from_str(&out.stdout).unwrap();
    let evs = ev["events"].as_array().unwrap();
    let kinds: std::collections::HashSet<&str> =
        evs.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(
        kinds.contains("person_in_zone") && kinds.contains("closed_hours"),
        "{kinds:?}"
    );
    let closed = evs.iter().find(|e| e["kind"] == "closed_hours").unwrap();
    assert_eq!(closed["source"], "camera cam1", "{closed}");
    assert_eq!(
        closed["clips"].as_array().map(|c| c.len()),
        Some(1),
        "{closed}"
    );
}

#[test]
fn a_sub_stream_is_decoded_at_the_capped_rate() {
    // Keyframes only every 3 s on the main stream; the sub stream gives every picture.
    let f = walkers(1, 30);
    let site = Site::new();
    let mut cfg = isb_config(&[f.url(1)], "", "");
    cfg.push_str(&format!("sub_url = \"{}\"\n", f.url(1)));
    cfg.push_str(&detect_section("max_rate = 2.0"));
    site.write_config(&cfg);
    let _d = site.start();
    wait_for(
        "pictures from the sub stream",
        Duration::from_secs(30),
        || detect_stat(&site, "cam1", "decoded") >= 2,
    );
    let stat = |k| detect_stat(&site, "cam1", k);
    let (p0, d0) = (stat("pictures"), stat("decoded"));
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let (p, d) = (stat("pictures") - p0, stat("decoded") - d0);
    let secs = t.elapsed().as_secs_f64();
    // 10 fps from the camera, at most 2 a second offered; what the pipeline can not take
    // in time is replaced by the newer picture and counted, never queued.
    assert!(
        p as f64 <= secs * 2.0 + 3.0,
        "{p} pictures offered in {secs:.1} s at max_rate 2"
    );
    assert!(d >= 1 && d <= p + 1, "{d} decoded of {p} offered");
    let v = cameras(&site);
    let d = &cam(&v, "cam1")["detect"];
    assert_eq!(d["source"], "sub stream", "{d}");
    assert!(d["inferences"].as_u64().unwrap() > 0, "{d}");
    assert!(!tracks(&site, "cam1").is_empty(), "{d}");
}

#[test]
fn a_static_camera_costs_no_inference_and_a_covered_lens_is_a_tamper_alarm_upstream() {
    let still = fleet(FleetOptions {
        cameras: 1,
        width: 640,
        height: 360,
        fps: 10,
        gop: 5,
        source: FleetSource::Static,
        ..Default::default()
    });
    let black = fleet(FleetOptions {
        cameras: 1,
        width: 320,
        height: 180,
        fps: 10,
        gop: 5,
        source: FleetSource::Black,
        ..Default::default()
    });
    let broker = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let rx = Rx::start(&broker.url());
    rx.wait_subscribed(1);
    let site = Site::new();
    // Colour bars with a square of noise at the bottom right, like a TV in the shop
    // window: masked, so the scene is still.
    let mut cfg = isb_config(&[still.url(1)], "", "");
    cfg.push_str(
        "[cameras.detect]\nmasks = [[[0.7, 0.7], [1.0, 0.7], [1.0, 1.0], [0.7, 1.0]]]\n\n\
         [[cameras]]\nid = \"cam2\"\nname = \"Camera 2\"\n",
    );
    cfg.push_str(&format!("url = \"{}\"\n", black.url(1)));
    cfg.push_str(&uplink_section(&broker.url()));
    cfg.push_str(&detect_section("tamper_after = \"2s\"\nrefresh = \"2s\""));
    site.write_config(&cfg);
    let _d = site.start();

    // Warm-up: the first full look, and the motion background learnt.
    wait_for("cam1's first inference", Duration::from_secs(30), || {
        detect_stat(&site, "cam1", "inferences") >= 1 && detect_stat(&site, "cam1", "decoded") >= 6
    });
    let before = detect_stat(&site, "cam1", "inferences");
    let skipped = detect_stat(&site, "cam1", "skipped_static");
    std::thread::sleep(Duration::from_secs(6));
    let after = detect_stat(&site, "cam1", "inferences");
    assert_eq!(
        before,
        after,
        "a still, empty scene was inferred again: {}",
        cam(&cameras(&site), "cam1")["detect"]
    );
    assert!(
        detect_stat(&site, "cam1", "skipped_static") >= skipped + 6,
        "the gate did not count the inferences it saved"
    );

    // The black camera: covered, raised upstream as health, with a still.
    wait_for(
        "the tamper alarm at the receiver",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(rx.out.join("health.jsonl"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("\"tamper_covered\"") && l.contains("\"cam2\""))
        },
    );
    wait_for("the tamper still", Duration::from_secs(20), || {
        rx.lines("SHOT")
            .iter()
            .any(|l| l.contains("camera=cam2") && l.contains("reason=tamper"))
    });
    let shots = std::fs::read_to_string(rx.out.join("shots.jsonl")).unwrap();
    let line: Value =
        serde_json::from_str(shots.lines().find(|l| l.contains("\"tamper\"")).unwrap()).unwrap();
    assert_eq!(line["payload"]["health"], "tamper_covered", "{line}");
    let frame = std::fs::read(line["files"]["frame_jpeg"].as_str().unwrap()).unwrap();
    let img = image::load_from_memory(&frame).expect("the still is a JPEG");
    assert_eq!((img.width(), img.height()), (320, 180));
    let v = cameras(&site);
    assert_eq!(
        cam(&v, "cam2")["detect"]["tamper"],
        serde_json::json!(["tamper_covered"])
    );
    // A covered lens is not worth an inference either.
    assert!(detect_stat(&site, "cam2", "inferences") <= 1);
}

#[test]
fn loitering_and_a_press_send_best_shots_upstream() {
    let f = walkers(1, 5);
    let broker = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let rx = Rx::start(&broker.url());
    rx.wait_subscribed(1);
    let site = Site::new();
    let mut cfg = isb_config(
        &[f.url(1)],
        "",
        &crate::isb::button("till", "normally-open", &["cam1"], "pre_roll = \"10s\""),
    );
    cfg.push_str(&uplink_section(&broker.url()));
    cfg.push_str(
        "[[cameras.detect.zones]]\nname = \"floor\"\n\
         polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\nloiter_after = \"4s\"\n",
    );
    cfg.push_str(&detect_section(""));
    site.write_config(&cfg);
    let _d = site.start();

    let alert = wait_alert(&rx, "loitering");
    let event = alert["payload"]["event_id"].as_str().unwrap().to_string();
    assert_eq!(alert["payload"]["source_kind"], "detector", "{alert}");
    let shot = wait_shot(&rx, &event, "event");
    let crop = shot["files"]["crop_jpeg"].as_str().unwrap();
    image::load_from_memory(&std::fs::read(crop).unwrap()).expect("the best shot is a JPEG");
    // The detector finds a person in the best shot itself.
    let out = site.cli(&["detect", "--json", crop]);
    out.expect(0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let people: Vec<&Value> = v["images"][0]["detections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["class"] == "person" && d["score"].as_f64().unwrap() >= 0.5)
        .collect();
    assert!(!people.is_empty(), "no person in the best shot {crop}: {v}");

    // A press with people in view: their best shots follow the alert.
    wait_for("people tracked", Duration::from_secs(20), || {
        !tracks(&site, "cam1").is_empty()
    });
    crate::isb::press(&site, "till", 200);
    let press = wait_alert(&rx, "isb_press");
    let event = press["payload"]["event_id"].as_str().unwrap().to_string();
    let shot = wait_shot(&rx, &event, "press");
    assert!(shot["payload"]["track"].is_u64(), "{shot}");
    assert!(shot["files"]["crop_jpeg"].is_string(), "{shot}");
    let n = std::fs::read_to_string(rx.out.join("shots.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(&event))
        .count();
    assert!(
        n >= 2,
        "only {n} best shots for a press with people in view"
    );
}

/// The receiver's first `alerts.jsonl` line of `kind`, once it is there.
fn wait_alert(rx: &Rx, kind: &str) -> Value {
    let mut found = None;
    wait_for(
        &format!("a {kind} alert at the receiver"),
        Duration::from_secs(60),
        || {
            found = std::fs::read_to_string(rx.out.join("alerts.jsonl"))
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|v| v["payload"]["kind"] == kind);
            found.is_some()
        },
    );
    found.unwrap()
}

/// The receiver's `shots.jsonl` line for `event` with `reason`, once it is there.
fn wait_shot(rx: &Rx, event: &str, reason: &str) -> Value {
    let mut found = None;
    wait_for(
        &format!("a {reason} shot for {event}"),
        Duration::from_secs(20),
        || {
            found = std::fs::read_to_string(rx.out.join("shots.jsonl"))
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|v| v["payload"]["event_id"] == event && v["payload"]["reason"] == reason);
            found.is_some()
        },
    );
    found.unwrap()
}

#[test]
fn a_hung_or_crashed_detector_is_restarted_and_the_recording_has_no_gap() {
    let f = walkers(1, 5);
    let site = Site::new();
    let mut cfg = isb_config(&[f.url(1)], "", "");
    cfg.push_str(&detect_section(
        "fault_injection = true\nhang_timeout = \"2s\"",
    ));
    site.write_config(&cfg);
    let _d = site.start();
    wait_for("inferences", Duration::from_secs(30), || {
        detect_stat(&site, "cam1", "inferences") >= 3
    });
    for (fault, restarts) in [("hang", 1), ("panic", 2)] {
        site.cli(&["debug", "detector-fault", fault]).expect(0);
        wait_for(
            &format!("a restart after a {fault}"),
            Duration::from_secs(30),
            || cameras(&site)["detection"]["detector_restarts"].as_u64() == Some(restarts),
        );
        let n = detect_stat(&site, "cam1", "inferences");
        wait_for(
            &format!("inferences again after the {fault}"),
            Duration::from_secs(30),
            || detect_stat(&site, "cam1", "inferences") > n + 2,
        );
    }
    let db = site.db();
    let health: Vec<String> = db
        .prepare("SELECT detail FROM health_event WHERE kind = 'detector_restarted'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(health.len(), 2, "{health:?}");
    assert!(health[0].contains("hang_timeout"), "{health:?}");
    assert!(health[1].contains("panicked"), "{health:?}");
    // The recording never noticed: no gap since it started.
    let v = cameras(&site);
    assert_eq!(cam(&v, "cam1")["recent_gaps"], serde_json::json!([]), "{v}");
    // Without the switch, faults are refused.
    let site2 = Site::new();
    site2.write_config(&format!(
        "{}{}",
        isb_config(&["rtsp://127.0.0.1:1/none".to_string()], "", ""),
        detect_section("")
    ));
    let _d2 = site2.start();
    let out = site2.cli(&["debug", "detector-fault", "hang"]);
    assert_ne!(out.code(), Some(0), "{}", out.all());
    assert!(out.all().contains("fault_injection"), "{}", out.all());
}

fn uplink_section(broker: &str) -> String {
    format!(
        "\n{}\n[uplink]\nbroker = \"{broker}\"\nmax_reconnect_backoff = \"300ms\"\n",
        storeguard_fixtures::centre::trust_toml()
    )
}
