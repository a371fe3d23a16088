//! The signed JSON manifest that travels next to every evidence clip.
//!
//! # Canonical bytes (what the signature covers)
//!
//! `signature.value` is the standard-base64 Ed25519 signature (RFC 8032, pure) over
//! `serde_json::to_vec(&manifest)` with `signature` set to `None` (so the key is absent), i.e.
//! compact JSON, no whitespace, keys in the declared field order, timestamps as
//! `YYYY-MM-DDTHH:MM:SS.mmmZ`. Because `signature` is the last field and the sidecar is written
//! in exactly that compact form (plus one `\n`), a verifier in any language can rebuild the
//! signed bytes from the sidecar text: drop the trailing newline and replace the final
//! `,"signature":{...}}` with `}`. Unknown fields are rejected, so nothing unsigned can ride
//! along in a sidecar that verifies.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, SubsecRound as _, Utc};
use ed25519_dalek::Signature as EdSignature;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::keys::{DeviceKey, key_id_of, parse_public_key};
use storeguard_base::fs::{io_context, write_atomic};

/// Value of [`Manifest::schema`] for this format.
pub const SCHEMA: &str = "storeguard.evidence/v1";
/// Value of [`SignatureBlock::alg`].
pub const SIGNATURE_ALG: &str = "ed25519";

/// Evidence manifest. Field order is part of the signed format: do not reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`SCHEMA`].
    pub schema: String,
    pub site_id: String,
    pub device_id: String,
    pub camera: CameraRef,
    pub event: EventRef,
    /// The time span the operator or the panic button asked for.
    pub requested: Requested,
    /// Wall-clock times of the first and last frame actually in the clip.
    pub actual: Actual,
    /// `"h264"` or `"h265"`.
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub file: FileRef,
    /// Spans inside `actual` with no video (camera offline, recorder down, ...).
    pub gaps: Vec<Gap>,
    /// Where the clip's times come from and how far they can be off (docs/time.md).
    /// Absent in manifests sealed before storeguard recorded it; they still verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeQuality>,
    pub software: Software,
    #[serde(with = "utc_ms")]
    pub created_at: DateTime<Utc>,
    /// Set by [`Manifest::sign`]; omitted from the canonical bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureBlock>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraRef {
    pub id: String,
    pub name: String,
}

/// What triggered the clip: `isb_press`, `manual_export`, and kinds added later (detection,
/// remote request). A string on the wire, so an older verifier still checks a manifest
/// whose kind it has never heard of: the signed bytes round-trip unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventKind(pub String);

impl EventKind {
    /// The wired panic button (ISB).
    pub const ISB_PRESS: &str = "isb_press";
    /// A technician or operator asked for the span.
    pub const MANUAL_EXPORT: &str = "manual_export";

