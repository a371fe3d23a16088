//! Inbound MQTT the box can trust: signed clip receipts, and messages it cannot use.
//!
//! Each forged receipt is published the way an attacker with broker access would, as a
//! retained message on the box's own `evidence/{clip}/ack`, with `mosquitto_pub`.

use super::*;
use storeguard::evidence::DeviceKey;
use storeguard::uplink::topics::{AckStatus, ClipAck, SCHEMA_CLIP_ACK};

fn centre_key() -> DeviceKey {
    DeviceKey::from_seed(centre::SEED)
}

#[test]
fn the_fixture_key_pair_matches() {
    assert_eq!(centre_key().public_key_b64(), centre::PUBLIC_KEY);
}

/// A receipt as a true control centre would sign it for `dev`'s sealed clip `uid`.
fn true_receipt(dev: &Device, uid: &str, status: AckStatus) -> ClipAck {
    let row = dev.store.clip(uid).unwrap().unwrap();
    let side = storeguard::evidence::sidecar_path(&dev.dir.join(row.path.unwrap()));
    let m: storeguard::evidence::manifest::Manifest =
        serde_json::from_slice(&std::fs::read(side).unwrap()).unwrap();
    ClipAck {
        schema: SCHEMA_CLIP_ACK.into(),
        site_id: SITE.into(),
        device_id: dev.id.clone(),
        clip: uid.into(),
        status,
        bytes: row.bytes.map(|b| b as u64),
        sha256: row.sha256,
        manifest_signature: m.signature.map(|s| s.value),
        resend_from: None,
        need_manifest: false,
        reason: None,
        at: topics::utc_ms(topics::now_ns()),
        signature: None,
    }
}

fn ack_topic(dev: &Device, uid: &str) -> String {
    format!(
        "{}{}",
        topics::prefix(SITE, &dev.id),
        topics::ack_topic(uid)
    )
}

fn receipts_rejected(up: &UplinkHandle) -> u64 {
    up.status()["inbound"]["receipts_rejected"]
        .as_u64()
        .unwrap()
}

