//! Evidence packages: every camera of an incident (or of a time range) in one folder or
//! `.zip` that an officer can carry away on a USB stick, replay with an offline viewer and
//! check without trusting the box.
//!
//! A package holds, flat in one directory: per camera the MP4 (the sealed clip where one
//! exists, else a clip cut from the ring for the package, both with a timed-text track of
//! UTC and local time), its signed manifest and the control centre's receipt if any; the
//! continuity log (`continuity.txt`); the viewer (`index.html`); and `manifest.json`, which
//! lists every other file with its SHA-256 and is signed with the device key like any
//! signed JSON (`storeguard_proto::trust`: the last member is the signature).
//!
//! [`build`] writes to `<out>.partial`, fsyncs, reads every file back and verifies it
//! ([`verify`]), then renames it to `out`: a package that exists is complete and checked.
//! It is blocking (cutting, copying, hashing): run it from `cmd::blocking` or a thread.

use super::clip::{self, ClipError};
use crate::config::{Camera, Config};
use crate::recording::Recorder;
use crate::store::package::NewPackage;
use crate::store::{Store, StoreError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use storeguard_base::utc_ms;
use storeguard_proto::manifest::{FileRef, Manifest, Software};
use storeguard_proto::{DeviceKey, sidecar_path};

// The manifest and the offline check are the wire format: the control centre's receiver
// checks an uploaded package with the same code as `storeguard evidence verify`.
pub use storeguard_proto::package::{
    LOG, MANIFEST, PackCamera, PackEvent, PackFile, PackGap, PackageManifest, Report, Requester,
    SCHEMA, VIEWER, VerifyFailure, Window, is_package, verify,
};

const VIEWER_TEMPLATE: &str = include_str!("viewer.html");
const DATA_SLOT: &str = "/*PACKAGE-DATA*/null";
const COPY_CHUNK: usize = 1 << 20;
/// Footage missing at the head or tail of a camera's window shorter than this is the
/// keyframe bracketing, not a gap.
const EDGE_SLACK_NS: i64 = 2_000_000_000;

/// What goes into a package.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every camera with a clip of this event, over its clip's window.
    Event(String),
    /// These cameras over one window (UTC ns).
    Range {
        cameras: Vec<String>,
        from_ns: i64,
        to_ns: i64,
    },
}

/// The daemon parts a package is made from.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub recorder: &'a Recorder,
    pub key: &'a DeviceKey,
    pub config: &'a Config,
}

/// A step of [`build`], for a progress bar.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub step: String,
    /// Bytes copied so far and in all (clips dominate).
    pub done: u64,
    pub total: u64,
}

/// Where a package goes.
#[derive(Debug, Clone)]
pub enum Dest {
    /// A new folder, or a `.zip` by its name, that the caller names: absolute, outside the
    /// data directory (a USB stick).
    Export(PathBuf),
    /// `<data_dir>/packages/<package id>.zip`, to be uploaded through the outbox
    /// ([`queue_upload`]; the `package` remote command).
    Upload,
}

/// The upload spool below the data directory.
pub const UPLOAD_DIR: &str = "packages";

impl Dest {
    /// The destination as the audit trail names it (for an upload, before the package id
    /// is known: the spool directory).
    pub fn shown(&self, data_dir: &Path) -> PathBuf {
        match self {
            Dest::Export(p) => p.clone(),
            Dest::Upload => data_dir.join(UPLOAD_DIR),
        }
    }
}

/// A package written and verified.
#[derive(Debug, Clone)]
pub struct Built {
    pub path: PathBuf,
    pub manifest: PackageManifest,
    /// `manifest.json` as written (signed, one line and a newline).
    pub manifest_bytes: Vec<u8>,
    /// Clips cut from the ring for this package (manual-export clip rows), by uid.
    pub cut: Vec<String>,
}

/// How a request was refused before anything was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request itself is wrong (times, camera list, destination path).
    Request,
    /// What it names does not exist, or holds no footage.
    Unknown,
    /// Fine, but not now or not there (a clip still being cut, a destination in use).
    State,
}

