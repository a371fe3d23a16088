//! The uplink end to end: a real mosquitto on a free loopback port, a real Store in a
//! temp dir, and the real `sg-receiver` binary as the control centre.
//!
//! Deadlines are generous and only bound the wait for an outcome; nothing asserts speed
//! (see `bench_uplink`, ignored by default, for figures).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storeguard::config::Config;
use storeguard::evidence::DeviceKey;
use storeguard::evidence::manifest::{
    Actual, CameraRef, EventKind, EventRef, FileRef, Manifest, Requested, SCHEMA, Software,
};
use storeguard::store::Store;
use storeguard::store::events::{EventRow, NewClip};
use storeguard::store::outbox::{Class, Limits};
use storeguard::store::upload::UploadState;
use storeguard::uplink::{Uplink, UplinkHandle, topics};
use storeguard_fixtures::broker::{BrokerOpts, BrokerTls, MosquittoBroker};
use storeguard_fixtures::centre;
use storeguard_fixtures::harness::{DEADLINE, Site, wait_until_within};

const SITE: &str = "s1";

/// The alert payload the daemon sends for `ev`.
fn alert_payload(ev: &EventRow, clips: &[String]) -> Vec<u8> {
    topics::alert_payload(
        &topics::AlertEvent {
            uid: &ev.uid,
            kind: &ev.kind,
            source: &ev.source,
            source_kind: "button",
            at_ns: ev.at_ns,
            test: ev.test,
            cameras: &[],
            detail: &ev.detail,
        },
        clips,
    )
}

/// The harness's wait, in whole seconds as these tests count them.
#[track_caller]
fn wait_until(secs: u64, what: &str, done: impl FnMut() -> bool) {
    wait_until_within(what, Duration::from_secs(secs), done);
}

// ---------------------------------------------------------------- receiver process

pub(crate) struct Rx {
    child: Child,
    pub(crate) out: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect_lines(r: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>, tag: &'static str) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tag == "err" && std::env::var_os("SG_TEST_VERBOSE").is_some() {
                eprintln!("[receiver] {line}");
            }
            sink.lock().unwrap().push(line);
        }
    });
}

impl Rx {
    pub(crate) fn start(url: &str) -> Rx {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().to_path_buf();
        let mut rx = Rx::start_in(url, &out);
        rx._tmp = Some(tmp);
        rx
    }

    /// A subscribed receiver that logs in as `user`.
    pub(crate) fn start_as(url: &str, user: &str, pass: &str) -> Rx {
        let tmp = tempfile::tempdir().unwrap();
        let mut rx = Rx::start_args(url, tmp.path(), &["--username", user, "--password", pass]);
        rx._tmp = Some(tmp);
        rx.wait_subscribed(1);
        rx
    }

    /// A receiver on an existing output directory (a restart).
    fn start_in(url: &str, out: &Path) -> Rx {
        Rx::start_args(url, out, &[])
    }

    pub(crate) fn start_args(url: &str, out: &Path, extra: &[&str]) -> Rx {
        let key_dir = out.join("centre-key");
        centre::write_key_dir(&key_dir).expect("write the centre key");
        let mut child = Command::new(storeguard_fixtures::fixture_bin("sg-receiver"))
            .args(["--broker", url, "--max-backoff", "300ms", "--out"])
            .arg(out)
            .arg("--key-dir")
            .arg(&key_dir)
            .args(extra)
            .env("STOREGUARD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sg-receiver");
        let (stdout, stderr) = (Arc::default(), Arc::default());
        collect_lines(child.stdout.take().unwrap(), Arc::clone(&stdout), "out");
        collect_lines(child.stderr.take().unwrap(), Arc::clone(&stderr), "err");
        Rx {
            child,
            out: out.to_path_buf(),
            _tmp: None,
            stdout,
            stderr,
        }
    }

    fn subscriptions(&self) -> usize {
        let e = self.stderr.lock().unwrap();
        e.iter()
            .filter(|l| l.contains("receiver subscribed"))
            .count()
    }

    pub(crate) fn wait_subscribed(&self, n: usize) {
        wait_until(15, "the receiver's subscription", || {
            self.subscriptions() >= n
        });
    }

