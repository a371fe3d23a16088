//! Evidence packages on the wire: the signed package manifest (`manifest.json`,
//! `storeguard.package/v1`) and the offline check of a whole package, a folder or a `.zip`.
//!
//! The device builds packages (`storeguard::evidence::package`); anyone holding one checks
//! it with [`verify`]: `storeguard evidence verify PACKAGE` on a USB stick, and the control
//! centre's receiver on a package uploaded through the outbox. The manifest lists every
//! other file with its SHA-256 and is signed with the device key like any signed JSON
//! ([`crate::trust`]: the last member is the signature), so it is the one thing to check.

use crate::manifest::{FileRef, SignatureBlock, Software, verify_signed};
use crate::sidecar_path;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use storeguard_base::utc_ms;

pub const SCHEMA: &str = "storeguard.package/v1";
/// The signed list of everything else in the package.
pub const MANIFEST: &str = "manifest.json";
pub const VIEWER: &str = "index.html";
pub const LOG: &str = "continuity.txt";
const COPY_CHUNK: usize = 1 << 20;

/// Who asked, as written into the manifest and the continuity log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requester {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    /// The transport: `control_socket` or `remote` (a signed MQTT command).
    pub via: String,
}

/// One file of the package as listed in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackFile {
    pub name: String,
    /// `clip`, `clip_manifest`, `receipt`, `continuity_log`, `viewer`.
    pub kind: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackGap {
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackEvent {
    pub id: String,
    pub kind: String,
    pub source: String,
    pub at: String,
    pub test: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackCamera {
    pub id: String,
    pub name: String,
    pub location: String,
    /// The MP4's file name, or `None` when the ring held nothing (see `gaps`).
    pub clip: Option<String>,
    /// Where the footage came from, in words.
    pub source: String,
    pub requested: Window,
    /// First and last frame in the clip.
    pub actual: Option<Window>,
    pub gaps: Vec<PackGap>,
}

/// `manifest.json`. Field order is the file's order; the signature is the last member.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageManifest {
    pub schema: String,
    pub package_id: String,
    pub site_id: String,
    pub device_id: String,
    pub event: Option<PackEvent>,
    pub requested: Window,
    /// Earliest first frame to latest last frame over all cameras.
    pub actual: Option<Window>,
    pub cameras: Vec<PackCamera>,
    pub files: Vec<PackFile>,
    pub software: Software,
    pub created_at: String,
    pub created_by: Requester,
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureBlock>,
}

/// The `evidence/{package}/manifest` message (class 1) of an evidence package uploaded as
/// one `.zip` (the `package` remote command): the zip's size and SHA-256, and the signed
/// package manifest that is also the zip's `manifest.json`. The zip then travels in chunks
/// like a clip, and the receiver checks it as `storeguard evidence verify` does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackageMsg {
    pub schema: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    pub package: String,
    /// The zip archive: file name, size in bytes, SHA-256.
    pub file: FileRef,
    pub manifest: PackageManifest,
}

/// Topic (relative) and payload announcing the upload of package `id` (its zip is `file`).
pub fn package_message(id: &str, file: &FileRef, manifest: &PackageManifest) -> (String, Vec<u8>) {
    let msg = PackageMsg {
        schema: crate::topics::SCHEMA_PACKAGE_MSG.into(),
        msg_id: None,
        package: id.into(),
        file: file.clone(),
        manifest: manifest.clone(),
    };
    (
        crate::topics::manifest_topic(id),
        serde_json::to_vec(&msg).expect("package message serializes"),
    )
}

/// A package that does not check out: the file and what is wrong with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct VerifyFailure {
    pub file: String,
    pub reason: String,
}

