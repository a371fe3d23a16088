//! Topics and payloads of the MQTT interface (the reference is docs/mqtt.md).
//!
//! Every topic is `storeguard/v1/{site}/{device}/{suffix}`. Every payload is a JSON object
//! with a `schema` field, except clip chunks, which carry a small binary header (see
//! [`encode_chunk`]).

use crate::manifest::Manifest;
use serde::{Deserialize, Serialize};

pub const ROOT: &str = "storeguard/v1";

pub const ALERT: &str = "alert";
pub const HEALTH: &str = "health";
pub const STATUS: &str = "status";

pub const SCHEMA_STATUS: &str = "storeguard.status/v1";
pub const SCHEMA_ALERT: &str = "storeguard.alert/v1";
pub const SCHEMA_HEALTH: &str = "storeguard.health/v1";
pub const SCHEMA_MANIFEST_MSG: &str = "storeguard.manifest-msg/v1";
pub const SCHEMA_PACKAGE_MSG: &str = "storeguard.package-msg/v1";
pub const SCHEMA_CHUNK: &str = "storeguard.chunk/v1";
pub const SCHEMA_CLIP_ACK: &str = "storeguard.clip-ack/v1";

pub const CONFIG_DESIRED: &str = "config/desired";
pub const CONFIG_REPORTED: &str = "config/reported";

/// `cmd/{name}/result`
pub fn cmd_result_topic(name: &str) -> String {
    format!("cmd/{name}/result")
}

/// First bytes of every chunk payload.
pub const CHUNK_MAGIC: &[u8; 4] = b"SGCH";
/// Largest JSON header a chunk may carry.
pub const MAX_CHUNK_HEADER: usize = 900;

/// `storeguard/v1/{site}/{device}/`
pub fn prefix(site: &str, device: &str) -> String {
    format!("{ROOT}/{site}/{device}/")
}

pub fn manifest_topic(clip: &str) -> String {
    format!("evidence/{clip}/manifest")
}

pub fn chunk_topic(clip: &str) -> String {
    format!("evidence/{clip}/chunk")
}

pub fn ack_topic(clip: &str) -> String {
    format!("evidence/{clip}/ack")
}