    pub fn new(kind: impl Into<String>) -> EventKind {
        EventKind(kind.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRef {
    pub id: String,
    pub kind: EventKind,
    /// A scheduled test press, not a real incident.
    pub test: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requested {
    #[serde(with = "utc_ms")]
    pub from: DateTime<Utc>,
    #[serde(with = "utc_ms")]
    pub to: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actual {
    #[serde(with = "utc_ms")]
    pub first_frame: DateTime<Utc>,
    #[serde(with = "utc_ms")]
    pub last_frame: DateTime<Utc>,
}

/// The clip file: bare file name, size in bytes, lowercase hex SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

impl FileRef {
    /// Describes the file at `path` (name, size, streamed SHA-256).
    pub fn from_path(path: &Path) -> io::Result<FileRef> {
        let name = path
            .file_name()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} has no file name", path.display()),
                )
            })?
            .to_string_lossy()
            .into_owned();
        let (size, sha256) = sha256_file(path)?;
        Ok(FileRef { name, size, sha256 })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gap {
    #[serde(with = "utc_ms")]
    pub from: DateTime<Utc>,
    #[serde(with = "utc_ms")]
    pub to: DateTime<Utc>,
    pub reason: String,
}

/// The time quality of a clip, signed with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeQuality {
    /// `box_ntp` (the box clock, synchronised by NTP), `camera_rtcp` (the camera's own
    /// clock from its RTCP sender reports, agreeing with the box), or
    /// `box_unsynchronised` (arrival time on a box clock nothing synchronised): the
    /// worst over the clip's footage.
    pub source: String,
    /// How far the clip's times can be off, in ms; `null` when nothing bounds it.
    pub error_bound_ms: Option<i64>,
    /// Steps of the box clock that corrected the recorded times of this footage.
    pub corrections: Vec<Correction>,
}

impl TimeQuality {
    pub const BOX_NTP: &'static str = "box_ntp";
    pub const CAMERA_RTCP: &'static str = "camera_rtcp";
    pub const BOX_UNSYNCHRONISED: &'static str = "box_unsynchronised";
}

/// One clock step applied to the clip's recorded times: they moved by `step_ms` (by a
/// share of it for footage recorded while the clock drifted, see docs/time.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correction {
    /// When the step was seen (new clock), UTC ms.
    pub at: String,
    /// The old clock's reading at the step, and the new one's.
    pub before: String,
    pub after: String,
    pub step_ms: i64,
    pub cause: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Software {
    pub name: String,
    pub version: String,
}

impl Software {
    /// storeguard and its version (one version for the whole workspace).
    pub fn this() -> Software {
        Software {
            name: "storeguard".into(),
            version: storeguard_base::VERSION.into(),
        }
    }
}

/// The signature block. `public_key` and `value` are standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureBlock {
    pub alg: String,
    pub key_id: String,
    pub public_key: String,
    pub value: String,
}

impl Manifest {
    /// The bytes the signature covers: compact JSON of `self` without `signature`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let unsigned = Manifest {
            signature: None,
            ..self.clone()
        };
        // Only strings, integers, bools and timestamps: serialization cannot fail.
        serde_json::to_vec(&unsigned).expect("manifest serializes")
    }

    /// Signs the manifest with `key`, replacing any previous signature. Timestamps are first
    /// truncated to whole milliseconds, so `self` equals what a verifier parses back.
    pub fn sign(&mut self, key: &DeviceKey) {
        self.truncate_to_ms();
        let sig = key.sign(&self.canonical_bytes());
        self.signature = Some(SignatureBlock {
            alg: SIGNATURE_ALG.into(),
            key_id: key.key_id(),
            public_key: key.public_key_b64(),
            value: B64.encode(sig),
        });
    }

    fn truncate_to_ms(&mut self) {
        let mut times = vec![
            &mut self.requested.from,
            &mut self.requested.to,
            &mut self.actual.first_frame,
            &mut self.actual.last_frame,
            &mut self.created_at,
        ];
        for g in &mut self.gaps {
            times.push(&mut g.from);
            times.push(&mut g.to);
        }
        for t in times {
            *t = t.trunc_subsecs(3);
        }
    }

    /// Writes the manifest as `<clip file name>.manifest.json` next to the clip (atomic,
    /// fsynced) and returns that path. Compact JSON plus a newline; see the module docs.
    pub fn write_sidecar(&self, clip_path: &Path) -> io::Result<PathBuf> {
        let path = sidecar_path(clip_path);
        let mut bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        bytes.push(b'\n');
        write_atomic(&path, &bytes, 0o644)?;
        Ok(path)
    }
}

/// The sidecar path for a clip: `/x/clip.mp4` -> `/x/clip.mp4.manifest.json`.
pub fn sidecar_path(clip_path: &Path) -> PathBuf {
    let mut s = clip_path.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

/// Size and lowercase hex SHA-256 of a file, streamed in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path).map_err(|e| io_context(e, "open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_context(e, &format!("read at offset {size} of"), path)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// What a successful [`verify`] established.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    pub key_id: String,
    /// True when the caller supplied the expected public key and it matched. False means the
    /// signature only proves the manifest is unchanged since signed by the key it names.
    pub key_trusted: bool,
    /// Non-fatal findings, e.g. the clip was renamed after export.
    pub warnings: Vec<String>,
}