fn health_kinds(dev: &Device) -> Vec<(String, String)> {
    let c = rusqlite::Connection::open(dev.dir.join(storeguard::store::DB_FILE)).unwrap();
    let mut st = c
        .prepare("SELECT kind, detail FROM health_event ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// An uplink with no receiver: the clip goes up (the broker takes it with no
/// subscriber) and then waits, sealed and locked, for a receipt.
fn sent_clip(broker: &MosquittoBroker, id: &str, uid: &str) -> (Device, UplinkHandle) {
    let dev = Device::new(
        id,
        &format!("broker = \"{}\"\nchunk_size = \"16KiB\"", broker.url()),
    );
    dev.clip(uid, 40_000);
    let up = dev.start();
    wait_until(20, "the upload to be sent", || {
        dev.store.upload(uid).unwrap().map(|u| u.state) == Some(UploadState::Sent)
    });
    (dev, up)
}

#[test]
fn forged_receipts_are_rejected_and_a_true_one_releases_the_clip() {
    let broker = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let (dev, up) = sent_clip(&broker, "box-f", "clip-f");
    let topic = ack_topic(&dev, "clip-f");
    let good = true_receipt(&dev, "clip-f", AckStatus::Verified);
    let stranger = DeviceKey::from_seed([0x11; 32]);

    let mut forgeries: Vec<(&str, Vec<u8>)> = vec![
        ("no signature", serde_json::to_vec(&good).unwrap()),
        ("a key the box does not trust", good.signed(&stranger)),
    ];
    type Forge = fn(&mut ClipAck);
    let variants: [(&str, Forge); 4] = [
        ("the wrong sha256", |a| {
            a.sha256 = Some("0".repeat(64));
        }),
        ("the wrong size", |a| a.bytes = a.bytes.map(|b| b + 1)),
        ("another device's clip", |a| {
            a.device_id = "box-other".into()
        }),
        // What a receipt for an earlier seal of the same clip looks like: same bytes,
        // another manifest signature.
        ("a replay for an earlier seal", |a| {
            a.manifest_signature = Some("AAAA".into());
        }),
    ];
    for (what, f) in variants {
        let mut a = good.clone();
        f(&mut a);
        forgeries.push((what, a.signed(&centre_key())));
    }
    for (i, (what, payload)) in forgeries.iter().enumerate() {
        broker.publish(&topic, payload, true);
        wait_until(10, &format!("the box to reject {what}"), || {
            receipts_rejected(&up) == i as u64 + 1
        });
        assert_eq!(dev.clip_state("clip-f"), "sealed", "{what}: lock kept");
    }
    let st = up.status();
    assert!(
        st["inbound"]["last_rejected"]
            .as_str()
            .unwrap()
            .contains("manifest_signature"),
        "{st}"
    );
    assert_eq!(st["connects"], 1, "forgeries never cut the link: {st}");
    let security: Vec<_> = health_kinds(&dev)
        .into_iter()
        .filter(|(k, _)| k == "receipt_rejected")
        .collect();
    assert!(!security.is_empty(), "a security health event is raised");
    assert!(security[0].1.contains("not signed"), "{security:?}");
    // The retained forgery was cleared, so no later connection trips over it.
    assert_eq!(retained(broker.port(), &topic), "");

    let payload = good.signed(&centre_key());
    broker.publish(&topic, &payload, true);
    wait_until(10, "the true receipt to release the clip", || {
        dev.clip_state("clip-f") == "acked"
    });
    let row = dev.store.clip("clip-f").unwrap().unwrap();
    assert_eq!(
        row.receipt.as_deref().map(str::as_bytes),
        Some(&payload[..])
    );
    assert_eq!(
        row.receipt_key.as_deref(),
        Some(centre_key().key_id().as_str())
    );
    let kept = std::fs::read(storeguard::store::events::receipt_path(
        &dev.dir.join(row.path.unwrap()),
    ))
    .unwrap();
    assert_eq!(
        kept, payload,
        "the receipt is kept verbatim beside the clip"
    );
    up.shutdown();
}

#[test]
fn a_signed_incomplete_resumes_the_upload_and_an_unsigned_one_changes_nothing() {
    let broker = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let (dev, up) = sent_clip(&broker, "box-i", "clip-i");
    let topic = ack_topic(&dev, "clip-i");
    let mut a = true_receipt(&dev, "clip-i", AckStatus::Incomplete);
    (a.bytes, a.sha256, a.manifest_signature) = (None, None, None);
    a.resend_from = Some(0);
    let chunks = up.status()["chunks_published"].as_u64().unwrap();

    broker.publish(&topic, &serde_json::to_vec(&a).unwrap(), true);
    wait_until(10, "the unsigned receipt to be rejected", || {
        receipts_rejected(&up) == 1
    });
    assert_eq!(
        dev.store.upload("clip-i").unwrap().unwrap().state,
        UploadState::Sent
    );
    assert_eq!(up.status()["chunks_published"].as_u64().unwrap(), chunks);

    broker.publish(&topic, &a.signed(&centre_key()), true);
    wait_until(15, "the upload to be sent again from 0", || {
        up.status()["chunks_published"].as_u64().unwrap() >= chunks + 3
    });
    wait_until(20, "the upload to be sent", || {
        dev.store.upload("clip-i").unwrap().map(|u| u.state) == Some(UploadState::Sent)
    });
    assert_eq!(receipts_rejected(&up), 1);
    assert_eq!(dev.clip_state("clip-i"), "sealed");
    up.shutdown();
}

#[test]
fn a_20_mb_retained_message_does_not_cut_the_link() {
    let broker = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let dev_id = "box-p";
    let poison = format!("{}evidence/poison/ack", topics::prefix(SITE, dev_id));
    broker.publish(&poison, &vec![b'x'; 20 << 20], true);
    // It is there, for any client that does not refuse it.
    assert_eq!(retained(broker.port(), &poison).trim_end().len(), 20 << 20);
    let rx = Rx::start(&broker.url());
    rx.wait_subscribed(1);

    let dev = Device::new(
        dev_id,
        &format!("broker = \"{}\"\nchunk_size = \"16KiB\"", broker.url()),
    );
    let alert = dev.alert(1);
    dev.clip("clip-p", 60_000);
    let up = dev.start();
    wait_until(30, "the clip to be confirmed", || {
        dev.clip_state("clip-p") == "acked"
    });
    wait_until(10, "the alert", || !rx.alerts_from(dev_id).is_empty());
    let st = up.status();
    assert!(
        st["connects"].as_u64().unwrap() <= 2,
        "at most one reconnect: {st}"
    );
    assert_eq!(
        rx.alerts_from(dev_id)
            .iter()
            .filter(|id| **id == alert)
            .count(),
        1,
        "the press's alert arrives once"
    );
    assert!(dev.store.clip("clip-p").unwrap().unwrap().receipt.is_some());
    up.shutdown();
}

#[test]
fn without_a_trusted_key_the_uplink_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[site]\nsite_id = \"{SITE}\"\ndevice_id = \"box-n\"\n\n[storage]\ndata_dir = \"{}\"\n\n[uplink]\nbroker = \"mqtt://127.0.0.1:1\"\n",
        dir.path().display()
    );
    let cfg = Config::parse(&text, dir.path()).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let e = Uplink::start(store, &cfg).err().expect("refused");
    assert!(
        e.to_string().contains("trust.control_centre_keys"),
        "names the setting: {e}"
    );
}