/// Why no package was made. Each says what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{message}")]
    Refused { why: Refusal, message: String },
    /// The destination could not be written (full, read-only, gone).
    #[error("writing the package to {path}")]
    Destination { path: PathBuf, source: io::Error },
    /// A source in the data directory does not match what was sealed.
    #[error("{0}")]
    Source(String),
    #[error("the package at {path} failed verification after writing: {source}")]
    NotVerified {
        path: PathBuf,
        source: Box<VerifyFailure>,
    },
    #[error(transparent)]
    Clip(#[from] ClipError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn refused(why: Refusal, message: impl Into<String>) -> PackageError {
    PackageError::Refused {
        why,
        message: message.into(),
    }
}

/// One camera's part before copying.
struct Part {
    camera: Camera,
    requested: (i64, i64),
    /// The sealed clip in the data directory and its uid.
    clip: Option<(String, PathBuf)>,
    source: String,
    missing: Option<String>,
}

/// True for a destination that is a zip archive rather than a folder.
pub fn is_zip_path(out: &Path) -> bool {
    out.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"))
}

/// Builds a package of `scope` at `out` (a folder, or a `.zip` archive), see the module
/// docs. `progress` is called as it goes. Clips are cut from the ring (and recorded as
/// manual exports) where no sealed clip exists.
pub fn build(
    ctx: &Ctx<'_>,
    scope: &Scope,
    dest: &Dest,
    by: &Requester,
    progress: &mut dyn FnMut(Progress),
) -> Result<Built, PackageError> {
    if let Dest::Export(out) = dest {
        check_destination(ctx.store.data_dir(), out)?;
    }
    let now = storeguard_base::now_ns();
    let (event, parts) = plan(ctx, scope)?;
    let package_id = format!(
        "pkg-{}-{}",
        chrono::DateTime::from_timestamp_nanos(now).format("%Y%m%dT%H%M%S%3fZ"),
        match &event {
            Some(e) => e.id.clone(),
            None => "range".to_string(),
        }
    );
    let out = match dest {
        Dest::Export(p) => p.clone(),
        Dest::Upload => {
            let dir = ctx.store.data_dir().join(UPLOAD_DIR);
            if !dir.is_dir() {
                std::fs::create_dir_all(&dir).map_err(dest_err(&dir))?;
                super::fsync_dir(ctx.store.data_dir()).map_err(dest_err(&dir))?;
            }
            dir.join(format!("{package_id}.zip"))
        }
    };
    let out = out.as_path();
    let mut step = |s: &str, done, total| {
        progress(Progress {
            step: s.to_string(),
            done,
            total,
        })
    };
    // Cut what is not sealed yet, so every camera has a signed clip before copying.
    let mut cut = Vec::new();
    let mut parts = parts;
    for p in parts
        .iter_mut()
        .filter(|p| p.clip.is_none() && p.missing.is_none())
    {
        step(&format!("cutting {} from the ring", p.camera.id), 0, 0);
        let uid = format!(
            "exp-{}-{}",
            chrono::DateTime::from_timestamp_nanos(storeguard_base::now_ns())
                .format("%Y%m%dT%H%M%S%3fZ"),
            p.camera.id
        );
        match clip::seal_range(
            ctx.store,
            ctx.recorder,
            ctx.key,
            &ctx.config.site,
            &p.camera,
            &uid,
            p.requested,
        ) {
            Ok(s) => {
                p.source = format!(
                    "{}; cut from the ring for this package as clip {uid}",
                    p.source
                );
                p.clip = Some((uid.clone(), s.path));
                cut.push(uid);
            }
            Err(e @ ClipError::NoFootage { .. }) => p.missing = Some(e.to_string()),
            Err(e) => return Err(e.into()),
        }
    }
    if parts.iter().all(|p| p.clip.is_none()) {
        let why: Vec<String> = parts.iter().filter_map(|p| p.missing.clone()).collect();
        return Err(refused(
            Refusal::Unknown,
            format!("nothing to package: {}", why.join("; ")),
        ));
    }

    let total: u64 = parts
        .iter()
        .filter_map(|p| p.clip.as_ref())
        .map(|(_, path)| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
        .sum();
    let partial = with_suffix(out, ".partial");
    let mut sink = Sink::create(out, &partial)?;
    let result = (|| {
        let mut files = Vec::new();
        let mut cameras = Vec::new();
        let mut done = 0u64;
        for p in &parts {
            cameras.push(copy_part(p, &mut sink, &mut files, &mut |n, name| {
                done += n;
                step(&format!("copying {name}"), done, total);
            })?);
        }
        let requested = window_of(&parts);
        let firsts = cameras.iter().filter_map(|c| c.actual.as_ref());
        let actual = firsts
            .clone()
            .map(|w| w.from.clone())
            .min()
            .zip(firsts.map(|w| w.to.clone()).max())
            .map(|(from, to)| Window { from, to });
        let mut m = PackageManifest {
            schema: SCHEMA.to_string(),
            package_id: package_id.clone(),
            site_id: ctx.config.site.site_id.clone(),
            device_id: ctx.config.site.device_id.clone(),
            event: event.clone(),
            requested,
            actual,
            cameras,
            files,
            software: Software::this(),
            created_at: utc_ms(now),
            created_by: by.clone(),
            destination: out.display().to_string(),
            signature: None,
        };
        step("writing the continuity log", done, total);
        let log = continuity_log(ctx, &m, &parts);
        m.files
            .push(sink.add_bytes(LOG, "continuity_log", log.as_bytes())?);
        step("writing the viewer", done, total);
        let viewer = viewer_html(&m, ctx.key)?;
        m.files
            .push(sink.add_bytes(VIEWER, "viewer", viewer.as_bytes())?);
        let signed = sign_manifest(&m, ctx.key);
        sink.add_bytes(MANIFEST, "package_manifest", &signed)?;
        m = serde_json::from_slice(&signed[..signed.len() - 1]).expect("own manifest parses");
        step("syncing to the destination", done, total);
        sink.finish()?;
        step("verifying the copy", done, total);
        verify(&partial, Some(&ctx.key.public_key_b64()), None).map_err(|e| {
            PackageError::NotVerified {
                path: out.to_path_buf(),
                source: Box::new(e),
            }
        })?;
        std::fs::rename(&partial, out).map_err(dest_err(out))?;
        super::fsync_dir(&super::parent_dir(out)).map_err(dest_err(out))?;
        Ok((m, signed))
    })();
    match result {
        Ok((manifest, manifest_bytes)) => Ok(Built {
            path: out.to_path_buf(),
            manifest,
            manifest_bytes,
            cut,
        }),
        Err(e) => {
            // Nothing half-written stays at the destination.
            let _ = if partial.is_dir() {
                std::fs::remove_dir_all(&partial)
            } else {
                std::fs::remove_file(&partial)
            };
            Err(e)
        }
    }
}

/// Queues a package built with [`Dest::Upload`] for the control centre: its signed
/// manifest is kept beside the zip (`<zip>.manifest.json`, as a clip's), then one
/// transaction records it and queues its manifest message; chunks, resume and the signed
/// receipt then work as for a clip. Returns the zip's name, size and SHA-256.
pub fn queue_upload(
    store: &Store,
    built: &Built,
    request_id: Option<&str>,
) -> Result<FileRef, PackageError> {
    let file = FileRef::from_path(&built.path)
        .map_err(|e| PackageError::Source(format!("hashing {}: {e}", built.path.display())))?;
    let side = sidecar_path(&built.path);
    storeguard_base::fs::write_atomic(&side, &built.manifest_bytes, 0o644)
        .map_err(dest_err(&side))?;
    let rel = built
        .path
        .strip_prefix(store.data_dir())
        .map_err(|_| {
            PackageError::Source(format!(
                "{} is not in the data directory; only packages built for upload go upstream",
                built.path.display()
            ))
        })?
        .to_string_lossy()
        .into_owned();
    let id = &built.manifest.package_id;
    let (topic, payload) = storeguard_proto::package::package_message(id, &file, &built.manifest);
    store.seal_package(
        &NewPackage {
            uid: id,
            event: built.manifest.event.as_ref().map(|e| e.id.as_str()),
            request_id,
            path: &rel,
            sha256: &file.sha256,
            bytes: file.size,
        },
        (&topic, &payload),
        storeguard_base::now_ns(),
    )?;
    Ok(file)
}

/// At start-up: removes what a crash left in the upload spool, a package half written
/// (`*.partial`) or written but never recorded for upload (a zip, and its manifest, with
/// no `package` row). Recorded packages are kept whatever their state.
pub fn clean_spool(store: &Store) {
    let dir = store.data_dir().join(UPLOAD_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let id = name
            .strip_suffix(".zip.manifest.json")
            .or_else(|| name.strip_suffix(".zip"));
        let orphan = if name.ends_with(".partial") {
            true
        } else if let Some(id) = id {
            matches!(store.package(id), Ok(None))
        } else {
            false
        };
        if orphan {
            let r = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match r {
                Ok(()) => {
                    tracing::warn!(path = %path.display(), "removed a package a crash left unfinished in the upload spool")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "could not remove an unfinished package: {e}")
                }
            }
        }
    }
}