fn fail(file: &str, reason: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
        file: file.to_string(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Verification

/// What a successful [`verify`] established.
#[derive(Debug, Clone)]
pub struct Report {
    pub manifest: PackageManifest,
    pub key_id: String,
    /// The caller's expected key matched (else only integrity under the named key).
    pub key_trusted: bool,
    /// Human lines, one per check.
    pub lines: Vec<String>,
}

/// A package on disk: a folder or a zip archive.
enum Source {
    Dir(PathBuf),
    Zip(zip::ZipArchive<File>),
}

impl Source {
    fn open(path: &Path) -> Result<Source, VerifyFailure> {
        let label = path.display().to_string();
        if path.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let f = File::open(path).map_err(|e| fail(&label, e.to_string()))?;
        zip::ZipArchive::new(f)
            .map(Source::Zip)
            .map_err(|e| fail(&label, format!("not a package folder or zip archive: {e}")))
    }

    fn names(&mut self) -> Result<Vec<String>, VerifyFailure> {
        match self {
            Source::Dir(d) => {
                let mut v = Vec::new();
                let rd = std::fs::read_dir(&*d)
                    .map_err(|e| fail(&d.display().to_string(), e.to_string()))?;
                for e in rd {
                    let e = e.map_err(|e| fail(&d.display().to_string(), e.to_string()))?;
                    v.push(e.file_name().to_string_lossy().into_owned());
                }
                v.sort();
                Ok(v)
            }
            Source::Zip(z) => z
                .file_names()
                .map(|n| {
                    n.map(|n| n.into_owned())
                        .map_err(|e| fail("zip directory", e.to_string()))
                })
                .collect(),
        }
    }

    /// Reads an entry, returning its size and SHA-256 (and its bytes into `keep`).
    fn hash(
        &mut self,
        name: &str,
        keep: Option<&mut Vec<u8>>,
    ) -> Result<(u64, String), VerifyFailure> {
        let mut r: Box<dyn Read + '_> = match self {
            Source::Dir(d) => {
                Box::new(File::open(d.join(name)).map_err(|e| fail(name, e.to_string()))?)
            }
            Source::Zip(z) => Box::new(z.by_name(name).map_err(|e| fail(name, e.to_string()))?),
        };
        let mut h = Sha256::new();
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut size = 0u64;
        let mut keep = keep;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(fail(name, format!("read at offset {size}: {e}"))),
            };
            h.update(&buf[..n]);
            if let Some(k) = keep.as_deref_mut() {
                k.extend_from_slice(&buf[..n]);
            }
            size += n as u64;
        }
        Ok((size, hex::encode(h.finalize())))
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>, VerifyFailure> {
        let mut v = Vec::new();
        self.hash(name, Some(&mut v))?;
        Ok(v)
    }
}

/// True if `path` is a package (a folder with `manifest.json`, or a zip archive) rather
/// than a clip.
pub fn is_package(path: &Path) -> bool {
    if path.is_dir() {
        return true;
    }
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"PK\x03\x04"
}

