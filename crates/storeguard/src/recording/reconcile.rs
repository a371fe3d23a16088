//! Start-up reconciliation of segment files against the index. Neither side is trusted
//! blindly: rows whose files are gone are removed and reported, segments a crash left
//! open are re-measured from the file, and readable files the index doesn't know
//! (crash between file creation and the first index commit) are indexed.

use super::scan::{ScanResult, scan_file};
use super::writer::start_from_file_name;
use crate::store::Store;
use crate::store::recording::{IndexedFile, STATE_RECOVERED, SegmentProgress};
use std::collections::BTreeSet;
use std::path::Path;

/// Paths kept in a report's lists; the counts say how many there were.
const REPORT_PATHS: usize = 100;
/// Rows read (and rows deleted) per query.
const PAGE: usize = 4096;
/// More missing files than this under one directory are reported as one health event.
const MISSING_ONE_BY_ONE: usize = 16;

#[derive(Debug, Default)]
pub struct Report {
    pub recovered: Vec<String>,
    pub missing: Vec<String>,
    pub missing_count: usize,
    pub orphans_indexed: Vec<String>,
    pub unreadable: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.recovered.is_empty()
            && self.missing_count == 0
            && self.orphans_indexed.is_empty()
            && self.unreadable.is_empty()
    }
}

/// Walks the ring one day directory at a time, in path order, against the index rows of
/// that directory (a range of the unique path index): memory and time follow the ring's
/// size, never a copy of the whole index. Rows between two directories on disk are rows
/// whose directory is gone.
pub fn run(store: &Store) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let now = storeguard_base::now_ns();
    let mut cursor = String::new();
    for (prefix, dir) in day_dirs(store.data_dir())? {
        missing_between(store, &cursor, Some(&prefix), now, &mut report)?;
        let end = range_end(&prefix);
        let mut names: BTreeSet<String> = std::fs::read_dir(&dir)?
            .flatten()
            .filter(|f| f.path().extension().is_some_and(|e| e == "ts"))
            .map(|f| f.file_name().to_string_lossy().into_owned())
            .collect();
        let mut gone = Vec::new();
        let mut from = prefix.clone();
        loop {
            let rows = store.segments_by_path(&from, Some(&end), PAGE)?;
            let Some(last) = rows.last() else { break };
            from = format!("{}\0", last.1);
            let full = rows.len() == PAGE;
            for row in rows {
                let name = &row.1[prefix.len()..];
                let present = if name.contains('/') {
                    store.data_dir().join(&row.1).exists()
                } else {
                    names.remove(name)
                };
                if !present {
                    gone.push(row);
                }
            }
            if !full {
                break;
            }
        }
        forget(store, gone, now, &mut report)?;
        for name in names {
            index_orphan(store, &format!("{prefix}{name}"), now, &mut report)?;
        }
        cursor = end;
    }
    missing_between(store, &cursor, None, now, &mut report)?;
    // Their files are there now (the walk removed the rows of missing ones).
    for row in store.open_segments()? {
        recover(store, &row)?;
        report.recovered.push(row.path);
    }
    store.close_gaps_left_open()?;
    Ok(report)
}