fn dest_err(path: &Path) -> impl Fn(io::Error) -> PackageError + '_ {
    move |source| PackageError::Destination {
        path: path.to_path_buf(),
        source,
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The destination must be new (or an empty folder), absolute, outside the data directory,
/// in a directory that exists.
fn check_destination(data_dir: &Path, out: &Path) -> Result<(), PackageError> {
    if !out.is_absolute() {
        return Err(refused(
            Refusal::Request,
            format!(
                "--out {} must be an absolute path (the daemon writes it)",
                out.display()
            ),
        ));
    }
    let parent = super::parent_dir(out);
    let parent_abs = std::fs::canonicalize(&parent).map_err(|e| {
        refused(
            Refusal::State,
            format!(
                "--out {}: its directory {} is not usable: {e}",
                out.display(),
                parent.display()
            ),
        )
    })?;
    let data_abs = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    if parent_abs.starts_with(&data_abs) {
        return Err(refused(
            Refusal::State,
            format!(
                "--out {} is inside the data directory {}; write packages elsewhere (a USB stick)",
                out.display(),
                data_dir.display()
            ),
        ));
    }
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Ok(m) if m.is_dir() && !is_zip_path(out) => {
            let empty = std::fs::read_dir(out)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if empty {
                Ok(())
            } else {
                Err(refused(
                    Refusal::State,
                    format!(
                        "--out {} exists and is not empty; packages never overwrite anything",
                        out.display()
                    ),
                ))
            }
        }
        Ok(_) => Err(refused(
            Refusal::State,
            format!(
                "--out {} already exists; packages never overwrite anything",
                out.display()
            ),
        )),
        Err(e) => Err(refused(
            Refusal::State,
            format!("--out {}: {e}", out.display()),
        )),
    }
}