/// What a topic below `storeguard/v1/` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub site: &'a str,
    pub device: &'a str,
    pub kind: Kind<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    Status,
    Alert,
    Health,
    Shot,
    Manifest(&'a str),
    Chunk(&'a str),
    ClipAck(&'a str),
    ConfigDesired,
    ConfigReported,
    Cmd(&'a str),
    CmdResult(&'a str),
    Other(&'a str),
}

/// Splits a full topic; None when it is not below `storeguard/v1/{site}/{device}/`.
pub fn parse(topic: &str) -> Option<Parsed<'_>> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let mut it = rest.splitn(3, '/');
    let (site, device, suffix) = (it.next()?, it.next()?, it.next()?);
    if site.is_empty() || device.is_empty() {
        return None;
    }
    let parts: Vec<&str> = suffix.split('/').collect();
    let kind = match parts.as_slice() {
        ["status"] => Kind::Status,
        ["alert"] => Kind::Alert,
        ["health"] => Kind::Health,
        ["shot"] => Kind::Shot,
        ["evidence", clip, "manifest"] if !clip.is_empty() => Kind::Manifest(clip),
        ["evidence", clip, "chunk"] if !clip.is_empty() => Kind::Chunk(clip),
        ["evidence", clip, "ack"] if !clip.is_empty() => Kind::ClipAck(clip),
        ["config", "desired"] => Kind::ConfigDesired,
        ["config", "reported"] => Kind::ConfigReported,
        ["cmd", name] if !name.is_empty() => Kind::Cmd(name),
        ["cmd", name, "result"] if !name.is_empty() => Kind::CmdResult(name),
        _ => Kind::Other(suffix),
    };
    Some(Parsed { site, device, kind })
}

pub use storeguard_base::time::{now_ns, utc_ms};

/// The retained `status` payload. `reason` is set only when offline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub schema: String,
    pub state: String,
    pub site_id: String,
    pub device_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The box clock when online (docs/time.md): republished when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<StatusClock>,
}

/// The box clock's state in the `status` payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusClock {
    /// The kernel says NTP synchronises the clock (no `STA_UNSYNC`).
    pub synced: bool,
    /// The error bound in ms while synchronised; null when nothing bounds it.
    pub error_bound_ms: Option<i64>,
    /// The clock's epoch: it changes with every step of the clock.
    pub epoch: i64,
}

impl StatusClock {
    /// The box clock as the time keeper last published it.
    pub fn now() -> StatusClock {
        let c = storeguard_base::clock::box_clock();
        StatusClock {
            synced: c.synced,
            error_bound_ms: c.error_ns.map(|e| (e + 999_999) / 1_000_000),
            epoch: c.epoch,
        }
    }
}

impl Status {
    pub fn online(site: &str, device: &str) -> Vec<u8> {
        Self::online_with(site, device, StatusClock::now())
    }

    pub fn online_with(site: &str, device: &str, clock: StatusClock) -> Vec<u8> {
        let mut s = Self::value(site, device, "online", None, Some(utc_ms(now_ns())));
        s.clock = Some(clock);
        serde_json::to_vec(&s).expect("status serializes")
    }

    /// Published by the device itself before a clean disconnect.
    pub fn offline_clean(site: &str, device: &str) -> Vec<u8> {
        Self::bytes(
            site,
            device,
            "offline",
            Some("shutdown"),
            Some(utc_ms(now_ns())),
        )
    }

    /// The last will: published by the broker when the connection is lost.
    pub fn offline_will(site: &str, device: &str) -> Vec<u8> {
        Self::bytes(site, device, "offline", Some("connection_lost"), None)
    }

    fn bytes(
        site: &str,
        device: &str,
        state: &str,
        reason: Option<&str>,
        at: Option<String>,
    ) -> Vec<u8> {
        serde_json::to_vec(&Self::value(site, device, state, reason, at))
            .expect("status serializes")
    }

    fn value(
        site: &str,
        device: &str,
        state: &str,
        reason: Option<&str>,
        at: Option<String>,
    ) -> Status {
        Status {
            schema: SCHEMA_STATUS.into(),
            state: state.into(),
            site_id: site.into(),
            device_id: device.into(),
            reason: reason.map(Into::into),
            at,
            version: Some(storeguard_base::VERSION.into()),
            clock: None,
        }
    }
}

/// An event as its alert describes it. Kinds are an open set (`isb_press`,
/// `stuck_fault`, `wiring_fault`, and later detections and remote requests): receivers
/// must accept kinds they do not know.
#[derive(Debug, Clone, Copy)]
pub struct AlertEvent<'a> {
    pub uid: &'a str,
    pub kind: &'a str,
    /// What raised it, e.g. the button's name.
    pub source: &'a str,
    /// `button` for the panic button; `detection`, `remote`… later.
    pub source_kind: &'a str,
    pub at_ns: i64,
    pub test: bool,
    pub cameras: &'a [String],
    pub detail: &'a serde_json::Value,
}

/// The `alert` payload for an event (class 0). `msg_id` is added at publish time.
pub fn alert_payload(ev: &AlertEvent<'_>, clips: &[String]) -> Vec<u8> {
    serde_json::to_vec(&alert_json(ev, clips)).expect("alert serializes")
}

fn alert_json(ev: &AlertEvent<'_>, clips: &[String]) -> serde_json::Value {
    let clock = StatusClock::now();
    serde_json::json!({
        "schema": SCHEMA_ALERT,
        "event_id": ev.uid,
        "kind": ev.kind,
        "source": ev.source,
        "at": utc_ms(ev.at_ns),
        "test": ev.test,
        "time": {"synced": clock.synced, "error_bound_ms": clock.error_bound_ms},
        "clips": clips,
        "detail": ev.detail,
    })
}

/// The alert as the daemon sends it: self-contained for an operator's screen, so it also
/// names the site, the device, the cameras and (for a press) the button; the topic
/// carries the ids too.
pub fn site_alert_payload(
    ev: &AlertEvent<'_>,
    clips: &[String],
    site_id: &str,
    device_id: &str,
) -> Vec<u8> {
    let mut v = alert_json(ev, clips);
    v["site_id"] = site_id.into();
    v["device_id"] = device_id.into();
    v["source_kind"] = ev.source_kind.into();
    if ev.source_kind == "button" {
        v["button"] = ev.source.into();
    }
    v["cameras"] = ev.cameras.into();
    serde_json::to_vec(&v).expect("alert serializes")
}

pub const SCHEMA_SHOT: &str = "storeguard.shot/v1";

/// A `shot` message (class 1, evidence): one person's best shot (the "today image"), or a
/// plain still when nobody was tracked, for an event, a press or a tamper alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shot {
    pub schema: String,
    pub site_id: String,
    pub device_id: String,
    /// The event it belongs to; `None` for a tamper still (see `health`).
    #[serde(default)]
    pub event_id: Option<String>,
    /// `event` (a detection event's own shot), `press` (people seen before a press),
    /// `still` (nobody was tracked: the latest picture), `tamper`.
    pub reason: String,
    /// For a tamper still: the health event's kind (`tamper_covered`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    pub camera: String,
    /// UTC of the picture the shot was taken from.
    pub at: String,
    #[serde(default)]
    pub track: Option<u64>,
    #[serde(default)]
    pub score: Option<f32>,
    /// The person's box in the frame, normalised `[x0, y0, x1, y1]`.
    #[serde(default, rename = "box")]
    pub bbox: Option<[f32; 4]>,
    pub frame_width: u32,
    pub frame_height: u32,
    /// JPEG of the person's crop, base64; `None` for a still.
    #[serde(default)]
    pub crop_jpeg: Option<String>,
    /// JPEG of the whole frame (a thumbnail at most 640 wide), base64.
    pub frame_jpeg: String,
}

