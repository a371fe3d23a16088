//! storeguard-centre: the control centre's side of the link, as a reference.
//!
//! The receiver (`sg-receiver`) is what a control centre runs to take alerts and evidence
//! from every store box. It speaks only the wire protocol (`storeguard-proto`) and is
//! never linked into the device.
//!
//! The receiver:
//!
//! Subscribes to `storeguard/v1/+/+/#` with a persistent session and acknowledges each
//! message only after it is on disk, so nothing the broker accepted for it is lost.
//! Alerts and health go to JSONL files, deduplicated by `msg_id` (the files are the
//! dedup record, so it survives restarts). Clips are reassembled at their offsets,
//! verified against the signed manifest (SHA-256 + Ed25519, key pinned with `--pubkey`
//! or trusted on first use) and acknowledged on `evidence/{clip}/ack` (retained) with a
//! receipt signed by the centre's key (`storeguard_proto::receipt`): boxes release a clip
//! only for a signed `verified` receipt naming its exact bytes. Evidence packages (the
//! `package` remote command) come the same way as one `.zip`, announced by a
//! `storeguard.package-msg/v1`, and are checked as `storeguard evidence verify` checks a
//! package (`storeguard_proto::package::verify`) before their receipt is signed.
//!
//! Stdout carries exactly one line per new alert, per verified clip and per verified
//! package: `ALERT site=.. device=.. id=.. kind=.. at=.. msg_id=..`,
//! `CLIP site=.. device=.. clip=.. bytes=.. sha256=.. file=.. key=.. trust=.. verified` and
//! `PACKAGE site=.. device=.. package=.. event=.. files=.. bytes=.. sha256=.. file=.. key=.. trust=.. verified`.
//! Everything else is logged to stderr.

pub mod control;

use anyhow::{Context, Result, anyhow};
use rumqttc::v5::Event;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use storeguard_proto::broker::parse_broker_url;
use storeguard_proto::package::{PackageManifest, PackageMsg};
use storeguard_proto::session::{self, Backoff, ConnectOpts, TlsFiles};
use storeguard_proto::topics::{self, AckStatus, ClipAck, Kind, ManifestMsg};
use storeguard_proto::{DeviceKey, verify};

pub const SUBSCRIPTION: &str = "storeguard/v1/+/+/#";
/// The receipt-signing key's files in `--key-dir`.
pub const CENTRE_KEY_FILE: &str = "centre_ed25519.key";
pub const CENTRE_PUB_FILE: &str = "centre_ed25519.pub";

#[derive(Debug, Clone)]
pub struct ReceiverOpts {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub broker: String,
    pub out_dir: PathBuf,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: TlsFiles,
    /// Pinned device public keys (base64), by device id. Others: trust on first use.
    pub pubkeys: HashMap<String, String>,
    pub max_backoff: Duration,
    /// Largest incoming packet accepted (chunks are up to the device's max_message_size).
    pub max_packet: usize,
    /// Signs every clip receipt; boxes trust its public key (`trust.control_centre_keys`).
    pub signing_key: Option<Arc<DeviceKey>>,
}

impl ReceiverOpts {
    pub fn new(broker: impl Into<String>, out_dir: impl Into<PathBuf>) -> ReceiverOpts {
        ReceiverOpts {
            broker: broker.into(),
            out_dir: out_dir.into(),
            client_id: "sg-receiver".into(),
            username: None,
            password: None,
            tls: TlsFiles::default(),
            pubkeys: HashMap::new(),
            max_backoff: Duration::from_secs(5),
            max_packet: 64 << 20,
            signing_key: None,
        }
    }
}