fn camera_of<'a>(cfg: &'a Config, id: &str) -> Result<&'a Camera, PackageError> {
    cfg.known_camera(id)
        .map_err(|why| refused(Refusal::Unknown, why))
}

fn plan(ctx: &Ctx<'_>, scope: &Scope) -> Result<(Option<PackEvent>, Vec<Part>), PackageError> {
    let store = ctx.store;
    match scope {
        Scope::Range {
            cameras,
            from_ns,
            to_ns,
        } => {
            if cameras.is_empty() {
                return Err(refused(
                    Refusal::Request,
                    "--cameras: name at least one camera",
                ));
            }
            if from_ns >= to_ns {
                return Err(refused(Refusal::Request, "--from must be before --to"));
            }
            let now = storeguard_base::now_ns();
            if *to_ns > now {
                return Err(refused(
                    Refusal::Request,
                    format!(
                        "--to {} is in the future (now {})",
                        utc_ms(*to_ns),
                        utc_ms(now)
                    ),
                ));
            }
            let mut parts = Vec::new();
            for id in cameras {
                let cam = camera_of(ctx.config, id)?.clone();
                if parts.iter().any(|p: &Part| p.camera.id == cam.id) {
                    continue;
                }
                parts.push(Part {
                    camera: cam,
                    requested: (*from_ns, *to_ns),
                    clip: None,
                    source: "requested range".into(),
                    missing: None,
                });
            }
            Ok((None, parts))
        }
        Scope::Event(uid) => {
            let ev = store.event_by_uid(uid)?.ok_or_else(|| {
                refused(
                    Refusal::Unknown,
                    format!("no event {uid:?} (see `storeguard events`)"),
                )
            })?;
            let clips = store.clips_of_event(ev.id)?;
            if clips.is_empty() {
                return Err(refused(
                    Refusal::Unknown,
                    format!(
                        "event {uid} ({}) has no clips: no camera is mapped to {}",
                        ev.kind, ev.source
                    ),
                ));
            }
            let mut parts = Vec::new();
            for c in clips {
                let camera = match ctx.config.camera(&c.camera) {
                    Some(cam) => cam.clone(),
                    // Removed from the config since: still package what it recorded.
                    None => Camera {
                        id: c.camera.clone(),
                        ..camera_placeholder(&c.camera)
                    },
                };
                let window = (c.from_ns, c.to_ns);
                let path = c.path.as_ref().map(|p| store.data_dir().join(p));
                let (clip, source, missing) = match (c.state.as_str(), path) {
                    ("pending", _) => {
                        return Err(refused(
                            Refusal::State,
                            format!(
                                "clip {} of event {uid} is still being cut (its window ends at {}); try again in a few seconds",
                                c.uid,
                                utc_ms(c.to_ns)
                            ),
                        ));
                    }
                    (_, Some(p)) if p.exists() => (
                        Some((c.uid.clone(), p)),
                        format!("sealed clip {} of event {uid}", c.uid),
                        None,
                    ),
                    (state, _) => (
                        None,
                        format!(
                            "clip {} of event {uid} is {state}{}",
                            c.uid,
                            c.error
                                .as_deref()
                                .map(|e| format!(" ({e})"))
                                .unwrap_or_default()
                        ),
                        None,
                    ),
                };
                parts.push(Part {
                    camera,
                    requested: window,
                    clip,
                    source,
                    missing,
                });
            }
            Ok((
                Some(PackEvent {
                    id: ev.uid,
                    kind: ev.kind,
                    source: ev.source,
                    at: utc_ms(ev.at_ns),
                    test: ev.test,
                }),
                parts,
            ))
        }
    }
}