/// Every `recordings/<camera>/<day>/` directory, as its relative path prefix (with the
/// trailing slash) and its path, in byte order of the prefix (the index's order).
fn day_dirs(data_dir: &Path) -> std::io::Result<Vec<(String, std::path::PathBuf)>> {
    let mut out = Vec::new();
    let Ok(cams) = std::fs::read_dir(data_dir.join("recordings")) else {
        return Ok(out);
    };
    for cam in cams.flatten() {
        if !cam.path().is_dir() {
            continue;
        }
        for day in std::fs::read_dir(cam.path())?.flatten() {
            if !day.path().is_dir() {
                continue;
            }
            let prefix = format!(
                "recordings/{}/{}/",
                cam.file_name().to_string_lossy(),
                day.file_name().to_string_lossy()
            );
            out.push((prefix, day.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The first path after every path under `prefix` (which ends in '/', and '0' follows it).
fn range_end(prefix: &str) -> String {
    format!("{}0", &prefix[..prefix.len() - 1])
}

/// Rows in [from, to) have no directory on disk: all gone.
fn missing_between(
    store: &Store,
    from: &str,
    to: Option<&str>,
    now: i64,
    report: &mut Report,
) -> anyhow::Result<()> {
    loop {
        let rows = store.segments_by_path(from, to, PAGE)?;
        let full = rows.len() == PAGE;
        forget(store, rows, now, report)?;
        if !full {
            return Ok(());
        }
    }
}

/// Removes rows whose files are gone and says so: one health event per file, or one per
/// camera when many went at once (a directory deleted by hand).
fn forget(
    store: &Store,
    rows: Vec<(i64, String)>,
    now: i64,
    report: &mut Report,
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    for chunk in rows.chunks(PAGE) {
        store.delete_segments(&chunk.iter().map(|r| r.0).collect::<Vec<_>>())?;
    }
    // `recordings/<camera>/…`: rows come in path order, so a camera's are together.
    let camera = |p: &str| p.split('/').nth(1).unwrap_or("").to_string();
    let mut cams: Vec<String> = rows.iter().map(|r| camera(&r.1)).collect();
    cams.dedup();
    for cam in cams {
        let of: Vec<&str> = rows
            .iter()
            .filter(|r| camera(&r.1) == cam)
            .map(|r| r.1.as_str())
            .collect();
        if of.len() <= MISSING_ONE_BY_ONE {
            for p in &of {
                store.health_event(
                    now,
                    "segment_missing",
                    Some(&cam),
                    &format!("{p} is indexed but gone from disk"),
                )?;
            }
        } else {
            store.health_event(
                now,
                "segment_missing",
                Some(&cam),
                &format!(
                    "{} segments ({} to {}) are indexed but gone from disk",
                    of.len(),
                    of[0],
                    of[of.len() - 1]
                ),
            )?;
        }
    }
    report.missing_count += rows.len();
    let room = REPORT_PATHS.saturating_sub(report.missing.len());
    report
        .missing
        .extend(rows.into_iter().take(room).map(|r| r.1));
    Ok(())
}

/// A segment a crash left open: re-measured from its file.
fn recover(store: &Store, row: &IndexedFile) -> anyhow::Result<()> {
    let scan = scan_file(&store.data_dir().join(&row.path))?;
    let (end, kfs) = extent(&scan, row.start_ns);
    store.recover_segment(
        row.id,
        end.unwrap_or(row.end_ns),
        scan.valid_bytes,
        scan.frames,
        &kfs,
    )?;
    Ok(())
}

/// A file the index doesn't know (a crash before its first commit): indexed from its
/// content and name, or reported if it can't be read as recorded video.
fn index_orphan(store: &Store, rel: &str, now: i64, report: &mut Report) -> anyhow::Result<()> {
    let file = store.data_dir().join(rel);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let camera = rel.split('/').nth(1).unwrap_or("").to_string();
    let scan = scan_file(&file).ok();
    match (scan, start_from_file_name(&name)) {
        (Some(scan), Some(start)) if !scan.keyframes.is_empty() => {
            let (end, kfs) = extent(&scan, start);
            let codec = if scan.stream_type == Some(0x24) {
                "h265"
            } else {
                "h264"
            };
            let p = SegmentProgress {
                camera,
                path: rel.to_string(),
                start_ns: start,
                end_ns: end.unwrap_or(start),
                bytes: scan.valid_bytes,
                frames: scan.frames,
                codec,
                width: 0,
                height: 0,
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
        _ => {
            tracing::warn!(path = %rel, "segment file is not readable as recorded video; left in place");
            store.health_event(
                now,
                "segment_unreadable",
                Some(&camera),
                &format!("{rel} could not be read back"),
            )?;
            report.unreadable.push(rel.to_string());
        }
    }
    Ok(())
}

/// End time and keyframe times of a scanned file whose first frame is at `start_ns`.
fn extent(scan: &ScanResult, start_ns: i64) -> (Option<i64>, Vec<(i64, u64)>) {
    let Some(first) = scan.first_pts else {
        return (None, Vec::new());
    };
    let kfs = scan
        .keyframes
        .iter()
        .map(|(pts, off)| (ScanResult::utc_of(*pts, first, start_ns), *off))
        .collect();
    let end = scan.last_pts.map(|last| {
        let span = ScanResult::utc_of(last, first, start_ns) - start_ns;
        let frame = if scan.frames > 1 {
            span / (scan.frames as i64 - 1)
        } else {
            0
        };
        start_ns + span + frame
    });
    (end, kfs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::recording::{STATE_CLOSED, SegmentProgress};

    const S: i64 = 1_000_000_000;
    const DAY0: i64 = 1_796_000_000 * S;

    fn seg(cam: &str, start_ns: i64) -> SegmentProgress {
        SegmentProgress {
            camera: cam.into(),
            path: crate::recording::writer::segment_rel_path(cam, start_ns),
            start_ns,
            end_ns: start_ns + 30 * S,
            bytes: 100,
            frames: 1,
            codec: "h264",
            width: 16,
            height: 16,
            params: None,
            time_source: "arrival",
            state: STATE_CLOSED,
            new_keyframes: vec![(start_ns, 0)],
            clock_epoch: 0,
            time_synced: false,
            time_error_ns: None,
        }
    }

    fn missing_events(store: &Store) -> Vec<String> {
        let c = store.conn();
        let mut st = c
            .prepare("SELECT detail FROM health_event WHERE kind = 'segment_missing' ORDER BY id")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Cameras a, a1 (a prefix of the other's name) and b over two days; files removed
    /// one by one, a whole day directory and a whole camera removed; a stray file.
    #[test]
    fn rows_whose_files_are_gone_are_removed_and_reported_by_directory() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let mut rows = Vec::new();
        for cam in ["a", "a1", "b"] {
            for day in 0..2 {
                for k in 0..40 {
                    rows.push(seg(cam, DAY0 + day * 86_400 * S + k * 30 * S));
                }
            }
        }
        store.commit_sync(&rows, &[]).unwrap();
        for r in &rows {
            let p = d.path().join(&r.path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::File::create(&p).unwrap();
        }
        let rm = |r: &SegmentProgress| std::fs::remove_file(d.path().join(&r.path)).unwrap();
        // a: two files of its first day; a1: its whole second day; b: everything.
        rm(&rows[3]);
        rm(&rows[7]);
        let a1_day2 = d
            .path()
            .join(&rows[120].path)
            .parent()
            .unwrap()
            .to_path_buf();
        std::fs::remove_dir_all(&a1_day2).unwrap();
        std::fs::remove_dir_all(d.path().join("recordings/b")).unwrap();
        let stray = d.path().join(&rows[10].path).with_file_name("a-junk.ts");
        std::fs::write(&stray, b"not video").unwrap();

        let report = run(&store).unwrap();
        assert_eq!(report.missing_count, 2 + 40 + 80, "{report:?}");
        assert_eq!(report.unreadable.len(), 1, "{report:?}");
        assert!(stray.exists(), "an unreadable file is left in place");
        let left: Vec<String> = ["a", "a1", "b"]
            .iter()
            .flat_map(|c| store.segments_between(c, 0, i64::MAX).unwrap())
            .map(|s| s.path)
            .collect();
        let want: Vec<String> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| ![3, 7].contains(i) && !(120..240).contains(i))
            .map(|(_, r)| r.path.clone())
            .collect();
        assert_eq!(left, want);
        let events = missing_events(&store);
        // Two files one by one; a directory and a camera of many, one event each.
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(events[0].contains(&rows[3].path), "{events:?}");
        assert!(events[2].starts_with("40 segments"), "{events:?}");
        assert!(events[3].starts_with("80 segments"), "{events:?}");
        // Reconciled: a second start finds nothing to do.
        let again = run(&store).unwrap();
        assert_eq!(again.missing_count, 0);
    }
}
