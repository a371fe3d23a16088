//! Start-up reconciliation of segment files against the index. Neither side is trusted
//! blindly: rows whose files are gone are removed and reported, segments a crash left
//! open are re-measured from the file, and readable files the index doesn't know
//! (crash between file creation and the first index commit) are indexed.

use super::scan::{ScanResult, scan_file};
use super::writer::{day_dir_name, start_from_file_name};
use crate::store::Store;
use crate::store::recording::{STATE_RECOVERED, SegmentProgress};
use anyhow::Context;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
pub struct Report {
    pub recovered: Vec<String>,
    pub missing: Vec<String>,
    pub orphans_indexed: Vec<String>,
    pub unreadable: Vec<String>,
    /// Files that held no whole frame (a crash before the first was written): removed.
    pub removed_empty: Vec<String>,
}

impl Report {
    /// How many repairs it holds.
    pub fn changes(&self) -> usize {
        self.recovered.len()
            + self.missing.len()
            + self.orphans_indexed.len()
            + self.unreadable.len()
            + self.removed_empty.len()
    }

    pub fn is_clean(&self) -> bool {
        self.changes() == 0
    }
}

/// The whole reconciliation at once: what start-up does, then every directory it left to
/// the scrub. For the fuzz target and tests; the daemon scrubs in the background.
pub fn run(store: &Store) -> anyhow::Result<Report> {
    let (mut report, deferred) = at_start(store)?;
    for (camera, dir) in deferred {
        reconcile_dir(store, &camera, &dir, &mut report)?;
    }
    Ok(report)
}

/// What start-up must settle before recording resumes, at a cost that does not grow with
/// the ring: the segments left open, and per camera the day directories at its two ends,
/// where a crash or power cut leaves its traces (files created before their first index
/// commit at the newest end; evicted segments' files not yet unlinked at the oldest).
/// Returns, oldest first, the other directories, for the background scrub
/// (`reconcile_dir`): only damage from outside (a lost file, a copied-in one) is there.
pub fn at_start(store: &Store) -> anyhow::Result<(Report, Vec<(String, PathBuf)>)> {
    let mut report = Report::default();
    let now = storeguard_base::now_ns();
    for row in store.open_segments()? {
        let path = store.data_dir().join(&row.path);
        if !path.exists() {
            missing(store, now, row.id, &row.camera, row.path, &mut report)?;
            continue;
        }
        let scan = scan_file(&path)?;
        let frame = recent(store, &row.camera)?.map(|r| r.frame_ns);
        let (end, kfs) = extent(&scan, row.start_ns, frame).unwrap_or_else(|| {
            tracing::warn!(path = %row.path, "segment times run past the time range; keeping its indexed end");
            (None, Vec::new())
        });
        store.recover_segment(
            row.id,
            end.unwrap_or(row.end_ns),
            scan.valid_bytes,
            scan.frames,
            &kfs,
        )?;
        report.recovered.push(row.path);
    }
    let root = store.data_dir().join("recordings");
    let mut cameras: BTreeSet<String> = store.indexed_cameras()?.into_iter().collect();
    if let Ok(dirs) = std::fs::read_dir(&root) {
        cameras.extend(
            dirs.flatten()
                .filter(|d| d.path().is_dir())
                .map(|d| d.file_name().to_string_lossy().into_owned()),
        );
    }
    let mut deferred = Vec::new();
    for camera in cameras {
        let ends = ends(store, &camera)?;
        for (day, dir) in day_dirs(&root.join(&camera))? {
            if ends.iter().any(|(lo, hi)| *lo <= day && day <= *hi) {
                reconcile_dir(store, &camera, &dir, &mut report)?;
            } else {
                deferred.push((day, camera.clone(), dir));
            }
        }
    }
    store.close_gaps_left_open()?;
    deferred.sort();
    Ok((
        report,
        deferred.into_iter().map(|(_, c, d)| (c, d)).collect(),
    ))
}