fn camera_placeholder(id: &str) -> Camera {
    let mut c: Camera = toml::from_str(&format!("id = {id:?}\nurl = \"rtsp://removed/\"\n"))
        .expect("a minimal camera table parses");
    c.name = format!("{id} (no longer configured)");
    c
}

fn window_of(parts: &[Part]) -> Window {
    let from = parts.iter().map(|p| p.requested.0).min().unwrap_or(0);
    let to = parts.iter().map(|p| p.requested.1).max().unwrap_or(0);
    Window {
        from: utc_ms(from),
        to: utc_ms(to),
    }
}

/// Copies one camera's clip, manifest and receipt, checking the clip against its signed
/// manifest as it is read; returns the camera's entry.
fn copy_part(
    p: &Part,
    sink: &mut Sink,
    files: &mut Vec<PackFile>,
    progress: &mut dyn FnMut(u64, &str),
) -> Result<PackCamera, PackageError> {
    let requested = Window {
        from: utc_ms(p.requested.0),
        to: utc_ms(p.requested.1),
    };
    let mut cam = PackCamera {
        id: p.camera.id.clone(),
        name: p.camera.name.clone(),
        location: p.camera.location.clone(),
        clip: None,
        source: p.source.clone(),
        requested,
        actual: None,
        gaps: Vec::new(),
    };
    let Some((uid, path)) = &p.clip else {
        cam.gaps.push(PackGap {
            from: cam.requested.from.clone(),
            to: cam.requested.to.clone(),
            reason: p
                .missing
                .clone()
                .unwrap_or_else(|| format!("{}; the ring no longer holds it", p.source)),
        });
        return Ok(cam);
    };
    let mpath = sidecar_path(path);
    let mbytes = std::fs::read(&mpath).map_err(|e| {
        PackageError::Source(format!("clip {uid}: reading {}: {e}", mpath.display()))
    })?;
    let m: Manifest = serde_json::from_slice(&mbytes).map_err(|e| {
        PackageError::Source(format!(
            "clip {uid}: {} is not a manifest: {e}",
            mpath.display()
        ))
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("{uid}.mp4"));
    let f = sink.add_file(&name, "clip", path, progress)?;
    if f.sha256 != m.file.sha256 || f.size != m.file.size {
        return Err(PackageError::Source(format!(
            "sealed clip {} does not match its manifest: SHA-256 {} ({} bytes), manifest says {} ({} bytes); not packaged",
            path.display(),
            f.sha256,
            f.size,
            m.file.sha256,
            m.file.size
        )));
    }
    files.push(f);
    let mname = sidecar_path(Path::new(&name))
        .to_string_lossy()
        .into_owned();
    files.push(sink.add_bytes(&mname, "clip_manifest", &mbytes)?);
    let receipt = storeguard_proto::receipt::receipt_path(path);
    if let Ok(bytes) = std::fs::read(&receipt) {
        let rname = storeguard_proto::receipt::receipt_path(Path::new(&name))
            .to_string_lossy()
            .into_owned();
        files.push(sink.add_bytes(&rname, "receipt", &bytes)?);
    }
    let (first, last) = (
        m.actual.first_frame.timestamp_nanos_opt().unwrap_or(0),
        m.actual.last_frame.timestamp_nanos_opt().unwrap_or(0),
    );
    cam.clip = Some(name);
    cam.actual = Some(Window {
        from: utc_ms(first),
        to: utc_ms(last),
    });
    // Footage the ring did not have at the ends of the window is a gap as well.
    let (from, to) = p.requested;
    if first > from + EDGE_SLACK_NS {
        cam.gaps.push(PackGap {
            from: utc_ms(from),
            to: utc_ms(first),
            reason: "not recorded: the clip's first frame is later (camera not recording, or aged out of the ring before it was locked)".into(),
        });
    }
    for g in &m.gaps {
        cam.gaps.push(PackGap {
            from: utc_ms(g.from.timestamp_nanos_opt().unwrap_or(0)),
            to: utc_ms(g.to.timestamp_nanos_opt().unwrap_or(0)),
            reason: g.reason.clone(),
        });
    }
    if last + EDGE_SLACK_NS < to {
        cam.gaps.push(PackGap {
            from: utc_ms(last),
            to: utc_ms(to),
            reason: "not recorded: the clip's last frame is earlier (camera stopped recording)"
                .into(),
        });
    }
    Ok(cam)
}

fn sign_manifest(m: &PackageManifest, key: &DeviceKey) -> Vec<u8> {
    let mut unsigned = m.clone();
    unsigned.signature = None;
    let bytes = serde_json::to_vec(&unsigned).expect("manifest serializes");
    let mut signed = storeguard_proto::trust::sign_json(&bytes, key);
    // One line plus a newline, like a clip's manifest.
    signed.push(b'\n');
    signed
}

/// The exhibit statement's facts, in words: who made the package, when, from what, and
/// every file's hash at creation.
fn continuity_log(ctx: &Ctx<'_>, m: &PackageManifest, parts: &[Part]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let local = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| {
                t.with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M:%S%.3f %:z")
                    .to_string()
            })
            .unwrap_or_default()
    };
    let _ = writeln!(s, "STOREGUARD EVIDENCE PACKAGE - CONTINUITY LOG");
    let _ = writeln!(s, "package      {}", m.package_id);
    let _ = writeln!(
        s,
        "made by      device {} at site {}, {} {}",
        m.device_id, m.site_id, m.software.name, m.software.version
    );
    let _ = writeln!(
        s,
        "signing key  {} (Ed25519, public key {})",
        ctx.key.key_id(),
        ctx.key.public_key_b64()
    );
    let _ = writeln!(
        s,
        "made at      {} (local {})",
        m.created_at,
        local(&m.created_at)
    );
    let _ = writeln!(
        s,
        "requested by uid {} pid {} via {}",
        m.created_by.uid.map_or("-".into(), |u| u.to_string()),
        m.created_by.pid.map_or("-".into(), |p| p.to_string()),
        m.created_by.via
    );
    let _ = writeln!(s, "written to   {}", m.destination);
    if let Some(e) = &m.event {
        let _ = writeln!(
            s,
            "event        {} {} from {} at {} (local {}){}",
            e.id,
            e.kind,
            e.source,
            e.at,
            local(&e.at),
            if e.test { ", a TEST event" } else { "" }
        );
    }
    let _ = writeln!(
        s,
        "window       {} to {} (UTC)",
        m.requested.from, m.requested.to
    );
    let _ = writeln!(s);
    for (c, p) in m.cameras.iter().zip(parts) {
        let _ = writeln!(
            s,
            "camera {} \"{}\"{}",
            c.id,
            c.name,
            if c.location.is_empty() {
                String::new()
            } else {
                format!(", {}", c.location)
            }
        );
        let _ = writeln!(s, "  source     {}", c.source);
        match &c.actual {
            Some(a) => {
                let _ = writeln!(
                    s,
                    "  footage    {} to {} (first and last frame, UTC)",
                    a.from, a.to
                );
            }
            None => {
                let _ = writeln!(s, "  footage    none");
            }
        }
        // The ring files the footage was recorded into, while the ring still has them.
        if let Ok(segs) = ctx
            .store
            .segments_between(&c.id, p.requested.0, p.requested.1)
        {
            for seg in segs {
                let _ = writeln!(
                    s,
                    "  recording  {} ({} to {}, {} bytes)",
                    seg.path,
                    utc_ms(seg.start_ns),
                    utc_ms(seg.end_ns),
                    seg.bytes
                );
            }
        }
        for g in &c.gaps {
            let _ = writeln!(s, "  gap        {} to {}: {}", g.from, g.to, g.reason);
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "files (SHA-256 at creation; {VIEWER} and the signed {MANIFEST} list this log too)"
    );
    for f in &m.files {
        let _ = writeln!(s, "  {}  {:>12}  {}", f.sha256, f.size, f.name);
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Check: `storeguard evidence verify PACKAGE --pubkey KEY`, or open {VIEWER} and select this folder."
    );
    s
}