/// Checks a package: the manifest's signature (by `pubkey` if given), every listed file's
/// size and SHA-256, that nothing unlisted was added, each clip against its own signed
/// manifest (same device key), and each receipt against its clip (by `centre_key` if
/// given). The first failure names the file.
pub fn verify(
    path: &Path,
    pubkey: Option<&str>,
    centre_key: Option<&str>,
) -> Result<Report, VerifyFailure> {
    let mut src = Source::open(path)?;
    let names = src.names()?;
    if !names.iter().any(|n| n == MANIFEST) {
        return Err(fail(
            MANIFEST,
            format!("missing from {}: not an evidence package", path.display()),
        ));
    }
    let raw = src.read(MANIFEST)?;
    let body = raw.strip_suffix(b"\n").unwrap_or(&raw);
    let m: PackageManifest = serde_json::from_slice(body)
        .map_err(|e| fail(MANIFEST, format!("is not a valid {SCHEMA} manifest: {e}")))?;
    if m.schema != SCHEMA {
        return Err(fail(
            MANIFEST,
            format!("schema is {:?}, expected {SCHEMA:?}", m.schema),
        ));
    }
    let (_, block) = crate::trust::split_signed(body).map_err(|e| fail(MANIFEST, e.to_string()))?;
    let signer = crate::parse_public_key(&block.public_key)
        .map_err(|e| fail(MANIFEST, format!("bad public key in the signature: {e}")))?;
    let key_id = crate::keys::key_id_of(&signer);
    if block.key_id != key_id {
        return Err(fail(
            MANIFEST,
            format!(
                "key_id is {}, but the public key it carries has id {key_id}",
                block.key_id
            ),
        ));
    }
    let key_trusted = match pubkey {
        None => false,
        Some(k) => {
            let want = crate::parse_public_key(k).map_err(|e| {
                fail(
                    MANIFEST,
                    format!("the expected public key is unusable: {e}"),
                )
            })?;
            if want != signer {
                return Err(fail(
                    MANIFEST,
                    format!(
                        "signed by key {key_id}, not the expected key {}",
                        crate::keys::key_id_of(&want)
                    ),
                ));
            }
            true
        }
    };
    crate::trust::TrustedKeys::parse(&[&block.public_key])
        .map_err(|(_, e)| fail(MANIFEST, e))?
        .verify(body)
        .map_err(|_| fail(MANIFEST, format!("signature does not match its contents under key {key_id}: the manifest was altered after signing")))?;
    let mut lines = vec![format!(
        "manifest   {MANIFEST}: signed by key {key_id}{}",
        if key_trusted {
            " (matches the expected public key)"
        } else {
            " (the key it names; pass --pubkey to check whose it is)"
        }
    )];

    for n in &names {
        if n != MANIFEST && !m.files.iter().any(|f| &f.name == n) {
            return Err(fail(
                n,
                "is not listed in the signed manifest.json (added after packaging)",
            ));
        }
    }
    let mut small = std::collections::HashMap::new();
    let mut seen = std::collections::HashMap::new();
    for f in &m.files {
        if !names.contains(&f.name) {
            return Err(fail(&f.name, "is listed in manifest.json but missing"));
        }
        let mut keep = Vec::new();
        let want_bytes = f.kind != "clip";
        let (size, sha) = src.hash(&f.name, want_bytes.then_some(&mut keep))?;
        if size != f.size {
            return Err(fail(
                &f.name,
                format!("size mismatch: {size} bytes, manifest.json says {}", f.size),
            ));
        }
        if sha != f.sha256 {
            return Err(fail(
                &f.name,
                format!(
                    "hash mismatch: SHA-256 is {sha}, manifest.json says {}",
                    f.sha256
                ),
            ));
        }
        lines.push(format!("ok         {}  {}", f.sha256, f.name));
        seen.insert(f.name.clone(), (size, sha));
        if want_bytes {
            small.insert(f.name.clone(), keep);
        }
    }
    for c in &m.cameras {
        let Some(clip) = &c.clip else {
            lines.push(format!(
                "camera     {}: no footage ({})",
                c.id,
                c.gaps.first().map(|g| g.reason.as_str()).unwrap_or("")
            ));
            continue;
        };
        let mname = sidecar_path(Path::new(clip)).to_string_lossy().into_owned();
        let Some(mbytes) = small.get(&mname) else {
            return Err(fail(
                &mname,
                format!("the manifest of {clip} is missing from the package"),
            ));
        };
        let sm = verify_signed(mbytes, Path::new(&mname), Some(&block.public_key))
            .map_err(|e| fail(&mname, storeguard_base::error::chain(&e)))?;
        let (size, sha) = seen.get(clip).ok_or_else(|| fail(clip, "is missing"))?;
        if *size != sm.manifest.file.size || !sha.eq_ignore_ascii_case(&sm.manifest.file.sha256) {
            return Err(fail(
                clip,
                format!(
                    "does not match its signed manifest {mname}: SHA-256 {sha} ({size} bytes), manifest says {} ({} bytes)",
                    sm.manifest.file.sha256, sm.manifest.file.size
                ),
            ));
        }
        lines.push(format!(
            "clip       {}: {clip} matches its signed manifest (frames {} to {})",
            c.id,
            utc_ms(
                sm.manifest
                    .actual
                    .first_frame
                    .timestamp_nanos_opt()
                    .unwrap_or(0)
            ),
            utc_ms(
                sm.manifest
                    .actual
                    .last_frame
                    .timestamp_nanos_opt()
                    .unwrap_or(0)
            )
        ));
        let rname = crate::receipt::receipt_path(Path::new(clip))
            .to_string_lossy()
            .into_owned();
        if let Some(r) = small.get(&rname) {
            let rep = crate::receipt::check_kept(r, &sm.manifest, centre_key)
                .map_err(|e| fail(&rname, storeguard_base::error::chain(&e)))?;
            lines.push(format!(
                "receipt    {rname}: the control centre confirmed these bytes (key {})",
                rep.key_id
            ));
        }
        for g in &c.gaps {
            lines.push(format!(
                "gap        {}: {} to {}: {}",
                c.id, g.from, g.to, g.reason
            ));
        }
    }
    Ok(Report {
        manifest: m,
        key_id,
        key_trusted,
        lines,
    })
}