/// A `health` payload (class 3): `fields` (an object) plus `schema` and `at`.
pub fn health_payload(at_ns: i64, fields: serde_json::Value) -> Vec<u8> {
    let mut obj = match fields {
        serde_json::Value::Object(m) => m,
        other => {
            let mut m = serde_json::Map::new();
            m.insert("value".into(), other);
            m
        }
    };
    obj.insert("schema".into(), SCHEMA_HEALTH.into());
    obj.insert("at".into(), utc_ms(at_ns).into());
    serde_json::to_vec(&obj).expect("health serializes")
}

/// The `evidence/{clip}/manifest` message (class 1): the signed manifest, wrapped, because
/// the manifest itself admits no extra fields (such as `msg_id`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestMsg {
    pub schema: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    pub clip: String,
    pub manifest: Manifest,
}

/// Topic (relative) and payload for `Store::seal_clip(.., manifest: Some(..))`.
pub fn manifest_message(clip: &str, manifest: &Manifest) -> (String, Vec<u8>) {
    let msg = ManifestMsg {
        schema: SCHEMA_MANIFEST_MSG.into(),
        msg_id: None,
        clip: clip.into(),
        manifest: manifest.clone(),
    };
    (
        manifest_topic(clip),
        serde_json::to_vec(&msg).expect("manifest serializes"),
    )
}

/// The JSON header of a chunk message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHeader {
    pub schema: String,
    pub msg_id: String,
    pub clip: String,
    pub offset: u64,
    pub len: u64,
    /// Size of the whole clip file.
    pub total: u64,
    /// SHA-256 (lowercase hex) of the whole clip file.
    pub sha256: String,
    /// The chunk that ends at `total`.
    #[serde(rename = "final")]
    pub last: bool,
}