    pub(crate) fn stderr_has(&self, needle: &str) -> bool {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    pub(crate) fn lines(&self, prefix: &str) -> Vec<String> {
        let o = self.stdout.lock().unwrap();
        o.iter()
            .filter(|l| l.starts_with(&format!("{prefix} ")))
            .cloned()
            .collect()
    }

    /// `key=value` fields of the ALERT lines from `device`.
    pub(crate) fn alerts_from(&self, device: &str) -> Vec<String> {
        self.lines("ALERT")
            .iter()
            .filter(|l| field(l, "device") == device)
            .map(|l| field(l, "id"))
            .collect()
    }

    fn clips_from(&self, device: &str) -> Vec<String> {
        self.lines("CLIP")
            .into_iter()
            .filter(|l| field(l, "device") == device)
            .collect()
    }

    /// The health reports received (`health.jsonl`), oldest first.
    pub(crate) fn health(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.out.join("health.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub(crate) fn deliveries(&self) -> Vec<String> {
        std::fs::read_to_string(self.out.join("deliveries.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Rx {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
        .to_string()
}

fn assert_unique(ids: &[String]) {
    let set: HashSet<&String> = ids.iter().collect();
    assert_eq!(set.len(), ids.len(), "duplicates among {ids:?}");
}

// ---------------------------------------------------------------- device side

fn device_config(dir: &Path, device: &str, uplink: &str) -> Config {
    let text = format!(
        "[site]\nsite_id = \"{SITE}\"\ndevice_id = \"{device}\"\n\n[storage]\ndata_dir = \"{}\"\n\n{}\n[uplink]\n{uplink}\n",
        dir.display(),
        centre::trust_toml()
    );
    Config::parse(&text, dir).unwrap_or_else(|p| panic!("test config: {p:?}"))
}

struct Device {
    id: String,
    _dir: Option<tempfile::TempDir>,
    dir: PathBuf,
    store: Store,
    cfg: Config,
    key: DeviceKey,
}

impl Device {
    fn new(id: &str, uplink: &str) -> Device {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut d = Device::at(&dir, id, uplink);
        d._dir = Some(tmp);
        d
    }

    fn at(dir: &Path, id: &str, uplink: &str) -> Device {
        let cfg = device_config(dir, id, uplink);
        let store = Store::open(dir).unwrap();
        let key = DeviceKey::load_or_create(&dir.join("keys")).unwrap();
        Device {
            id: id.to_string(),
            _dir: None,
            dir: dir.to_path_buf(),
            store,
            cfg,
            key,
        }
    }

    fn limits(&self) -> Limits {
        storeguard::uplink::outbox_limits(&self.cfg)
    }

    fn start(&self) -> UplinkHandle {
        Uplink::start(self.store.clone(), &self.cfg).unwrap()
    }

    fn event(&self, n: usize) -> EventRow {
        EventRow {
            id: 0,
            uid: format!("{}-e{n}", self.id),
            kind: "isb_press".into(),
            source: "till".into(),
            at_ns: topics::now_ns(),
            test: false,
            detail: serde_json::json!({ "n": n }),
            time: None,
        }
    }

    /// An event and its alert, committed together as the daemon does.
    fn alert(&self, n: usize) -> String {
        self.alert_with(self.event(n))
    }

    fn alert_with(&self, ev: EventRow) -> String {
        let payload = alert_payload(&ev, &[]);
        self.store
            .record_event(&ev, Some(("alert", &payload)), &[], ev.at_ns)
            .unwrap();
        ev.uid
    }

    fn health(&self, n: usize) -> bool {
        let p = topics::health_payload(topics::now_ns(), serde_json::json!({ "n": n, "cpu": 0.5 }));
        self.store
            .enqueue(
                Class::Telemetry,
                "health",
                &p,
                false,
                topics::now_ns(),
                self.limits(),
            )
            .unwrap()
            .is_some()
    }

    /// A sealed clip of `size` pseudo-random bytes with a signed manifest sidecar, and its
    /// event's alert; returns the clip file's path.
    fn clip(&self, uid: &str, size: usize) -> PathBuf {
        let now = topics::now_ns();
        let ev = EventRow {
            uid: format!("ev-{uid}"),
            ..self.event(0)
        };
        let alert = alert_payload(&ev, &[uid.to_string()]);
        let (event_id, _) = self
            .store
            .record_event(
                &ev,
                Some(("alert", &alert)),
                &[NewClip {
                    uid: uid.into(),
                    camera: "cam1".into(),
                    from_ns: now - 60_000_000_000,
                    to_ns: now,
                }],
                now,
            )
            .unwrap();
        let clip_id = self.store.clips_of_event(event_id).unwrap()[0].id;
        let rel = format!("evidence/{uid}.mp4");
        let path = self.dir.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, pseudo_random(size, uid.len() as u64 + size as u64)).unwrap();
        let file = FileRef::from_path(&path).unwrap();
        let t = chrono::Utc::now();
        let mut m = Manifest {
            schema: SCHEMA.into(),
            site_id: SITE.into(),
            device_id: self.id.clone(),
            camera: CameraRef {
                id: "cam1".into(),
                name: "Till 1".into(),
            },
            event: EventRef {
                id: ev.uid.clone(),
                kind: EventKind::new(EventKind::ISB_PRESS),
                test: false,
            },
            requested: Requested {
                from: t - chrono::Duration::seconds(60),
                to: t,
            },
            actual: Actual {
                first_frame: t - chrono::Duration::seconds(60),
                last_frame: t,
            },
            codec: "h264".into(),
            width: 1280,
            height: 720,
            file: file.clone(),
            gaps: vec![],
            time: None,
            software: Software::this(),
            created_at: t,
            signature: None,
        };
        m.sign(&self.key);
        m.write_sidecar(&path).unwrap();
        let (topic, payload) = topics::manifest_message(uid, &m);
        self.store
            .seal_clip(
                clip_id,
                &rel,
                &file.sha256,
                file.size,
                Some((&topic, &payload)),
                now,
            )
            .unwrap();
        path
    }

    fn clip_state(&self, uid: &str) -> String {
        self.store.clip(uid).unwrap().unwrap().state
    }

    fn depth(&self, class: Class) -> u64 {
        self.store.outbox_stats().unwrap()[class as usize].depth
    }
}

/// Deterministic bytes (a clip's content must be the same on a re-run of one test).
fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn retained(port: u16, topic: &str) -> String {
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .expect("run mosquitto_sub");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn persistent_broker() -> MosquittoBroker {
    MosquittoBroker::start(BrokerOpts {
        persistence: true,
        ..Default::default()
    })
    .unwrap()
}

// ---------------------------------------------------------------- tests

#[test]
fn broker_down_at_start_then_everything_arrives_once_alerts_first() {
    // The receiver's persistent session is saved by the broker across the outage.
    let mut broker = persistent_broker();
    let rx = Rx::start(&broker.url());
    rx.wait_subscribed(1);
    broker.terminate();

    let dev = Device::new(
        "box-a",
        &format!(
            "broker = \"{}\"\nchunk_size = \"16KiB\"\nmax_reconnect_backoff = \"500ms\"",
            broker.url()
        ),
    );
    let up = dev.start();
    let mut expected: Vec<String> = (0..20).map(|i| dev.alert(i)).collect();
    for i in 0..5 {
        assert!(dev.health(i));
    }
    let clip_path = dev.clip("clip-a", 200_000);
    expected.push("ev-clip-a".into());
    up.notify();

    wait_until(15, "a failed connection attempt", || {
        up.status()["last_error"].is_string()
    });
    let st = up.status();
    assert_eq!(st["connected"], false, "{st:#}");
    assert!(
        st["last_error"].as_str().unwrap().contains("refused"),
        "{st:#}"
    );
    assert_eq!(dev.depth(Class::Alert), 21);
    assert_eq!(dev.depth(Class::Evidence), 1);
    assert_eq!(dev.depth(Class::Telemetry), 5);

    broker.restart().unwrap();
    wait_until(30, "all alerts and the verified clip", || {
        rx.alerts_from("box-a").len() >= 21 && !rx.clips_from("box-a").is_empty()
    });
    wait_until(15, "the device to see the receiver's ack", || {
        dev.clip_state("clip-a") == "acked"
    });

    // Exactly once, in the order they were accepted.
    let got = rx.alerts_from("box-a");
    assert_unique(&got);
    assert_eq!(got, expected);
    let health = std::fs::read_to_string(rx.out.join("health.jsonl")).unwrap();
    assert_eq!(health.lines().count(), 5);

    // Alerts, then the manifest, then the chunks.
    let d = rx.deliveries();
    let pos = |pat: &str, last: bool| {
        let hit = |(i, l): (usize, &String)| l.contains(pat).then_some(i);
        if last {
            d.iter().enumerate().rev().find_map(hit)
        } else {
            d.iter().enumerate().find_map(hit)
        }
        .unwrap_or_else(|| panic!("no {pat} in {d:#?}"))
    };
    assert!(pos("/alert ", true) < pos("/manifest ", false), "{d:#?}");
    assert!(pos("/manifest ", false) < pos("/chunk ", false), "{d:#?}");

    let clip_line = &rx.clips_from("box-a")[0];
    assert_eq!(field(clip_line, "clip"), "clip-a");
    assert_eq!(field(clip_line, "bytes"), "200000");
    let stored = rx
        .out
        .join("clips")
        .join(SITE)
        .join("box-a")
        .join("clip-a.mp4");
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        std::fs::read(&clip_path).unwrap()
    );
    assert!(stored.with_extension("mp4.manifest.json").exists());
    for c in Class::ALL {
        assert_eq!(dev.depth(c), 0, "{c:?} left in the outbox");
    }
    assert_eq!(
        dev.store.upload("clip-a").unwrap().unwrap().state,
        UploadState::Acked
    );

    let status_topic = format!("storeguard/v1/{SITE}/box-a/status");
    assert!(retained(broker.port(), &status_topic).contains("\"online\""));
    let t = Instant::now();
    up.shutdown();
    eprintln!("shutdown took {:?}", t.elapsed());
    let last = retained(broker.port(), &status_topic);
    assert!(
        last.contains("\"offline\"") && last.contains("\"shutdown\""),
        "{last}"
    );
}

#[test]
fn broker_killed_mid_upload_resumes_where_the_broker_left_off() {
    let mut broker = persistent_broker();
    let rx = Rx::start(&broker.url());
    rx.wait_subscribed(1);
    let dev = Device::new(
        "box-b",
        &format!(
            "broker = \"{}\"\nchunk_size = \"32KiB\"\nupload_rate_limit = \"256KiB\"\nmax_reconnect_backoff = \"500ms\"",
            broker.url()
        ),
    );
    let up = dev.start();
    let total = 1_000_000u64;
    let clip_path = dev.clip("clip-b", total as usize);
    up.notify();

    let acked = |up: &UplinkHandle| up.status()["upload"]["acked_offset"].as_u64().unwrap_or(0);
    wait_until(30, "a quarter of the clip acknowledged", || {
        acked(&up) >= total / 4
    });
    let before_kill = acked(&up);
    broker.stop(); // SIGKILL: the broker loses everything it held
    wait_until(15, "the device to notice", || {
        up.status()["connected"] == false
    });
    let st = up.status();
    let resumed = st["upload"]["resumed_from"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("no resume point in {st:#}"));
    let persisted = dev.store.upload("clip-b").unwrap().unwrap().next_offset;
    assert!(
        resumed >= before_kill && resumed > 0,
        "{resumed} < {before_kill}"
    );
    assert_eq!(resumed, persisted, "resume point is the persisted progress");

    let restarted_at = topics::utc_ms(topics::now_ns());
    broker.restart().unwrap();
    wait_until(60, "the clip to verify", || {
        !rx.clips_from("box-b").is_empty()
    });
    wait_until(15, "the device to see the receiver's ack", || {
        dev.clip_state("clip-b") == "acked"
    });
    let stored = rx
        .out
        .join("clips")
        .join(SITE)
        .join("box-b")
        .join("clip-b.mp4");
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        std::fs::read(&clip_path).unwrap()
    );

    // After the restart, chunks below the resume point travel again only if the
    // receiver asked for them (the killed broker may have lost some it had acknowledged).
    let offsets_after: Vec<u64> = rx
        .deliveries()
        .iter()
        .filter(|l| l.contains("/chunk ") && l.as_str() > restarted_at.as_str())
        .filter_map(|l| field(l, "offset").parse().ok())
        .collect();
    let below = offsets_after.iter().filter(|o| **o < resumed).count();
    if below > 0 {
        assert!(
            rx.stderr_has("bytes missing"),
            "{offsets_after:?} below {resumed}"
        );
    }
    let st = up.status();
    eprintln!(
        "killed at {before_kill}, resumed at {resumed}; {} chunk bytes published for {total}; {below} resent on request",
        st["chunk_bytes_published"]
    );
    up.shutdown();
}

/// Runs as a separate process (re-executed test binary) for `killed_with_9`.
#[test]
fn child_uplink_process() {
    let Ok(dir) = std::env::var("SG_CHILD_DIR") else {
        return; // a no-op in a normal test run
    };
    let broker = std::env::var("SG_CHILD_BROKER").unwrap();
    let dev = Device::at(
        Path::new(&dir),
        "box-k",
        &format!("broker = \"{broker}\"\nwindow = 1\nmax_reconnect_backoff = \"300ms\""),
    );
    if std::env::var_os("SG_CHILD_ENQUEUE").is_some() {
        for i in 0..100 {
            dev.alert(i);
        }
    }
    let _up = dev.start();
    println!("STARTED");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn spawn_child(dir: &Path, broker: &str, enqueue: bool) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "uplink::child_uplink_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("SG_CHILD_DIR", dir)
    .env("SG_CHILD_BROKER", broker)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if enqueue {
        c.env("SG_CHILD_ENQUEUE", "1");
    }
    c.spawn().unwrap()
}

fn outbox_rows(dir: &Path) -> i64 {
    let c = rusqlite::Connection::open_with_flags(
        dir.join(storeguard::store::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap()
}

/// A TCP proxy to the broker that passes the first `pubacks` PUBACKs back to the client
/// and then nothing more: the client is frozen with a message in flight, exactly.
struct AckGate {
    port: u16,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl AckGate {
    fn start(broker_port: u16, pubacks: usize) -> AckGate {
        use std::io::Write;
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&closed);
        std::thread::spawn(move || {
            let Ok((client, _)) = l.accept() else { return };
            let broker = TcpStream::connect(("127.0.0.1", broker_port)).unwrap();
            let (mut c_in, mut b_out) = (client.try_clone().unwrap(), broker.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut b_out);
            });
            let (mut b_in, mut c_out) = (broker, client);
            let (mut buf, mut chunk, mut seen) = (Vec::new(), [0u8; 4096], 0usize);
            loop {
                let n = match b_in.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                // Forward whole packets: fixed header byte, varint remaining length, body.
                while let Some(len) = packet_len(&buf) {
                    if seen >= pubacks {
                        flag.store(true, Ordering::SeqCst);
                        buf.clear();
                        break;
                    }
                    if buf[0] >> 4 == 4 {
                        seen += 1;
                    }
                    if c_out.write_all(&buf[..len]).is_err() {
                        return;
                    }
                    buf.drain(..len);
                }
            }
        });
        AckGate { port, closed }
    }
}

fn packet_len(b: &[u8]) -> Option<usize> {
    let (mut len, mut mult) = (0usize, 1usize);
    for i in 1..5 {
        let byte = *b.get(i)? as usize;
        len += (byte & 0x7f) * mult;
        mult *= 128;
        if byte & 0x80 == 0 {
            let total = 1 + i + len;
            return (b.len() >= total).then_some(total);
        }
    }
    None
}

#[test]
fn killed_with_9_while_100_queued_then_all_arrive_once() {
    let broker = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let mut rx = Rx::start(&broker.url());
    rx.wait_subscribed(1);
    let tmp = tempfile::tempdir().unwrap();

    // 20 PUBACKs reach the device (status + 19 alerts); alert 20 is then in flight.
    let gate = AckGate::start(broker.port(), 20);
    let mut child = spawn_child(tmp.path(), &format!("mqtt://127.0.0.1:{}", gate.port), true);
    wait_until(30, "the gate to close", || {
        gate.closed.load(std::sync::atomic::Ordering::SeqCst)
    });
    wait_until(30, "the in-flight alert at the receiver", || {
        rx.alerts_from("box-k").len() >= 20
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let left = outbox_rows(tmp.path());
    eprintln!(
        "killed -9 with {left} of 100 alerts still queued ({} received)",
        rx.alerts_from("box-k").len()
    );
    assert_eq!(
        left, 81,
        "19 acknowledged and deleted, one in flight, 80 queued"
    );

    let mut child = spawn_child(tmp.path(), &broker.url(), false);
    wait_until(30, "all 100 alerts", || {
        rx.alerts_from("box-k").len() >= 100
    });
    wait_until(15, "the outbox to drain", || outbox_rows(tmp.path()) == 0);
    child.kill().unwrap();
    child.wait().unwrap();

    let got = rx.alerts_from("box-k");
    assert_unique(&got);
    let want: HashSet<String> = (0..100).map(|i| format!("box-k-e{i}")).collect();
    assert_eq!(got.iter().cloned().collect::<HashSet<_>>(), want);
    let jsonl = std::fs::read_to_string(rx.out.join("alerts.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 100);
    let deliveries = rx
        .deliveries()
        .iter()
        .filter(|l| l.contains("/alert "))
        .count();
    eprintln!("{deliveries} deliveries for 100 alerts (duplicates dropped by msg_id)");

    // The dedup record survives a receiver restart: a replayed alert is not new.
    rx.stop();
    let out = rx.out.clone();
    let rx2 = Rx::start_in(&broker.url(), &out);
    rx2.wait_subscribed(1);
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    let replay = serde_json::to_string(&first["payload"]).unwrap();
    let n = rx2.deliveries().len();
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-q",
            "1",
        ])
        .args([
            "-t",
            &format!("storeguard/v1/{SITE}/box-k/alert"),
            "-m",
            &replay,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    wait_until(15, "the replay to reach the receiver", || {
        rx2.deliveries().len() > n
    });
    assert!(rx2.lines("ALERT").is_empty(), "{:?}", rx2.lines("ALERT"));
    assert_eq!(
        std::fs::read_to_string(out.join("alerts.jsonl"))
            .unwrap()
            .lines()
            .count(),
        100
    );
}

#[test]
fn message_over_the_broker_limit_is_set_aside_and_clips_are_chunked() {
    let broker = MosquittoBroker::start(BrokerOpts {
        message_size_limit: Some(64 << 10),
        ..Default::default()
    })
    .unwrap();
    let rx = Rx::start(&broker.url());
    rx.wait_subscribed(1);
    let dev = Device::new(
        "box-m",
        &format!(
            "broker = \"{}\"\nmax_message_size = \"64KiB\"\nchunk_size = \"16KiB\"",
            broker.url()
        ),
    );
    let big = EventRow {
        detail: serde_json::json!({ "blob": "x".repeat(100_000) }),
        ..dev.event(1)
    };
    let big_id = dev.alert_with(big);
    let small_id = dev.alert(2);
    let clip_path = dev.clip("clip-m", 300_000);
    let up = dev.start();

    wait_until(30, "the small alerts and the clip", || {
        rx.alerts_from("box-m").len() >= 2 && !rx.clips_from("box-m").is_empty()
    });
    wait_until(15, "the clip ack", || dev.clip_state("clip-m") == "acked");
    let got = rx.alerts_from("box-m");
    assert!(got.contains(&small_id) && !got.contains(&big_id), "{got:?}");

    let st = up.status();
    assert_eq!(st["rejected"]["count"], 1, "{st:#}");
    let why = st["rejected"]["last"].as_str().unwrap();
    assert!(why.contains("more than uplink.max_message_size"), "{why}");
    let (n, rows) = dev.store.outbox_rejected(10).unwrap();
    assert_eq!(n, 1);
    assert_eq!(rows[0].topic, "alert");
    assert!(rows[0].bytes > 100_000);
    for c in Class::ALL {
        assert_eq!(dev.depth(c), 0);
    }
    let stored = rx
        .out
        .join("clips")
        .join(SITE)
        .join("box-m")
        .join("clip-m.mp4");
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        std::fs::read(&clip_path).unwrap()
    );
    up.shutdown();
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, plus an unrelated CA.
fn make_pki(dir: &Path) {
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let run = |cmd: String| openssl(dir, &cmd.split_whitespace().collect::<Vec<_>>());
    for ca in ["ca", "wrong-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=storeguard test {ca}"),
            ],
        );
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for (name, cn) in [("server", "localhost"), ("client", "box-t")] {
        run(format!(
            "req {ec} -keyout {name}.key -out {name}.csr -subj /CN={cn}"
        ));
        run(format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext"
        ));
    }
}

#[test]
fn mutual_tls_works_and_a_wrong_ca_fails_clearly() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let p = |f: &str| pki.path().join(f).display().to_string();
    let broker = MosquittoBroker::start(BrokerOpts {
        tls: Some(BrokerTls {
            ca: pki.path().join("ca.pem"),
            cert: pki.path().join("server.pem"),
            key: pki.path().join("server.key"),
            require_client_cert: true,
        }),
        ..Default::default()
    })
    .unwrap();
    let url = broker.tls_url().unwrap();
    // The receiver uses the plain listener of the same broker.
    let rx = Rx::start(&broker.url());
    rx.wait_subscribed(1);

    let good = Device::new(
        "box-t",
        &format!(
            "broker = \"{url}\"\n[uplink.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
            p("ca.pem"),
            p("client.pem"),
            p("client.key")
        ),
    );
    let wrong_ca = Device::new(
        "box-w",
        &format!(
            "broker = \"{url}\"\n[uplink.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
            p("wrong-ca.pem"),
            p("client.pem"),
            p("client.key")
        ),
    );
    let no_cert = Device::new(
        "box-n",
        &format!("broker = \"{url}\"\n[uplink.tls]\nca = \"{}\"", p("ca.pem")),
    );
    let id = good.alert(1);
    wrong_ca.alert(1);
    no_cert.alert(1);
    let (ug, uw, un) = (good.start(), wrong_ca.start(), no_cert.start());

    wait_until(20, "the alert over mutual TLS", || {
        rx.alerts_from("box-t") == [id.clone()]
    });
    assert_eq!(ug.status()["connected"], true);

    wait_until(20, "the wrong-CA error", || {
        uw.status()["last_error"].is_string()
    });
    let st = uw.status();
    let err = st["last_error"].as_str().unwrap();
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert_eq!(st["connects"], 0);

    wait_until(20, "the missing-client-cert error", || {
        un.status()["last_error"].is_string()
    });
    let st = un.status();
    eprintln!("without a client certificate: {}", st["last_error"]);
    assert_eq!(st["connects"], 0, "{st:#}");
    assert!(rx.alerts_from("box-w").is_empty() && rx.alerts_from("box-n").is_empty());
    assert_eq!(wrong_ca.depth(Class::Alert), 1, "kept for later");
    ug.shutdown();
}

#[test]
fn receiver_that_missed_the_upload_gets_it_again() {
    // No receiver while the clip goes up: the broker drops it all (no subscriber).
    let broker = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let dev = Device::new(
        "box-r",
        &format!(
            "broker = \"{}\"\nchunk_size = \"16KiB\"\nack_timeout = \"1s\"",
            broker.url()
        ),
    );
    let clip_path = dev.clip("clip-r", 100_000);
    let up = dev.start();
    wait_until(20, "the upload to be sent", || {
        dev.store.upload("clip-r").unwrap().map(|u| u.state) == Some(UploadState::Sent)
    });

    // The device re-sends the final chunk; the receiver asks for the bytes from 0, then
    // (having no manifest) for the manifest, then verifies.
    let rx = Rx::start(&broker.url());
    wait_until(30, "the clip to verify", || {
        !rx.clips_from("box-r").is_empty()
    });
    wait_until(15, "the clip ack", || dev.clip_state("clip-r") == "acked");
    assert!(rx.stderr_has("bytes missing"), "asked for missing bytes");
    assert!(
        rx.stderr_has("manifest is missing"),
        "asked for the manifest"
    );
    let stored = rx
        .out
        .join("clips")
        .join(SITE)
        .join("box-r")
        .join("clip-r.mp4");
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        std::fs::read(&clip_path).unwrap()
    );
    assert_eq!(rx.clips_from("box-r").len(), 1);
    up.shutdown();
}

#[test]
fn a_clip_that_fails_verification_is_never_released() {
    let broker = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let rx = Rx::start(&broker.url());
    rx.wait_subscribed(1);
    let dev = Device::new(
        "box-x",
        &format!("broker = \"{}\"\nchunk_size = \"16KiB\"", broker.url()),
    );
    let path = dev.clip("clip-x", 50_000);
    // Damaged on disk after it was sealed and signed (same size, one byte changed).
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[25_000] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let up = dev.start();
    wait_until(30, "the upload to be given up", || {
        dev.store.upload("clip-x").unwrap().map(|u| u.state) == Some(UploadState::Failed)
    });
    let u = dev.store.upload("clip-x").unwrap().unwrap();
    assert_eq!(u.attempts, 3, "{u:?}");
    assert!(u.error.as_deref().unwrap().contains("SHA-256"), "{u:?}");
    assert_eq!(dev.clip_state("clip-x"), "sealed", "retention lock kept");
    assert!(rx.clips_from("box-x").is_empty());
    assert!(
        up.status()["last_error"]
            .as_str()
            .unwrap()
            .contains("clip-x")
    );
    up.shutdown();
}

#[test]
fn username_and_password() {
    let broker = MosquittoBroker::start(BrokerOpts {
        users: vec![
            ("box-u".into(), "s3cret".into()),
            ("cc".into(), "cc-pass".into()),
        ],
        ..Default::default()
    })
    .unwrap();
    let rx = Rx::start_as(&broker.url(), "cc", "cc-pass");
    let cfg = |pass: &str| {
        format!(
            "broker = \"{}\"\nusername = \"box-u\"\npassword = \"{pass}\"",
            broker.url()
        )
    };
    let good = Device::new("box-u", &cfg("s3cret"));
    let bad = Device::new("box-v", &cfg("wrong"));
    let id = good.alert(1);
    bad.alert(1);
    let (ug, ub) = (good.start(), bad.start());
    wait_until(20, "the alert", || rx.alerts_from("box-u") == [id.clone()]);
    wait_until(20, "the refusal", || ub.status()["last_error"].is_string());
    let st = ub.status();
    let err = st["last_error"].as_str().unwrap();
    eprintln!("wrong password: {err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert_eq!(st["connects"], 0);
    assert!(
        !format!("{:?}", bad.cfg).contains("wrong"),
        "password masked in Debug"
    );
    ug.shutdown();
}

/// The shipped broker ACL (`edge-config/mosquitto/storeguard.acl`), verbatim: each store's
/// username is `site/device`, and it may publish only under its own topics. A box with
/// another store's credentials that names this store's site and device is refused by the
/// broker; what it sent is set aside with the reason and never reaches the control centre.
#[test]
fn the_example_acl_keeps_each_store_to_its_own_topics() {
    let acl =
        storeguard_fixtures::harness::repo_root().join("edge-config/mosquitto/storeguard.acl");
    let (user_a, user_b) = (format!("{SITE}/box-a"), format!("{SITE}/box-b"));
    let broker = MosquittoBroker::start(BrokerOpts {
        users: vec![
            (user_a.clone(), "pass-a".into()),
            (user_b.clone(), "pass-b".into()),
            ("control-centre".into(), "cc-pass".into()),
        ],
        acl_file: Some(acl),
        ..Default::default()
    })
    .unwrap();
    let rx = Rx::start_as(&broker.url(), "control-centre", "cc-pass");
    let cfg = |user: &str, pass: &str, client: &str| {
        format!(
            "broker = \"{}\"\nusername = \"{user}\"\npassword = \"{pass}\"\nclient_id = \"{client}\"\nmax_reconnect_backoff = \"300ms\"",
            broker.url()
        )
    };
    let a = Device::new("box-a", &cfg(&user_a, "pass-a", "box-a"));
    let b = Device::new("box-b", &cfg(&user_b, "pass-b", "box-b"));
    // Store b's box, configured with store a's ids: every topic it uses is box-a's.
    let forger = Device::new("box-a", &cfg(&user_b, "pass-b", "forger"));
    let ida = a.alert(1);
    let idb = b.alert(1);
    let forged = forger.alert_with(EventRow {
        uid: "forged-1".into(),
        ..forger.event(1)
    });
    let (ua, ub, uf) = (a.start(), b.start(), forger.start());
    wait_until(30, "both honest alerts", || {
        rx.alerts_from("box-a") == [ida.clone()] && rx.alerts_from("box-b") == [idb.clone()]
    });
    wait_until(30, "the broker's refusal", || {
        uf.status()["rejected"]["count"].as_u64() >= Some(1)
    });
    let st = uf.status();
    let why = st["rejected"]["last"].as_str().unwrap();
    assert!(why.contains("NotAuthorized"), "{why}");
    let (n, rows) = forger.store.outbox_rejected(10).unwrap();
    assert!(
        n >= 1 && rows.iter().any(|r| r.topic == "alert"),
        "{rows:?}"
    );
    // Let anything in flight arrive, then look again: nothing forged got through.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rx.alerts_from("box-a"), [ida], "only store a's own alert");
    assert!(!rx.lines("ALERT").iter().any(|l| l.contains(&forged)));
    for u in [ua, ub, uf] {
        u.shutdown();
    }
}

#[test]
fn full_outbox_drops_telemetry_and_keeps_every_alert() {
    let mut broker = persistent_broker();
    let rx = Rx::start(&broker.url());
    rx.wait_subscribed(1);
    broker.terminate();
    let dev = Device::new(
        "box-f",
        &format!(
            "broker = \"{}\"\nmax_messages = 100\nmax_bytes = \"1MiB\"\nmax_reconnect_backoff = \"500ms\"",
            broker.url()
        ),
    );
    let up = dev.start();
    let mut want: Vec<String> = (0..60).map(|i| dev.alert(i)).collect();
    let kept = (0..80).filter(|i| dev.health(*i)).count();
    assert_eq!(kept, 80, "new telemetry pushes out the oldest");
    assert_eq!(dev.depth(Class::Telemetry), 40);
    want.extend((60..110).map(|i| dev.alert(i)));
    assert_eq!(
        dev.depth(Class::Alert),
        110,
        "alerts are kept over the limit"
    );
    // Alerts skip the size check (the alarm path stays O(1) with a backlog); the next
    // telemetry makes room by dropping the old telemetry, and then itself.
    assert!(
        !dev.health(200),
        "no room for telemetry while alerts fill the outbox"
    );
    assert_eq!(dev.depth(Class::Telemetry), 0);
    let st = up.status();
    assert_eq!(st["outbox"][3]["dropped"], 81, "{st:#}");
    assert_eq!(st["outbox"][0]["accepted"], 110);

    broker.restart().unwrap();
    wait_until(30, "110 alerts", || rx.alerts_from("box-f").len() >= 110);
    let got = rx.alerts_from("box-f");
    assert_unique(&got);
    assert_eq!(got, want);
    wait_until(10, "the outbox to drain", || dev.depth(Class::Alert) == 0);
    let health = std::fs::read_to_string(rx.out.join("health.jsonl")).unwrap_or_default();
    assert_eq!(health.lines().count(), 0);
    up.shutdown();
}

// ---------------------------------------------------------------- benchmark

/// `mosquitto_pub` to the local broker at QoS 1.
fn mosquitto_pub(port: u16) -> Command {
    let mut c = Command::new("mosquitto_pub");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"]);
    c
}

fn mosquitto_pub_rate(port: u16, lines: &str, n: usize) -> f64 {
    let t = Instant::now();
    let mut p = mosquitto_pub(port)
        .args(["-M", "32", "-l"])
        .args(["-t", "storeguard/v1/s1/bench-pub/alert"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(p.stdin.as_mut().unwrap(), lines.as_bytes()).unwrap();
    drop(p.stdin.take());
    assert!(p.wait().unwrap().success());
    n as f64 / t.elapsed().as_secs_f64()
}

/// Queues `lines` as alerts (one transaction; enqueueing is not what is measured), then
/// times the uplink from start to an empty outbox.
fn drain_rate(broker: &MosquittoBroker, lines: &str, n: usize, round: usize) -> f64 {
    let dev = Device::new(
        &format!("bench{round}"),
        &format!("broker = \"{}\"", broker.url()),
    );
    {
        let mut c = rusqlite::Connection::open(dev.dir.join(storeguard::store::DB_FILE)).unwrap();
        let tx = c.transaction().unwrap();
        let now = topics::now_ns();
        for line in lines.lines() {
            tx.execute(
                "INSERT INTO outbox(class, topic, payload, retain, created_ns) VALUES (0, 'alert', ?1, 0, ?2)",
                rusqlite::params![line.as_bytes(), now],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    // Watch through a separate read-only connection, cheaply (outbox_stats() would read
    // every payload and contend for the store's lock).
    let watch = rusqlite::Connection::open_with_flags(
        dev.dir.join(storeguard::store::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let left = || -> i64 {
        watch
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
            .unwrap()
    };
    let t = Instant::now();
    let up = dev.start();
    while left() > 0 {
        assert!(t.elapsed() < Duration::from_secs(120), "drain stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    up.shutdown();
    rate
}

/// `cargo test --release --test it -- --ignored bench_uplink --nocapture`
#[test]
#[ignore]
fn bench_uplink() {
    let broker = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let n = 10_000;
    let body = "x".repeat(1000);

    // mosquitto_pub, same messages, same broker, same window.
    let lines: String = (0..n)
        .map(|i| {
            format!(
                "{{\"schema\":\"storeguard.alert/v1\",\"event_id\":\"b-{i}\",\"pad\":\"{body}\"}}\n"
            )
        })
        .collect();
    // Alternate the two, several rounds: this machine is shared and noisy.
    let (mut pubs, mut drains) = (Vec::new(), Vec::new());
    for round in 0..5 {
        pubs.push(mosquitto_pub_rate(broker.port(), &lines, n));
        drains.push(drain_rate(&broker, &lines, n, round));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios: Vec<String> = pubs
        .iter()
        .zip(&drains)
        .map(|(p, d)| format!("{:.2}", d / p))
        .collect();
    let (pub_rate, drain_rate) = (median(&mut pubs), median(&mut drains));
    if std::env::var_os("SG_BENCH_DRAIN_ONLY").is_some() {
        eprintln!(
            "drain {drain_rate:.0} msg/s, mosquitto_pub {pub_rate:.0} msg/s, per-round ratios {ratios:?}"
        );
        return;
    }

    // Latency: enqueue one at a time; `created_ns` is taken before the (fsync'ed)
    // enqueue commit, so the uplink's figure includes it. The commit alone is timed too.
    let dev2 = Device::new("bench-lat", &format!("broker = \"{}\"", broker.url()));
    let up2 = dev2.start();
    wait_until(10, "connection", || up2.status()["connected"] == true);
    let mut commit_us = Vec::new();
    for i in 0..1000 {
        let p = format!(
            "{{\"schema\":\"storeguard.alert/v1\",\"event_id\":\"l-{i}\",\"pad\":\"{body}\"}}"
        );
        let t = Instant::now();
        dev2.store
            .enqueue(
                Class::Alert,
                "alert",
                p.as_bytes(),
                false,
                topics::now_ns(),
                dev2.limits(),
            )
            .unwrap();
        commit_us.push(t.elapsed().as_micros() as f64);
        up2.notify();
        std::thread::sleep(Duration::from_millis(2));
    }
    wait_until(30, "latency run to drain", || dev2.depth(Class::Alert) == 0);
    let lat = up2.status()["latency_ms"].clone();
    up2.shutdown();
    commit_us.sort_by(f64::total_cmp);
    let commit_p = |q: f64| {
        commit_us[((commit_us.len() as f64 * q) as usize).min(commit_us.len() - 1)] / 1000.0
    };

    // Clip upload under a 2 MiB/s cap; the steady rate is taken between 20% and 90% of
    // the clip (the whole-transfer figure includes the one-chunk burst).
    let cap = 2u64 << 20;
    let dev3 = Device::new(
        "bench-clip",
        &format!(
            "broker = \"{}\"\nupload_rate_limit = \"2MiB\"",
            broker.url()
        ),
    );
    let total = 8u64 << 20;
    dev3.clip("clip-bench", total as usize);
    let up3 = dev3.start();
    wait_until(30, "upload start", || up3.status()["upload"].is_object());
    let t = Instant::now();
    let (mut t20, mut t90) = (None, None);
    loop {
        let st = up3.status();
        let acked = st["upload"]["acked_offset"].as_u64();
        if t20.is_none() && acked.is_some_and(|a| a >= total / 5) {
            t20 = Some((Instant::now(), acked.unwrap()));
        }
        if t90.is_none() && acked.is_some_and(|a| a >= total * 9 / 10) {
            t90 = Some((Instant::now(), acked.unwrap()));
        }
        if dev3.store.upload("clip-bench").unwrap().map(|u| u.state) == Some(UploadState::Sent) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "upload stalled");
        std::thread::sleep(Duration::from_millis(10));
    }
    let secs = t.elapsed().as_secs_f64();
    let ((ta, a), (tb, b)) = (t20.unwrap(), t90.unwrap());
    let steady = (b - a) as f64 / (tb - ta).as_secs_f64();
    let st = up3.status();
    let bytes = st["chunk_bytes_published"].as_u64().unwrap() as f64;
    up3.shutdown();

    eprintln!("\n=== uplink benchmark (loopback mosquitto, {n} x 1 KiB alerts, window 32) ===");
    eprintln!("mosquitto_pub -q 1 -M 32 -l : {pub_rate:>8.0} msg/s (median of 5)");
    eprintln!(
        "uplink outbox drain         : {drain_rate:>8.0} msg/s ({:.2}x mosquitto_pub; per round {ratios:?})",
        drain_rate / pub_rate
    );
    eprintln!(
        "enqueue->PUBACK latency     : p50 {} ms, p99 {} ms, max {} ms ({} samples)",
        lat["p50"], lat["p99"], lat["max"], lat["samples"]
    );
    eprintln!(
        "  of which the enqueue commit: p50 {:.3} ms, p99 {:.3} ms",
        commit_p(0.5),
        commit_p(0.99)
    );
    eprintln!(
        "clip upload, cap {} KiB/s     : steady {:.0} KiB/s ({:.1}% of cap); whole {} MiB in {:.2} s = {:.1}% of cap incl. burst",
        cap >> 10,
        steady / 1024.0,
        100.0 * steady / cap as f64,
        total >> 20,
        secs,
        100.0 * bytes / secs / cap as f64,
    );
}

// ------------------------------------------------- the daemon with [uplink]

/// A daemon config: one camera that never answers, a simulated button on it, and
/// `[uplink]` to `broker` with `extra` lines added.
fn daemon_uplink_config(broker: &str, extra: &str) -> String {
    format!(
        r#"[site]
site_id = "test-store"
device_id = "test-box"

[storage]
data_dir = "data"

[control]
socket = "control.sock"

[health]
offline_alert_after = "2s"

{trust}
[uplink]
broker = "{broker}"
max_reconnect_backoff = "300ms"
{extra}

[[cameras]]
id = "cam1"
name = "Till"
url = "rtsp://127.0.0.1:1/cam1"

[[buttons]]
name = "till"
chip = "sim"
line = 0
wiring = "normally-open"
cameras = ["cam1"]
"#,
        trust = centre::trust_toml()
    )
}

fn press_test(site: &Site) {
    site.cli(&["button", "press", "till", "--test"]).expect(0);
}

#[test]
fn daemon_sends_a_press_over_mosquitto_and_a_reload_moves_it_to_another_broker() {
    let a = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let b = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let (rx_a, rx_b) = (Rx::start(&a.url()), Rx::start(&b.url()));
    rx_a.wait_subscribed(1);
    rx_b.wait_subscribed(1);

    let site = Site::new();
    site.write_config(&daemon_uplink_config(&a.url(), ""));
    let _d = site.start();
    press_test(&site);
    wait_until(20, "the first press's alert at broker A", || {
        rx_a.alerts_from("test-box").len() == 1
    });

    site.write_config(&daemon_uplink_config(&b.url(), ""));
    let out = site.cli(&["config", "reload"]);
    out.expect(0);
    wait_until(20, "the uplink to report broker B", || {
        site.status()["uplink"]["broker"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!(":{}", b.port())))
    });
    // One press at a time: a second press while the first is still held is the same press.
    wait_until(20, "the button to be released", || {
        site.status()["buttons"][0]["state"] == "idle"
    });
    press_test(&site);
    wait_until(20, "the second press's alert at broker B", || {
        rx_b.alerts_from("test-box").len() == 1
    });
    assert_eq!(
        rx_a.alerts_from("test-box").len(),
        1,
        "broker A got an alert after the reload moved the uplink away"
    );
    assert_ne!(rx_a.alerts_from("test-box"), rx_b.alerts_from("test-box"));
}

#[test]
fn daemon_telemetry_obeys_the_configured_outbox_limits() {
    // The broker is never there: nothing drains, so the outbox holds what the limits allow.
    let port = storeguard_fixtures::broker::free_port().unwrap();
    let url = format!("mqtt://127.0.0.1:{port}");
    let site = Site::new();
    site.write_config(&daemon_uplink_config(&url, "max_messages = 100"));
    {
        // Create the database, then queue 150 telemetry messages behind the daemon's back.
        let mut d = site.start();
        d.signal(libc::SIGTERM);
        d.wait_exit(DEADLINE).expect("daemon stops");
        let db = site.db();
        for i in 0..150 {
            db.execute(
                "INSERT INTO outbox(class, topic, payload, retain, created_ns) VALUES (3, 'health', ?1, 0, ?2)",
                rusqlite::params![b"{}".to_vec(), i],
            )
            .unwrap();
        }
    }
    let _d = site.start();
    let db = site.db();
    let offline = || {
        db.query_row(
            "SELECT count(*) FROM health_event WHERE kind = 'camera_offline'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    };
    wait_until(20, "the camera-offline health event", || offline() >= 1);
    let queued: i64 = db
        .query_row("SELECT count(*) FROM outbox WHERE class = 3", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        queued <= 100,
        "{queued} telemetry messages queued; uplink.max_messages is 100"
    );
}

mod receipts;

#[test]
fn the_status_topic_carries_the_box_clock_and_follows_it() {
    use storeguard_base::clock::{BoxClock, publish};
    let broker = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let dev = Device::new("box-clock", &format!("broker = \"{}\"", broker.url()));
    // What the time keeper would publish: unsynchronised, in some epoch. (This test
    // process has no time keeper; other in-process tests only see their status follow.)
    let unsynced = BoxClock {
        epoch: 41,
        base_ns: 0,
        synced: false,
        error_ns: None,
        offset_ns: 0,
    };
    publish(unsynced);
    let up = dev.start();
    let topic = format!("storeguard/v1/{SITE}/box-clock/status");
    let mut last = String::new();
    wait_until(20, "online with the clock", || {
        last = retained(broker.port(), &topic);
        last.contains("\"epoch\":41")
    });
    assert!(
        last.contains(r#""clock":{"synced":false,"error_bound_ms":null,"epoch":41}"#),
        "{last}"
    );
    // NTP arrives (a step: a new epoch): the retained status follows.
    publish(BoxClock {
        epoch: 42,
        synced: true,
        error_ns: Some(20_000_000),
        ..unsynced
    });
    wait_until(20, "the status republished", || {
        last = retained(broker.port(), &topic);
        last.contains(r#""clock":{"synced":true,"error_bound_ms":20,"epoch":42}"#)
    });
    up.shutdown();
}
