//! Cuts an evidence clip from the ring: the keyframe at or before the window start to
//! the first keyframe after its end, remuxed without transcoding, hashed, described by
//! a signed manifest. Gaps inside the window are stated in the manifest.

use super::manifest::{
    Actual, CameraRef, Correction, EventKind, EventRef, FileRef, Gap, Manifest, Requested, SCHEMA,
    Software, TimeQuality,
};
use super::mp4::{TimeText, TsSlice, remux_ts_to_mp4_timed};
use crate::config::Site;
use crate::recording::Recorder;
use crate::store::Store;
use crate::store::events::NewClip;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use storeguard_base::utc_ms;
use storeguard_proto::DeviceKey;

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("no footage for camera {camera} between {from} and {to}; {available}")]
    NoFootage {
        camera: String,
        from: String,
        to: String,
        available: String,
    },
    #[error("cutting clip for camera {camera}: {detail}")]
    Cut { camera: String, detail: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("writing evidence")]
    Io(#[from] std::io::Error),
}

pub struct ClipSpec<'a> {
    pub uid: &'a str,
    pub camera_id: &'a str,
    pub camera_name: &'a str,
    pub from_ns: i64,
    pub to_ns: i64,
    pub event: EventRef,
}

#[derive(Debug, Clone)]
pub struct Sealed {
    /// Relative to the data directory.
    pub rel_path: String,
    pub path: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
}

