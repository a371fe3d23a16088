//! Secrets never print: a whole run — cameras with passwords, an MQTT login, a press whose
//! clip goes upstream and is confirmed, a reload, every read-only CLI command — at trace
//! log level, then every log line, every CLI output and everything that went upstream is
//! searched for each secret in every form it could leak in.
//! (Socket access by a second, unprivileged user: `daemon.rs`; one store publishing as
//! another: `uplink.rs`.)

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use storeguard_fixtures::broker::{BrokerOpts, MosquittoBroker};
use storeguard_fixtures::harness::*;
use storeguard_fixtures::{FakeCamFleet, FleetOptions, centre};

use crate::isb::{clips_of, press, wait_event, wait_recorded};
use crate::uplink::Rx;

const CAM_USER: &str = "viewer";
const CAM_PASS: &str = "Cam-Pw-4a7f19";
const MQTT_PASS: &str = "Mqtt-Pw-9c23e1";
const CC_PASS: &str = "Centre-Pw-55b0";

/// Every way a secret could show up in text: as is, URL-encoded, and inside an HTTP Basic
/// `Authorization` header (RTSP uses it too).
fn forms(user: &str, secret: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        secret.to_string(),
        secret.replace('-', "%2D"),
        b64.encode(format!("{user}:{secret}")),
    ]
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn secrets_never_appear_in_logs_cli_output_or_upstream() {
    let cams = FakeCamFleet::spawn(
        &storeguard_fixtures::fixture_bin("fakecam"),
        &FleetOptions {
            cameras: 2,
            width: 320,
            height: 180,
            gop: 15,
            auth: Some((CAM_USER.into(), CAM_PASS.into())),
            ..Default::default()
        },
    )
    .expect("fakecam fleet starts");
    let mqtt_user = "sec-store/sec-box";
    let broker = MosquittoBroker::start(BrokerOpts {
        users: vec![
            (mqtt_user.into(), MQTT_PASS.into()),
            ("control-centre".into(), CC_PASS.into()),
        ],
        acl_file: Some(repo_root().join("edge-config/mosquitto/storeguard.acl")),
        ..Default::default()
    })
    .unwrap();
    let rx = Rx::start_as(&broker.url(), "control-centre", CC_PASS);

    // cam1 with username/password fields, cam2 with the credentials in its URL.
    let inline = cams
        .url(2)
        .replacen("rtsp://", &format!("rtsp://{CAM_USER}:{CAM_PASS}@"), 1);
    let config = format!(
        "[site]\nsite_id = \"sec-store\"\ndevice_id = \"sec-box\"\n\n\
         [storage]\ndata_dir = \"data\"\nsegment_length = \"4s\"\n\n\
         [control]\nsocket = \"control.sock\"\n\n{trust}\n\
         [uplink]\nbroker = \"{broker}\"\nusername = \"{mqtt_user}\"\npassword = \"{MQTT_PASS}\"\n\
         max_reconnect_backoff = \"300ms\"\n\n\
         [[cameras]]\nid = \"cam1\"\nurl = \"{u1}\"\nusername = \"{CAM_USER}\"\npassword = \"{CAM_PASS}\"\n\n\
         [[cameras]]\nid = \"cam2\"\nurl = \"{inline}\"\n\n\
         [[buttons]]\nname = \"till\"\nchip = \"sim\"\nline = 0\nwiring = \"normally-open\"\ncameras = [\"cam1\", \"cam2\"]\n\
         pre_roll = \"2s\"\npost_roll = \"2s\"\n",
        trust = centre::trust_toml(),
        broker = broker.url(),
        u1 = cams.url(1),
    );
    let site = Site::new();
    site.write_config(&config);
    let mut d = site.start_env(&[("STOREGUARD_LOG", "trace".as_ref())]);
    let db = site.db();
    wait_recorded(&site, &db, "cam1", Duration::from_secs(3));
    wait_recorded(&site, &db, "cam2", Duration::from_secs(3));
    wait_until("the uplink", || {
        site.status()["uplink"]["connected"] == true
    });

    // A press whose clips go upstream and come back confirmed.
    press(&site, "till", 200);
    let ev = wait_event(&db, "till", "isb_press");
    wait_until_within(
        "both clips confirmed by the receiver",
        Duration::from_secs(90),
        || {
            let c = clips_of(&db, &ev.uid);
            c.len() == 2 && c.iter().all(|c| c.state == "acked")
        },
    );

    // A reload with the same secrets, and every read-only command a technician uses.
    let mut outputs = Vec::new();
    site.write_config(&config.replace("segment_length = \"4s\"", "segment_length = \"5s\""));
    for args in [
        &["config", "reload"][..],
        &["config", "show"],
        &["config", "status"],
        &["status"],
        &["status", "--json"],
        &["cameras"],
        &["cameras", "--json"],
        &["doctor"],
        &["outbox"],
        &["events"],
    ] {
        let out = site.cli(args);
        outputs.push((args.join(" "), out.all()));
    }
    let validate = site.cli(&["config", "validate", site.config_path().to_str().unwrap()]);
    outputs.push(("config validate".into(), validate.all()));
    d.signal(libc::SIGTERM);
    d.wait_exit(DEADLINE).expect("the daemon stops on SIGTERM");
    let log = d.log();
    assert!(
        log.lines().count() > 20,
        "a trace-level run logs plenty:\n{log}"
    );

    let key_seed = std::fs::read(site.data_dir().join("keys/device_ed25519.key")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut secrets: Vec<(&str, String)> = Vec::new();
    for f in forms(CAM_USER, CAM_PASS) {
        secrets.push(("camera password", f));
    }
    for f in forms(mqtt_user, MQTT_PASS) {
        secrets.push(("MQTT password", f));
    }
    secrets.push(("device key seed (base64)", b64.encode(&key_seed)));
    secrets.push((
        "device key seed (hex)",
        key_seed.iter().map(|b| format!("{b:02x}")).collect(),
    ));

    let mut texts: Vec<(String, String)> = log
        .lines()
        .enumerate()
        .map(|(i, l)| (format!("daemon log line {}", i + 1), l.to_string()))
        .collect();
    texts.extend(outputs);
    // Upstream: everything the receiver stored (JSON lines, manifests, receipts) and printed.
    let mut files = Vec::new();
    files_under(&rx.out, &mut files);
    for p in files {
        if let Ok(text) = std::fs::read_to_string(&p) {
            texts.push((format!("upstream {}", p.display()), text));
        }
    }
    assert!(
        texts.iter().any(|(_, t)| t.contains("alert")),
        "the alert went upstream"
    );
    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        for (place, text) in &texts {
            if text.contains(secret.as_str()) {
                leaks.push(format!("{what} in {place}: {text}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    // The masks are there, so the test looked at the right lines.
    let show = &texts.iter().find(|(p, _)| p == "config show").unwrap().1;
    assert!(show.contains("password = \"********\""), "{show}");
    drop(rx);
}