/// The viewer with the package's description embedded (it must work without reading
/// files, which browsers forbid on file://).
fn viewer_html(m: &PackageManifest, key: &DeviceKey) -> Result<String, PackageError> {
    let offset = chrono::Local::now().format("%:z").to_string();
    let data = serde_json::json!({
        "package_id": m.package_id,
        "site_id": m.site_id,
        "device_id": m.device_id,
        "key_id": key.key_id(),
        "event": m.event,
        "requested": m.requested,
        "cameras": m.cameras,
        "files": m.files,
        "created_at": m.created_at,
        "box_utc_offset": offset,
    });
    // `</` inside a script element would end it.
    let json = serde_json::to_string(&data)
        .expect("viewer data serializes")
        .replace("</", "<\\/");
    if !VIEWER_TEMPLATE.contains(DATA_SLOT) {
        return Err(PackageError::Source(
            "viewer template lacks its data slot".into(),
        ));
    }
    Ok(VIEWER_TEMPLATE.replacen(DATA_SLOT, &json, 1))
}

/// Where files go: a folder or a zip archive being written.
enum Sink {
    Dir(PathBuf),
    Zip {
        path: PathBuf,
        zip: Box<zip::ZipWriter<File>>,
    },
}

impl Sink {
    fn create(out: &Path, partial: &Path) -> Result<Sink, PackageError> {
        let err = dest_err(out);
        if is_zip_path(out) {
            let f = File::options()
                .write(true)
                .create_new(true)
                .open(partial)
                .map_err(&err)?;
            Ok(Sink::Zip {
                path: partial.to_path_buf(),
                zip: Box::new(zip::ZipWriter::new(f)),
            })
        } else {
            std::fs::create_dir(partial).map_err(&err)?;
            Ok(Sink::Dir(partial.to_path_buf()))
        }
    }