/// The day-directory names (`YYYYMMDD`) start-up checks for a camera: a day either side
/// of its newest segment and everything after, and a day either side of its oldest
/// evictable one and everything before (locked evidence, and what the last eviction pass
/// was deleting). Everything when it has no segments.
fn ends(store: &Store, camera: &str) -> anyhow::Result<Vec<(String, String)>> {
    const DAY: i64 = 86_400_000_000_000;
    let Some(newest) = store.newest_segments(camera, 1)?.pop() else {
        return Ok(vec![(String::new(), "~".into())]);
    };
    let mut ends = vec![(
        day_dir_name(newest.start_ns.saturating_sub(DAY)),
        "~".to_string(),
    )];
    match store.evictable(camera, 1)?.pop() {
        Some(old) => ends.push((
            String::new(),
            day_dir_name(old.start_ns.saturating_add(DAY)),
        )),
        None => ends.push((String::new(), "~".into())),
    }
    Ok(ends)
}

/// One day directory against the rows under its path: rows whose file is gone are
/// removed and reported; readable files the index doesn't know are indexed. Rows and
/// names come from the path index and one `read_dir`: no file is opened but the unknown.
pub fn reconcile_dir(
    store: &Store,
    camera: &str,
    dir: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let now = storeguard_base::now_ns();
    let rel_of = |p: &Path| {
        p.strip_prefix(store.data_dir())
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let prefix = format!("{}/", rel_of(dir));
    // '0' follows '/': every path under the directory, nothing else.
    let above = format!("{}0", rel_of(dir));
    let rows = store.segments_by_path(&prefix, Some(&above), i64::MAX as usize)?;
    let files: BTreeSet<String> = match std::fs::read_dir(dir) {
        Ok(d) => d
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "ts"))
            .map(|p| rel_of(&p))
            .collect(),
        // Evicted meanwhile (the scrub runs while the ring turns over).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let known: HashSet<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    for (id, path) in &rows {
        if !files.contains(path) {
            missing(store, now, *id, camera, path.clone(), report)?;
        }
    }
    let mut last = None;
    for rel in files.iter().filter(|f| !known.contains(f.as_str())) {
        if last.is_none() {
            last = Some(recent(store, camera)?);
        }
        let last = last.as_ref().and_then(|r| r.as_ref());
        index_orphan(store, camera, rel, last, now, report)?;
    }
    Ok(())
}

/// What a camera's newest rows say it records: a file of one frame says nothing of the
/// frame interval (its end is that frame plus one interval) nor, if orphaned, of the size.
struct Recent {
    frame_ns: i64,
    width: u32,
    height: u32,
    codec: String,
}

fn recent(store: &Store, camera: &str) -> anyhow::Result<Option<Recent>> {
    Ok(store
        .newest_segments(camera, 8)?
        .into_iter()
        .find(|r| r.frames > 1 && r.end_ns > r.start_ns)
        .map(|r| Recent {
            frame_ns: (r.end_ns - r.start_ns) / r.frames as i64,
            width: r.width,
            height: r.height,
            codec: r.codec,
        }))
}

fn missing(
    store: &Store,
    now: i64,
    id: i64,
    camera: &str,
    path: String,
    report: &mut Report,
) -> anyhow::Result<()> {
    store.delete_segment(id)?;
    store.health_event(
        now,
        "segment_missing",
        Some(camera),
        &format!("{path} is indexed but gone from disk"),
    )?;
    report.missing.push(path);
    Ok(())
}

/// Below this, a file without a single whole frame is what a crash right after creating a
/// segment leaves (its PAT/PMT and part of a frame, a few hundred bytes).
const EMPTY_MAX_BYTES: u64 = 64 * 1024;