/// Why a clip failed verification. Each variant says what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read manifest {path}")]
    ManifestRead { path: PathBuf, source: io::Error },
    #[error("manifest {path} is not a valid {SCHEMA} manifest")]
    ManifestParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("manifest {path}: schema is {found:?}, expected {SCHEMA:?}")]
    Schema { path: PathBuf, found: String },
    #[error("manifest {path} is not signed")]
    Unsigned { path: PathBuf },
    #[error("manifest {path}: signature alg is {found:?}, expected {SIGNATURE_ALG:?}")]
    Algorithm { path: PathBuf, found: String },
    #[error("manifest {path}: bad public key in signature block: {reason}")]
    BadPublicKey { path: PathBuf, reason: String },
    #[error("manifest {path}: key_id is {found}, but the public key it carries has id {expected}")]
    KeyIdMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("the expected public key is unusable: {0}")]
    BadTrustedKey(String),
    #[error(
        "manifest {path} was signed by key {found} ({found_key}), not the expected key \
         {expected} ({expected_key})"
    )]
    UntrustedKey {
        path: PathBuf,
        expected: String,
        expected_key: String,
        found: String,
        found_key: String,
    },
    #[error("manifest {path}: signature value is malformed: {reason}")]
    BadSignatureEncoding { path: PathBuf, reason: String },
    #[error(
        "manifest {path}: signature does not match its contents under key {key_id}: \
         the manifest was altered after signing"
    )]
    SignatureMismatch { path: PathBuf, key_id: String },
    #[error("cannot read clip {path}")]
    ClipRead { path: PathBuf, source: io::Error },
    #[error("clip {path}: size mismatch: {found} bytes, manifest says {expected}")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("clip {path}: hash mismatch: SHA-256 is {found}, manifest says {expected}")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

/// A manifest whose signature checked out (no clip looked at yet).
#[derive(Debug, Clone)]
pub struct SignedManifest {
    pub manifest: Manifest,
    pub key_id: String,
    /// As in [`VerifyReport::key_trusted`].
    pub key_trusted: bool,
}