/// The migration, end to end through the daemon: a box without a trusted key records and
/// alarms but keeps everything; once a key is configured its press goes up, and the
/// receipt is kept, listed, fetched and checked offline.
#[test]
fn daemon_without_a_key_holds_everything_then_keeps_shows_and_verifies_the_receipt() {
    let broker = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let rx = Rx::start(&broker.url());
    rx.wait_subscribed(1);
    let cams = storeguard_fixtures::FakeCamFleet::spawn(
        &storeguard_fixtures::fixture_bin("fakecam"),
        &storeguard_fixtures::FleetOptions {
            cameras: 1,
            width: 320,
            height: 180,
            fps: 15,
            gop: 15,
            ..Default::default()
        },
    )
    .unwrap();
    let with_key = daemon_uplink_config(&broker.url(), "")
        .replace("rtsp://127.0.0.1:1/cam1", &cams.url(1))
        .replace(
            "cameras = [\"cam1\"]",
            "cameras = [\"cam1\"]\npre_roll = \"2s\"\npost_roll = \"2s\"",
        );
    let without = with_key.replace(&centre::trust_toml(), "");
    let site = Site::new();
    site.write_config(&without);
    let _d = site.start();

    let refused = site.status()["uplink"]["refused"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(refused.contains("trust.control_centre_keys"), "{refused}");
    let doctor = site.cli(&["doctor"]);
    assert!(
        doctor.all().contains("not started") && doctor.all().contains("trust.control_centre_keys"),
        "{}",
        doctor.all()
    );
    wait_until(30, "cam1 recording", || {
        site.status()["cameras"][0]["state"] == "recording"
    });
    std::thread::sleep(Duration::from_secs(3));
    press_test(&site);
    let clip = || -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&site.cli(&["events", "--json"]).expect(0).stdout).unwrap();
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "isb_press")
            .map(|e| e["clips"][0].clone())
            .unwrap_or_default()
    };
    wait_until(60, "the press's clip to be sealed", || {
        clip()["state"] == "sealed"
    });
    assert!(
        rx.alerts_from("test-box").is_empty(),
        "nothing left the box"
    );
    // Sealed but not confirmed: the copy has a clip and a manifest, and says so.
    let early = tempfile::tempdir().unwrap();
    let id = clip()["id"].as_str().unwrap().to_string();
    let got = site.cli(&[
        "evidence",
        "get",
        &id,
        "--out",
        early.path().to_str().unwrap(),
    ]);
    got.expect(0);
    assert!(
        got.stdout.contains("receipt    none beside the clip"),
        "{}",
        got.stdout
    );

    site.write_config(&with_key);
    site.cli(&["config", "reload"]).expect(0);
    wait_until(20, "the held alert at the receiver", || {
        rx.alerts_from("test-box").len() == 1
    });
    wait_until(60, "the signed receipt to release the clip", || {
        clip()["state"] == "acked"
    });
    let c = clip();
    assert_eq!(c["receipt"]["key_id"], centre_key().key_id(), "{c}");
    assert_eq!(c["receipt"]["signed"]["status"], "verified", "{c}");
    let listed = site.cli(&["events"]).expect(0).stdout.clone();
    assert!(
        listed.contains("confirmed by the control centre"),
        "{listed}"
    );

    let out = tempfile::tempdir().unwrap();
    let uid = c["id"].as_str().unwrap();
    let got = site.cli(&[
        "evidence",
        "get",
        uid,
        "--out",
        out.path().to_str().unwrap(),
    ]);
    got.expect(0);
    assert!(
        got.stdout
            .contains("the control centre confirmed these bytes"),
        "{}",
        got.stdout
    );
    let mp4 = out.path().join(format!("{uid}.mp4"));
    let pinned = site.cli(&[
        "evidence",
        "verify",
        mp4.to_str().unwrap(),
        "--centre-key",
        centre::PUBLIC_KEY,
    ]);
    pinned.expect(0);
    assert!(
        pinned.stdout.contains("matching --centre-key"),
        "{}",
        pinned.stdout
    );
    let wrong = site.cli(&[
        "evidence",
        "verify",
        mp4.to_str().unwrap(),
        "--centre-key",
        &DeviceKey::from_seed([0x11; 32]).public_key_b64(),
    ]);
    wrong.expect(65);
    assert!(wrong.all().contains("does not trust"), "{}", wrong.all());
}