/// A file the index doesn't know: indexed from its scan if it is readable video; removed
/// if it is small and holds no whole frame (no video to keep, and never indexed it would
/// never be evicted); otherwise reported and left in place.
fn index_orphan(
    store: &Store,
    camera: &str,
    rel: &str,
    recent: Option<&Recent>,
    now: i64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let file = store.data_dir().join(rel);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let scan = scan_file(&file).ok();
    let len = std::fs::metadata(&file)
        .map(|m| m.len())
        .unwrap_or(u64::MAX);
    let empty = scan.as_ref().is_some_and(|s| s.frames == 0) && len < EMPTY_MAX_BYTES;
    let start = start_from_file_name(&name);
    let measured = scan.zip(start).and_then(|(scan, start)| {
        let (end, kfs) = extent(&scan, start, recent.map(|r| r.frame_ns))?;
        Some((scan, start, end, kfs))
    });
    match measured {
        Some((scan, start, end, kfs)) if !scan.keyframes.is_empty() => {
            let codec = if scan.stream_type == Some(0x24) {
                "h265"
            } else {
                "h264"
            };
            // Most likely the size the camera recorded at just before; 0 if unknown.
            let (width, height) = recent
                .filter(|r| r.codec == codec)
                .map_or((0, 0), |r| (r.width, r.height));
            let p = SegmentProgress {
                camera: camera.to_string(),
                path: rel.to_string(),
                start_ns: start,
                end_ns: end.unwrap_or(start),
                bytes: scan.valid_bytes,
                frames: scan.frames,
                codec,
                width,
                height,
                params: None,
                time_source: "recovered",
                state: STATE_RECOVERED,
                new_keyframes: kfs,
                clock_epoch: 0,
                time_synced: false,
                time_error_ns: None,
            };
            store.commit_sync(&[p], &[])?;
            report.orphans_indexed.push(rel.to_string());
        }
        _ if empty => {
            tracing::warn!(path = %rel, bytes = len, "segment file holds no whole frame; removed");
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
            store.health_event(
                now,
                "segment_empty",
                Some(camera),
                &format!("{rel} held no whole frame ({len} bytes, a crash before its first frame); removed"),
            )?;
            report.removed_empty.push(rel.to_string());
        }
        _ => {
            tracing::warn!(path = %rel, "segment file is not readable as recorded video; left in place");
            store.health_event(
                now,
                "segment_unreadable",
                Some(camera),
                &format!("{rel} could not be read back"),
            )?;
            report.unreadable.push(rel.to_string());
        }
    }
    Ok(())
}

/// A scanned file's end time (last frame + one frame interval, if it has frames) and
/// keyframes (utc_ns, byte offset).
type Extent = (Option<i64>, Vec<(i64, u64)>);

/// The extent of a scanned file whose first frame is at `start_ns`; `frame_ns` is the
/// interval to assume when the file has a single frame. None when its times do not fit
/// the time range (a file name with a garbage time).
fn extent(scan: &ScanResult, start_ns: i64, frame_ns: Option<i64>) -> Option<Extent> {
    let Some(first) = scan.first_pts else {
        return Some((None, Vec::new()));
    };
    let kfs = scan
        .keyframes
        .iter()
        .map(|(pts, off)| Some((ScanResult::utc_of(*pts, first, start_ns)?, *off)))
        .collect::<Option<Vec<_>>>()?;
    let end = match scan.last_pts {
        None => None,
        Some(last) => {
            let span = ScanResult::utc_of(last, first, start_ns)? - start_ns;
            let frame = if scan.frames > 1 {
                span / (scan.frames as i64 - 1)
            } else {
                frame_ns.unwrap_or(0)
            };
            Some(start_ns.checked_add(span)?.checked_add(frame)?)
        }
    };
    Some((end, kfs))
}