pub fn utc(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

/// What the ring holds for a camera, for error messages that say what *is* available.
pub fn available(store: &Store, camera: &str) -> String {
    match store.camera_extent(camera) {
        Ok(Some((oldest, newest))) => format!(
            "the ring holds {} from {} to {}",
            camera,
            utc_ms(oldest),
            utc_ms(newest)
        ),
        Ok(None) => format!("the ring holds nothing for {camera}"),
        Err(e) => format!("(ring not readable: {})", storeguard_base::error::chain(&e)),
    }
}

/// Cuts, remuxes, hashes and signs one clip for a pending clip row (see the module docs).
/// A file already at the clip's path is an unsealed earlier attempt and is replaced.
pub fn cut(
    store: &Store,
    key: &DeviceKey,
    site: &Site,
    spec: &ClipSpec<'_>,
) -> Result<Sealed, ClipError> {
    let segs = store.segments_between(spec.camera_id, spec.from_ns, spec.to_ns)?;
    let no_footage = || ClipError::NoFootage {
        camera: spec.camera_id.to_string(),
        from: utc_ms(spec.from_ns),
        to: utc_ms(spec.to_ns),
        available: available(store, spec.camera_id),
    };
    let mut slices = Vec::new();
    let mut first_frame: Option<i64> = None;
    let mut codec_hint = None;
    for (i, seg) in segs.iter().enumerate() {
        let kfs = store.keyframes(seg.id)?;
        if kfs.is_empty() {
            continue;
        }
        // Start: the keyframe at or before the window start (else the segment's first).
        let start = if first_frame.is_none() {
            let k = kfs
                .iter()
                .rev()
                .find(|k| k.0 <= spec.from_ns)
                .unwrap_or(&kfs[0]);
            first_frame = Some(k.0);
            k.1
        } else {
            0
        };
        // End: just before the first keyframe after the window, so the clip ends within
        // one GOP after the requested end.
        let end = kfs
            .iter()
            .find(|k| k.0 > spec.to_ns && k.1 > start)
            .map(|k| k.1)
            .unwrap_or(seg.bytes);
        if end > start {
            slices.push(TsSlice {
                path: store.data_dir().join(&seg.path),
                start,
                end: Some(end),
                shift_ns: seg.time_shift_ns,
            });
            codec_hint.get_or_insert(seg.codec.clone());
        }
        if end < seg.bytes || i + 1 == segs.len() {
            break;
        }
    }
    let Some(first_ns) = first_frame else {
        return Err(no_footage());
    };
    if slices.is_empty() {
        return Err(no_footage());
    }
    let day = utc(spec.from_ns).format("%Y%m%d");
    let rel = format!("evidence/{day}/{}.mp4", spec.uid);
    let path = store.data_dir().join(&rel);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    remove_unsealed_attempt(&path)?;
    // The first frame is at MP4 time zero: the text track runs from its wall-clock time.
    let clock = TimeText {
        t0_ns: first_ns,
        fixed_offset: None,
    };
    let info = remux_ts_to_mp4_timed(&slices, &path, Some(&clock)).map_err(|e| ClipError::Cut {
        camera: spec.camera_id.to_string(),
        detail: e.to_string(),
    })?;
    let last_ns = first_ns + info.span().as_nanos() as i64;

    let gaps = store
        .gaps_between(spec.camera_id, spec.from_ns, spec.to_ns)?
        .into_iter()
        .map(|g| Gap {
            from: utc(g.start_ns.max(spec.from_ns)),
            to: utc(g.end_ns.unwrap_or(spec.to_ns).min(spec.to_ns)),
            reason: g.reason,
        })
        .filter(|g| g.to > g.from)
        .collect();
    let time = footage_time(store, spec.camera_id, first_ns, last_ns.max(first_ns + 1))?;
    let mut m = Manifest {
        schema: SCHEMA.to_string(),
        site_id: site.site_id.clone(),
        device_id: site.device_id.clone(),
        camera: CameraRef {
            id: spec.camera_id.to_string(),
            name: spec.camera_name.to_string(),
        },
        event: spec.event.clone(),
        requested: Requested {
            from: utc(spec.from_ns),
            to: utc(spec.to_ns),
        },
        actual: Actual {
            first_frame: utc(first_ns),
            last_frame: utc(last_ns),
        },
        codec: info.codec.as_str().to_string(),
        width: info.width,
        height: info.height,
        file: FileRef::from_path(&path)?,
        gaps,
        time: Some(time),
        software: Software::this(),
        created_at: utc(storeguard_base::now_ns()),
        signature: None,
    };
    m.sign(key);
    let manifest_path = m.write_sidecar(&path)?;
    Ok(Sealed {
        rel_path: rel,
        path,
        manifest_path,
        manifest: m,
    })
}

/// The time quality of a camera's footage over a clip, for its manifest.
pub fn footage_time(
    store: &Store,
    camera: &str,
    from_ns: i64,
    to_ns: i64,
) -> Result<TimeQuality, ClipError> {
    let t = store.footage_time(camera, from_ns, to_ns)?;
    Ok(TimeQuality {
        source: t.source.to_string(),
        error_bound_ms: t.error_ns.map(|e| (e + 999_999) / 1_000_000),
        corrections: t
            .corrections
            .iter()
            .map(|s| Correction {
                at: utc_ms(s.at_ns),
                before: utc_ms(s.before_ns),
                after: utc_ms(s.after_ns),
                step_ms: s.size_ns / 1_000_000,
                cause: s.cause.clone(),
            })
            .collect(),
    })
}

/// Clip paths are per clip row and only pending rows are cut, so a file already there is
/// an earlier attempt at this clip that was never sealed (a crash between the remux's
/// rename and the sealing commit). Its footage is still locked in the ring: cut it again.
fn remove_unsealed_attempt(path: &Path) -> std::io::Result<()> {
    for p in [path.to_path_buf(), super::manifest::sidecar_path(path)] {
        match std::fs::remove_file(&p) {
            Ok(()) => {
                tracing::warn!(path = %p.display(), "replacing an unsealed clip left by an earlier attempt")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(super::io_context(e, "remove unsealed", &p)),
        }
    }
    Ok(())
}

pub fn event_ref(uid: &str, kind: EventKind, test: bool) -> EventRef {
    EventRef {
        id: uid.to_string(),
        kind,
        test,
    }
}

/// Where an exported copy goes: `DIR/<clip>.mp4` and its manifest.
pub fn export_paths(dir: &Path, sealed: &Sealed) -> (PathBuf, PathBuf) {
    let name = sealed
        .path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let clip = dir.join(&name);
    (clip.clone(), super::manifest::sidecar_path(&clip))
}

/// Seals a clip of `[from_ns, to_ns]` still in the ring, now (an export for a police
/// request of earlier footage): lock the range, cut, sign, record the clip; on failure
/// the lock is released and the clip row marked failed.
pub fn seal_range(
    store: &Store,
    recorder: &Recorder,
    key: &DeviceKey,
    site: &Site,
    camera: &crate::config::Camera,
    uid: &str,
    (from_ns, to_ns): (i64, i64),
) -> Result<Sealed, ClipError> {
    let now_ns = storeguard_base::now_ns();
    recorder.sync_now(&camera.id);
    let lock =
        store.add_retention_lock(&camera.id, from_ns, to_ns, &format!("export {uid}"), now_ns)?;
    let nc = NewClip {
        uid: uid.to_string(),
        camera: camera.id.clone(),
        from_ns,
        to_ns,
    };
    let id = store.insert_clip(&nc, None, Some(lock), now_ns)?;
    let spec = ClipSpec {
        uid,
        camera_id: &camera.id,
        camera_name: &camera.name,
        from_ns,
        to_ns,
        event: event_ref(uid, EventKind::new(EventKind::MANUAL_EXPORT), false),
    };
    let sealed = match cut(store, key, site, &spec) {
        Ok(s) => s,
        Err(e) => {
            let _ = store.fail_clip(id, &storeguard_base::error::chain(&e));
            let _ = store.remove_retention_lock(lock);
            return Err(e);
        }
    };
    let m = &sealed.manifest;
    store.seal_clip(
        id,
        &sealed.rel_path,
        &m.file.sha256,
        m.file.size,
        None,
        now_ns,
    )?;
    Ok(sealed)
}
