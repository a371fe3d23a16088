//! SQL for the recording ring: segments, keyframes, gaps, retention locks, health events.

use super::{Result, Store, StoreError};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

pub const STATE_OPEN: i64 = 0;
pub const STATE_CLOSED: i64 = 1;
pub const STATE_RECOVERED: i64 = 2;

/// What a segment looks like after a sync: the file holds at least `bytes` durable bytes.
#[derive(Debug, Clone)]
pub struct SegmentProgress {
    pub camera: String,
    pub path: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub bytes: u64,
    pub frames: u64,
    pub codec: &'static str,
    pub width: u32,
    pub height: u32,
    pub params: Option<Vec<u8>>,
    pub time_source: &'static str,
    pub state: i64,
    /// Keyframes written since the previous sync: (utc_ns, byte offset).
    pub new_keyframes: Vec<(i64, u64)>,
    /// The box clock's epoch its times are on (docs/time.md).
    pub clock_epoch: i64,
    /// The box clock was synchronised at this sync (a segment keeps the worst).
    pub time_synced: bool,
    /// The error bound of its times now; None: unbounded.
    pub time_error_ns: Option<i64>,
}

#[cfg(test)]
impl SegmentProgress {
    /// A synced 1000-byte, 450-frame h264 row with a keyframe at its start, for tests.
    pub(crate) fn for_test(
        camera: &str,
        path: String,
        start_ns: i64,
        end_ns: i64,
        state: i64,
    ) -> Self {
        SegmentProgress {
            camera: camera.into(),
            path,
            start_ns,
            end_ns,
            bytes: 1000,
            frames: 450,
            codec: "h264",
            width: 16,
            height: 16,
            params: None,
            time_source: "arrival",
            state,
            new_keyframes: vec![(start_ns, 0)],
            clock_epoch: 0,
            time_synced: true,
            time_error_ns: None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum GapChange {
    Open {
        camera: String,
        start_ns: i64,
        reason: String,
        /// The box clock epoch of its start, 0 when it is on a camera's clock.
        epoch: i64,
    },
    /// Closes the camera's open gap, if any, at `end_ns`.
    Close { camera: String, end_ns: i64 },
    /// A gap already over (found at restart).
    Closed {
        camera: String,
        start_ns: i64,
        end_ns: i64,
        reason: String,
        epoch: i64,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentRow {
    pub id: i64,
    pub camera: String,
    pub path: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub bytes: u64,
    pub frames: u64,
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub state: i64,
    /// How far a clock step moved its times from those in its file (docs/time.md).
    pub time_shift_ns: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GapRow {
    pub camera: String,
    pub start_ns: i64,
    pub end_ns: Option<i64>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraUsage {
    pub camera: String,
    pub bytes: u64,
    pub segments: u64,
    pub oldest_ns: Option<i64>,
    pub newest_ns: Option<i64>,
}

/// SQLite could not write because the disk is full.
pub fn is_disk_full(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite { source, .. }
        if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull))
}

/// Longer than any segment can be (segment_length is at most 10 min plus a GOP). Range
/// queries over a camera's segments or gaps seek to `from - SPAN_NS` instead of scanning
/// from its oldest row: a full 31-day ring holds 90 000 segments per camera.
const SPAN_NS: i64 = 3_600_000_000_000;

/// The SQL of the queries on hot paths, by name, so tests can check their plans.
pub(super) mod sql {
    use super::{SEGMENT_COLS, SPAN_NS, STATE_OPEN};

    /// The ids of a camera's rows in `table` (`segment` or `gap`, indexed on `(camera,
    /// start_ns)`) that may overlap [?2, ?3): those starting within `SPAN_NS` before ?2
    /// up to ?3, and the last one starting before that (a row longer than `SPAN_NS`, such
    /// as a long outage's gap). Two index seeks, however long the camera's history.
    pub fn overlapping_ids(table: &str) -> String {
        format!(
            "SELECT id FROM {table} WHERE camera = ?1 AND start_ns >= ?2 - {SPAN_NS} AND start_ns < ?3
             UNION ALL
             SELECT * FROM (SELECT id FROM {table} WHERE camera = ?1 AND start_ns < ?2 - {SPAN_NS}
                            ORDER BY start_ns DESC LIMIT 1)"
        )
    }

    /// A camera's latest end, from its newest segments only (`max(end_ns)` over all its
    /// rows reads every one). `cam` is the SQL naming the camera.
    pub fn last_end(cam: &str) -> String {
        format!(
            "SELECT max(end_ns) FROM segment WHERE camera = {cam} AND start_ns >= \
               (SELECT max(start_ns) FROM segment WHERE camera = {cam}) - {SPAN_NS}"
        )
    }

    pub fn segments_between() -> String {
        format!(
            "SELECT {SEGMENT_COLS} FROM segment WHERE id IN ({}) AND end_ns > ?2 AND start_ns < ?3 ORDER BY start_ns",
            overlapping_ids("segment")
        )
    }

    pub fn segments_by_path() -> String {
        "SELECT id, path FROM segment WHERE path >= ?1 AND path < ?2 ORDER BY path LIMIT ?3"
            .to_string()
    }

    /// A chunk of the segment table after rowid ?1, in rowid order.
    pub fn usage_chunk() -> String {
        "SELECT id, camera, bytes, start_ns, end_ns FROM segment WHERE id > ?1 ORDER BY id LIMIT ?2"
            .to_string()
    }

    /// What `Store::footage_time` reads of the segments a clip overlaps.
    pub fn footage_time() -> String {
        format!(
            "SELECT time_source, time_synced, time_error_ns, clock_step FROM segment
             WHERE id IN ({}) AND end_ns > ?2 AND start_ns < ?3",
            overlapping_ids("segment")
        )
    }

    pub fn gaps_between() -> String {
        format!(
            "SELECT camera, start_ns, end_ns, reason FROM gap WHERE id IN ({})
               AND start_ns < ?3 AND coalesce(end_ns, 9223372036854775807) > ?2 ORDER BY start_ns",
            overlapping_ids("gap")
        )
    }

    pub fn close_gaps_left_open() -> String {
        format!(
            "UPDATE gap SET end_ns = max(start_ns, coalesce(({}), start_ns)) WHERE end_ns IS NULL",
            last_end("gap.camera")
        )
    }

    /// Every open segment, from the partial index `segment_open`.
    pub fn open_segments() -> String {
        format!("SELECT {SEGMENT_COLS} FROM segment WHERE state = {STATE_OPEN}")
    }

    /// Oldest first from the index: stops after ?2 rows that no lock covers.
    pub fn evictable() -> String {
        format!(
            "SELECT {SEGMENT_COLS} FROM segment s WHERE camera = ?1 AND state != {STATE_OPEN}
               AND NOT EXISTS (SELECT 1 FROM retention_lock l WHERE l.camera = s.camera
                               AND l.from_ns < s.end_ns AND l.to_ns > s.start_ns)
             ORDER BY start_ns LIMIT ?2"
        )
    }

    pub fn locked_bytes() -> String {
        format!(
            "SELECT coalesce(sum(bytes), 0) FROM segment WHERE id IN (
               SELECT s.id FROM retention_lock l JOIN segment s ON s.camera = l.camera
                 AND s.start_ns < l.to_ns AND s.start_ns >= l.from_ns - {SPAN_NS} AND s.end_ns > l.from_ns)"
        )
    }
}

const SEGMENT_COLS: &str = "id, camera, path, start_ns, end_ns, bytes, frames, codec, width, height, state, \
     coalesce(start_ns - recorded_start_ns, 0)";

fn segment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SegmentRow> {
    Ok(SegmentRow {
        id: r.get(0)?,
        camera: r.get(1)?,
        path: r.get(2)?,
        start_ns: r.get(3)?,
        end_ns: r.get(4)?,
        bytes: r.get::<_, i64>(5)? as u64,
        frames: r.get::<_, i64>(6)? as u64,
        codec: r.get(7)?,
        width: r.get(8)?,
        height: r.get(9)?,
        state: r.get(10)?,
        time_shift_ns: r.get(11)?,
    })
}

impl Store {
    /// Commits one sync round for all cameras in a single transaction: one fsync of the
    /// WAL per round instead of one per camera, which is what keeps eMMC wear low.
    /// Callers must have synced the media files first (data before index). Updates only
    /// ever grow a segment, so two overlapping rounds can commit in either order.
    pub fn commit_sync(&self, segments: &[SegmentProgress], gaps: &[GapChange]) -> Result<()> {
        // After the connection: a step recorded meanwhile has its fix in place.
        let mut c = self.conn();
        let fixes = self.fixes().clone();
        let r = (|| {
            let tx = c.transaction()?;
            {
                let mut up = tx.prepare_cached(
                    "INSERT INTO segment(camera, path, start_ns, end_ns, bytes, frames, codec, width, height, params, time_source, state,
                        clock_epoch, time_synced, time_error_ns, clock_step, recorded_start_ns, recorded_end_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
                     ON CONFLICT(path) DO UPDATE SET end_ns=max(end_ns, excluded.end_ns), bytes=max(bytes, excluded.bytes),
                        frames=max(frames, excluded.frames), state=max(state, excluded.state),
                        params=coalesce(params, excluded.params),
                        time_source=excluded.time_source,
                        time_synced=min(coalesce(time_synced, 1), excluded.time_synced),
                        time_error_ns=CASE WHEN time_error_ns IS NULL OR excluded.time_error_ns IS NULL THEN NULL
                                           ELSE max(time_error_ns, excluded.time_error_ns) END,
                        recorded_end_ns=CASE WHEN excluded.recorded_end_ns IS NULL THEN recorded_end_ns
                                             ELSE max(coalesce(recorded_end_ns, excluded.recorded_end_ns), excluded.recorded_end_ns) END",
                )?;
                let mut kf = tx.prepare_cached(
                    "INSERT OR IGNORE INTO keyframe(segment, utc_ns, offset, recorded_utc_ns) SELECT id, ?2, ?3, ?4 FROM segment WHERE path = ?1",
                )?;
                for s in segments {
                    // Recorded on a clock that has stepped since: corrected as committed.
                    // Epoch 0: on the camera's clock, which no box step moves.
                    let chain = fixes.chain(s.clock_epoch);
                    let fix = |t: i64| chain.iter().fold(t, |t, f| f.apply(t));
                    let (epoch, step) = match chain.last() {
                        Some(f) => (f.epoch_after, Some(f.step)),
                        None => (s.clock_epoch, None),
                    };
                    let orig = |t: i64| step.map(|_| t);
                    up.execute(params![
                        s.camera,
                        s.path,
                        fix(s.start_ns),
                        fix(s.end_ns),
                        s.bytes as i64,
                        s.frames as i64,
                        s.codec,
                        s.width,
                        s.height,
                        s.params,
                        s.time_source,
                        s.state,
                        epoch,
                        s.time_synced,
                        s.time_error_ns,
                        step,
                        orig(s.start_ns),
                        orig(s.end_ns),
                    ])?;
                    for (utc, off) in &s.new_keyframes {
                        kf.execute(params![s.path, fix(*utc), *off as i64, orig(*utc)])?;
                    }
                }
                for g in gaps {
                    let corrected = |epoch: i64, t: i64| {
                        let chain = fixes.chain(epoch);
                        let e = chain.last().map_or(epoch, |f| f.epoch_after);
                        (e, chain.iter().fold(t, |t, f| f.apply(t)))
                    };
                    match g {
                        GapChange::Open {
                            camera,
                            start_ns,
                            reason,
                            epoch,
                        } => {
                            let (e, start) = corrected(*epoch, *start_ns);
                            tx.execute(
                                "INSERT INTO gap(camera, start_ns, end_ns, reason, clock_epoch) VALUES (?1, ?2, NULL, ?3, ?4)",
                                params![camera, start, reason, e],
                            )?;
                        }
                        GapChange::Close { camera, end_ns } => {
                            tx.execute(
                                "UPDATE gap SET end_ns = max(?2, start_ns) WHERE camera = ?1 AND end_ns IS NULL",
                                params![camera, end_ns],
                            )?;
                        }
                        GapChange::Closed {
                            camera,
                            start_ns,
                            end_ns,
                            reason,
                            epoch,
                        } => {
                            let (e, start) = corrected(*epoch, *start_ns);
                            let (_, end) = corrected(*epoch, *end_ns);
                            tx.execute(
                                "INSERT INTO gap(camera, start_ns, end_ns, reason, clock_epoch) VALUES (?1, ?2, ?3, ?4, ?5)",
                                params![camera, start, end, reason, e],
                            )?;
                        }
                    }
                }
            }
            tx.commit()
        })();
        self.sq(r)
    }

    /// Segments of a camera overlapping [from, to), oldest first.
    pub fn segments_between(
        &self,
        camera: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<SegmentRow>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(&sql::segments_between()))?;
        let rows = st
            .query_map(params![camera, from_ns, to_ns], segment_row)
            .and_then(|m| m.collect());
        self.sq(rows)
    }

    /// Up to `limit` (id, path) of segments with `from <= path < to` (None: no upper
    /// bound), in path order: read from the unique path index alone (it holds both), so
    /// a directory's rows cost only themselves (reconciliation walks the ring one
    /// directory at a time).
    pub fn segments_by_path(
        &self,
        from: &str,
        to: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(i64, String)>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(&sql::segments_by_path()))?;
        // Above every path: U+10FFFF is the largest UTF-8 sequence.
        let to = to.unwrap_or("\u{10FFFF}");
        let rows = st
            .query_map(params![from, to, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .and_then(|m| m.collect());
        self.sq(rows)
    }

    /// Removes segment rows (keyframes cascade) in one transaction.
    pub fn delete_segments(&self, ids: &[i64]) -> Result<()> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached("DELETE FROM segment WHERE id = ?1")?;
                for id in ids {
                    st.execute([id])?;
                }
            }
            tx.commit()
        })();
        self.sq(r)
    }