/// A camera's day directories, `(YYYYMMDD, path)` in name order.
fn day_dirs(camera_dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let Ok(days) = std::fs::read_dir(camera_dir) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(String, PathBuf)> = days
        .flatten()
        .filter(|d| d.path().is_dir())
        .map(|d| (d.file_name().to_string_lossy().into_owned(), d.path()))
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash right after a segment's first frame left a file of one frame, indexed as
    /// ending where it starts: one frame short of what it holds.
    #[test]
    fn a_one_frame_file_ends_one_frame_interval_after_its_frame() {
        let pts = 90_000 * 1000;
        let scan = ScanResult {
            frames: 1,
            first_pts: Some(pts),
            last_pts: Some(pts),
            keyframes: vec![(pts, 0)],
            valid_bytes: 5452,
            stream_type: Some(0x1B),
        };
        let start = 1_000_000_000_000;
        let (end, kfs) = extent(&scan, start, Some(66_666_666)).unwrap();
        assert_eq!(end, Some(start + 66_666_666));
        assert_eq!(kfs, vec![(start, 0)]);
        // Two frames tell the interval themselves.
        let two = ScanResult {
            frames: 2,
            last_pts: Some(pts + 6000),
            ..scan
        };
        assert_eq!(
            extent(&two, start, None).unwrap().0,
            Some(start + 2 * 66_666_666)
        );
    }

    /// Before recording resumes only the two ends are checked; a file lost in the middle
    /// and one copied in there are found by the scrub's pass over the rest.
    #[test]
    fn start_up_checks_the_ends_and_leaves_the_middle_to_the_scrub() {
        use crate::recording::writer::segment_rel_path;
        use crate::store::recording::{STATE_CLOSED, STATE_OPEN};
        const S: i64 = 1_000_000_000;
        const DAY: i64 = 86_400 * S;
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let t0 = 1_796_000_000 * S;
        let rows: Vec<SegmentProgress> = (0..6)
            .map(|k| {
                let start = t0 + k * DAY;
                let state = if k == 5 { STATE_OPEN } else { STATE_CLOSED };
                let path = segment_rel_path("a", start);
                SegmentProgress::for_test("a", path, start, start + 30 * S, state)
            })
            .collect();
        store.commit_sync(&rows, &[]).unwrap();
        for (k, r) in rows.iter().enumerate() {
            let f = d.path().join(&r.path);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            if k != 2 {
                std::fs::write(&f, b"").unwrap();
            }
        }
        let garbage = |k: i64| {
            let rel = segment_rel_path("a", t0 + k * DAY + 60 * S);
            std::fs::write(d.path().join(&rel), b"not video").unwrap();
            rel
        };
        let (middle, newest) = (garbage(3), garbage(5));
        // Too big to be a crash's leftover: kept, and reported.
        let big = segment_rel_path("a", t0 + 3 * DAY + 90 * S);
        std::fs::write(d.path().join(&big), vec![0u8; 100 * 1024]).unwrap();

        let (report, deferred) = at_start(&store).unwrap();
        assert_eq!(report.recovered, vec![rows[5].path.clone()]);
        assert_eq!(report.removed_empty, vec![newest.clone()]);
        assert!(!d.path().join(&newest).exists());
        assert!(report.missing.is_empty(), "{report:?}");
        let days: Vec<_> = deferred.iter().map(|(_, p)| p.clone()).collect();
        let day = |k: usize| d.path().join(&rows[k].path).parent().unwrap().to_path_buf();
        assert_eq!(days, vec![day(2), day(3)]);

        let mut scrub = Report::default();
        for (camera, dir) in &deferred {
            reconcile_dir(&store, camera, dir, &mut scrub).unwrap();
        }
        assert_eq!(scrub.missing, vec![rows[2].path.clone()]);
        assert_eq!(scrub.removed_empty, vec![middle]);
        assert_eq!(scrub.unreadable, vec![big.clone()]);
        assert!(d.path().join(&big).exists());
        let usage = store.camera_usage().unwrap();
        // Rows only grow: the open one keeps its indexed bytes though its file is empty.
        assert_eq!((usage[0].segments, usage[0].bytes), (5, 5000));
    }
}