/// `SGCH` + u32 big-endian header length + JSON header + raw clip bytes. Binary, so clip
/// bytes cost nothing extra (base64 would add a third on a capped uplink), while the
/// header stays self-describing and versioned.
pub fn encode_chunk(h: &ChunkHeader, data: &[u8]) -> Vec<u8> {
    let header = serde_json::to_vec(h).expect("chunk header serializes");
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(CHUNK_MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out
}

/// Splits a chunk payload into its header and data, checking the framing.
pub fn decode_chunk(payload: &[u8]) -> Result<(ChunkHeader, &[u8]), String> {
    if payload.len() < 8 || &payload[..4] != CHUNK_MAGIC {
        return Err("not a chunk (no SGCH magic)".into());
    }
    let n = u32::from_be_bytes(payload[4..8].try_into().expect("4 bytes")) as usize;
    if n > MAX_CHUNK_HEADER || 8 + n > payload.len() {
        return Err(format!(
            "chunk header length {n} is invalid for a {}-byte payload",
            payload.len()
        ));
    }
    let h: ChunkHeader =
        serde_json::from_slice(&payload[8..8 + n]).map_err(|e| format!("chunk header: {e}"))?;
    if h.schema != SCHEMA_CHUNK {
        return Err(format!(
            "chunk schema {:?}, expected {SCHEMA_CHUNK:?}",
            h.schema
        ));
    }
    let data = &payload[8 + n..];
    if data.len() as u64 != h.len {
        return Err(format!(
            "chunk at offset {} says len {}, carries {} bytes",
            h.offset,
            h.len,
            data.len()
        ));
    }
    if h.offset.checked_add(h.len).is_none_or(|end| end > h.total) {
        return Err(format!(
            "chunk {}+{} runs past the clip size {}",
            h.offset, h.len, h.total
        ));
    }
    Ok((h, data))
}

/// What the receiver tells the device about a clip (retained on `evidence/{clip}/ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Reassembled, hash and signature verified, stored: the device may release the clip.
    Verified,
    /// Something is missing: resend from `resend_from`, and the manifest if `need_manifest`.
    Incomplete,
    /// Reassembled but failed verification; the device starts over (a few times).
    Failed,
}

/// A clip acknowledgement: a receipt signed by the control centre (checked in `receipt.rs`).
/// Field order is the signed order of a fresh receipt; `signature` stays last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClipAck {
    pub schema: String,
    #[serde(default)]
    pub site_id: String,
    #[serde(default)]
    pub device_id: String,
    pub clip: String,
    pub status: AckStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The clip manifest's signature value: ties a receipt to one seal of the clip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend_from: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub need_manifest: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::manifest::SignatureBlock>,
}