/// Runs until `stop` resolves; reconnects with backoff on its own.
pub async fn run(opts: ReceiverOpts, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    let broker = parse_broker_url(&opts.broker).map_err(|e| anyhow!("--broker: {e}"))?;
    if opts.signing_key.is_none() {
        return Err(anyhow!(
            "no signing key: boxes accept only signed clip receipts (--signing-key)"
        ));
    }
    let (client, mut el) = session::client(&ConnectOpts {
        broker: broker.clone(),
        client_id: opts.client_id.clone(),
        credentials: opts
            .username
            .clone()
            .map(|u| (u, opts.password.clone().unwrap_or_default())),
        tls: opts.tls.clone(),
        keepalive: Duration::from_secs(30),
        // Persistent: the broker keeps QoS 1 messages for us while we are away.
        persistent: true,
        max_packet: opts.max_packet.min(u32::MAX as usize) as u32,
        receive_max: 1024,
        inflight: 1024,
        will: None,
    })?;
    let mut rx = Receiver::open(&opts)?;
    let mut backoff = Backoff::new(opts.max_backoff);
    let mut last_err = String::new();
    let mut owed = VecDeque::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => {
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_millis(300), async {
                    while let Ok(ev) = el.poll().await {
                        if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) { break; }
                    }
                }).await;
                return Ok(());
            }
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    last_err.clear();
                    tracing::info!(broker = %broker, "receiver connected");
                    client.try_subscribe(SUBSCRIPTION, QoS::AtLeastOnce)?;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    tracing::info!("receiver subscribed to {SUBSCRIPTION}");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = session::topic_str(&p).unwrap_or("");
                    for (topic, payload) in rx.handle(topic, &p.payload) {
                        owed.push_back(Owed::Publish(topic, payload));
                    }
                    owed.push_back(Owed::Ack(p));
                    pay(&client, &mut owed);
                }
                Ok(_) => pay(&client, &mut owed),
                Err(e) => {
                    let msg = session::describe(&e);
                    if msg != last_err {
                        tracing::warn!(broker = %broker, "receiver: {msg}");
                        last_err = msg;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

/// What the receiver owes the broker, in order: the receipts it signed and the PUBACKs of
/// what it stored. A burst of verified clips fills rumqttc's request queue; what does not
/// fit waits here (at most what the broker's Receive Maximum lets it send us) and goes out
/// as the queue drains, instead of being dropped and left to the box's `ack_timeout`.
enum Owed {
    Publish(String, Vec<u8>),
    Ack(rumqttc::v5::mqttbytes::v5::Publish),
}

/// Hands the client as much of `owed` as its queue takes, oldest first.
fn pay(client: &rumqttc::v5::AsyncClient, owed: &mut VecDeque<Owed>) {
    while let Some(o) = owed.front() {
        let queued = match o {
            Owed::Publish(topic, payload) => client
                .try_publish(topic.clone(), QoS::AtLeastOnce, true, payload.clone())
                .is_ok(),
            Owed::Ack(p) => client.try_ack(p).is_ok(),
        };
        if !queued {
            tracing::debug!(
                waiting = owed.len(),
                "receiver: MQTT queue full; receipts and PUBACKs wait"
            );
            return;
        }
        owed.pop_front();
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PartState {
    total: u64,
    sha256: String,
    /// Received byte ranges, sorted, merged, end-exclusive.
    ranges: Vec<(u64, u64)>,
}

impl PartState {
    fn add(&mut self, start: u64, end: u64) {
        self.ranges.push((start, end));
        self.ranges.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for (s, e) in self.ranges.drain(..) {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        self.ranges = out;
    }

    fn first_gap(&self) -> u64 {
        match self.ranges.first() {
            Some(&(0, e)) => e,
            _ => 0,
        }
    }

    fn complete(&self) -> bool {
        self.first_gap() >= self.total
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct DoneRecord {
    file: String,
    bytes: u64,
    sha256: String,
    key_id: String,
    trust: String,
    verified_at: String,
    /// The manifest's signature value: receipts name the seal they confirm.
    #[serde(default)]
    manifest_signature: Option<String>,
}

/// Receiver state: output files and the dedup set.
pub struct Receiver {
    out: PathBuf,
    seen: HashSet<String>,
    alerts: File,
    health: File,
    /// Every delivery, duplicates included, in arrival order (not synced; for analysis).
    deliveries: File,
    pubkeys: HashMap<String, String>,
    key: Arc<DeviceKey>,
}

impl Receiver {
    pub fn open(opts: &ReceiverOpts) -> Result<Receiver> {
        let out = opts.out_dir.clone();
        fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
        let mut seen = HashSet::new();
        let alerts = open_jsonl(&out.join("alerts.jsonl"), &mut seen)?;
        let health = open_jsonl(&out.join("health.jsonl"), &mut seen)?;
        let deliveries = OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join("deliveries.log"))
            .with_context(|| format!("open {}/deliveries.log", out.display()))?;
        Ok(Receiver {
            out,
            seen,
            alerts,
            health,
            deliveries,
            pubkeys: opts.pubkeys.clone(),
            key: opts
                .signing_key
                .clone()
                .ok_or_else(|| anyhow!("no signing key for clip receipts"))?,
        })
    }

    /// Handles one message; returns acknowledgements to publish (retained).
    pub fn handle(&mut self, topic: &str, payload: &[u8]) -> Vec<(String, Vec<u8>)> {
        let Some(p) = topics::parse(topic) else {
            tracing::debug!(
                topic,
                "ignoring a topic outside storeguard/v1/{{site}}/{{device}}/"
            );
            return Vec::new();
        };
        let (site, device) = (p.site.to_string(), p.device.to_string());
        self.log_delivery(topic, payload, &p.kind);
        let r = match p.kind {
            Kind::Alert => self.on_record(&site, &device, payload, true),
            Kind::Health => self.on_record(&site, &device, payload, false),
            Kind::Shot => self.on_shot(&site, &device, payload),
            Kind::Status => {
                match serde_json::from_slice::<topics::Status>(payload) {
                    Ok(s) => {
                        tracing::info!(site, device, state = %s.state, reason = ?s.reason, "device status")
                    }
                    Err(_) if payload.is_empty() => {}
                    Err(e) => tracing::warn!(site, device, "unreadable status: {e}"),
                }
                Ok(Vec::new())
            }
            Kind::Manifest(clip) => self.on_manifest(&site, &device, clip, payload),
            Kind::Chunk(clip) => self.on_chunk(&site, &device, clip, payload),
            // Sent by the control centre itself (or sg-control): nothing to receive.
            Kind::ClipAck(_) | Kind::ConfigDesired | Kind::Cmd(_) => Ok(Vec::new()),
            Kind::ConfigReported | Kind::CmdResult(_) => {
                tracing::info!(site, device, topic, "remote-control reply (see sg-control)");
                Ok(Vec::new())
            }
            Kind::Other(rest) => {
                tracing::debug!(site, device, topic = rest, "ignoring an unknown topic");
                Ok(Vec::new())
            }
        };
        r.unwrap_or_else(|e| {
            tracing::error!(site, device, topic, "receiver: {e:#}");
            Vec::new()
        })
    }

    /// `{received_at} {topic} {msg_id | chunk offset}`
    fn log_delivery(&mut self, topic: &str, payload: &[u8], kind: &Kind<'_>) {
        let id = match kind {
            Kind::Chunk(_) => topics::decode_chunk(payload)
                .map(|(h, _)| format!("offset={} len={}", h.offset, h.len))
                .unwrap_or_else(|_| "-".into()),
            _ => serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v["msg_id"].as_str().map(str::to_string))
                .unwrap_or_else(|| "-".into()),
        };
        let line = format!("{} {topic} {id}\n", topics::utc_ms(topics::now_ns()));
        let _ = self.deliveries.write_all(line.as_bytes());
    }

    /// A best shot or still: its JPEGs under `shots/{site}/{device}/`, a line in
    /// `shots.jsonl` (without the base64), a SHOT line on stdout.
    fn on_shot(
        &mut self,
        site: &str,
        device: &str,
        payload: &[u8],
    ) -> Result<Vec<(String, Vec<u8>)>> {
        use base64::Engine;
        let mut v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(payload).context("payload is not a JSON object")?;
        let shot: topics::Shot = serde_json::from_value(serde_json::Value::Object(
            v.iter()
                .filter(|(k, _)| k.as_str() != "msg_id")
                .map(|(k, x)| (k.clone(), x.clone()))
                .collect(),
        ))
        .context("not a storeguard.shot/v1")?;
        let msg_id = v
            .get("msg_id")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{device}:sha256:{}", hex::encode(Sha256::digest(payload))));
        if !self.seen.insert(msg_id.clone()) {
            return Ok(Vec::new());
        }
        let dir = self.out.join("shots").join(site).join(device);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let stem = msg_id.replace([':', '/'], "_");
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut files = serde_json::Map::new();
        for (field, data) in [
            ("crop_jpeg", shot.crop_jpeg.as_deref()),
            ("frame_jpeg", Some(shot.frame_jpeg.as_str())),
        ] {
            let Some(data) = data else { continue };
            let bytes = b64
                .decode(data)
                .with_context(|| format!("{field}: not base64"))?;
            let path = dir.join(format!("{stem}-{}.jpg", field.trim_end_matches("_jpeg")));
            std::fs::write(&path, &bytes).with_context(|| format!("write {}", path.display()))?;
            files.insert(field.to_string(), path.display().to_string().into());
            v.remove(field);
        }
        let line = serde_json::json!({
            "site": site, "device": device, "msg_id": msg_id,
            "received_at": topics::utc_ms(topics::now_ns()), "payload": v, "files": files,
        });
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.out.join("shots.jsonl"))
            .context("open shots.jsonl")?;
        if let Err(e) = f.write_all(&bytes).and_then(|()| f.sync_data()) {
            self.seen.remove(&msg_id);
            return Err(anyhow!("append to shots.jsonl: {e}"));
        }
        println!(
            "SHOT site={site} device={device} event={} camera={} reason={} track={} crop={}",
            word(shot.event_id.as_deref().unwrap_or("-")),
            word(&shot.camera),
            word(&shot.reason),
            shot.track.map_or("-".to_string(), |t| t.to_string()),
            files
                .get("crop_jpeg")
                .and_then(|p| p.as_str())
                .map_or("-".to_string(), word),
        );
        Ok(Vec::new())
    }

    fn on_record(
        &mut self,
        site: &str,
        device: &str,
        payload: &[u8],
        alert: bool,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(payload).context("payload is not a JSON object")?;
        let msg_id = match v.get("msg_id").and_then(|m| m.as_str()) {
            Some(m) => m.to_string(),
            None => format!("{device}:sha256:{}", hex::encode(Sha256::digest(payload))),
        };
        if !self.seen.insert(msg_id.clone()) {
            tracing::debug!(msg_id, "duplicate, already stored");
            return Ok(Vec::new());
        }
        let line = serde_json::json!({
            "site": site, "device": device, "msg_id": msg_id,
            "received_at": topics::utc_ms(topics::now_ns()), "payload": v,
        });
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        let (file, name) = if alert {
            (&mut self.alerts, "alerts.jsonl")
        } else {
            (&mut self.health, "health.jsonl")
        };
        let written = file.write_all(&bytes).and_then(|()| file.sync_data());
        if let Err(e) = written {
            self.seen.remove(&msg_id);
            return Err(anyhow!("append to {name}: {e}"));
        }
        if alert {
            let f = |k: &str| word(v.get(k).and_then(|x| x.as_str()).unwrap_or("-"));
            println!(
                "ALERT site={site} device={device} id={} kind={} at={} msg_id={}",
                f("event_id"),
                f("kind"),
                f("at"),
                word(&msg_id)
            );
        } else {
            tracing::info!(site, device, msg_id, "health report");
        }
        Ok(Vec::new())
    }

    fn partial_dir(&self, site: &str, device: &str) -> PathBuf {
        self.out.join("partial").join(site).join(device)
    }

    fn clips_dir(&self, site: &str, device: &str) -> PathBuf {
        self.out.join("clips").join(site).join(device)
    }

    fn packages_dir(&self, site: &str, device: &str) -> PathBuf {
        self.out.join("packages").join(site).join(device)
    }

    /// The record of a verified clip or package, if there is one.
    fn done_record(&self, site: &str, device: &str, id: &str) -> Option<PathBuf> {
        [
            self.clips_dir(site, device),
            self.packages_dir(site, device),
        ]
        .into_iter()
        .map(|d| d.join(format!("{id}.done.json")))
        .find(|p| p.exists())
    }

    fn on_manifest(
        &mut self,
        site: &str,
        device: &str,
        clip: &str,
        payload: &[u8],
    ) -> Result<Vec<(String, Vec<u8>)>> {
        #[derive(Deserialize)]
        struct Probe {
            schema: String,
        }
        let probe: Probe =
            serde_json::from_slice(payload).context("manifest message does not parse")?;
        if probe.schema == topics::SCHEMA_PACKAGE_MSG {
            return self.on_package_msg(site, device, clip, payload);
        }
        let msg: ManifestMsg =
            serde_json::from_slice(payload).context("manifest message does not parse")?;
        if msg.clip != clip {
            return Err(anyhow!(
                "manifest message for clip {} on the topic of {clip}",
                msg.clip
            ));
        }
        if self.done_record(site, device, clip).is_some() {
            return Ok(Vec::new());
        }
        let dir = self.partial_dir(site, device);
        fs::create_dir_all(&dir)?;
        let mut bytes = serde_json::to_vec(&msg.manifest)?;
        bytes.push(b'\n');
        write_atomic(&dir.join(format!("{clip}.manifest.json")), &bytes)?;
        tracing::info!(site, device, clip, "manifest received");
        let st = self.load_state(site, device, clip)?;
        if st.as_ref().is_some_and(|s| s.complete()) {
            return self.finish(site, device, clip);
        }
        Ok(Vec::new())
    }

    fn load_state(&self, site: &str, device: &str, clip: &str) -> Result<Option<PartState>> {
        let p = self
            .partial_dir(site, device)
            .join(format!("{clip}.state.json"));
        match fs::read(&p) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b)
                    .with_context(|| format!("{} is damaged", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!("read {}: {e}", p.display())),
        }
    }

    fn on_chunk(
        &mut self,
        site: &str,
        device: &str,
        clip: &str,
        payload: &[u8],
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let (h, data) = topics::decode_chunk(payload).map_err(|e| anyhow!("{e}"))?;
        if h.clip != clip {
            return Err(anyhow!("chunk of clip {} on the topic of {clip}", h.clip));
        }
        if let Some(done) = self.done_record(site, device, clip) {
            // Already verified: the device did not get our ack; say it again.
            if h.last {
                let rec: DoneRecord = serde_json::from_slice(&fs::read(&done)?)?;
                return Ok(vec![self.verified(site, device, clip, &rec)]);
            }
            return Ok(Vec::new());
        }
        let dir = self.partial_dir(site, device);
        fs::create_dir_all(&dir)?;
        let part = dir.join(format!("{clip}.part"));
        let mut st = match self.load_state(site, device, clip)? {
            Some(st) if st.total == h.total && st.sha256 == h.sha256 => st,
            Some(_) => {
                tracing::warn!(
                    site,
                    device,
                    clip,
                    "clip changed size or hash; starting its reassembly over"
                );
                let _ = fs::remove_file(&part);
                PartState::default()
            }
            None => PartState::default(),
        };
        st.total = h.total;
        st.sha256 = h.sha256.clone();
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .with_context(|| format!("open {}", part.display()))?;
        f.write_all_at(data, h.offset)
            .and_then(|()| f.sync_data())
            .with_context(|| format!("write {} at offset {}", part.display(), h.offset))?;
        st.add(h.offset, h.offset + h.len);
        write_atomic(
            &dir.join(format!("{clip}.state.json")),
            &serde_json::to_vec(&st)?,
        )?;
        if st.complete() {
            return self.finish(site, device, clip);
        }
        if h.last {
            let gap = st.first_gap();
            tracing::warn!(
                site,
                device,
                clip,
                offset = gap,
                "final chunk arrived with bytes missing; asking for them"
            );
            return Ok(vec![self.incomplete(site, device, clip, gap, false)]);
        }
        Ok(Vec::new())
    }

    /// All bytes are here: verify against the manifest and store the clip (or package).
    fn finish(&mut self, site: &str, device: &str, clip: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let dir = self.partial_dir(site, device);
        let part = dir.join(format!("{clip}.part"));
        let manifest = dir.join(format!("{clip}.manifest.json"));
        let state = dir.join(format!("{clip}.state.json"));
        if dir.join(format!("{clip}.package.json")).exists() {
            return self.finish_package(site, device, clip);
        }
        if !manifest.exists() {
            tracing::warn!(
                site,
                device,
                clip,
                "clip complete but its manifest is missing; asking for it"
            );
            let total = self.load_state(site, device, clip)?.map_or(0, |s| s.total);
            return Ok(vec![self.incomplete(site, device, clip, total, true)]);
        }
        let (pinned, trust) = self.device_key(site, device);
        let report = verify(&part, Some(&manifest), pinned.as_deref())
            .map_err(|e| storeguard_base::error::chain(&e));
        let report = report.and_then(|r| {
            if r.manifest.site_id != site || r.manifest.device_id != device {
                Err(format!(
                    "manifest is for {}/{}, received from {site}/{device}",
                    r.manifest.site_id, r.manifest.device_id
                ))
            } else {
                Ok(r)
            }
        });
        let r = match report {
            Ok(r) => r,
            Err(reason) => {
                tracing::error!(site, device, clip, "clip failed verification: {reason}");
                for p in [&part, &manifest, &state] {
                    let _ = fs::remove_file(p);
                }
                return Ok(vec![self.ack(site, device, clip, AckStatus::Failed, |a| {
                    a.reason = Some(reason.clone());
                })]);
            }
        };
        let m = &r.manifest;
        let out_dir = self.clips_dir(site, device);
        fs::create_dir_all(&out_dir)?;
        let mut name = safe_name(&m.file.name).unwrap_or_else(|| format!("{clip}.mp4"));
        if out_dir.join(&name).exists() {
            name = format!("{clip}_{name}");
        }
        let target = out_dir.join(&name);
        fs::rename(&part, &target).with_context(|| format!("move clip to {}", target.display()))?;
        fs::rename(&manifest, storeguard_proto::sidecar_path(&target))?;
        if let Some(sig) = &m.signature {
            self.pin_first_key(site, device, trust, &sig.public_key)?;
        }
        let rec = DoneRecord {
            file: name.clone(),
            bytes: m.file.size,
            sha256: m.file.sha256.clone(),
            key_id: r.key_id.clone(),
            trust: trust.into(),
            verified_at: topics::utc_ms(topics::now_ns()),
            manifest_signature: m.signature.as_ref().map(|s| s.value.clone()),
        };
        write_atomic(
            &out_dir.join(format!("{clip}.done.json")),
            &serde_json::to_vec(&rec)?,
        )?;
        let _ = fs::remove_file(&state);
        println!(
            "CLIP site={site} device={device} clip={clip} bytes={} sha256={} file={} key={} trust={trust} verified",
            rec.bytes,
            rec.sha256,
            word(&name),
            rec.key_id
        );
        Ok(vec![self.verified(site, device, clip, &rec)])
    }
}

impl Receiver {
    fn trust_file(&self, site: &str, device: &str) -> PathBuf {
        self.out
            .join("trust")
            .join(site)
            .join(format!("{device}.pub"))
    }

    /// The device key to verify against and how it is trusted: `pinned` (`--pubkey`),
    /// `tofu` (pinned on first use earlier) or `tofu-new` (none yet: the signer's key).
    fn device_key(&self, site: &str, device: &str) -> (Option<String>, &'static str) {
        match self.pubkeys.get(device) {
            Some(k) => (Some(k.clone()), "pinned"),
            None => match fs::read_to_string(self.trust_file(site, device)) {
                Ok(k) => (Some(k.trim().to_string()), "tofu"),
                Err(_) => (None, "tofu-new"),
            },
        }
    }

    /// Pins the key of the first verified evidence from a device (trust on first use).
    fn pin_first_key(&self, site: &str, device: &str, trust: &str, public_key: &str) -> Result<()> {
        if trust != "tofu-new" {
            return Ok(());
        }
        let f = self.trust_file(site, device);
        fs::create_dir_all(f.parent().expect("has parent"))?;
        write_atomic(&f, format!("{public_key}\n").as_bytes())
    }

    /// `evidence/{package}/manifest` with a `storeguard.package-msg/v1`: a package's zip
    /// is coming in chunks. Kept until every byte is here.
    fn on_package_msg(
        &mut self,
        site: &str,
        device: &str,
        id: &str,
        payload: &[u8],
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let msg: PackageMsg =
            serde_json::from_slice(payload).context("package message does not parse")?;
        if msg.package != id {
            return Err(anyhow!(
                "package message for {} on the topic of {id}",
                msg.package
            ));
        }
        if self.done_record(site, device, id).is_some() {
            return Ok(Vec::new());
        }
        let dir = self.partial_dir(site, device);
        fs::create_dir_all(&dir)?;
        write_atomic(
            &dir.join(format!("{id}.package.json")),
            &serde_json::to_vec(&msg)?,
        )?;
        tracing::info!(
            site,
            device,
            package = id,
            files = msg.manifest.files.len(),
            bytes = msg.file.size,
            "package announced"
        );
        if self
            .load_state(site, device, id)?
            .is_some_and(|s| s.complete())
        {
            return self.finish(site, device, id);
        }
        Ok(Vec::new())
    }

    /// A package's zip is complete: check it as `storeguard evidence verify` does (the
    /// manifest's signature by the device key, every file's size and SHA-256, nothing
    /// added, each clip against its own signed manifest), and that it is the zip and the
    /// manifest announced; then store it and sign the receipt.
    fn finish_package(
        &mut self,
        site: &str,
        device: &str,
        id: &str,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let dir = self.partial_dir(site, device);
        let part = dir.join(format!("{id}.part"));
        let announced = dir.join(format!("{id}.package.json"));
        let state = dir.join(format!("{id}.state.json"));
        let msg: PackageMsg = serde_json::from_slice(&fs::read(&announced)?)
            .with_context(|| format!("{} is damaged", announced.display()))?;
        let (pinned, trust) = self.device_key(site, device);
        let checked = (|| -> std::result::Result<_, String> {
            let (size, sha) = storeguard_proto::sha256_file(&part)
                .map_err(|e| format!("reading {}: {e}", part.display()))?;
            if size != msg.file.size || sha != msg.file.sha256 {
                return Err(format!(
                    "the zip is {size} bytes with SHA-256 {sha}; its package message says {} bytes, {}",
                    msg.file.size, msg.file.sha256
                ));
            }
            let r = storeguard_proto::package::verify(&part, pinned.as_deref(), None)
                .map_err(|e| e.to_string())?;
            let m = &r.manifest;
            if m.site_id != site || m.device_id != device {
                return Err(format!(
                    "manifest.json is for {}/{}, received from {site}/{device}",
                    m.site_id, m.device_id
                ));
            }
            let seal = |m: &PackageManifest| m.signature.as_ref().map(|s| s.value.clone());
            if m.package_id != id || seal(m) != seal(&msg.manifest) {
                return Err(format!(
                    "manifest.json is package {}, not the signed manifest announced for {id}",
                    m.package_id
                ));
            }
            Ok(r)
        })();
        let r = match checked {
            Ok(r) => r,
            Err(reason) => {
                tracing::error!(
                    site,
                    device,
                    package = id,
                    "package failed verification: {reason}"
                );
                for p in [&part, &announced, &state] {
                    let _ = fs::remove_file(p);
                }
                return Ok(vec![self.ack(site, device, id, AckStatus::Failed, |a| {
                    a.reason = Some(reason.clone());
                })]);
            }
        };
        let out_dir = self.packages_dir(site, device);
        fs::create_dir_all(&out_dir)?;
        let mut name = safe_name(&msg.file.name).unwrap_or_else(|| format!("{id}.zip"));
        if out_dir.join(&name).exists() {
            name = format!("{id}_{name}");
        }
        let target = out_dir.join(&name);
        fs::rename(&part, &target)
            .with_context(|| format!("move package to {}", target.display()))?;
        let mut manifest = serde_json::to_vec(&r.manifest)?;
        manifest.push(b'\n');
        write_atomic(&storeguard_proto::sidecar_path(&target), &manifest)?;
        let _ = fs::remove_file(&announced);
        if let Some(sig) = &r.manifest.signature {
            self.pin_first_key(site, device, trust, &sig.public_key)?;
        }
        let rec = DoneRecord {
            file: name.clone(),
            bytes: msg.file.size,
            sha256: msg.file.sha256.clone(),
            key_id: r.key_id.clone(),
            trust: trust.into(),
            verified_at: topics::utc_ms(topics::now_ns()),
            manifest_signature: r.manifest.signature.as_ref().map(|s| s.value.clone()),
        };
        write_atomic(
            &out_dir.join(format!("{id}.done.json")),
            &serde_json::to_vec(&rec)?,
        )?;
        let _ = fs::remove_file(&state);
        println!(
            "PACKAGE site={site} device={device} package={id} event={} files={} bytes={} sha256={} file={} key={} trust={trust} verified",
            word(r.manifest.event.as_ref().map_or("-", |e| e.id.as_str())),
            r.manifest.files.len(),
            rec.bytes,
            rec.sha256,
            word(&name),
            rec.key_id
        );
        Ok(vec![self.verified(site, device, id, &rec)])
    }

    /// The `verified` receipt for a stored clip: its bytes, hash and seal.
    fn verified(
        &self,
        site: &str,
        device: &str,
        clip: &str,
        rec: &DoneRecord,
    ) -> (String, Vec<u8>) {
        self.ack(site, device, clip, AckStatus::Verified, |a| {
            a.bytes = Some(rec.bytes);
            a.sha256 = Some(rec.sha256.clone());
            a.manifest_signature = rec.manifest_signature.clone();
        })
    }

    /// Asks the device for the bytes from `from` on, and the manifest if `need_manifest`.
    fn incomplete(
        &self,
        site: &str,
        device: &str,
        clip: &str,
        from: u64,
        need_manifest: bool,
    ) -> (String, Vec<u8>) {
        self.ack(site, device, clip, AckStatus::Incomplete, |a| {
            a.resend_from = Some(from);
            a.need_manifest = need_manifest;
        })
    }

    /// A signed receipt for the device, retained on its `evidence/{clip}/ack`.
    fn ack(
        &self,
        site: &str,
        device: &str,
        clip: &str,
        status: AckStatus,
        fill: impl FnOnce(&mut ClipAck),
    ) -> (String, Vec<u8>) {
        let mut a = ClipAck {
            schema: topics::SCHEMA_CLIP_ACK.into(),
            site_id: site.into(),
            device_id: device.into(),
            clip: clip.into(),
            status,
            bytes: None,
            sha256: None,
            manifest_signature: None,
            resend_from: None,
            need_manifest: false,
            reason: None,
            at: topics::utc_ms(topics::now_ns()),
            signature: None,
        };
        fill(&mut a);
        (
            format!(
                "{}{}",
                topics::prefix(site, device),
                topics::ack_topic(clip)
            ),
            a.signed(&self.key),
        )
    }
}

/// One token for the key=value stdout lines.
fn word(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_whitespace() || c == '=' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn safe_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.starts_with('.');
    ok.then(|| name.to_string())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let r = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        fs::rename(&tmp, path)
    })();
    r.with_context(|| format!("write {}", path.display()))
}

/// Opens a JSONL file for appending after loading its msg_ids; a torn last line (crash
/// mid-write) is cut off first.
fn open_jsonl(path: &Path, seen: &mut HashSet<String>) -> Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut good = 0u64;
    let mut reader = BufReader::new(&f);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        good += n as u64;
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line)
            && let Some(id) = v["msg_id"].as_str()
        {
            seen.insert(id.to_string());
        }
    }
    if f.metadata()?.len() != good {
        tracing::warn!(path = %path.display(), "cutting off a torn last line");
        f.set_len(good)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_find_gaps() {
        let mut s = PartState {
            total: 30,
            ..Default::default()
        };
        s.add(10, 20);
        assert_eq!(s.first_gap(), 0);
        s.add(0, 10);
        s.add(25, 30);
        assert_eq!(s.ranges, [(0, 20), (25, 30)]);
        assert_eq!(s.first_gap(), 20);
        assert!(!s.complete());
        s.add(18, 26);
        assert!(s.complete());
    }

    #[test]
    fn torn_jsonl_line_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.jsonl");
        fs::write(&p, b"{\"msg_id\":\"d:1\"}\n{\"msg_id\":\"d:2\"}\n{\"msg_i").unwrap();
        let mut seen = HashSet::new();
        let mut f = open_jsonl(&p, &mut seen).unwrap();
        assert_eq!(seen.len(), 2);
        f.write_all(b"{\"msg_id\":\"d:3\"}\n").unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    /// A one-file evidence package as the device zips it, signed by `device`; `tamper`
    /// changes a byte of the listed file after signing.
    fn package_zip(device: &DeviceKey, tamper: bool) -> (Vec<u8>, PackageManifest) {
        use std::io::Write as _;
        use storeguard_proto::package as pk;
        let log = b"continuity log\n".to_vec();
        let at = topics::utc_ms(topics::now_ns());
        let w = pk::Window {
            from: at.clone(),
            to: at.clone(),
        };
        let m = PackageManifest {
            schema: pk::SCHEMA.into(),
            package_id: "pkg-1".into(),
            site_id: "s1".into(),
            device_id: "d1".into(),
            event: None,
            requested: w,
            actual: None,
            cameras: vec![],
            files: vec![pk::PackFile {
                name: pk::LOG.into(),
                kind: "continuity_log".into(),
                size: log.len() as u64,
                sha256: hex::encode(Sha256::digest(&log)),
            }],
            software: storeguard_proto::manifest::Software::this(),
            created_at: at,
            created_by: pk::Requester {
                uid: None,
                pid: None,
                via: "remote".into(),
            },
            destination: "/data/packages/pkg-1.zip".into(),
            signature: None,
        };
        let mut signed = storeguard_proto::trust::sign_value(&m, device);
        let m: PackageManifest = serde_json::from_slice(&signed).unwrap();
        signed.push(b'\n');
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let mut body = log;
        if tamper {
            body[0] ^= 1;
        }
        zip.start_file(pk::LOG, stored).unwrap();
        zip.write_all(&body).unwrap();
        zip.start_file(pk::MANIFEST, stored).unwrap();
        zip.write_all(&signed).unwrap();
        (zip.finish().unwrap().into_inner(), m)
    }

    /// Announces and sends a package in one chunk; returns the receiver's answer.
    fn receive_package(rx: &mut Receiver, device: &DeviceKey, tamper: bool) -> ClipAck {
        let (bytes, m) = package_zip(device, tamper);
        let file = storeguard_proto::manifest::FileRef {
            name: "pkg-1.zip".into(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        };
        let (rel, msg) = storeguard_proto::package::package_message("pkg-1", &file, &m);
        let prefix = topics::prefix("s1", "d1");
        assert!(rx.handle(&format!("{prefix}{rel}"), &msg).is_empty());
        let h = topics::ChunkHeader {
            schema: topics::SCHEMA_CHUNK.into(),
            msg_id: "d1:pkg-1@0".into(),
            clip: "pkg-1".into(),
            offset: 0,
            len: file.size,
            total: file.size,
            sha256: file.sha256.clone(),
            last: true,
        };
        let chunk = topics::encode_chunk(&h, &bytes);
        let acks = rx.handle(&format!("{prefix}{}", topics::chunk_topic("pkg-1")), &chunk);
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].0, format!("{prefix}evidence/pkg-1/ack"));
        serde_json::from_slice(&acks[0].1).unwrap()
    }

    #[test]
    fn a_package_is_verified_like_evidence_verify_before_its_receipt() {
        let d = tempfile::tempdir().unwrap();
        let centre = Arc::new(DeviceKey::from_seed([3; 32]));
        let device = DeviceKey::from_seed([4; 32]);
        let mut opts = ReceiverOpts::new("mqtt://127.0.0.1:1", d.path());
        opts.signing_key = Some(centre.clone());
        let mut rx = Receiver::open(&opts).unwrap();

        let bad = receive_package(&mut rx, &device, true);
        assert_eq!(bad.status, AckStatus::Failed);
        let why = bad.reason.unwrap();
        assert!(why.contains("continuity.txt: hash mismatch"), "{why}");

        let ok = receive_package(&mut rx, &device, false);
        assert_eq!(ok.status, AckStatus::Verified, "{:?}", ok.reason);
        let stored = d.path().join("packages/s1/d1/pkg-1.zip");
        let (size, sha) = storeguard_proto::sha256_file(&stored).unwrap();
        assert_eq!(
            (ok.bytes, ok.sha256.as_deref()),
            (Some(size), Some(sha.as_str()))
        );
        let report =
            storeguard_proto::package::verify(&stored, Some(&device.public_key_b64()), None)
                .unwrap();
        assert_eq!(
            ok.manifest_signature,
            report.manifest.signature.map(|s| s.value)
        );
        // The receipt is signed by the centre's key; the device key is now pinned.
        let trusted =
            storeguard_proto::trust::TrustedKeys::parse(&[centre.public_key_b64()]).unwrap();
        let payload = serde_json::to_vec(&ok).unwrap();
        assert!(trusted.verify(&payload).is_ok());
        assert_eq!(
            fs::read_to_string(d.path().join("trust/s1/d1.pub"))
                .unwrap()
                .trim(),
            device.public_key_b64()
        );
        // Another device key is not believed for this device any more.
        let stranger = DeviceKey::from_seed([5; 32]);
        fs::remove_file(d.path().join("packages/s1/d1/pkg-1.done.json")).unwrap();
        let forged = receive_package(&mut rx, &stranger, false);
        assert_eq!(forged.status, AckStatus::Failed);
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(safe_name("../x"), None);
        assert_eq!(safe_name("cam1.mp4").as_deref(), Some("cam1.mp4"));
        assert_eq!(word("a b=c"), "a_b_c");
    }
}