    fn options(size: u64) -> zip::write::SimpleFileOptions {
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(size >= u32::MAX as u64)
            .unix_permissions(0o644)
    }

    /// Streams `src` in, hashing what was read; `progress` gets each chunk's size.
    fn add_file(
        &mut self,
        name: &str,
        kind: &str,
        src: &Path,
        progress: &mut dyn FnMut(u64, &str),
    ) -> Result<PackFile, PackageError> {
        let mut input = File::open(src)
            .map_err(|e| PackageError::Source(format!("reading {}: {e}", src.display())))?;
        let size = input.metadata().map(|m| m.len()).unwrap_or(0);
        let mut w = self.writer(name, size)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut n_total = 0u64;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(PackageError::Source(format!(
                        "reading {} at offset {n_total}: {e}",
                        src.display()
                    )));
                }
            };
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).map_err(|e| w.fail(e))?;
            n_total += n as u64;
            progress(n as u64, name);
        }
        w.close()?;
        Ok(PackFile {
            name: name.to_string(),
            kind: kind.to_string(),
            size: n_total,
            sha256: hex::encode(h.finalize()),
        })
    }

    fn add_bytes(
        &mut self,
        name: &str,
        kind: &str,
        bytes: &[u8],
    ) -> Result<PackFile, PackageError> {
        let mut w = self.writer(name, bytes.len() as u64)?;
        w.write_all(bytes).map_err(|e| w.fail(e))?;
        w.close()?;
        Ok(PackFile {
            name: name.to_string(),
            kind: kind.to_string(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        })
    }

    fn writer(&mut self, name: &str, size: u64) -> Result<EntryWriter<'_>, PackageError> {
        match self {
            Sink::Dir(dir) => {
                let path = dir.join(name);
                let f = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(dest_err(&path))?;
                Ok(EntryWriter::File(f, path))
            }
            Sink::Zip { path, zip } => {
                zip.start_file(name, Self::options(size))
                    .map_err(|e| zip_err(path, name, e))?;
                Ok(EntryWriter::Zip(zip, path.clone()))
            }
        }
    }

    /// Ends the archive and makes everything durable (files, then directories).
    fn finish(self) -> Result<(), PackageError> {
        match self {
            Sink::Dir(dir) => {
                super::fsync_dir(&dir).map_err(dest_err(&dir))?;
                super::fsync_dir(&super::parent_dir(&dir)).map_err(dest_err(&dir))
            }
            Sink::Zip { path, zip } => {
                let f = zip
                    .finish()
                    .map_err(|e| zip_err(&path, "central directory", e))?;
                f.sync_all().map_err(dest_err(&path))?;
                drop_cache(&f);
                super::fsync_dir(&super::parent_dir(&path)).map_err(dest_err(&path))
            }
        }
    }
}