/// Adds `"msg_id"` to a JSON object payload, keeping its other bytes as they are.
pub fn with_msg_id(payload: &[u8], msg_id: &str) -> Result<Vec<u8>, String> {
    // Validates the whole document without building it.
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        msg_id: Option<serde::de::IgnoredAny>,
    }
    let open = payload.iter().position(|b| !b.is_ascii_whitespace());
    let Some(open) = open.filter(|i| payload[*i] == b'{') else {
        return Err("payload is not a JSON object".into());
    };
    let probe: Probe = serde_json::from_slice(payload)
        .map_err(|e| format!("payload is not a JSON object: {e}"))?;
    let id = serde_json::to_string(msg_id).expect("string serializes");
    if probe.msg_id.is_some() {
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        obj.insert("msg_id".into(), msg_id.into());
        return Ok(serde_json::to_vec(&obj).expect("object serializes"));
    }
    let rest = &payload[open + 1..];
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'}');
    let mut out = Vec::with_capacity(payload.len() + id.len() + 12);
    out.extend_from_slice(b"{\"msg_id\":");
    out.extend_from_slice(id.as_bytes());
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        let p = parse("storeguard/v1/s1/d1/evidence/c-9/chunk").unwrap();
        assert_eq!((p.site, p.device, p.kind), ("s1", "d1", Kind::Chunk("c-9")));
        assert_eq!(
            parse("storeguard/v1/s1/d1/alert").unwrap().kind,
            Kind::Alert
        );
        assert_eq!(
            parse("storeguard/v1/s1/d1/cmd/reboot").unwrap().kind,
            Kind::Cmd("reboot")
        );
        assert_eq!(
            parse("storeguard/v1/s1/d1/cmd/snapshot/result")
                .unwrap()
                .kind,
            Kind::CmdResult("snapshot")
        );
        assert_eq!(
            parse("storeguard/v1/s1/d1/config/desired").unwrap().kind,
            Kind::ConfigDesired
        );
        assert_eq!(
            parse("storeguard/v1/s1/d1/config/other").unwrap().kind,
            Kind::Other("config/other")
        );
        assert!(parse("other/v1/s1/d1/alert").is_none());
        assert!(parse("storeguard/v1/s1").is_none());
    }

    #[test]
    fn msg_id_is_spliced_in() {
        let out = with_msg_id(br#" {"schema":"x","n":1}"#, "d:7").unwrap();
        assert_eq!(out, br#"{"msg_id":"d:7","schema":"x","n":1}"#);
        assert_eq!(with_msg_id(b"{}", "d:1").unwrap(), br#"{"msg_id":"d:1"}"#);
        let v: serde_json::Value =
            serde_json::from_slice(&with_msg_id(br#"{"msg_id":"old"}"#, "d:2").unwrap()).unwrap();
        assert_eq!(v["msg_id"], "d:2");
        assert!(with_msg_id(b"[1]", "d:3").is_err());
        assert!(with_msg_id(b"{", "d:3").is_err());
    }

    #[test]
    fn chunk_framing() {
        let h = ChunkHeader {
            schema: SCHEMA_CHUNK.into(),
            msg_id: "d:c@0".into(),
            clip: "c".into(),
            offset: 0,
            len: 3,
            total: 3,
            sha256: "00".into(),
            last: true,
        };
        let p = encode_chunk(&h, &[0, 255, 10]);
        let (h2, data) = decode_chunk(&p).unwrap();
        assert_eq!((h2, data), (h.clone(), &[0u8, 255, 10][..]));
        assert!(
            decode_chunk(&p[..p.len() - 1])
                .unwrap_err()
                .contains("carries")
        );
        assert!(decode_chunk(b"{\"json\":1}").is_err());
        assert!(String::from_utf8_lossy(&p).contains("\"final\":true"));
    }
}

#[cfg(test)]
mod samples {
    /// Writes one payload of each kind to $SG_SAMPLES_DIR; scripts/check-schemas.sh (in CI)
    /// validates them against docs/schemas/.
    #[test]
    fn write_samples() {
        use super::*;
        let Some(dir) = std::env::var_os("SG_SAMPLES_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let w = |name: &str, b: &[u8]| std::fs::write(dir.join(name), b).unwrap();
        w("status-online.json", &Status::online("s1", "d1"));
        w(
            "status-online-clock.json",
            &Status::online_with(
                "s1",
                "d1",
                StatusClock {
                    synced: true,
                    error_bound_ms: Some(24),
                    epoch: 3,
                },
            ),
        );
        w("status-offline.json", &Status::offline_clean("s1", "d1"));
        w("status-will.json", &Status::offline_will("s1", "d1"));
        let detail = serde_json::json!({});
        let ev = AlertEvent {
            uid: "ev-1",
            kind: "isb_press",
            source: "till",
            source_kind: "button",
            at_ns: now_ns(),
            test: false,
            cameras: &[],
            detail: &detail,
        };
        w(
            "alert.json",
            &with_msg_id(&alert_payload(&ev, &["c1".into()]), "d1:7").unwrap(),
        );
        w(
            "health.json",
            &with_msg_id(
                &health_payload(now_ns(), serde_json::json!({"cpu": 0.4})),
                "d1:8",
            )
            .unwrap(),
        );
        let shot = Shot {
            schema: SCHEMA_SHOT.into(),
            site_id: "s1".into(),
            device_id: "d1".into(),
            event_id: Some("ev-1".into()),
            reason: "press".into(),
            health: None,
            camera: "cam1".into(),
            at: utc_ms(now_ns()),
            track: Some(3),
            score: Some(0.8),
            bbox: Some([0.1, 0.2, 0.3, 0.9]),
            frame_width: 1920,
            frame_height: 1080,
            crop_jpeg: Some("/9j/4A==".into()),
            frame_jpeg: "/9j/4A==".into(),
        };
        w(
            "shot.json",
            &with_msg_id(&serde_json::to_vec(&shot).unwrap(), "d1:9").unwrap(),
        );
        let key_dir = dir.join("key");
        let key = crate::keys::DeviceKey::load_or_create(&key_dir).unwrap();
        let clip = dir.join("c1.mp4");
        std::fs::write(&clip, b"clip").unwrap();
        let t = chrono::Utc::now();
        let mut m = Manifest {
            schema: crate::manifest::SCHEMA.into(),
            site_id: "s1".into(),
            device_id: "d1".into(),
            camera: crate::manifest::CameraRef {
                id: "cam1".into(),
                name: "x".into(),
            },
            event: crate::manifest::EventRef {
                id: "ev-1".into(),
                kind: crate::manifest::EventKind::new("isb_press"),
                test: false,
            },
            requested: crate::manifest::Requested { from: t, to: t },
            actual: crate::manifest::Actual {
                first_frame: t,
                last_frame: t,
            },
            codec: "h264".into(),
            width: 1,
            height: 1,
            file: crate::manifest::FileRef::from_path(&clip).unwrap(),
            gaps: vec![crate::manifest::Gap {
                from: t,
                to: t,
                reason: "offline".into(),
            }],
            time: Some(crate::manifest::TimeQuality {
                source: crate::manifest::TimeQuality::BOX_NTP.into(),
                error_bound_ms: Some(24),
                corrections: vec![crate::manifest::Correction {
                    at: utc_ms(now_ns()),
                    before: "1970-01-01T00:01:40.000Z".into(),
                    after: utc_ms(now_ns()),
                    step_ms: now_ns() / 1_000_000 - 100_000,
                    cause: "NTP synchronised the clock".into(),
                }],
            }),
            software: crate::manifest::Software::this(),
            created_at: t,
            signature: None,
        };
        m.sign(&key);
        w(
            "manifest-msg.json",
            &with_msg_id(&manifest_message("c1", &m).1, "d1:9").unwrap(),
        );
        let h = ChunkHeader {
            schema: SCHEMA_CHUNK.into(),
            msg_id: "d1:c1@0".into(),
            clip: "c1".into(),
            offset: 0,
            len: 4,
            total: 4,
            sha256: m.file.sha256.clone(),
            last: true,
        };
        w("chunk-header.json", &serde_json::to_vec(&h).unwrap());
        let ack = ClipAck {
            schema: SCHEMA_CLIP_ACK.into(),
            site_id: "s1".into(),
            device_id: "d1".into(),
            clip: "c1".into(),
            status: AckStatus::Verified,
            bytes: Some(m.file.size),
            sha256: Some(m.file.sha256.clone()),
            manifest_signature: m.signature.as_ref().map(|s| s.value.clone()),
            resend_from: None,
            need_manifest: false,
            reason: None,
            at: utc_ms(now_ns()),
            signature: None,
        };
        w("clip-ack.json", &ack.signed(&key));
        let incomplete = ClipAck {
            status: AckStatus::Incomplete,
            bytes: None,
            sha256: None,
            manifest_signature: None,
            resend_from: Some(0),
            need_manifest: true,
            ..ack
        };
        w("clip-ack-incomplete.json", &incomplete.signed(&key));
        use crate::remote::{self as rm, Signed as _};
        let desired = rm::Desired {
            schema: rm::SCHEMA_DESIRED.into(),
            site_id: "s1".into(),
            device_id: "d1".into(),
            version: 7,
            issued_at: "2026-12-01T14:00:00Z".into(),
            expires_at: Some("2026-12-01T15:00:00Z".into()),
            config: "[site]\nsite_id = \"s1\"\n".into(),
            signature: None,
        };
        w("config-desired.json", &desired.signed(&key));
        let reported = rm::Reported {
            schema: rm::SCHEMA_REPORTED.into(),
            site_id: "s1".into(),
            device_id: "d1".into(),
            state: rm::ConfigState::Rejected,
            version: Some(8),
            applied_version: Some(7),
            applied_hash: "02dc489c8542".into(),
            reasons: vec!["config/desired v8:3:7: cameras[0].url: not rtsp".into()],
            at: utc_ms(now_ns()),
        };
        w(
            "config-reported.json",
            &with_msg_id(&serde_json::to_vec(&reported).unwrap(), "d1:10").unwrap(),
        );
        let cmd = rm::Command {
            schema: rm::SCHEMA_CMD.into(),
            site_id: "s1".into(),
            device_id: "d1".into(),
            request_id: "r-1".into(),
            issued_at: "2026-12-01T14:00:00Z".into(),
            expires_at: "2026-12-01T14:05:00Z".into(),
            args: serde_json::json!({ "cameras": ["cam1"] }),
            signature: None,
        };
        w("cmd.json", &cmd.signed(&key));
        let result = rm::CmdResult {
            schema: rm::SCHEMA_CMD_RESULT.into(),
            site_id: "s1".into(),
            device_id: "d1".into(),
            name: "snapshot".into(),
            request_id: "r-1".into(),
            status: rm::CmdStatus::Ok,
            result: Some(serde_json::json!({ "images": [] })),
            error: None,
            duplicate: false,
            at: utc_ms(now_ns()),
        };
        w(
            "cmd-result.json",
            &with_msg_id(&serde_json::to_vec(&result).unwrap(), "d1:11").unwrap(),
        );

        // An evidence package uploaded by the `package` command.
        use crate::package as pk;
        let at = utc_ms(now_ns());
        let window = pk::Window {
            from: at.clone(),
            to: at.clone(),
        };
        let file = |name: &str, kind: &str| pk::PackFile {
            name: name.into(),
            kind: kind.into(),
            size: 4,
            sha256: m.file.sha256.clone(),
        };
        let pm = pk::PackageManifest {
            schema: pk::SCHEMA.into(),
            package_id: "pkg-1".into(),
            site_id: "s1".into(),
            device_id: "d1".into(),
            event: Some(pk::PackEvent {
                id: "ev-1".into(),
                kind: "isb_press".into(),
                source: "till".into(),
                at: at.clone(),
                test: false,
            }),
            requested: window.clone(),
            actual: Some(window.clone()),
            cameras: vec![pk::PackCamera {
                id: "cam1".into(),
                name: "Till".into(),
                location: String::new(),
                clip: Some("c1.mp4".into()),
                source: "sealed clip c1 of event ev-1".into(),
                requested: window.clone(),
                actual: Some(window),
                gaps: vec![],
            }],
            files: vec![
                file("c1.mp4", "clip"),
                file("c1.mp4.manifest.json", "clip_manifest"),
                file(pk::LOG, "continuity_log"),
                file(pk::VIEWER, "viewer"),
            ],
            software: crate::manifest::Software::this(),
            created_at: at.clone(),
            created_by: pk::Requester {
                uid: None,
                pid: None,
                via: "remote".into(),
            },
            destination: "/var/lib/storeguard/packages/pkg-1.zip".into(),
            signature: None,
        };
        let signed = crate::trust::sign_value(&pm, &key);
        w("evidence-package.json", &signed);
        let pm: pk::PackageManifest = serde_json::from_slice(&signed).unwrap();
        let zip = crate::manifest::FileRef {
            name: "pkg-1.zip".into(),
            size: 4,
            sha256: m.file.sha256.clone(),
        };
        w(
            "package-msg.json",
            &with_msg_id(&pk::package_message("pkg-1", &zip, &pm).1, "d1:12").unwrap(),
        );
        let package_ack = ClipAck {
            schema: SCHEMA_CLIP_ACK.into(),
            site_id: "s1".into(),
            device_id: "d1".into(),
            clip: "pkg-1".into(),
            status: AckStatus::Verified,
            bytes: Some(zip.size),
            sha256: Some(zip.sha256.clone()),
            manifest_signature: pm.signature.as_ref().map(|s| s.value.clone()),
            resend_from: None,
            need_manifest: false,
            reason: None,
            at: at.clone(),
            signature: None,
        };
        w("clip-ack-package.json", &package_ack.signed(&key));
        let package_result = rm::CmdResult {
            name: "package".into(),
            request_id: "r-2".into(),
            result: Some(serde_json::json!({
                "package": "pkg-1", "event": "ev-1", "file": zip, "files": pm.files,
                "upload": "queued",
            })),
            ..result
        };
        w(
            "cmd-result-package.json",
            &with_msg_id(&serde_json::to_vec(&package_result).unwrap(), "d1:13").unwrap(),
        );
    }
}
