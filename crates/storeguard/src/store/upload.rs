//! Uplink bookkeeping: evidence upload progress and the outbox messages set aside
//! because the broker cannot take them (too large, not a JSON object).
//!
//! An upload starts in the same transaction that deletes its clip's acknowledged
//! manifest from the outbox, so a crash can never leave a delivered manifest without
//! its upload. `next_offset` only moves forward on broker acknowledgements, so a
//! restart resumes at the first unacknowledged byte.

use super::outbox::{Class, OutMsg};
use super::{Result, Store};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    /// Chunks are being published.
    Sending,
    /// Every chunk was acknowledged by the broker; waiting for the receiver.
    Sent,
    /// The receiver verified the clip.
    Acked,
    /// Gave up (file unreadable, or the receiver rejected it too often).
    Failed,
}

impl UploadState {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Sending => "sending",
            UploadState::Sent => "sent",
            UploadState::Acked => "acked",
            UploadState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> UploadState {
        match s {
            "sending" => UploadState::Sending,
            "sent" => UploadState::Sent,
            "acked" => UploadState::Acked,
            _ => UploadState::Failed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UploadRow {
    pub clip: String,
    /// Relative to the data directory.
    pub path: String,
    pub total: u64,
    pub sha256: String,
    pub next_offset: u64,
    pub state: UploadState,
    pub attempts: i64,
    pub error: Option<String>,
    pub created_ns: i64,
    pub updated_ns: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectedRow {
    pub id: i64,
    pub class: Class,
    pub topic: String,
    pub bytes: u64,
    pub created_ns: i64,
    pub rejected_ns: i64,
    pub reason: String,
}

const UPLOAD_COLS: &str =
    "clip, path, total, sha256, next_offset, state, attempts, error, created_ns, updated_ns";

fn upload_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UploadRow> {
    Ok(UploadRow {
        clip: r.get(0)?,
        path: r.get(1)?,
        total: r.get::<_, i64>(2)? as u64,
        sha256: r.get(3)?,
        next_offset: r.get::<_, i64>(4)? as u64,
        state: UploadState::parse(&r.get::<_, String>(5)?),
        attempts: r.get(6)?,
        error: r.get(7)?,
        created_ns: r.get(8)?,
        updated_ns: r.get(9)?,
    })
}

impl Store {
    /// The next outbox messages in send order (class, then id), skipping `skip`, up to
    /// `limit` messages and about `max_bytes` of payload (at least one message).
    pub fn outbox_peek(
        &self,
        limit: usize,
        max_bytes: u64,
        skip: &HashSet<i64>,
    ) -> Result<Vec<OutMsg>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(
            "SELECT id, class, topic, payload, retain, created_ns, attempts FROM outbox
             ORDER BY class, id LIMIT ?1",
        ))?;
        let r = (|| {
            let mut rows = st.query([(limit + skip.len()) as i64])?;
            let (mut out, mut bytes) = (Vec::new(), 0u64);
            while let Some(r) = rows.next()? {
                let id: i64 = r.get(0)?;
                if skip.contains(&id) {
                    continue;
                }
                let payload: Vec<u8> = r.get(3)?;
                bytes += payload.len() as u64;
                out.push(OutMsg {
                    id,
                    class: Class::from_i64(r.get(1)?),
                    topic: r.get(2)?,
                    payload,
                    retain: r.get(4)?,
                    created_ns: r.get(5)?,
                    attempts: r.get(6)?,
                });
                if out.len() >= limit || bytes >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })();
        self.sq(r)
    }

    /// The broker acknowledged outbox rows `ids`: they leave the outbox, and the upload of
    /// every clip or package in `manifests_of` (sealed ones only) begins, in one transaction.
    /// Returns the clips whose upload was created now.
    ///
    /// This commit alone is not fsynced (`synchronous=NORMAL` for its duration): losing
    /// it in a power cut only means the rows are sent again, which the receiver
    /// deduplicates, while an fsync per acknowledgement batch would cap the drain rate
    /// at a few hundred batches per second. Consistency is unaffected (WAL), and the next
    /// FULL commit (any enqueue) makes it durable too.
    pub fn uplink_delivered(
        &self,
        ids: &[i64],
        manifests_of: &[String],
        now_ns: i64,
    ) -> Result<Vec<String>> {
        let mut c = self.conn();
        self.sq(c.execute_batch("PRAGMA synchronous=NORMAL"))?;
        let r = (|| {
            let tx = c.transaction()?;
            {
                let mut del =
                    tx.prepare_cached("DELETE FROM outbox WHERE id = ?1 RETURNING class")?;
                let mut per_class = [0i64; 4];
                for id in ids {
                    let class: Option<i64> = del.query_row([id], |r| r.get(0)).optional()?;
                    if let Some(cl) = class {
                        per_class[Class::from_i64(cl) as usize] += 1;
                    }
                }
                let mut count = tx.prepare_cached(
                    "UPDATE outbox_counter SET delivered = delivered + ?2 WHERE class = ?1",
                )?;
                for (cl, n) in per_class.iter().enumerate() {
                    if *n > 0 {
                        count.execute([cl as i64, *n])?;
                    }
                }
            }
            let mut begun = Vec::new();
            for clip in manifests_of {
                let n = tx.execute(
                    "INSERT OR IGNORE INTO upload(clip, path, total, sha256, next_offset, state, created_ns, updated_ns)
                     SELECT uid, path, bytes, sha256, 0, 'sending', ?2, ?2 FROM clip
                     WHERE uid = ?1 AND state = 'sealed' AND path IS NOT NULL AND sha256 IS NOT NULL AND bytes IS NOT NULL
                     UNION ALL
                     SELECT uid, path, bytes, sha256, 0, 'sending', ?2, ?2 FROM package
                     WHERE uid = ?1 AND state = 'sealed'",
                    params![clip, now_ns],
                )?;
                if n > 0 {
                    begun.push(clip.clone());
                }
            }
            tx.commit()?;
            Ok(begun)
        })();
        let restored = c.execute_batch("PRAGMA synchronous=FULL");
        let begun = self.sq(r)?;
        self.sq(restored)?;
        Ok(begun)
    }

    /// Counts one more send attempt for each of `ids` (rows in flight when a
    /// connection was lost), in one transaction.
    pub fn outbox_mark_attempts(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            {
                let mut st =
                    tx.prepare_cached("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?1")?;
                for id in ids {
                    st.execute([id])?;
                }
            }
            tx.commit()
        })();
        self.sq(r)
    }

    /// Moves an outbox row the broker cannot take into `outbox_rejected`, with the reason.
    pub fn outbox_reject(&self, id: i64, reason: &str, now_ns: i64) -> Result<bool> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "INSERT OR REPLACE INTO outbox_rejected(id, class, topic, payload, created_ns, rejected_ns, reason)
                 SELECT id, class, topic, payload, created_ns, ?2, ?3 FROM outbox WHERE id = ?1",
                params![id, now_ns, reason],
            )?;
            tx.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
            tx.commit()?;
            Ok(n > 0)
        })();
        self.sq(r)
    }

    /// Rejected outbox rows, newest first, and their total count.
    pub fn outbox_rejected(&self, limit: usize) -> Result<(u64, Vec<RejectedRow>)> {
        let c = self.conn();
        let total: i64 =
            self.sq(c.query_row("SELECT count(*) FROM outbox_rejected", [], |r| r.get(0)))?;
        let mut st = self.sq(c.prepare_cached(
            "SELECT id, class, topic, length(payload), created_ns, rejected_ns, reason
             FROM outbox_rejected ORDER BY rejected_ns DESC, id DESC LIMIT ?1",
        ))?;
        let rows = st
            .query_map([limit as i64], |r| {
                Ok(RejectedRow {
                    id: r.get(0)?,
                    class: Class::from_i64(r.get(1)?),
                    topic: r.get(2)?,
                    bytes: r.get::<_, i64>(3)? as u64,
                    created_ns: r.get(4)?,
                    rejected_ns: r.get(5)?,
                    reason: r.get(6)?,
                })
            })
            .and_then(|m| m.collect());
        Ok((total as u64, self.sq(rows)?))
    }

    pub fn upload(&self, clip: &str) -> Result<Option<UploadRow>> {
        let c = self.conn();
        self.sq(c
            .query_row(
                &format!("SELECT {UPLOAD_COLS} FROM upload WHERE clip = ?1"),
                [clip],
                upload_row,
            )
            .optional())
    }

    /// Uploads in `state`, oldest first.
    pub fn uploads_in_state(&self, state: UploadState) -> Result<Vec<UploadRow>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(&format!(
            "SELECT {UPLOAD_COLS} FROM upload WHERE state = ?1 ORDER BY created_ns, rowid"
        )))?;
        let rows = st
            .query_map([state.as_str()], upload_row)
            .and_then(|m| m.collect());
        self.sq(rows)
    }

    /// Records that the broker acknowledged every byte before `next_offset`.
    pub fn upload_progress(&self, clip: &str, next_offset: u64, now_ns: i64) -> Result<()> {
        let c = self.conn();
        self.sq(c.execute(
            "UPDATE upload SET next_offset = ?2, updated_ns = ?3 WHERE clip = ?1",
            params![clip, next_offset as i64, now_ns],
        ))
        .map(|_| ())
    }

    /// Sets the state (and optionally the resume offset and error) of an upload.
    pub fn upload_set_state(
        &self,
        clip: &str,
        state: UploadState,
        next_offset: Option<u64>,
        error: Option<&str>,
        now_ns: i64,
    ) -> Result<bool> {
        let c = self.conn();
        self.sq(c.execute(
            "UPDATE upload SET state = ?2, next_offset = coalesce(?3, next_offset), error = ?4, updated_ns = ?5
             WHERE clip = ?1",
            params![clip, state.as_str(), next_offset.map(|o| o as i64), error, now_ns],
        ))
        .map(|n| n > 0)
    }

    /// Starts an upload over from byte 0 after the receiver rejected it; returns the
    /// attempt number now under way.
    pub fn upload_restart(&self, clip: &str, error: &str, now_ns: i64) -> Result<i64> {
        let c = self.conn();
        self.sq(c
            .query_row(
                "UPDATE upload SET state = 'sending', next_offset = 0, attempts = attempts + 1, error = ?2,
                 updated_ns = ?3 WHERE clip = ?1 RETURNING attempts",
                params![clip, error, now_ns],
                |r| r.get(0),
            )
            .optional())
        .map(|a| a.unwrap_or(0))
    }

    /// Bumps `updated_ns` (used to time the receiver's confirmation).
    pub fn upload_touch(&self, clip: &str, now_ns: i64) -> Result<()> {
        let c = self.conn();
        self.sq(c.execute(
            "UPDATE upload SET updated_ns = ?2 WHERE clip = ?1",
            params![clip, now_ns],
        ))
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::{EventRow, NewClip};
    use crate::store::outbox::Limits;

    fn sealed_clip(s: &Store, uid: &str) {
        let ev = EventRow {
            id: 0,
            uid: format!("ev-{uid}"),
            kind: "isb_press".into(),
            source: "till".into(),
            at_ns: 1,
            test: false,
            detail: serde_json::json!({}),
            time: None,
        };
        let (event, _) = s
            .record_event(
                &ev,
                Some(("alert", b"{}")),
                &[NewClip {
                    uid: uid.into(),
                    camera: "cam1".into(),
                    from_ns: 0,
                    to_ns: 10,
                }],
                1,
            )
            .unwrap();
        let id = s.clips_of_event(event).unwrap()[0].id;
        s.seal_clip(
            id,
            &format!("evidence/{uid}.mp4"),
            "ab",
            1000,
            Some((&format!("evidence/{uid}/manifest"), b"{}")),
            2,
        )
        .unwrap();
    }

    #[test]
    fn delivered_manifest_starts_upload_once() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        sealed_clip(&s, "c1");
        let rows = s.outbox_next(10, &[]).unwrap();
        assert_eq!(rows.len(), 2);
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let begun = s
            .uplink_delivered(&ids, &["c1".into(), "nope".into()], 5)
            .unwrap();
        assert_eq!(begun, ["c1"]);
        assert!(s.outbox_next(10, &[]).unwrap().is_empty());
        assert_eq!(s.outbox_stats().unwrap()[1].delivered, 1);
        let u = s.upload("c1").unwrap().unwrap();
        assert_eq!(
            (u.total, u.next_offset, u.state),
            (1000, 0, UploadState::Sending)
        );

        s.upload_progress("c1", 500, 6).unwrap();
        // A re-delivered manifest never resets progress.
        assert!(
            s.uplink_delivered(&[], &["c1".into()], 7)
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.upload("c1").unwrap().unwrap().next_offset, 500);

        s.upload_set_state("c1", UploadState::Sent, Some(1000), None, 8)
            .unwrap();
        assert_eq!(s.uploads_in_state(UploadState::Sent).unwrap().len(), 1);
        assert_eq!(s.upload_restart("c1", "hash mismatch", 9).unwrap(), 2);
        let u = s.upload("c1").unwrap().unwrap();
        assert_eq!((u.next_offset, u.state), (0, UploadState::Sending));
    }

    #[test]
    fn peek_skips_and_bounds() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let lim = Limits::default();
        let t = s
            .enqueue(Class::Telemetry, "health", b"{}", false, 1, lim)
            .unwrap()
            .unwrap();
        let a1 = s
            .enqueue(Class::Alert, "alert", &[b' '; 100], false, 2, lim)
            .unwrap()
            .unwrap();
        let a2 = s
            .enqueue(Class::Alert, "alert", b"{}", false, 3, lim)
            .unwrap()
            .unwrap();
        let ids = |v: Vec<OutMsg>| v.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(
            ids(s.outbox_peek(10, 1 << 20, &HashSet::new()).unwrap()),
            [a1, a2, t]
        );
        assert_eq!(ids(s.outbox_peek(10, 50, &HashSet::new()).unwrap()), [a1]);
        assert_eq!(
            ids(s.outbox_peek(1, 1 << 20, &HashSet::from([a1])).unwrap()),
            [a2]
        );
        s.uplink_delivered(&[a1], &[], 4).unwrap();
        let sync: i64 = s
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL restored");
    }

    #[test]
    fn rejected_rows_are_kept_with_reason() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let id = s
            .enqueue(Class::Alert, "alert", b"{}", false, 1, Limits::default())
            .unwrap()
            .unwrap();
        assert!(s.outbox_reject(id, "too large", 2).unwrap());
        assert!(s.outbox_next(10, &[]).unwrap().is_empty());
        let (n, rows) = s.outbox_rejected(10).unwrap();
        assert_eq!(n, 1);
        assert_eq!((rows[0].id, rows[0].reason.as_str()), (id, "too large"));
    }
}