    /// Every segment row (start-up reconciliation; a full ring reads them all once).
    pub fn all_segments(&self) -> Result<Vec<SegmentRow>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare(&format!(
            "SELECT {SEGMENT_COLS} FROM segment ORDER BY camera, start_ns"
        )))?;
        let rows = st.query_map([], segment_row).and_then(|m| m.collect());
        self.sq(rows)
    }

    /// Keyframes of one segment: (utc_ns, byte offset), in file order.
    pub fn keyframes(&self, segment: i64) -> Result<Vec<(i64, u64)>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(
            "SELECT utc_ns, offset FROM keyframe WHERE segment = ?1 ORDER BY offset",
        ))?;
        let rows = st
            .query_map([segment], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .and_then(|m| m.collect());
        self.sq(rows)
    }

    pub fn last_segment_end(&self, camera: &str) -> Result<Option<i64>> {
        let c = self.conn();
        self.sq(c.query_row(&sql::last_end("?1"), [camera], |r| r.get(0)))
    }

    /// What the ring holds per camera, summed from the rows (`camera_usage` reads the
    /// triggers' totals instead), over the table in rowid order (sequential
    /// pages: a camera's rows are spread over all of them, so a per-camera walk reads the
    /// table once per camera), a chunk at a time: the connection is free between chunks,
    /// so a press never waits for the whole sum (2.1 M rows on a full ring).
    pub fn usage_by_camera(&self) -> Result<Vec<CameraUsage>> {
        const CHUNK: i64 = 4096;
        let mut by: std::collections::BTreeMap<String, CameraUsage> = Default::default();
        let mut after = i64::MIN;
        loop {
            let c = self.conn();
            let mut st = self.sq(c.prepare_cached(&sql::usage_chunk()))?;
            let rows: Vec<(i64, String, i64, i64, i64)> = self.sq(st
                .query_map(params![after, CHUNK], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .and_then(|m| m.collect()))?;
            drop(st);
            drop(c);
            let full = rows.len() as i64 == CHUNK;
            for (id, camera, bytes, start, end) in rows {
                after = id;
                let u = by.entry(camera).or_insert_with_key(|cam| CameraUsage {
                    camera: cam.clone(),
                    bytes: 0,
                    segments: 0,
                    oldest_ns: None,
                    newest_ns: None,
                });
                u.bytes += bytes as u64;
                u.segments += 1;
                u.oldest_ns = Some(u.oldest_ns.map_or(start, |o| o.min(start)));
                u.newest_ns = Some(u.newest_ns.map_or(end, |n| n.max(end)));
            }
            if !full {
                return Ok(by.into_values().collect());
            }
        }
    }

    /// The cameras with segments, by seeking the camera index once per camera.
    pub fn indexed_cameras(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        loop {
            let c = self.conn();
            let next: Option<String> = self.sq(c.query_row(
                "SELECT min(camera) FROM segment WHERE camera > ?1",
                [out.last().map_or("", String::as_str)],
                |r| r.get(0),
            ))?;
            match next {
                Some(cam) => out.push(cam),
                None => return Ok(out),
            }
        }
    }

    /// Segments left open (by a crash), from the partial index of open rows (schema v9).
    pub fn open_segments(&self) -> Result<Vec<SegmentRow>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(&sql::open_segments()))?;
        let rows = st.query_map([], segment_row).and_then(|m| m.collect());
        self.sq(rows)
    }

    /// A camera's `n` newest segments, newest first.
    pub fn newest_segments(&self, camera: &str, n: usize) -> Result<Vec<SegmentRow>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(&format!(
            "SELECT {SEGMENT_COLS} FROM segment WHERE camera = ?1 ORDER BY start_ns DESC LIMIT ?2"
        )))?;
        let rows = st
            .query_map(params![camera, n as i64], segment_row)
            .and_then(|m| m.collect());
        self.sq(rows)
    }

    /// Each camera's bytes and segments as the triggers keep them (schema v9), with its
    /// oldest start and latest end: a row and two seeks per camera, whatever the ring
    /// holds. `usage_by_camera` is the same from the rows themselves.
    pub fn camera_usage(&self) -> Result<Vec<CameraUsage>> {
        let totals: Vec<(String, i64, i64)> = {
            let c = self.conn();
            let mut st = self.sq(c.prepare_cached(
                "SELECT camera, bytes, segments FROM camera_usage WHERE segments > 0 ORDER BY camera",
            ))?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .and_then(|m| m.collect());
            self.sq(rows)?
        };
        let mut out = Vec::with_capacity(totals.len());
        for (camera, bytes, segments) in totals {
            let extent = self.camera_extent(&camera)?;
            out.push(CameraUsage {
                bytes: bytes.max(0) as u64,
                segments: segments.max(0) as u64,
                oldest_ns: extent.map(|e| e.0),
                newest_ns: extent.map(|e| e.1),
                camera,
            });
        }
        Ok(out)
    }

    /// A camera's oldest start and latest end, from two index seeks.
    pub fn camera_extent(&self, camera: &str) -> Result<Option<(i64, i64)>> {
        let oldest: Option<i64> = {
            let c = self.conn();
            self.sq(c.query_row(
                "SELECT min(start_ns) FROM segment WHERE camera = ?1",
                [camera],
                |r| r.get(0),
            ))?
        };
        Ok(oldest.zip(self.last_segment_end(camera)?))
    }

    /// Oldest closed segments of a camera that no retention lock covers.
    pub fn evictable(&self, camera: &str, limit: usize) -> Result<Vec<SegmentRow>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(&sql::evictable()))?;
        let rows = st
            .query_map(params![camera, limit as i64], segment_row)
            .and_then(|m| m.collect());
        self.sq(rows)
    }

    /// Bytes held by segments under a retention lock (for status). Walks the few locks
    /// and the segments each can overlap, not every segment: on a full 31-day ring
    /// (2.1 M rows) with 20 locks that took 4.2 s instead of about 1 ms. A segment
    /// longer than `SPAN_NS` that starts before its lock is missed.
    pub fn locked_bytes(&self) -> Result<u64> {
        let c = self.conn();
        let v: i64 = self.sq(c.query_row(&sql::locked_bytes(), [], |r| r.get(0)))?;
        Ok(v as u64)
    }

    /// Removes a segment's index row (keyframes cascade). The caller unlinks the file
    /// afterwards; a crash in between leaves an orphan file that start-up re-indexes.
    pub fn delete_segment(&self, id: i64) -> Result<()> {
        let c = self.conn();
        self.sq(c.execute("DELETE FROM segment WHERE id = ?1", [id]))
            .map(|_| ())
    }

    pub fn add_retention_lock(
        &self,
        camera: &str,
        from_ns: i64,
        to_ns: i64,
        reason: &str,
        now_ns: i64,
    ) -> Result<i64> {
        let c = self.conn();
        self.sq(c.execute(
            "INSERT INTO retention_lock(camera, from_ns, to_ns, reason, created_ns) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![camera, from_ns, to_ns, reason, now_ns],
        ))?;
        Ok(c.last_insert_rowid())
    }

    pub fn remove_retention_lock(&self, id: i64) -> Result<()> {
        let c = self.conn();
        self.sq(c.execute("DELETE FROM retention_lock WHERE id = ?1", [id]))
            .map(|_| ())
    }

    pub fn recent_gaps(&self, camera: &str, limit: usize) -> Result<Vec<GapRow>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(
            "SELECT camera, start_ns, end_ns, reason FROM gap WHERE camera = ?1 ORDER BY start_ns DESC LIMIT ?2",
        ))?;
        let rows = st
            .query_map(params![camera, limit as i64], |r| {
                Ok(GapRow {
                    camera: r.get(0)?,
                    start_ns: r.get(1)?,
                    end_ns: r.get(2)?,
                    reason: r.get(3)?,
                })
            })
            .and_then(|m| m.collect());
        self.sq(rows)
    }

    /// Gaps of a camera overlapping [from, to); an open gap counts as running to now.
    pub fn gaps_between(&self, camera: &str, from_ns: i64, to_ns: i64) -> Result<Vec<GapRow>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(&sql::gaps_between()))?;
        let rows = st
            .query_map(params![camera, from_ns, to_ns], |r| {
                Ok(GapRow {
                    camera: r.get(0)?,
                    start_ns: r.get(1)?,
                    end_ns: r.get(2)?,
                    reason: r.get(3)?,
                })
            })
            .and_then(|m| m.collect());
        self.sq(rows)
    }

    /// After a crash, open gaps end where the camera's recording ended; the writer then
    /// records the downtime as a gap of its own.
    pub fn close_gaps_left_open(&self) -> Result<()> {
        let c = self.conn();
        self.sq(c.execute(&sql::close_gaps_left_open(), []))
            .map(|_| ())
    }

    /// Records a health event and queues it upstream (telemetry class: the first to be
    /// dropped when the outbox is full) in one transaction.
    pub fn health_event(
        &self,
        at_ns: i64,
        kind: &str,
        camera: Option<&str>,
        detail: &str,
    ) -> Result<i64> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO health_event(at_ns, kind, camera, detail) VALUES (?1, ?2, ?3, ?4)",
                params![at_ns, kind, camera, detail],
            )?;
            let id = tx.last_insert_rowid();
            let payload = serde_json::json!({
                "schema": "storeguard.health/v1",
                "kind": kind,
                "camera": camera,
                "detail": detail,
                "at": storeguard_base::utc_ms(at_ns),
            });
            let bytes = serde_json::to_vec(&payload).unwrap_or_default();
            super::outbox::enqueue_tx(
                &tx,
                super::outbox::Class::Telemetry,
                "health",
                &bytes,
                false,
                at_ns,
                self.outbox_limits(),
            )?;
            tx.commit()?;
            Ok(id)
        })();
        self.sq(r)
    }

    pub fn segment_by_path(&self, path: &str) -> Result<Option<SegmentRow>> {
        let c = self.conn();
        let sql = format!("SELECT {SEGMENT_COLS} FROM segment WHERE path = ?1");
        self.sq(c.query_row(&sql, [path], segment_row).optional())
    }

    /// Marks segments left open by a crash as recovered, fixing their extent to what a
    /// scan of the file found (the file may hold up to one sync interval more).
    pub fn recover_segment(
        &self,
        id: i64,
        end_ns: i64,
        bytes: u64,
        frames: u64,
        keyframes: &[(i64, u64)],
    ) -> Result<()> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            // The file holds the times as recorded; a segment a clock step corrected
            // since is moved by its correction (docs/time.md).
            let shift: i64 = tx.query_row(
                "SELECT coalesce(start_ns - recorded_start_ns, 0) FROM segment WHERE id = ?1",
                [id],
                |r| r.get(0),
            )?;
            tx.execute(
                "UPDATE segment SET end_ns = max(end_ns, ?2), bytes = max(bytes, ?3), frames = max(frames, ?4), state = ?5,
                    recorded_end_ns = CASE WHEN recorded_end_ns IS NULL THEN NULL ELSE max(recorded_end_ns, ?6) END
                 WHERE id = ?1",
                params![id, end_ns + shift, bytes as i64, frames as i64, STATE_RECOVERED, end_ns],
            )?;
            for (utc, off) in keyframes {
                tx.execute(
                    "INSERT OR IGNORE INTO keyframe(segment, utc_ns, offset, recorded_utc_ns) VALUES (?1, ?2, ?3, ?4)",
                    params![id, utc + shift, *off as i64, (shift != 0).then_some(*utc)],
                )?;
            }
            tx.commit()
        })();
        self.sq(r)
    }
}