/// The manifest half of [`verify`] on bytes already read (`path` only names them in
/// errors): parse, schema, signature block, key id, the expected key, the signature. For
/// readers that hold the clip elsewhere, e.g. inside an evidence package's zip.
pub fn verify_signed(
    text: &[u8],
    path: &Path,
    pubkey: Option<&str>,
) -> Result<SignedManifest, VerifyError> {
    let path = path.to_path_buf();
    let m: Manifest =
        serde_json::from_slice(text).map_err(|source| VerifyError::ManifestParse {
            path: path.clone(),
            source,
        })?;
    if m.schema != SCHEMA {
        return Err(VerifyError::Schema {
            path,
            found: m.schema,
        });
    }
    let sig = m
        .signature
        .as_ref()
        .ok_or_else(|| VerifyError::Unsigned { path: path.clone() })?;
    if sig.alg != SIGNATURE_ALG {
        return Err(VerifyError::Algorithm {
            path,
            found: sig.alg.clone(),
        });
    }
    let signer = parse_public_key(&sig.public_key).map_err(|e| VerifyError::BadPublicKey {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let signer_id = key_id_of(&signer);
    if sig.key_id != signer_id {
        return Err(VerifyError::KeyIdMismatch {
            path,
            expected: signer_id,
            found: sig.key_id.clone(),
        });
    }
    let key_trusted = match pubkey {
        None => false,
        Some(text) => {
            let trusted =
                parse_public_key(text).map_err(|e| VerifyError::BadTrustedKey(e.to_string()))?;
            if trusted != signer {
                return Err(VerifyError::UntrustedKey {
                    path,
                    expected: key_id_of(&trusted),
                    expected_key: B64.encode(trusted.as_bytes()),
                    found: signer_id,
                    found_key: sig.public_key.clone(),
                });
            }
            true
        }
    };
    let sig_bytes = B64
        .decode(sig.value.trim())
        .map_err(|e| e.to_string())
        .and_then(|b| {
            <[u8; 64]>::try_from(b.as_slice())
                .map_err(|_| format!("{} bytes, expected 64", b.len()))
        })
        .map_err(|reason| VerifyError::BadSignatureEncoding {
            path: path.clone(),
            reason,
        })?;
    signer
        .verify_strict(&m.canonical_bytes(), &EdSignature::from_bytes(&sig_bytes))
        .map_err(|_| VerifyError::SignatureMismatch {
            path: path.clone(),
            key_id: signer_id.clone(),
        })?;

    Ok(SignedManifest {
        manifest: m,
        key_id: signer_id,
        key_trusted,
    })
}

/// Verifies `clip` against its manifest (`manifest`, or the sidecar next to the clip).
///
/// Order: parse, schema, signature block, key id, the expected key `pubkey` if given (base64,
/// e.g. from the control centre's records), the signature over the canonical bytes, then the
/// clip's size and SHA-256. The first failure is returned.
pub fn verify(
    clip: &Path,
    manifest: Option<&Path>,
    pubkey: Option<&str>,
) -> Result<VerifyReport, VerifyError> {
    let manifest_path = manifest.map_or_else(|| sidecar_path(clip), Path::to_path_buf);
    let path = manifest_path.clone();
    let text = std::fs::read(&path).map_err(|source| VerifyError::ManifestRead {
        path: path.clone(),
        source,
    })?;
    let signed = verify_signed(&text, &path, pubkey)?;
    let m = signed.manifest;
    let (signer_id, key_trusted) = (signed.key_id, signed.key_trusted);

    // The manifest is authentic from here on; now hold the clip against it.
    let found_size = std::fs::metadata(clip)
        .map_err(|source| VerifyError::ClipRead {
            path: clip.into(),
            source,
        })?
        .len();
    if found_size != m.file.size {
        return Err(VerifyError::SizeMismatch {
            path: clip.into(),
            expected: m.file.size,
            found: found_size,
        });
    }
    let (_, found_hash) = sha256_file(clip).map_err(|source| VerifyError::ClipRead {
        path: clip.into(),
        source,
    })?;
    if !found_hash.eq_ignore_ascii_case(&m.file.sha256) {
        return Err(VerifyError::HashMismatch {
            path: clip.into(),
            expected: m.file.sha256.clone(),
            found: found_hash,
        });
    }
    let mut warnings = Vec::new();
    let clip_name = clip.file_name().map(|n| n.to_string_lossy().into_owned());
    if clip_name.as_deref() != Some(m.file.name.as_str()) {
        warnings.push(format!(
            "clip is named {:?}, manifest says {:?} (renamed after export?)",
            clip_name.unwrap_or_default(),
            m.file.name
        ));
    }
    Ok(VerifyReport {
        manifest: m,
        manifest_path,
        key_id: signer_id,
        key_trusted,
        warnings,
    })
}

/// UTC timestamps as RFC 3339 with exactly three fractional digits and `Z`. Parsing accepts
/// any RFC 3339 offset, but only this form re-serializes to the signed bytes.
mod utc_ms {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_760_000_000_000 + ms).unwrap()
    }

    pub(crate) fn sample() -> Manifest {
        Manifest {
            schema: SCHEMA.into(),
            site_id: "store-042".into(),
            device_id: "sg-0001".into(),
            camera: CameraRef {
                id: "cam07".into(),
                name: "Kasse 2".into(),
            },
            event: EventRef {
                id: "ev-1".into(),
                kind: EventKind::new(EventKind::ISB_PRESS),
                test: false,
            },
            requested: Requested {
                from: t(0),
                to: t(90_000),
            },
            actual: Actual {
                first_frame: t(-400),
                last_frame: t(90_120),
            },
            codec: "h264".into(),
            width: 1920,
            height: 1080,
            file: FileRef {
                name: "clip.mp4".into(),
                size: 12,
                sha256: "00".repeat(32),
            },
            gaps: vec![Gap {
                from: t(10_000),
                to: t(12_500),
                reason: "camera offline".into(),
            }],
            time: None,
            software: Software::this(),
            created_at: t(95_000),
            signature: None,
        }
    }

    #[test]
    fn canonical_bytes_have_fixed_order_and_no_signature() {
        let dir = std::env::temp_dir().join(format!("storeguard-manifest-{}", std::process::id()));
        let key = DeviceKey::load_or_create(&dir).unwrap();
        let mut m = sample();
        m.actual.last_frame += chrono::Duration::nanoseconds(683_322);
        let unsigned = m.canonical_bytes();
        m.sign(&key);
        assert_eq!(m.canonical_bytes(), unsigned);
        let text = String::from_utf8(unsigned).unwrap();
        assert!(
            text.starts_with(
                r#"{"schema":"storeguard.evidence/v1","site_id":"store-042","device_id""#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#""event":{"id":"ev-1","kind":"isb_press","test":false}"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#""requested":{"from":"2025-10-09T08:53:20.000Z","to":"2025-10-09T08:54:50.000Z"}"#
            ),
            "{text}"
        );
        assert!(!text.contains("signature"));

        // The sidecar text minus the signature block is exactly the signed bytes.
        let signed = String::from_utf8(serde_json::to_vec(&m).unwrap()).unwrap();
        let cut = signed.rfind(r#","signature":"#).unwrap();
        assert_eq!(format!("{}}}", &signed[..cut]), text);

        let back: Manifest = serde_json::from_str(&signed).unwrap();
        assert_eq!(back, m);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn time_quality_is_signed_and_old_manifests_without_it_still_verify() {
        let dir = tempfile::tempdir().unwrap();
        let key = DeviceKey::load_or_create(dir.path()).unwrap();
        let mut old = sample();
        old.sign(&key);
        let old_bytes = serde_json::to_vec(&old).unwrap();
        assert!(!String::from_utf8_lossy(&old_bytes).contains("\"time\""));
        let parsed: Manifest = serde_json::from_slice(&old_bytes).unwrap();
        assert_eq!(parsed.canonical_bytes(), old.canonical_bytes());

        let mut m = sample();
        m.time = Some(TimeQuality {
            source: TimeQuality::BOX_UNSYNCHRONISED.into(),
            error_bound_ms: None,
            corrections: vec![Correction {
                at: "2026-12-01T17:00:00.000Z".into(),
                before: "1970-01-01T00:05:00.000Z".into(),
                after: "2026-12-01T17:00:00.000Z".into(),
                step_ms: 1_764_608_100_000,
                cause: "NTP synchronised the clock".into(),
            }],
        });
        m.sign(&key);
        let c = String::from_utf8(m.canonical_bytes()).unwrap();
        assert!(
            c.contains(
                r#""time":{"source":"box_unsynchronised","error_bound_ms":null,"corrections":[{"#
            ),
            "{c}"
        );
        // Altering the signed time quality breaks the signature.
        let sig = m.signature.clone();
        m.time.as_mut().unwrap().corrections.clear();
        m.signature = None;
        let mut again = m.clone();
        again.sign(&key);
        assert_ne!(again.signature, sig);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["extra"] = serde_json::json!("unsigned");
        assert!(serde_json::from_value::<Manifest>(v).is_err());
    }

    #[test]
    fn a_kind_this_verifier_never_heard_of_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let key = DeviceKey::load_or_create(dir.path()).unwrap();
        let mut m = sample();
        m.event.kind = EventKind::new("person_loitering");
        m.sign(&key);
        let text = serde_json::to_vec(&m).unwrap();
        let back: Manifest = serde_json::from_slice(&text).unwrap();
        assert_eq!(back.event.kind.as_str(), "person_loitering");
        // Re-serialising gives the signed bytes back, so the signature still checks.
        assert_eq!(back.canonical_bytes(), m.canonical_bytes());
    }
}
