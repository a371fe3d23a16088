//! Events (button presses, faults), evidence clip jobs and the export audit trail.

use super::outbox::{Class, enqueue_tx};
use super::{Result, Store, StoreError};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub uid: String,
    pub kind: String,
    pub source: String,
    pub at_ns: i64,
    pub test: bool,
    pub detail: serde_json::Value,
    /// The box clock it was timed on (docs/time.md); None for events before v8 and for
    /// rows being inserted (the store stamps them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<EventTime>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventTime {
    pub synced: bool,
    /// ms; None: unbounded (unsynchronised clock).
    pub error_bound_ms: Option<i64>,
    /// When a clock step corrected `at_ns`: the time as recorded, and the step.
    pub recorded_at: Option<String>,
    pub clock_step: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClipRow {
    pub id: i64,
    pub uid: String,
    pub event: Option<i64>,
    pub camera: String,
    pub from_ns: i64,
    pub to_ns: i64,
    pub state: String,
    pub path: Option<String>,
    pub sha256: Option<String>,
    pub bytes: Option<i64>,
    pub lock_id: Option<i64>,
    pub error: Option<String>,
    /// The control centre's signed receipt (its payload, verbatim) once accepted.
    pub receipt: Option<String>,
    pub receipt_key: Option<String>,
    pub acked_ns: Option<i64>,
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    let detail: String = r.get(6)?;
    Ok(EventRow {
        id: r.get(0)?,
        uid: r.get(1)?,
        kind: r.get(2)?,
        source: r.get(3)?,
        at_ns: r.get(4)?,
        test: r.get(5)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        time: r
            .get::<_, Option<bool>>(7)?
            .map(|synced| -> rusqlite::Result<EventTime> {
                Ok(EventTime {
                    synced,
                    error_bound_ms: r
                        .get::<_, Option<i64>>(8)?
                        .map(|e| (e + 999_999) / 1_000_000),
                    recorded_at: r.get::<_, Option<i64>>(9)?.map(storeguard_base::utc_ms),
                    clock_step: r.get(10)?,
                })
            })
            .transpose()?,
    })
}

const CLIP_COLS: &str = "id, uid, event, camera, from_ns, to_ns, state, path, sha256, bytes, lock_id, error, \
     receipt, receipt_key, acked_ns";

fn clip_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClipRow> {
    Ok(ClipRow {
        id: r.get(0)?,
        uid: r.get(1)?,
        event: r.get(2)?,
        camera: r.get(3)?,
        from_ns: r.get(4)?,
        to_ns: r.get(5)?,
        state: r.get(6)?,
        path: r.get(7)?,
        sha256: r.get(8)?,
        bytes: r.get(9)?,
        lock_id: r.get(10)?,
        error: r.get(11)?,
        receipt: r.get(12)?,
        receipt_key: r.get(13)?,
        acked_ns: r.get(14)?,
    })
}

/// A clip to cut once its post-roll has been recorded.
#[derive(Debug, Clone)]
pub struct NewClip {
    pub uid: String,
    pub camera: String,
    pub from_ns: i64,
    pub to_ns: i64,
}

impl Store {
    /// Commits an event, its alert and its clip jobs (each with a retention lock over
    /// its window) in ONE transaction: one fsync, and no state where the event exists
    /// but its alert or the lock on its footage does not.
    pub fn record_event(
        &self,
        ev: &EventRow,
        alert: Option<(&str, &[u8])>,
        clips: &[NewClip],
        now_ns: i64,
    ) -> Result<(i64, Option<i64>)> {
        self.record_event_with(ev, alert, &[], clips, now_ns)
    }

