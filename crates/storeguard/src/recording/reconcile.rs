//! Start-up reconciliation of segment files against the index. Neither side is trusted
//! blindly: rows whose files are gone are removed and reported, segments a crash left
//! open are re-measured from the file, and readable files the index doesn't know
//! (crash between file creation and the first index commit) are indexed.

use super::scan::{ScanResult, scan_file};
use super::writer::start_from_file_name;
use crate::store::Store;
use crate::store::recording::{STATE_OPEN, STATE_RECOVERED, SegmentProgress};
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Debug, Default)]
pub struct Report {
    pub recovered: Vec<String>,
    pub missing: Vec<String>,
    pub orphans_indexed: Vec<String>,
    pub unreadable: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.recovered.is_empty()
            && self.missing.is_empty()
            && self.orphans_indexed.is_empty()
            && self.unreadable.is_empty()
    }
}

pub fn run(store: &Store) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let now = storeguard_base::now_ns();
    let rows = store.all_segments()?;
    let known: HashSet<String> = rows.iter().map(|r| r.path.clone()).collect();
    // Each camera's last known segment: a file of one frame says nothing of the frame
    // interval (its end is that frame plus one interval) nor, if orphaned, of the size.
    let mut last: HashMap<String, (i64, u32, u32, String)> = HashMap::new();
    for r in rows
        .iter()
        .filter(|r| r.frames > 1 && r.end_ns > r.start_ns)
    {
        let frame = (r.end_ns - r.start_ns) / r.frames as i64;
        last.insert(
            r.camera.clone(),
            (frame, r.width, r.height, r.codec.clone()),
        );
    }
    let frame_of = |camera: &str| last.get(camera).map(|l| l.0);
    for row in rows {
        let path = store.data_dir().join(&row.path);
        if !path.exists() {
            store.delete_segment(row.id)?;
            store.health_event(
                now,
                "segment_missing",
                Some(&row.camera),
                &format!("{} is indexed but gone from disk", row.path),
            )?;
            report.missing.push(row.path);
            continue;
        }
        if row.state != STATE_OPEN {
            continue;
        }
        let scan = scan_file(&path)?;
        let (end, kfs) = extent(&scan, row.start_ns, frame_of(&row.camera)).unwrap_or_else(|| {
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
    for file in segment_files(&store.data_dir().join("recordings"))? {
        let rel = file
            .strip_prefix(store.data_dir())
            .unwrap_or(&file)
            .to_string_lossy()
            .into_owned();
        if known.contains(&rel) {
            continue;
        }
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let camera = rel.split('/').nth(1).unwrap_or("").to_string();
        let scan = scan_file(&file).ok();
        let start = start_from_file_name(&name);
        let measured = scan.zip(start).and_then(|(scan, start)| {
            let (end, kfs) = extent(&scan, start, frame_of(&camera))?;
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
                let (width, height) = last
                    .get(&camera)
                    .filter(|l| l.3 == codec)
                    .map_or((0, 0), |l| (l.1, l.2));
                let p = SegmentProgress {
                    camera,
                    path: rel.clone(),
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
                report.orphans_indexed.push(rel);
            }
            _ => {
                tracing::warn!(path = %rel, "segment file is not readable as recorded video; left in place");
                store.health_event(
                    now,
                    "segment_unreadable",
                    Some(&camera),
                    &format!("{rel} could not be read back"),
                )?;
                report.unreadable.push(rel);
            }
        }
    }
    store.close_gaps_left_open()?;
    Ok(report)
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

fn segment_files(root: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let Ok(cams) = std::fs::read_dir(root) else {
        return Ok(out);
    };
    for cam in cams.flatten() {
        for day in std::fs::read_dir(cam.path())?.flatten() {
            if !day.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(day.path())?.flatten() {
                if f.path().extension().is_some_and(|e| e == "ts") {
                    out.push(f.path());
                }
            }
        }
    }
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
}