fn zip_err(path: &Path, name: &str, e: zip::result::ZipError) -> PackageError {
    let source = match e {
        zip::result::ZipError::Io(e) => e,
        e => io::Error::other(format!("{name}: {e}")),
    };
    PackageError::Destination {
        path: path.to_path_buf(),
        source,
    }
}

/// Asks the kernel to forget a synced file's pages, so reading it back for verification
/// reads the medium rather than the page cache.
fn drop_cache(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; advice only, errors are harmless.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

enum EntryWriter<'a> {
    File(File, PathBuf),
    Zip(&'a mut zip::ZipWriter<File>, PathBuf),
}

impl EntryWriter<'_> {
    fn fail(&self, source: io::Error) -> PackageError {
        let path = match self {
            EntryWriter::File(_, p) | EntryWriter::Zip(_, p) => p.clone(),
        };
        PackageError::Destination { path, source }
    }

    fn close(self) -> Result<(), PackageError> {
        match self {
            EntryWriter::File(f, path) => {
                f.sync_all().map_err(dest_err(&path))?;
                drop_cache(&f);
                Ok(())
            }
            EntryWriter::Zip(..) => Ok(()),
        }
    }
}

impl Write for EntryWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            EntryWriter::File(f, _) => f.write(buf),
            EntryWriter::Zip(z, _) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            EntryWriter::File(f, _) => f.flush(),
            EntryWriter::Zip(z, _) => z.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_leaves_nothing_unrecorded_in_the_upload_spool() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let spool = d.path().join(UPLOAD_DIR);
        std::fs::create_dir_all(spool.join("pkg-b.zip.partial")).unwrap();
        for f in [
            "pkg-a.zip",
            "pkg-a.zip.manifest.json",
            "pkg-c.zip",
            "pkg-c.zip.manifest.json",
        ] {
            std::fs::write(spool.join(f), b"x").unwrap();
        }
        let p = NewPackage {
            uid: "pkg-a",
            event: None,
            request_id: None,
            path: "packages/pkg-a.zip",
            sha256: "00",
            bytes: 1,
        };
        store
            .seal_package(&p, ("evidence/pkg-a/manifest", b"{}"), 1)
            .unwrap();
        clean_spool(&store);
        let mut left: Vec<String> = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["pkg-a.zip", "pkg-a.zip.manifest.json"]);
    }
}