    /// As [`Store::record_event`], with `extra` messages (topic, payload) queued as
    /// evidence in the same transaction: a detection's best shots.
    pub fn record_event_with(
        &self,
        ev: &EventRow,
        alert: Option<(&str, &[u8])>,
        extra: &[(&str, &[u8])],
        clips: &[NewClip],
        now_ns: i64,
    ) -> Result<(i64, Option<i64>)> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            // Stamped with the box clock it was timed on, so a later step corrects it.
            let clock = storeguard_base::clock::box_clock_for_stamp();
            tx.execute(
                "INSERT INTO event(uid, kind, source, at_ns, test, detail, clock_epoch, time_synced, time_error_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![ev.uid, ev.kind, ev.source, ev.at_ns, ev.test, ev.detail.to_string(),
                    clock.epoch, clock.synced, clock.error_ns],
            )?;
            let event_id = tx.last_insert_rowid();
            let msg = match alert {
                Some((topic, payload)) => enqueue_tx(
                    &tx,
                    Class::Alert,
                    topic,
                    payload,
                    false,
                    now_ns,
                    self.outbox_limits(),
                )?,
                None => None,
            };
            for (topic, payload) in extra {
                self.evidence_tx(&tx, topic, payload, now_ns)?;
            }
            for clip in clips {
                tx.execute(
                    "INSERT INTO retention_lock(camera, from_ns, to_ns, reason, created_ns) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![clip.camera, clip.from_ns, clip.to_ns, format!("clip {}", clip.uid), now_ns],
                )?;
                let lock = tx.last_insert_rowid();
                tx.execute(
                    "INSERT INTO clip(uid, event, camera, from_ns, to_ns, state, lock_id, created_ns) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7)",
                    params![clip.uid, event_id, clip.camera, clip.from_ns, clip.to_ns, lock, now_ns],
                )?;
            }
            tx.commit()?;
            Ok((event_id, msg))
        })();
        self.sq(r)
    }

    pub fn events_since(&self, since_ns: i64, limit: usize) -> Result<Vec<EventRow>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(
            "SELECT id, uid, kind, source, at_ns, test, detail, time_synced, time_error_ns, recorded_at_ns, clock_step FROM event WHERE at_ns >= ?1 ORDER BY at_ns DESC LIMIT ?2",
        ))?;
        let rows = st
            .query_map(params![since_ns, limit as i64], event_row)
            .and_then(|m| m.collect());
        self.sq(rows)
    }

    pub fn clips_in_state(&self, state: &str) -> Result<Vec<ClipRow>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(&format!(
            "SELECT {CLIP_COLS} FROM clip WHERE state = ?1 ORDER BY id"
        )))?;
        let rows = st.query_map([state], clip_row).and_then(|m| m.collect());
        self.sq(rows)
    }

    pub fn clips_of_event(&self, event: i64) -> Result<Vec<ClipRow>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(&format!(
            "SELECT {CLIP_COLS} FROM clip WHERE event = ?1 ORDER BY id"
        )))?;
        let rows = st.query_map([event], clip_row).and_then(|m| m.collect());
        self.sq(rows)
    }

    pub fn clip(&self, uid: &str) -> Result<Option<ClipRow>> {
        let c = self.conn();
        self.sq(c
            .query_row(
                &format!("SELECT {CLIP_COLS} FROM clip WHERE uid = ?1"),
                [uid],
                clip_row,
            )
            .optional())
    }

    /// Records a sealed clip, releases the lock on its source segments and queues its
    /// manifest upstream, in one transaction. The clip file itself is never evicted by
    /// the ring; it stays until the control centre acknowledges it.
    pub fn seal_clip(
        &self,
        id: i64,
        path: &str,
        sha256: &str,
        bytes: u64,
        manifest: Option<(&str, &[u8])>,
        now_ns: i64,
    ) -> Result<()> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            // The clip file now holds the footage: its source segments may age out again.
            tx.execute(
                "DELETE FROM retention_lock WHERE id = (SELECT lock_id FROM clip WHERE id = ?1)",
                [id],
            )?;
            tx.execute(
                "UPDATE clip SET state = 'sealed', path = ?2, sha256 = ?3, bytes = ?4, sealed_ns = ?5, error = NULL, lock_id = NULL WHERE id = ?1",
                params![id, path, sha256, bytes as i64, now_ns],
            )?;
            if let Some((topic, payload)) = manifest {
                self.evidence_tx(&tx, topic, payload, now_ns)?;
            }
            tx.commit()
        })();
        self.sq(r)
    }

    /// A manual export's clip row; `seal_clip` or `fail_clip` finishes it.
    pub fn insert_clip(
        &self,
        clip: &NewClip,
        event: Option<i64>,
        lock_id: Option<i64>,
        now_ns: i64,
    ) -> Result<i64> {
        let c = self.conn();
        self.sq(c.execute(
            "INSERT INTO clip(uid, event, camera, from_ns, to_ns, state, lock_id, created_ns) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7)",
            params![clip.uid, event, clip.camera, clip.from_ns, clip.to_ns, lock_id, now_ns],
        ))?;
        Ok(c.last_insert_rowid())
    }

    pub fn event_by_id(&self, id: i64) -> Result<Option<EventRow>> {
        let c = self.conn();
        self.sq(c
            .query_row(
                "SELECT id, uid, kind, source, at_ns, test, detail, time_synced, time_error_ns, recorded_at_ns, clock_step FROM event WHERE id = ?1",
                [id],
                event_row,
            )
            .optional())
    }

    pub fn event_by_uid(&self, uid: &str) -> Result<Option<EventRow>> {
        let c = self.conn();
        self.sq(c
            .query_row(
                "SELECT id, uid, kind, source, at_ns, test, detail, time_synced, time_error_ns, recorded_at_ns, clock_step FROM event WHERE uid = ?1",
                [uid],
                event_row,
            )
            .optional())
    }

    /// A clip that could not be cut keeps its lock, so the footage stays for a manual export.
    pub fn fail_clip(&self, id: i64, error: &str) -> Result<()> {
        let c = self.conn();
        self.sq(c.execute(
            "UPDATE clip SET state = 'failed', error = ?2 WHERE id = ?1",
            params![id, error],
        ))
        .map(|_| ())
    }

    /// The control centre confirmed receipt: the clip may now age out.
    /// Accepts the control centre's receipt for a sealed clip: keeps the receipt (next to
    /// the clip as `{clip}.receipt.json`, then in the row and the audit trail) and releases
    /// the retention lock, in that order, so a released clip always has its proof.
    /// False when the clip is not (or no longer) waiting for a receipt.
    pub fn ack_clip(&self, uid: &str, now_ns: i64, receipt: &[u8], key_id: &str) -> Result<bool> {
        let Some(row) = self.clip(uid)? else {
            return Ok(false);
        };
        if row.state != "sealed" {
            return Ok(false);
        }
        if let Some(rel) = &row.path {
            self.keep_receipt(rel, receipt)?;
        }
        let text = String::from_utf8_lossy(receipt).into_owned();
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            let lock: Option<Option<i64>> = tx
                .query_row(
                    "SELECT lock_id FROM clip WHERE uid = ?1 AND state = 'sealed'",
                    [uid],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(lock) = lock else { return Ok(false) };
            tx.execute(
                "UPDATE clip SET state = 'acked', acked_ns = ?2, receipt = ?3, receipt_key = ?4 \
                 WHERE uid = ?1",
                params![uid, now_ns, text, key_id],
            )?;
            if let Some(l) = lock {
                tx.execute("DELETE FROM retention_lock WHERE id = ?1", [l])?;
            }
            audit_receipt(&tx, "clip_receipt", uid, now_ns, &text, key_id)?;
            tx.commit()?;
            Ok(true)
        })();
        self.sq(r)
    }

    /// Writes an accepted receipt beside the evidence file at `rel` (`x` → `x.receipt.json`).
    pub(super) fn keep_receipt(&self, rel: &str, receipt: &[u8]) -> Result<()> {
        let side = receipt_path(&self.data_dir().join(rel));
        storeguard_base::fs::write_atomic(&side, receipt, 0o644).map_err(|source| {
            StoreError::File {
                path: side.clone(),
                source,
            }
        })
    }

    pub fn audit(
        &self,
        at_ns: i64,
        uid: Option<u32>,
        pid: Option<i32>,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<()> {
        let c = self.conn();
        self.sq(c.execute(
            "INSERT INTO audit(at_ns, uid, pid, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![at_ns, uid, pid, action, target, detail],
        ))
        .map(|_| ())
    }

    pub fn audit_rows(&self, limit: usize) -> Result<Vec<serde_json::Value>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(
            "SELECT at_ns, uid, pid, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
        ))?;
        let rows = st
            .query_map([limit as i64], |r| {
                Ok(serde_json::json!({
                    "at_ns": r.get::<_, i64>(0)?, "uid": r.get::<_, Option<i64>>(1)?, "pid": r.get::<_, Option<i64>>(2)?,
                    "action": r.get::<_, String>(3)?, "target": r.get::<_, String>(4)?, "detail": r.get::<_, String>(5)?,
                }))
            })
            .and_then(|m| m.collect());
        self.sq(rows)
    }
}

pub use storeguard_proto::receipt::receipt_path;

/// The audit row of an accepted receipt (`clip_receipt`, `package_receipt`).
pub(super) fn audit_receipt(
    tx: &rusqlite::Transaction<'_>,
    action: &str,
    uid: &str,
    now_ns: i64,
    receipt: &str,
    key_id: &str,
) -> rusqlite::Result<()> {
    let detail = serde_json::json!({ "key_id": key_id, "receipt": receipt }).to_string();
    tx.execute(
        "INSERT INTO audit(at_ns, uid, pid, action, target, detail) VALUES (?1, NULL, NULL, ?2, ?3, ?4)",
        params![now_ns, action, uid, detail],
    )
    .map(|_| ())
}