#[cfg(test)]
mod bounded {
    //! The queries on hot paths seek an index however long a camera's history is, and
    //! answer what a scan of every row would.
    use super::*;
    use rusqlite::{Connection, StatementStatus, ToSql};

    const S: i64 = 1_000_000_000;
    const T0: i64 = 1_800_000_000 * S;
    const SEG: i64 = 30 * S;
    /// 25 hours of 30 s segments per camera.
    const N: i64 = 3000;
    /// Segment `LONG` of camera a lasts 2 h (longer than `SPAN_NS`): a recovered segment
    /// after a clock step, say.
    const LONG: i64 = 1500;
    const LONG_LEN: i64 = 240;

    fn seg(cam: &str, start: i64, len: i64, state: i64) -> SegmentProgress {
        let path = format!("recordings/{cam}/d/{cam}-{start}.ts");
        let mut p = SegmentProgress::for_test(cam, path, start, start + len, state);
        p.new_keyframes.push((start + 2 * S, 188));
        p
    }

    /// Cameras a and b: segments 0..N (a's `LONG` spanning `LONG_LEN` of them), a gap
    /// every 100 segments, b's last one open, a gap of b still open, and a lock.
    fn ring() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let mut rows = Vec::new();
        let mut gaps = Vec::new();
        for cam in ["a", "b"] {
            let mut k = 0;
            while k < N {
                let len = if cam == "a" && k == LONG { LONG_LEN } else { 1 };
                let state = if cam == "b" && k == N - 1 {
                    STATE_OPEN
                } else {
                    1
                };
                rows.push(seg(cam, T0 + k * SEG, len * SEG - S, state));
                if k % 100 == 50 {
                    gaps.push(GapChange::Closed {
                        camera: cam.into(),
                        start_ns: T0 + k * SEG + SEG - S,
                        end_ns: T0 + (k + 1) * SEG,
                        reason: "stalled".into(),
                        epoch: 0,
                    });
                }
                k += len;
            }
        }
        gaps.push(GapChange::Open {
            camera: "b".into(),
            start_ns: T0 + N * SEG,
            reason: "stream ended".into(),
            epoch: 0,
        });
        store.commit_sync(&rows, &gaps).unwrap();
        store
            .add_retention_lock("a", T0 + 10 * SEG, T0 + 12 * SEG, "clip", T0)
            .unwrap();
        (d, store)
    }

    /// The rows a statement returns (as text) and the VM steps it took.
    fn run(c: &Connection, sql: &str, p: &[&dyn ToSql]) -> (Vec<String>, i32) {
        let mut st = c.prepare(sql).unwrap();
        let n = st.column_count();
        let mut out = Vec::new();
        let mut rows = st.query(p).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let v: Vec<String> = (0..n)
                .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                .collect();
            out.push(v.join(","));
        }
        drop(rows);
        (out, st.get_status(StatementStatus::VmStep))
    }

    fn plan(c: &Connection, sql: &str) -> Vec<String> {
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let mut rows = st.raw_query();
        let mut out = Vec::new();
        while let Some(r) = rows.next().unwrap() {
            out.push(r.get::<_, String>(3).unwrap());
        }
        out
    }

    #[test]
    fn hot_queries_seek_an_index_not_a_cameras_whole_history() {
        let (_d, store) = ring();
        let c = store.conn();
        let (from, to) = (T0 + (N - 10) * SEG, T0 + (N - 7) * SEG);
        // What the same answers cost by scanning a camera's rows: the yardstick.
        let (_, scan) = run(
            &c,
            "SELECT max(end_ns) FROM segment WHERE camera = ?1",
            &[&"a"],
        );
        let cases: Vec<(&str, String, Vec<&dyn ToSql>)> = vec![
            (
                "segments_between",
                sql::segments_between(),
                vec![&"a", &from, &to],
            ),
            ("footage_time", sql::footage_time(), vec![&"a", &from, &to]),
            ("gaps_between", sql::gaps_between(), vec![&"a", &from, &to]),
            ("last_end", sql::last_end("?1"), vec![&"a"]),
            ("evictable", sql::evictable(), vec![&"a", &16]),
            ("locked_bytes", sql::locked_bytes(), vec![]),
            ("usage_chunk", sql::usage_chunk(), vec![&1000, &16]),
            ("open_segments", sql::open_segments(), vec![]),
            (
                "segments_by_path",
                sql::segments_by_path(),
                vec![&"recordings/a/", &"recordings/a0", &16],
            ),
        ];
        for (name, q, p) in cases {
            let lines = plan(&c, &q);
            assert!(
                // A scan of the partial index `segment_open` reads the open rows only.
                !lines.iter().any(|l| (l.starts_with("SCAN segment")
                    && !l.ends_with("USING INDEX segment_open"))
                    || l.starts_with("SCAN keyframe")
                    || l.starts_with("SCAN gap")),
                "{name} scans a table: {lines:?}"
            );
            let (_, steps) = run(&c, &q, &p);
            assert!(
                steps * 10 < scan,
                "{name}: {steps} VM steps, a scan of the camera takes {scan}: {lines:?}"
            );
        }
    }

    #[test]
    fn bounded_queries_answer_what_a_scan_would() {
        let (_d, store) = ring();
        let c = store.conn();
        let naive_segs = format!(
            "SELECT {SEGMENT_COLS} FROM segment WHERE camera = ?1 AND end_ns > ?2 AND start_ns < ?3 ORDER BY start_ns"
        );
        let naive_gaps = "SELECT camera, start_ns, end_ns, reason FROM gap
             WHERE camera = ?1 AND start_ns < ?3 AND coalesce(end_ns, 9223372036854775807) > ?2 ORDER BY start_ns";
        let at = |k: i64| T0 + k * SEG;
        let windows = [
            (at(0) - S, at(3)),
            (at(40), at(53)),
            (at(LONG) + 10 * S, at(LONG) + 20 * S),
            (at(LONG + 100), at(LONG + LONG_LEN + 3)),
            (at(LONG + LONG_LEN) - 2 * S, at(LONG + LONG_LEN) + S),
            (at(N - 3), at(N + 5)),
            (at(N + 10), at(N + 20)),
            (at(-100), at(-90)),
        ];
        for cam in ["a", "b"] {
            for (from, to) in windows {
                let p: [&dyn ToSql; 3] = [&cam, &from, &to];
                let (want, _) = run(&c, &naive_segs, &p);
                assert_eq!(
                    run(&c, &sql::segments_between(), &p).0,
                    want,
                    "{cam} {from} {to}"
                );
                let (want, _) = run(&c, naive_gaps, &p);
                assert_eq!(
                    run(&c, &sql::gaps_between(), &p).0,
                    want,
                    "{cam} {from} {to}"
                );
            }
            let (want, _) = run(
                &c,
                "SELECT max(end_ns) FROM segment WHERE camera = ?1",
                &[&cam],
            );
            assert_eq!(run(&c, &sql::last_end("?1"), &[&cam]).0, want, "{cam}");
        }
        drop(c);
        assert_eq!(store.last_segment_end("none").unwrap(), None);
        // The open gap ends where its camera's recording ended.
        store.close_gaps_left_open().unwrap();
        let g = store.recent_gaps("b", 1).unwrap();
        assert_eq!(g[0].end_ns, Some(T0 + N * SEG));
        assert_eq!(
            g[0].end_ns,
            store
                .last_segment_end("b")
                .unwrap()
                .map(|e| e.max(g[0].start_ns))
        );
    }
}
