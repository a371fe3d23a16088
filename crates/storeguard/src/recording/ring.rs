//! The disk budget: evict the oldest unlocked segments until usage fits.
//!
//! Each camera's share of the budget is proportional to its weight. The camera most
//! over its share loses its oldest segment first, unless that would cut it below its
//! `min_days`. Segments under a retention lock (evidence) are never evicted here. The
//! filesystem's own free space is watched too, so a disk shared with other data that
//! fills up still keeps recording going by eviction.

use crate::config::{Budget, Config};
use crate::store::Store;
use crate::store::recording::{CameraUsage, STATE_OPEN, SegmentProgress, is_disk_full};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use storeguard_base::now_ns;

const DAY_NS: f64 = 86_400e9;
const SHORTFALL_REPORT_EVERY_NS: i64 = 600_000_000_000;
static LAST_SHORTFALL_REPORT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

#[derive(Debug, Clone)]
pub struct Policy {
    pub budget: Budget,
    /// (camera id, weight, min_days)
    pub cameras: Vec<(String, f64, Option<f64>)>,
    pub retention_target_days: u32,
}

impl Policy {
    pub fn from_config(c: &Config) -> Policy {
        Policy {
            budget: c.storage.budget,
            cameras: c
                .cameras
                .iter()
                .map(|x| (x.id.clone(), x.weight, x.min_days))
                .collect(),
            retention_target_days: c.health.retention_target_days,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CameraRing {
    pub camera: String,
    pub bytes: u64,
    pub share_bytes: u64,
    pub oldest_ns: Option<i64>,
    /// Days of footage held now.
    pub retention_days: f64,
    /// Days the camera's share would hold at its recent bitrate.
    pub projected_days: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RingStatus {
    pub budget_bytes: u64,
    pub used_bytes: u64,
    pub locked_bytes: u64,
    pub fs_total_bytes: u64,
    pub fs_free_bytes: u64,
    /// Evicted by this pass; in `Recorder::ring_status`, since the recorder started.
    pub evicted_segments: u64,
    pub evicted_bytes: u64,
    pub locked_over_budget: bool,
    pub cameras: Vec<CameraRing>,
}

/// Free space always left on the filesystem, whatever the budget says.
fn reserve(fs_total: u64) -> u64 {
    (fs_total / 100).clamp(16 << 20, 256 << 20)
}

pub fn fs_space(p: &Path) -> std::io::Result<(u64, u64)> {
    let c =
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let f = s.f_frsize as u64;
    Ok((s.f_blocks as u64 * f, s.f_bavail as u64 * f))
}

/// What the ring holds per camera, kept current from the rows the syncer commits and
/// the segments eviction deletes. Summing every segment row each pass doesn't scale: a
/// full 31-day ring of 24 cameras with 30 s segments is 2.1 million rows, and that query
/// took 1.2 s of CPU on the dev box, every 5 s.
#[derive(Debug, Default)]
pub struct Usage {
    cameras: HashMap<String, CameraUsage>,
    /// Bytes indexed so far for segments still being written.
    open: HashMap<String, u64>,
}

impl Usage {
    /// Reads the totals from the index (start-up, and now and then against drift).
    pub fn load(store: &Store) -> anyhow::Result<Usage> {
        let mut u = Usage::default();
        u.reload(store)?;
        Ok(u)
    }

    /// Replaces the totals with the index's. Callers serialise this with commits.
    pub fn reload(&mut self, store: &Store) -> anyhow::Result<()> {
        self.cameras = store
            .camera_usage()?
            .into_iter()
            .map(|u| (u.camera.clone(), u))
            .collect();
        Ok(())
    }

    /// Accounts rows just committed, in commit order (rows only ever grow a segment).
    pub fn committed(&mut self, rows: &[SegmentProgress]) {
        for p in rows {
            let known = self.open.get(&p.path).copied();
            let prev = known.unwrap_or(0);
            let bytes = p.bytes.max(prev);
            let u = self
                .cameras
                .entry(p.camera.clone())
                .or_insert_with(|| CameraUsage {
                    camera: p.camera.clone(),
                    bytes: 0,
                    segments: 0,
                    oldest_ns: None,
                    newest_ns: None,
                });
            if known.is_none() {
                u.segments += 1;
            }
            u.bytes += bytes - prev;
            u.oldest_ns = Some(u.oldest_ns.map_or(p.start_ns, |o| o.min(p.start_ns)));
            u.newest_ns = Some(u.newest_ns.map_or(p.end_ns, |n| n.max(p.end_ns)));
            if p.state == STATE_OPEN {
                self.open.insert(p.path.clone(), bytes);
            } else {
                self.open.remove(&p.path);
            }
        }
    }

    pub fn used_bytes(&self) -> u64 {
        self.cameras.values().map(|u| u.bytes).sum()
    }
}

/// One eviction pass from the index's own totals (reads every segment row).
pub fn enforce(store: &Store, policy: &Policy) -> anyhow::Result<RingStatus> {
    enforce_with(store, policy, &mut Usage::load(store)?)
}

/// One eviction pass: evict the oldest unlocked segments until usage fits the budget and
/// the free-space reserve. `usage` must match the index and is kept matching.
pub fn enforce_with(
    store: &Store,
    policy: &Policy,
    tally: &mut Usage,
) -> anyhow::Result<RingStatus> {
    let (fs_total, fs_free) = fs_space(store.data_dir())?;
    let budget = policy.budget.resolve(fs_total);
    let usage = &mut tally.cameras;
    let used: u64 = usage.values().map(|u| u.bytes).sum();
    let over_budget = used.saturating_sub(budget);
    let under_reserve = reserve(fs_total).saturating_sub(fs_free);
    let mut need = over_budget.max(under_reserve);

    let total_weight: f64 = policy
        .cameras
        .iter()
        .map(|c| c.1)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let share = |cam: &str| -> u64 {
        policy
            .cameras
            .iter()
            .find(|c| c.0 == cam)
            .map(|c| (budget as f64 * c.1 / total_weight) as u64)
            .unwrap_or(0)
    };
    let min_days = |cam: &str| {
        policy
            .cameras
            .iter()
            .find(|c| c.0 == cam)
            .and_then(|c| c.2)
            .unwrap_or(0.0)
    };
    let now = now_ns();

    let mut status = RingStatus {
        budget_bytes: budget,
        fs_total_bytes: fs_total,
        ..Default::default()
    };
    let mut exhausted: Vec<String> = Vec::new();
    while need > 0 {
        // Most over its share first; cameras still inside min_days only when nothing else is left.
        let mut order: Vec<(&String, f64, bool)> = usage
            .values()
            .filter(|u| u.bytes > 0 && !exhausted.contains(&u.camera))
            .map(|u| {
                let ratio = u.bytes as f64 / share(&u.camera).max(1) as f64;
                let age_days = u
                    .oldest_ns
                    .map(|o| (now - o) as f64 / DAY_NS)
                    .unwrap_or(0.0);
                (&u.camera, ratio, age_days <= min_days(&u.camera))
            })
            .collect();
        order.sort_by(|a, b| a.2.cmp(&b.2).then(b.1.total_cmp(&a.1)));
        let Some(cam) = order.first().map(|o| o.0.clone()) else {
            break;
        };
        let victims = store.evictable(&cam, 16)?;
        if victims.is_empty() {
            exhausted.push(cam);
            continue;
        }
        // One transaction for the batch: on a full ring a delete (and its keyframes)
        // costs about 3 ms, nearly all of it the commit's fsync.
        let mut batch = Vec::new();
        for seg in victims {
            if need == 0 {
                break;
            }
            // Marks the moment for the crash campaign (sg-campaign), which kills here.
            tracing::debug!(camera = %cam, path = %seg.path, "evicting a segment");
            need = need.saturating_sub(seg.bytes);
            batch.push(seg);
        }
        let ids: Vec<i64> = batch.iter().map(|s| s.id).collect();
        let paths: Vec<_> = batch
            .iter()
            .map(|s| store.data_dir().join(&s.path))
            .collect();
        match store.delete_segments(&ids) {
            Ok(()) => paths.iter().for_each(|p| remove_segment_file(p)),
            Err(e) if is_disk_full(&e) => {
                // Even a delete needs room in SQLite's journal, and the disk is full:
                // free the files first. A crash in between leaves rows without their
                // files, which start-up reconciliation removes.
                tracing::warn!(
                    segments = batch.len(),
                    "disk full: deleting evicted segments' files before their index rows"
                );
                paths.iter().for_each(|p| remove_segment_file(p));
                store.delete_segments(&ids)?;
            }
            Err(e) => return Err(e.into()),
        }
        for seg in batch {
            status.evicted_segments += 1;
            status.evicted_bytes += seg.bytes;
            if let Some(u) = usage.get_mut(&cam) {
                u.bytes = u.bytes.saturating_sub(seg.bytes);
                u.segments = u.segments.saturating_sub(1);
                u.oldest_ns = Some(seg.end_ns);
            }
        }
    }
    if status.evicted_segments > 0 {
        // The syncer logs a summary now and then; a full ring evicts every round.
        tracing::debug!(
            segments = status.evicted_segments,
            bytes = status.evicted_bytes,
            "evicted oldest recordings to stay within the disk budget"
        );
    }
    status.locked_bytes = store.locked_bytes()?;
    status.used_bytes = usage.values().map(|u| u.bytes).sum();
    if need > 0 {
        status.locked_over_budget = true;
        let free = fs_space(store.data_dir()).map(|s| s.1).unwrap_or(0);
        let msg = if status.used_bytes > budget {
            format!(
                "cannot free {} more bytes: everything left is locked evidence ({} locked, budget {}); recording continues over budget",
                need, status.locked_bytes, budget
            )
        } else {
            format!(
                "the disk holding the recordings has {free} bytes free, under the {} bytes kept in reserve, and no more recordings can be evicted ({} bytes of recordings, {} locked): other data is filling the disk",
                reserve(fs_total),
                status.used_bytes,
                status.locked_bytes
            )
        };
        // Every pass finds this again while it lasts: report it now and then, not every 5 s.
        let last = LAST_SHORTFALL_REPORT.load(std::sync::atomic::Ordering::Relaxed);
        if now - last >= SHORTFALL_REPORT_EVERY_NS {
            LAST_SHORTFALL_REPORT.store(now, std::sync::atomic::Ordering::Relaxed);
            tracing::error!("{msg}");
            if let Err(e) = store.health_event(now, "ring_locked_over_budget", None, &msg) {
                tracing::error!("recording a health event failed: {e}");
            }
        } else {
            tracing::debug!("{msg}");
        }
    }
    status.fs_free_bytes = fs_space(store.data_dir()).map(|s| s.1).unwrap_or(0);
    for (cam, _, _) in &policy.cameras {
        let u = usage.get(cam);
        let bytes = u.map(|u| u.bytes).unwrap_or(0);
        let oldest = u.and_then(|u| u.oldest_ns);
        let newest = u.and_then(|u| u.newest_ns);
        let span_days = match (oldest, newest) {
            (Some(o), Some(n)) if n > o => (n - o) as f64 / DAY_NS,
            _ => 0.0,
        };
        // A projection from under an hour of footage would be noise.
        let projected = (span_days > 1.0 / 24.0 && bytes > 0)
            .then(|| share(cam) as f64 / (bytes as f64 / span_days));
        status.cameras.push(CameraRing {
            camera: cam.clone(),
            bytes,
            share_bytes: share(cam),
            oldest_ns: oldest,
            retention_days: oldest.map(|o| (now - o) as f64 / DAY_NS).unwrap_or(0.0),
            projected_days: projected,
        });
    }
    Ok(status)
}

fn remove_segment_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not delete evicted segment")
        }
    }
}

/// Cameras whose share can't hold the retention target at their bitrate.
pub fn retention_shortfalls(status: &RingStatus, target_days: u32) -> Vec<(String, f64)> {
    status
        .cameras
        .iter()
        .filter_map(|c| {
            c.projected_days
                .filter(|d| *d < target_days as f64)
                .map(|d| (c.camera.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::recording::{STATE_CLOSED, SegmentProgress};

    fn row(cam: &str, n: i64, bytes: u64, state: i64) -> SegmentProgress {
        let start = 1_800_000_000_000_000_000 + n * 10_000_000_000;
        let path = format!("recordings/{cam}/x/{cam}-{n}.ts");
        let mut p = SegmentProgress::for_test(cam, path, start, start + 10_000_000_000, state);
        (p.bytes, p.frames, p.new_keyframes, p.time_synced) = (bytes, 1, vec![], false);
        p
    }

    /// The in-memory totals follow commits and evictions exactly as the index does.
    #[test]
    fn usage_tally_matches_the_index() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let mut u = Usage::load(&store).unwrap();
        let mut commit = |rows: Vec<SegmentProgress>| {
            store.commit_sync(&rows, &[]).unwrap();
            u.committed(&rows);
        };
        for n in 0..6 {
            commit(vec![
                row("a", n, 100, STATE_OPEN),
                row("b", n, 50, STATE_OPEN),
            ]);
            // An open segment grows over rounds; a stale (smaller) repeat changes nothing.
            commit(vec![
                row("a", n, 300, STATE_OPEN),
                row("a", n, 200, STATE_OPEN),
            ]);
            commit(vec![
                row("a", n, 400, STATE_CLOSED),
                row("b", n, 80, STATE_CLOSED),
            ]);
        }
        commit(vec![row("a", 6, 120, STATE_OPEN)]);
        let same = |u: &Usage| {
            let db = store.usage_by_camera().unwrap();
            assert_eq!(db.len(), u.cameras.len());
            for c in db {
                let m = &u.cameras[&c.camera];
                assert_eq!((m.bytes, m.segments), (c.bytes, c.segments), "{}", c.camera);
            }
        };
        same(&u);
        assert_eq!(u.used_bytes(), 6 * 400 + 120 + 6 * 80);
        // Budget 2000 B: evicts the oldest closed segments (never the open one).
        let policy = Policy {
            budget: Budget::Bytes(2000),
            cameras: vec![("a".into(), 1.0, None), ("b".into(), 1.0, None)],
            retention_target_days: 0,
        };
        let st = enforce_with(&store, &policy, &mut u).unwrap();
        assert!(st.evicted_segments > 0 && st.used_bytes <= 2000, "{st:?}");
        assert_eq!(st.used_bytes, u.used_bytes());
        // enforce_with's own accounting of what it deleted matches a fresh read.
        let fresh = Usage::load(&store).unwrap();
        assert_eq!(fresh.used_bytes(), u.used_bytes());
        // The triggers' totals (schema v9) are what the rows sum to, after inserts,
        // growth, stale repeats and evictions.
        let t = |v: Vec<crate::store::recording::CameraUsage>| -> Vec<_> {
            v.into_iter()
                .map(|c| (c.camera, c.bytes, c.segments, c.oldest_ns, c.newest_ns))
                .collect()
        };
        assert_eq!(
            t(store.camera_usage().unwrap()),
            t(store.usage_by_camera().unwrap())
        );
    }
}
