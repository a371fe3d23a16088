//! Remote configuration and commands, end to end: a real mosquitto, real fake cameras, the
//! real daemon, and the reference control-centre tool `sg-control` signing with the
//! fixtures' centre key.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use storeguard_fixtures::broker::{BrokerOpts, MosquittoBroker};
use storeguard_fixtures::harness::{Site, wait_until_within};
use storeguard_fixtures::{FakeCamFleet, centre, fixture_bin};

use crate::uplink::Rx;

const SITE: &str = "test-store";
const DEVICE: &str = "test-box";

use crate::isb::pattern_fleet as fleet;

/// A running box: broker, `cams` fake cameras (`first` of them configured), the daemon,
/// and the control centre's tool. Waits until cam1 records and the uplink is up.
struct Rig {
    broker: MosquittoBroker,
    cams: FakeCamFleet,
    site: Site,
    daemon: storeguard_fixtures::harness::Daemon,
    config: String,
    cc: Centre,
}

impl Rig {
    fn start(cams: u32, first: u32) -> Rig {
        Rig::start_with(BrokerOpts::default(), cams, first, "", |c| c)
    }

    /// A rig on a broker started with `opts`, `extra_uplink` lines in `[uplink]` and the
    /// config text changed by `edit`.
    fn start_with(
        opts: BrokerOpts,
        cams: u32,
        first: u32,
        extra_uplink: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Rig {
        let broker = MosquittoBroker::start(opts).unwrap();
        let cams = fleet(cams);
        let site = Site::new();
        let config = edit(box_config(&broker.url(), &cams, first, extra_uplink));
        site.write_config(&config);
        let daemon = site.start();
        wait_until_within(
            "cam1 recording and the uplink",
            Duration::from_secs(30),
            || {
                camera_state(&site, "cam1") == "recording"
                    && site.status()["uplink"]["connected"] == true
            },
        );
        let cc = Centre::new(&broker.url());
        Rig {
            broker,
            cams,
            site,
            daemon,
            config,
            cc,
        }
    }

    fn config_status(&self) -> Value {
        serde_json::from_str(
            &self
                .site
                .cli(&["config", "status", "--json"])
                .expect(0)
                .stdout,
        )
        .unwrap()
    }

    fn on_disk(&self) -> String {
        std::fs::read_to_string(self.site.config_path()).unwrap()
    }
}

/// A box config: `cams` cameras from `fleet`, a simulated button, the uplink to `broker`,
/// the fixtures' centre key trusted, a short trial.
fn box_config(broker: &str, fleet: &FakeCamFleet, cams: u32, extra_uplink: &str) -> String {
    let mut s = format!(
        "[site]\nsite_id = \"{SITE}\"\ndevice_id = \"{DEVICE}\"\n\n[storage]\ndata_dir = \"data\"\n\n\
         [control]\nsocket = \"control.sock\"\n\n{}\n[remote]\ntrial = \"6s\"\n\n\
         [uplink]\nbroker = \"{broker}\"\nmax_reconnect_backoff = \"300ms\"\n{extra_uplink}\n",
        centre::trust_toml()
    );
    for n in 1..=cams {
        s.push_str(&format!(
            "\n[[cameras]]\nid = \"cam{n}\"\nname = \"Camera {n}\"\nurl = \"{}\"\n",
            fleet.url(n)
        ));
    }
    s.push_str(
        "\n[[buttons]]\nname = \"till\"\nchip = \"sim\"\nline = 0\nwiring = \"normally-open\"\ncameras = [\"cam1\"]\npre_roll = \"2s\"\npost_roll = \"2s\"\n",
    );
    s
}

/// `sg-control` against `broker` with the centre key in `key_dir`.
struct Centre {
    broker: String,
    key_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Centre {
    fn new(broker: &str) -> Centre {
        let tmp = tempfile::tempdir().unwrap();
        let key_dir = tmp.path().join("key");
        centre::write_key_dir(&key_dir).unwrap();
        Centre {
            broker: broker.into(),
            key_dir,
            _tmp: tmp,
        }
    }

    /// A centre whose key no box trusts.
    fn stranger(broker: &str) -> Centre {
        let tmp = tempfile::tempdir().unwrap();
        let key_dir = tmp.path().join("key");
        Centre {
            broker: broker.into(),
            key_dir,
            _tmp: tmp,
        }
    }

    fn run(&self, args: &[&str]) -> (Option<i32>, Value, String) {
        let out: Output = Command::new(fixture_bin("sg-control"))
            .args(["--broker", &self.broker, "--key-dir"])
            .arg(&self.key_dir)
            .args(["--site", SITE, "--device", DEVICE, "--timeout", "40s"])
            .args(args)
            .output()
            .expect("run sg-control");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (out.status.code(), v, stderr)
    }

    fn push(&self, file: &Path, version: u64, extra: &[&str]) -> (Option<i32>, Value, String) {
        let v = version.to_string();
        let mut a = vec!["push", file.to_str().unwrap(), "--version", &v];
        a.extend_from_slice(extra);
        self.run(&a)
    }

    fn cmd(&self, name: &str, args: Value, extra: &[&str]) -> (Option<i32>, Value, String) {
        let a = args.to_string();
        let mut v = vec!["cmd", name, "--args", &a];
        v.extend_from_slice(extra);
        self.run(&v)
    }
}

fn reasons(v: &Value) -> String {
    v["reasons"].to_string()
}

fn camera_state(site: &Site, id: &str) -> String {
    site.status()["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .map(|c| c["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn topic(suffix: &str) -> String {
    format!("storeguard/v1/{SITE}/{DEVICE}/{suffix}")
}

#[test]
fn remote_configs_apply_or_are_rejected_with_their_reasons() {
    let rig = Rig::start(2, 1);
    let (broker, cams, site, cc) = (&rig.broker, &rig.cams, &rig.site, &rig.cc);

    // Adding a camera: applied once it records.
    let two = box_config(&broker.url(), cams, 2, "");
    let f2 = site.write_file("v1.toml", &two);
    let saved = site.path("v1.signed.json");
    let (code, r, err) = cc.push(&f2, 1, &["--save-payload", saved.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{r} {err}");
    assert_eq!(r["state"], "applied");
    assert_eq!(r["applied_version"], 1);
    assert_eq!(camera_state(site, "cam2"), "recording");
    assert_eq!(rig.on_disk(), two);
    let st = rig.config_status();
    assert_eq!(st["applied"]["version"], 1, "{st}");

    // An invalid config: rejected with its field path; what runs stays.
    let bad = two.replace(&cams.url(2), "http://10.0.0.9/cam2");
    let fb = site.write_file("v2.toml", &bad);
    let (code, r, _) = cc.push(&fb, 2, &[]);
    assert_eq!(code, Some(3));
    assert_eq!(r["state"], "rejected");
    assert!(reasons(&r).contains("cameras[1].url"), "{r}");
    assert!(reasons(&r).contains("config/desired v2:"), "{r}");
    assert_eq!(rig.on_disk(), two);
    assert_eq!(camera_state(site, "cam2"), "recording");

    // Settings a remote config may not touch.
    let moved = two.replace("data_dir = \"data\"", "data_dir = \"elsewhere\"");
    let (code, r, _) = cc.push(&site.write_file("v3.toml", &moved), 3, &[]);
    assert_eq!((code, r["state"].as_str()), (Some(3), Some("rejected")));
    assert!(
        reasons(&r).contains("storage.data_dir: may not change remotely"),
        "{r}"
    );

    // Signed by a key the box does not trust.
    let renamed = two.replace("Camera 2", "Back door");
    let fr = site.write_file("v4.toml", &renamed);
    let (code, r, _) = Centre::stranger(&broker.url()).push(&fr, 4, &[]);
    assert_eq!((code, r["state"].as_str()), (Some(3), Some("rejected")));
    assert!(reasons(&r).contains("does not trust"), "{r}");

    // Expired on the way (it expires as it is signed: "1ms" could still be in time on a
    // fast loopback).
    let (code, r, _) = cc.push(&fr, 5, &["--expires-in", "0s"]);
    assert_eq!((code, r["state"].as_str()), (Some(3), Some("rejected")));
    assert!(reasons(&r).contains("expired"), "{r}");

    // A camera-only change, then the old signed v1 replayed: refused as not newer.
    let (code, r, _) = cc.push(&fr, 6, &[]);
    assert_eq!(
        (code, r["state"].as_str()),
        (Some(0), Some("applied")),
        "{r}"
    );
    broker.publish(
        &topic("config/desired"),
        &std::fs::read(&saved).unwrap(),
        true,
    );
    wait_until_within("the replay to be rejected", Duration::from_secs(10), || {
        let st = rig.config_status();
        st["last_rejected"]["version"] == 1
            && st["last_rejected"]["reasons"]
                .to_string()
                .contains("not newer")
    });
    assert_eq!(rig.on_disk(), renamed);
    let shown = site.cli(&["config", "status"]).expect(0).stdout.clone();
    assert!(shown.contains("applied   version 6"), "{shown}");
    assert!(shown.contains("rejected  version 1"), "{shown}");
}

#[test]
fn a_wrong_broker_port_is_rolled_back_and_reported_after_the_reconnect() {
    let rig = Rig::start(1, 1);
    let (broker, site, good) = (&rig.broker, &rig.site, &rig.config);
    let dead = storeguard_fixtures::broker::free_port().unwrap();
    let wrong = good.replace(&broker.url(), &format!("mqtt://127.0.0.1:{dead}"));
    let (code, r, err) = rig.cc.push(&site.write_file("v1.toml", &wrong), 1, &[]);
    assert_eq!(code, Some(3), "{r} {err}");
    assert_eq!(r["state"], "rolled_back", "{r}");
    assert!(reasons(&r).contains("uplink: not connected"), "{r}");
    assert_eq!(&rig.on_disk(), good);
    assert!(!site.path("storeguard.toml.trial").exists());
    assert_eq!(site.status()["uplink"]["connected"], true);
}

#[test]
fn a_kill_9_during_an_apply_leaves_the_old_or_the_new_config() {
    let mut rig = Rig::start(2, 1);
    let old = rig.config.clone();
    let mut rng = storeguard_fixtures::harness::Rng::new("remote kill -9");
    for round in 0..4u64 {
        let new = box_config(&rig.broker.url(), &rig.cams, 2, "")
            .replace("Camera 2", &format!("Door {round}"));
        let f = rig.site.write_file("next.toml", &new);
        let (code, _, err) = rig.cc.push(&f, 10 + round, &["--no-wait"]);
        assert_eq!(code, Some(0), "{err}");
        std::thread::sleep(Duration::from_millis(rng.range(0, 400)));
        rig.daemon.signal(libc::SIGKILL);
        let _ = rig.daemon.wait_exit(Duration::from_secs(5));
        let now = rig.on_disk();
        assert!(
            now == old || now == new,
            "round {round}: a mix on disk:\n{now}"
        );
        // The retained desired config would be applied again: clear it first.
        rig.broker.publish(&topic("config/desired"), b"", true);
        rig.daemon = rig.site.start();
        let after = rig.on_disk();
        assert!(after == old || after == new, "round {round}");
        eprintln!(
            "round {round}: on disk after the kill: {}, after the restart: {}",
            if now == new { "new" } else { "old" },
            if after == new { "new" } else { "old" }
        );
        assert!(
            !rig.site.path("storeguard.toml.trial").exists(),
            "round {round}: trial left open"
        );
        // Next round from the old config, as an unconfirmed trial leaves it.
        if after != old {
            rig.site.write_config(&old);
            rig.site.cli(&["config", "reload"]).expect(0);
        }
        wait_until_within("the uplink", Duration::from_secs(20), || {
            rig.site.status()["uplink"]["connected"] == true
        });
    }
}

#[test]
fn every_command_works_and_a_repeated_request_id_runs_once() {
    let rig = Rig::start(1, 1);
    let (site, cc) = (&rig.site, &rig.cc);
    // Footage to ask about.
    std::thread::sleep(Duration::from_secs(4));
    let ok = |(code, r, err): (Option<i32>, Value, String)| -> Value {
        assert_eq!(code, Some(0), "{r} {err}");
        assert_eq!(r["status"], "ok", "{r}");
        r["result"].clone()
    };
    let now = chrono::Utc::now();
    let t = |secs: i64| (now + chrono::Duration::seconds(secs)).to_rfc3339();

    let s = ok(cc.cmd("status", json!({}), &[]));
    assert_eq!(s["status"]["device_id"], DEVICE);
    assert_eq!(s["cameras"]["cameras"][0]["id"], "cam1", "{s}");

    let snap = ok(cc.cmd("snapshot", json!({ "cameras": ["cam1"] }), &[]));
    let jpeg = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        snap["images"][0]["jpeg"].as_str().unwrap(),
    )
    .unwrap();
    let jf = site.path("snap.jpg");
    std::fs::write(&jf, &jpeg).unwrap();
    let probe = storeguard_fixtures::harness::ffprobe(&jf);
    assert_eq!((probe.width, probe.height), (320, 180), "{probe:?}");
    // The same still for the technician, over the control socket.
    let local = site.path("local.jpg");
    let out = site.cli(&[
        "snapshot",
        "--camera",
        "cam1",
        "--out",
        local.to_str().unwrap(),
    ]);
    out.expect(0);
    let probe = storeguard_fixtures::harness::ffprobe(&local);
    assert_eq!((probe.width, probe.height), (320, 180), "{probe:?}");
    let out = site.cli(&[
        "snapshot",
        "--camera",
        "cam9",
        "--out",
        local.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(65), "{}", out.all());
    assert!(out.all().contains("no camera \"cam9\""), "{}", out.all());

    let rec = ok(cc.cmd(
        "recordings",
        json!({ "camera": "cam1", "from": t(-60), "to": t(0) }),
        &[],
    ));
    assert!(rec["segments"].as_u64().unwrap() >= 1, "{rec}");
    assert!(!rec["recorded"].as_array().unwrap().is_empty(), "{rec}");

    let hold = ok(cc.cmd(
        "hold",
        json!({ "cameras": ["cam1"], "from": t(-30), "to": t(-10), "reason": "police request 42", "expires_at": t(3600) }),
        &["--request-id", "hold-1"],
    ));
    assert_eq!(hold["hold_id"], "hold-1");
    let locks = || -> i64 {
        site.db()
            .query_row(
                "SELECT count(*) FROM retention_lock WHERE hold_id = 'hold-1'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(locks(), 1);
    let audited: String = site
        .db()
        .query_row(
            "SELECT detail FROM audit WHERE action = 'remote_hold' AND target = 'hold-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        audited.contains("police request 42") && audited.contains("\"ok\""),
        "{audited}"
    );
    let rel = ok(cc.cmd("release", json!({ "hold_id": "hold-1" }), &[]));
    assert_eq!(rel["locks_released"], 1);
    assert_eq!(locks(), 0);

    let clip = ok(cc.cmd(
        "clip",
        json!({ "cameras": ["cam1"], "from": t(-4), "to": t(-1) }),
        &[],
    ));
    let clip_id = clip["clips"][0].as_str().unwrap().to_string();
    wait_until_within(
        "the remote clip to be sealed",
        Duration::from_secs(60),
        || {
            site.db()
                .query_row("SELECT state FROM clip WHERE uid = ?1", [&clip_id], |r| {
                    r.get::<_, String>(0)
                })
                .map(|s| s == "sealed" || s == "acked")
                .unwrap_or(false)
        },
    );

    // A repeated request id: the press happens once, the answer comes twice.
    let first = cc.cmd(
        "button_test",
        json!({ "button": "till" }),
        &["--request-id", "btn-1"],
    );
    ok(first);
    let (code, again, _) = cc.cmd(
        "button_test",
        json!({ "button": "till" }),
        &["--request-id", "btn-1"],
    );
    assert_eq!(
        (code, &again["duplicate"]),
        (Some(0), &json!(true)),
        "{again}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let presses: i64 = site
        .db()
        .query_row(
            "SELECT count(*) FROM event WHERE kind = 'isb_press' AND test = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(presses, 1);

    ok(cc.cmd("restart_camera", json!({ "camera": "cam1" }), &[]));
    wait_until_within("the restart's gap", Duration::from_secs(20), || {
        site.db()
            .query_row(
                "SELECT count(*) FROM gap WHERE reason LIKE '%restarted on request%'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            > 0
    });
    wait_until_within("cam1 recording again", Duration::from_secs(30), || {
        camera_state(site, "cam1") == "recording"
    });

    // Failures say why.
    let (code, r, _) = cc.cmd("release", json!({ "hold_id": "nope" }), &[]);
    assert_eq!((code, r["status"].as_str()), (Some(3), Some("failed")));
    assert!(r["error"].as_str().unwrap().contains("no hold"), "{r}");
    let (code, r, _) = cc.cmd("reboot", json!({}), &[]);
    assert_eq!((code, r["status"].as_str()), (Some(3), Some("rejected")));
    assert!(
        r["error"].as_str().unwrap().contains("no such command"),
        "{r}"
    );
    let (_, r, _) = cc.cmd("snapshot", json!({ "cameras": ["cam9"] }), &[]);
    assert!(
        r["error"].as_str().unwrap().contains("no camera \"cam9\""),
        "{r}"
    );
}

#[test]
fn malformed_and_oversized_inbound_messages_are_refused_and_nothing_breaks() {
    let rig = Rig::start(1, 1);
    let (broker, site, cfg) = (&rig.broker, &rig.site, &rig.config);
    let results = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-t",
            &topic("cmd/+/result"),
            "-C",
            "3",
            "-W",
            "30",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    broker.publish(&topic("cmd/status"), b"garbage", false);
    broker.publish(&topic("cmd/status"), br#"{"schema":"storeguard.cmd/v1","site_id":"test-store","device_id":"test-box","request_id":"u1","issued_at":"2026-01-01T00:00:00Z","expires_at":"2099-01-01T00:00:00Z","args":{}}"#, false);
    broker.publish(&topic("cmd/status"), &vec![b'{'; 2 << 20], false);
    broker.publish(
        &topic("cmd/restart_camera"),
        br#"{"request_id":"u2"}"#,
        false,
    );
    let out = results.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.iter().all(|l| l["status"] == "rejected"), "{text}");
    assert!(text.contains("unreadable"), "{text}");
    assert!(text.contains("not signed"), "{text}");

    broker.publish(&topic("config/desired"), b"not json", true);
    wait_until_within(
        "the unreadable config to be reported",
        Duration::from_secs(10),
        || {
            let st = rig.config_status();
            st["last_rejected"]["reasons"]
                .to_string()
                .contains("unreadable")
        },
    );
    broker.publish(&topic("config/desired"), &vec![b'x'; 3 << 20], true);
    std::thread::sleep(Duration::from_secs(1));
    let st = site.status();
    assert_eq!(st["uplink"]["connected"], true, "{st}");
    let u: Value = serde_json::from_str(&site.cli(&["outbox", "--json"]).expect(0).stdout).unwrap();
    assert_eq!(u["connects"], 1, "the link never flapped: {u}");
    assert_eq!(&rig.on_disk(), cfg);
}

/// Figures for docs/remote.md: `cargo test -p storeguard --test it remote::bench_remote --
/// --ignored --nocapture` (scripts/bench-remote.sh).
#[test]
#[ignore]
fn bench_remote() {
    let rig = Rig::start(2, 1);
    let (broker, cams, site, cc, one) = (&rig.broker, &rig.cams, &rig.site, &rig.cc, &rig.config);
    let ms = |err: &str| -> f64 {
        err.split("after ")
            .nth(1)
            .and_then(|r| r.split(" ms").next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no latency in {err}"))
    };
    let mut version = 0;
    let mut run = |label: &str, texts: &[String]| {
        let mut t = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            version += 1;
            let f = site.write_file(&format!("b{version}.toml"), text);
            let (code, r, err) = cc.push(&f, version, &[]);
            assert_eq!(code, Some(0), "{label} {i}: {r} {err}");
            t.push(ms(&err));
        }
        t.sort_by(f64::total_cmp);
        eprintln!(
            "{label:<38}: n={} p50 {:.0} ms, max {:.0} ms",
            t.len(),
            t[t.len() / 2],
            t[t.len() - 1]
        );
    };
    let renames: Vec<String> = (0..10)
        .map(|i| one.replace("Camera 1", &format!("Till {i}")))
        .collect();
    run("desired -> applied, camera renamed", &renames);
    let two = box_config(&broker.url(), cams, 2, "");
    let adds: Vec<String> = (0..6)
        .map(|i| if i % 2 == 0 { two.clone() } else { one.clone() })
        .collect();
    run("desired -> applied, camera added/removed", &adds);
    let (code, _, err) = cc.run(&[
        "cmd",
        "snapshot",
        "--args",
        "{\"cameras\":[\"cam1\"]}",
        "--repeat",
        "20",
    ]);
    assert_eq!(code, Some(0), "{err}");
    eprintln!("{}", err.trim());
}

#[test]
fn the_openssl_recipe_signs_a_config_the_box_applies() {
    if Command::new("jq").arg("--version").output().is_err() {
        storeguard_fixtures::harness::skip("docs/remote.md sign-recipe", "jq is not installed");
        return;
    }
    let rig = Rig::start(1, 1);
    let (broker, site, cfg, cc) = (&rig.broker, &rig.site, &rig.config, &rig.cc);
    let renamed = cfg.replace("Camera 1", "Signed by openssl");
    let file = site.write_file("openssl.toml", &renamed);
    let work = tempfile::tempdir().unwrap();
    let key = cc.key_dir.join("centre_ed25519.key");
    let Some((ok, text)) = storeguard_fixtures::harness::run_doc_recipe(
        "remote.md",
        "sign-recipe",
        work.path(),
        &[
            ("CONFIG", file.as_os_str()),
            ("VERSION", std::ffi::OsStr::new("3")),
            ("SITE", std::ffi::OsStr::new(SITE)),
            ("DEVICE", std::ffi::OsStr::new(DEVICE)),
            ("KEY", key.as_os_str()),
        ],
    ) else {
        return;
    };
    assert!(ok, "{text}");
    let desired = std::fs::read(work.path().join("desired.json")).unwrap();
    broker.publish(&topic("config/desired"), &desired, true);
    wait_until_within(
        "the openssl-signed config to apply",
        Duration::from_secs(20),
        || {
            let st = rig.config_status();
            st["applied"]["version"] == 3
        },
    );
    assert_eq!(rig.on_disk(), renamed);
}

#[test]
fn a_key_rotation_is_accepted_only_when_signed_by_a_key_trusted_now() {
    let rig = Rig::start(1, 1);
    let (site, old_cc) = (&rig.site, &rig.cc);
    let new_cc = Centre::stranger(&rig.broker.url());
    // Not trusted yet (this also creates the new key).
    let f = site.write_file("r0.toml", &rig.config);
    let (code, r, _) = new_cc.push(&f, 1, &[]);
    assert_eq!(
        (code, r["state"].as_str()),
        (Some(3), Some("rejected")),
        "{r}"
    );
    let new_pub = std::fs::read_to_string(new_cc.key_dir.join("centre_ed25519.pub")).unwrap();
    let keys = |list: &[&str]| {
        let quoted: Vec<String> = list.iter().map(|k| format!("\"{}\"", k.trim())).collect();
        rig.config.replace(
            &format!("control_centre_keys = [\"{}\"]", centre::PUBLIC_KEY),
            &format!("control_centre_keys = [{}]", quoted.join(", ")),
        )
    };
    // The old key adds the new one...
    let both = keys(&[centre::PUBLIC_KEY, &new_pub]);
    let (code, r, _) = old_cc.push(&site.write_file("r1.toml", &both), 2, &[]);
    assert_eq!(
        (code, r["state"].as_str()),
        (Some(0), Some("applied")),
        "{r}"
    );
    // ...the new key retires the old one...
    let only_new = keys(&[&new_pub]);
    let (code, r, _) = new_cc.push(&site.write_file("r2.toml", &only_new), 3, &[]);
    assert_eq!(
        (code, r["state"].as_str()),
        (Some(0), Some("applied")),
        "{r}"
    );
    // ...and the old key is no longer believed.
    let (code, r, _) = old_cc.push(&site.write_file("r3.toml", &both), 4, &[]);
    assert_eq!(
        (code, r["state"].as_str()),
        (Some(3), Some("rejected")),
        "{r}"
    );
    assert!(reasons(&r).contains("does not trust"), "{r}");
    assert_eq!(rig.on_disk(), only_new);
}

// ------------------------------------------------------------------ the package command

/// A rig with two cameras both mapped to the button, a receiver subscribed, and a test
/// press; with `sealed`, its two clips are sealed (or already confirmed). Returns the
/// event id.
fn package_rig(extra_uplink: &str, sealed: bool) -> (Rig, Rx, String) {
    let both = |c: String| c.replace(r#"cameras = ["cam1"]"#, r#"cameras = ["cam1", "cam2"]"#);
    let persistent = BrokerOpts {
        persistence: true,
        ..Default::default()
    };
    let rig = Rig::start_with(persistent, 2, 2, extra_uplink, both);
    let rx = Rx::start(&rig.broker.url());
    rx.wait_subscribed(1);
    wait_until_within("cam2 recording", Duration::from_secs(30), || {
        camera_state(&rig.site, "cam2") == "recording"
    });
    std::thread::sleep(Duration::from_secs(3));
    crate::isb::press(&rig.site, "till", 200);
    let db = rig.site.db();
    let ev = crate::isb::wait_event(&db, "till", "isb_press").uid;
    if !sealed {
        return (rig, rx, ev);
    }
    wait_until_within(
        "both clips of the press sealed",
        crate::isb::CLIP_WAIT,
        || {
            let n: i64 = db
                .query_row(
                    "SELECT count(*) FROM clip c JOIN event e ON c.event = e.id \
                     WHERE e.uid = ?1 AND c.state IN ('sealed', 'acked')",
                    [&ev],
                    |r| r.get(0),
                )
                .unwrap();
            n == 2
        },
    );
    (rig, rx, ev)
}

fn package_state(site: &Site, id: &str) -> String {
    site.db()
        .query_row("SELECT state FROM package WHERE uid = ?1", [id], |r| {
            r.get::<_, String>(0)
        })
        .unwrap_or_default()
}

fn sha256_hex(p: &Path) -> String {
    storeguard::evidence::sha256_file(p).unwrap().1
}

/// The receiver's copy of a package.
fn received_package(rx: &Rx, id: &str) -> PathBuf {
    rx.out
        .join("packages")
        .join(SITE)
        .join(DEVICE)
        .join(format!("{id}.zip"))
}

#[test]
fn a_package_command_uploads_a_package_the_receiver_verifies_and_the_box_keeps_its_receipt() {
    let (rig, rx, ev) = package_rig("", true);
    let (site, cc) = (&rig.site, &rig.cc);

    let t0 = std::time::Instant::now();
    let (code, r, err) = cc.cmd(
        "package",
        json!({ "event": ev }),
        &["--request-id", "pkg-req-1"],
    );
    let answered = t0.elapsed();
    assert_eq!(
        (code, r["status"].as_str()),
        (Some(0), Some("ok")),
        "{r} {err}"
    );
    let res = &r["result"];
    let id = res["package"].as_str().unwrap().to_string();
    assert!(id.starts_with("pkg-") && id.ends_with(&ev), "{res}");
    assert_eq!(res["event"], ev.as_str());
    assert_eq!(res["upload"], "queued");
    let cams: Vec<&str> = res["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(cams, ["cam1", "cam2"], "{res}");
    let kinds: Vec<&str> = res["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "clip").count(), 2, "{res}");
    assert!(
        kinds.contains(&"continuity_log") && kinds.contains(&"viewer"),
        "{res}"
    );
    let (bytes, sha) = (
        res["file"]["size"].as_u64().unwrap(),
        res["file"]["sha256"].as_str().unwrap().to_string(),
    );
    assert_eq!(res["file"]["name"], format!("{id}.zip"));

    // The receiver verifies it and signs a receipt; the box checks and keeps that.
    wait_until_within(
        "the package's receipt kept on the box",
        Duration::from_secs(60),
        || package_state(site, &id) == "acked",
    );
    let confirmed = t0.elapsed();
    eprintln!(
        "package {id}: {bytes} bytes, {} files; command answered after {answered:?}, verified receipt kept on the box after {confirmed:?}",
        kinds.len()
    );
    let line = rx
        .lines("PACKAGE")
        .into_iter()
        .find(|l| crate::uplink::field(l, "package") == id)
        .unwrap_or_else(|| panic!("no PACKAGE line for {id}"));
    assert!(line.ends_with(" verified"), "{line}");
    assert_eq!(crate::uplink::field(&line, "sha256"), sha);
    assert_eq!(crate::uplink::field(&line, "event"), ev);
    let copy = received_package(&rx, &id);
    assert_eq!(sha256_hex(&copy), sha);
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), bytes);
    // The receiver's copy passes the same check as on a USB stick, by the device's key.
    let key = site.status()["public_key"].as_str().unwrap().to_string();
    let v = site.cli(&[
        "evidence",
        "verify",
        copy.to_str().unwrap(),
        "--pubkey",
        &key,
    ]);
    v.expect(0);
    assert!(
        v.stdout.contains("matches the expected public key"),
        "{}",
        v.all()
    );

    // The box keeps the receipt beside the zip, in its row and in the audit trail.
    let zip = site.path("data").join("packages").join(format!("{id}.zip"));
    assert_eq!(sha256_hex(&zip), sha);
    let receipt: Value = serde_json::from_slice(
        &std::fs::read(storeguard::store::events::receipt_path(&zip)).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            receipt["status"].as_str(),
            receipt["clip"].as_str(),
            receipt["sha256"].as_str(),
            receipt["bytes"].as_u64()
        ),
        (
            Some("verified"),
            Some(id.as_str()),
            Some(sha.as_str()),
            Some(bytes)
        ),
        "{receipt}"
    );
    assert_eq!(receipt["manifest_signature"], res["manifest_signature"]);
    let db = site.db();
    let (key_id, kept): (String, String) = db
        .query_row(
            "SELECT receipt_key, receipt FROM package WHERE uid = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(receipt["signature"]["key_id"], key_id.as_str());
    assert_eq!(serde_json::from_str::<Value>(&kept).unwrap(), receipt);
    // `storeguard events` shows the package under its event, confirmed.
    let shown = site.cli(&["events"]).expect(0).stdout.clone();
    assert!(
        shown.contains(&format!("package acked    packages/{id}.zip"))
            && shown.contains("confirmed by the control centre"),
        "{shown}"
    );
    // Offline, the kept receipt checks against the zip beside it and the centre's key.
    let v = site.cli(&[
        "evidence",
        "verify",
        zip.to_str().unwrap(),
        "--pubkey",
        &key,
        "--centre-key",
        centre::PUBLIC_KEY,
    ]);
    v.expect(0);
    assert!(
        v.stdout
            .contains("the control centre confirmed these bytes")
            && v.stdout.contains("matching --centre-key"),
        "{}",
        v.all()
    );
    let audit = |action: &str, target: &str| -> String {
        db.query_row(
            "SELECT detail FROM audit WHERE action = ?1 AND target = ?2",
            [action, target],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("no {action} audit row for {target}: {e}"))
    };
    assert!(audit("remote_package", "pkg-req-1").contains("\"ok\""));
    assert!(audit("package_export", &ev).contains("\"exported\""));
    assert!(audit("package_receipt", &id).contains(&key_id));

    // A repeated request id is answered from the stored result: no second package.
    let (code, again, _) = cc.cmd(
        "package",
        json!({ "event": ev }),
        &["--request-id", "pkg-req-1"],
    );
    assert_eq!(
        (code, &again["duplicate"]),
        (Some(0), &json!(true)),
        "{again}"
    );
    assert_eq!(again["result"]["package"], id.as_str());

    // Refusals say why, and package nothing.
    let (code, r, _) = cc.cmd("package", json!({ "event": "evt-nope" }), &[]);
    assert_eq!(
        (code, r["status"].as_str()),
        (Some(3), Some("failed")),
        "{r}"
    );
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("no event \"evt-nope\""),
        "{r}"
    );
    let (_, r, _) = cc.cmd("package", json!({ "cameras": ["cam1"] }), &[]);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `cameras`"),
        "{r}"
    );
    let (code, r, _) =
        Centre::stranger(&rig.broker.url()).cmd("package", json!({ "event": ev }), &[]);
    assert_eq!(
        (code, r["status"].as_str()),
        (Some(3), Some("rejected")),
        "{r}"
    );
    assert!(
        r["error"].as_str().unwrap().contains("does not trust"),
        "{r}"
    );
    let results = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &rig.broker.port().to_string()])
        .args(["-t", &topic("cmd/package/result"), "-C", "1", "-W", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let unsigned = json!({
        "schema": "storeguard.cmd/v1", "site_id": SITE, "device_id": DEVICE,
        "request_id": "unsigned-1", "issued_at": chrono::Utc::now().to_rfc3339(),
        "expires_at": (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339(),
        "args": { "event": ev },
    });
    rig.broker.publish(
        &topic("cmd/package"),
        unsigned.to_string().as_bytes(),
        false,
    );
    let out = results.wait_with_output().unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(answer["status"], "rejected", "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("not signed"),
        "{answer}"
    );
    let packages: i64 = db
        .query_row("SELECT count(*) FROM package", [], |r| r.get(0))
        .unwrap();
    assert_eq!(packages, 1, "refused commands made no package");
}

#[test]
fn a_package_upload_resumes_after_a_broker_outage() {
    // Slow chunks, so the broker can be killed in the middle of the package. Asked for
    // during the post-roll: the command waits for both clips.
    let (mut rig, rx, ev) = package_rig(
        "chunk_size = \"16KiB\"\nupload_rate_limit = \"48KiB\"",
        false,
    );
    let (code, r, err) = rig.cc.cmd("package", json!({ "event": ev }), &[]);
    assert_eq!(code, Some(0), "{r} {err}");
    let clips = r["result"]["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["clip"].is_string())
        .count();
    assert_eq!(clips, 2, "both clips, cut after the command came: {r}");
    let id = r["result"]["package"].as_str().unwrap().to_string();
    let bytes = r["result"]["file"]["size"].as_u64().unwrap();
    let upload = |site: &Site| -> Value {
        let out = site.cli(&["outbox", "--json"]).expect(0).stdout.clone();
        serde_json::from_str::<Value>(&out).unwrap()["upload"].clone()
    };
    wait_until_within(
        "part of the package acknowledged by the broker",
        Duration::from_secs(60),
        || {
            let u = upload(&rig.site);
            u["clip"] == id.as_str() && u["acked_offset"].as_u64().unwrap_or(0) >= 32 << 10
        },
    );
    rig.broker.stop(); // SIGKILL
    wait_until_within("the box to notice", Duration::from_secs(15), || {
        rig.site.status()["uplink"]["connected"] == false
    });
    let persisted: i64 = rig
        .site
        .db()
        .query_row(
            "SELECT next_offset FROM upload WHERE clip = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        persisted > 0 && (persisted as u64) < bytes,
        "{persisted} of {bytes}"
    );
    let restarted_at = storeguard_base::utc_ms(storeguard_base::now_ns());
    rig.broker.restart().unwrap();
    wait_until_within(
        "the package's receipt kept on the box",
        Duration::from_secs(90),
        || package_state(&rig.site, &id) == "acked",
    );
    assert_eq!(
        sha256_hex(&received_package(&rx, &id)),
        r["result"]["file"]["sha256"].as_str().unwrap()
    );
    // After the outage the upload went on from the persisted point: bytes before it
    // travel again only if the receiver asked for them.
    let again: Vec<u64> = rx
        .deliveries()
        .iter()
        .filter(|l| {
            l.contains(&format!("/evidence/{id}/chunk ")) && l.as_str() > restarted_at.as_str()
        })
        .filter_map(|l| crate::uplink::field(l, "offset").parse().ok())
        .collect();
    assert!(!again.is_empty(), "no chunks after the restart");
    if again.iter().any(|o| (*o as i64) < persisted) {
        assert!(
            rx.stderr_has("bytes missing"),
            "{again:?} below {persisted}"
        );
    }
    eprintln!(
        "package {id}: {bytes} bytes, broker killed at {persisted}; chunks after the restart from {:?}",
        again.iter().min()
    );
}

#[test]
fn a_package_that_fails_verification_is_sent_again_then_given_up_and_never_confirmed() {
    let (rig, rx, ev) = package_rig(
        "chunk_size = \"16KiB\"\nupload_rate_limit = \"128KiB\"",
        true,
    );
    let (code, r, err) = rig.cc.cmd("package", json!({ "event": ev }), &[]);
    assert_eq!(code, Some(0), "{r} {err}");
    let id = r["result"]["package"].as_str().unwrap().to_string();
    // Damaged in the spool before the upload reaches the middle (same size).
    let zip = rig
        .site
        .path("data")
        .join("packages")
        .join(format!("{id}.zip"));
    let mut bytes = std::fs::read(&zip).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&zip, bytes).unwrap();
    let db = rig.site.db();
    let upload = || -> (String, i64, String) {
        db.query_row(
            "SELECT state, attempts, coalesce(error, '') FROM upload WHERE clip = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap_or_default()
    };
    wait_until_within(
        "the package upload to be given up",
        Duration::from_secs(90),
        || upload().0 == "failed",
    );
    let (_, attempts, error) = upload();
    // Each attempt announced the package again (the receiver drops a failed one).
    assert_eq!(attempts, 3, "{error}");
    assert!(error.contains("SHA-256"), "{error}");
    assert!(rx.stderr_has("package failed verification"));
    let announced = rx
        .deliveries()
        .iter()
        .filter(|l| l.contains(&format!("/evidence/{id}/manifest ")))
        .count();
    assert!(announced >= 3, "announced {announced} times");
    assert!(!received_package(&rx, &id).exists());
    assert_eq!(package_state(&rig.site, &id), "sealed", "never confirmed");
}
