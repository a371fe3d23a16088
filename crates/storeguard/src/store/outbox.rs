//! The durable outbox: everything bound upstream is a row here before anyone is told it
//! was accepted, and stays until the broker's PUBACK. Row ids are AUTOINCREMENT, never
//! reused, so `device:id` is a stable message id the receiver can deduplicate on.

use super::{Result, Store};
use rusqlite::{Transaction, params};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Alert = 0,
    Evidence = 1,
    Chunk = 2,
    Telemetry = 3,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::Alert,
        Class::Evidence,
        Class::Chunk,
        Class::Telemetry,
    ];

    pub fn from_i64(v: i64) -> Class {
        match v {
            0 => Class::Alert,
            1 => Class::Evidence,
            2 => Class::Chunk,
            _ => Class::Telemetry,
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutMsg {
    pub id: i64,
    pub class: Class,
    /// Relative to `storeguard/v1/{site}/{device}/`.
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub created_ns: i64,
    pub attempts: i64,
}

/// When the outbox is full, telemetry is dropped (oldest first, then new telemetry);
/// alerts and evidence are always accepted, even over the limit. The limits are enforced
/// when telemetry is enqueued.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages: u64,
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_messages: 100_000,
            max_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassStats {
    pub class: Class,
    pub depth: u64,
    pub bytes: u64,
    pub oldest_ns: Option<i64>,
    pub accepted: u64,
    pub delivered: u64,
    pub dropped: u64,
}

/// Inserts one message inside the caller's transaction. Returns None when it was
/// telemetry and had to be dropped for space.
pub(crate) fn enqueue_tx(
    tx: &Transaction<'_>,
    class: Class,
    topic: &str,
    payload: &[u8],
    retain: bool,
    now_ns: i64,
    limits: Limits,
) -> rusqlite::Result<Option<i64>> {
    let c = class as i64;
    tx.execute(
        "INSERT OR IGNORE INTO outbox_counter(class) VALUES (?1)",
        [c],
    )?;
    // Alerts and evidence are never dropped, so they skip the size check: that keeps the
    // alarm path O(1) even with a large backlog. Telemetry pays for the check and makes
    // room (its own oldest first) when the outbox is over its limits.
    if class != Class::Telemetry {
        return insert(tx, c, topic, payload, retain, now_ns).map(Some);
    }
    let (n, bytes): (i64, i64) = tx.query_row(
        "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let over = |n: i64, b: i64| {
        n as u64 + 1 > limits.max_messages || (b as u64 + payload.len() as u64) > limits.max_bytes
    };
    if over(n, bytes) {
        // Make room from the oldest telemetry first.
        let (mut n, mut b) = (n, bytes);
        let mut st = tx.prepare_cached(
            "SELECT id, length(payload) FROM outbox WHERE class = ?1 ORDER BY id LIMIT 256",
        )?;
        let victims: Vec<(i64, i64)> = st
            .query_map([Class::Telemetry as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (id, len) in victims {
            if !over(n, b) {
                break;
            }
            tx.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
            tx.execute(
                "UPDATE outbox_counter SET dropped = dropped + 1 WHERE class = ?1",
                [Class::Telemetry as i64],
            )?;
            n -= 1;
            b -= len;
        }
        if over(n, b) && class == Class::Telemetry {
            tx.execute(
                "UPDATE outbox_counter SET dropped = dropped + 1 WHERE class = ?1",
                [c],
            )?;
            return Ok(None);
        }
    }
    insert(tx, c, topic, payload, retain, now_ns).map(Some)
}

fn insert(
    tx: &Transaction<'_>,
    c: i64,
    topic: &str,
    payload: &[u8],
    retain: bool,
    now_ns: i64,
) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO outbox(class, topic, payload, retain, created_ns) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![c, topic, payload, retain, now_ns],
    )?;
    let id = tx.last_insert_rowid();
    tx.execute(
        "UPDATE outbox_counter SET accepted = accepted + 1 WHERE class = ?1",
        [c],
    )?;
    Ok(id)
}

impl Store {
    /// Queues an evidence-class message (never dropped, never retained) in `tx`.
    pub(super) fn evidence_tx(
        &self,
        tx: &Transaction<'_>,
        topic: &str,
        payload: &[u8],
        now_ns: i64,
    ) -> rusqlite::Result<Option<i64>> {
        enqueue_tx(
            tx,
            Class::Evidence,
            topic,
            payload,
            false,
            now_ns,
            self.outbox_limits(),
        )
    }

    /// Commits a message; when this returns Ok(Some(id)), the message survives power cuts.
    pub fn enqueue(
        &self,
        class: Class,
        topic: &str,
        payload: &[u8],
        retain: bool,
        now_ns: i64,
        limits: Limits,
    ) -> Result<Option<i64>> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            let id = enqueue_tx(&tx, class, topic, payload, retain, now_ns, limits)?;
            tx.commit()?;
            Ok(id)
        })();
        self.sq(r)
    }

    /// Commits evidence-class messages (never dropped) on one topic, all or none.
    pub fn enqueue_evidence(&self, topic: &str, payloads: &[Vec<u8>], now_ns: i64) -> Result<()> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            for p in payloads {
                enqueue_tx(
                    &tx,
                    Class::Evidence,
                    topic,
                    p,
                    false,
                    now_ns,
                    self.outbox_limits(),
                )?;
            }
            tx.commit()
        })();
        self.sq(r)
    }

    /// The next messages to send: highest class first, oldest first within a class,
    /// skipping ids already in flight.
    pub fn outbox_next(&self, limit: usize, in_flight: &[i64]) -> Result<Vec<OutMsg>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(
            "SELECT id, class, topic, payload, retain, created_ns, attempts FROM outbox ORDER BY class, id LIMIT ?1",
        ))?;
        let rows = st
            .query_map([(limit + in_flight.len()) as i64], |r| {
                Ok(OutMsg {
                    id: r.get(0)?,
                    class: Class::from_i64(r.get(1)?),
                    topic: r.get(2)?,
                    payload: r.get(3)?,
                    retain: r.get(4)?,
                    created_ns: r.get(5)?,
                    attempts: r.get(6)?,
                })
            })
            .and_then(|m| m.collect::<rusqlite::Result<Vec<_>>>());
        let mut rows = self.sq(rows)?;
        rows.retain(|m| !in_flight.contains(&m.id));
        rows.truncate(limit);
        Ok(rows)
    }

    pub fn outbox_mark_attempt(&self, id: i64) -> Result<()> {
        let c = self.conn();
        self.sq(c.execute(
            "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?1",
            [id],
        ))
        .map(|_| ())
    }

    /// The broker acknowledged the message: it leaves the outbox.
    pub fn outbox_ack(&self, ids: &[i64]) -> Result<()> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            for id in ids {
                let class: Option<i64> = tx
                    .query_row(
                        "DELETE FROM outbox WHERE id = ?1 RETURNING class",
                        [id],
                        |r| r.get(0),
                    )
                    .ok();
                if let Some(cl) = class {
                    tx.execute(
                        "UPDATE outbox_counter SET delivered = delivered + 1 WHERE class = ?1",
                        [cl],
                    )?;
                }
            }
            tx.commit()
        })();
        self.sq(r)
    }

    pub fn outbox_stats(&self) -> Result<Vec<ClassStats>> {
        let c = self.conn();
        let mut out = Vec::new();
        for class in Class::ALL {
            let cl = class as i64;
            let (depth, bytes, oldest): (i64, i64, Option<i64>) = self.sq(c.query_row(
                "SELECT count(*), coalesce(sum(length(payload)), 0), min(created_ns) FROM outbox WHERE class = ?1",
                [cl],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            ))?;
            let (accepted, delivered, dropped): (i64, i64, i64) = self
                .sq(c.query_row(
                    "SELECT accepted, delivered, dropped FROM outbox_counter WHERE class = ?1",
                    [cl],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                ))
                .unwrap_or((0, 0, 0));
            out.push(ClassStats {
                class,
                depth: depth as u64,
                bytes: bytes as u64,
                oldest_ns: oldest,
                accepted: accepted as u64,
                delivered: delivered as u64,
                dropped: dropped as u64,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_outbox_drops_telemetry_never_alerts() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let lim = Limits {
            max_messages: 3,
            max_bytes: 1 << 20,
        };
        s.enqueue(Class::Telemetry, "health", b"t1", false, 1, lim)
            .unwrap()
            .unwrap();
        s.enqueue(Class::Telemetry, "health", b"t2", false, 2, lim)
            .unwrap()
            .unwrap();
        s.enqueue(Class::Alert, "alert", b"a1", false, 3, lim)
            .unwrap()
            .unwrap();
        // Full, but an alert is always accepted (over the limit for now).
        s.enqueue(Class::Alert, "alert", b"a2", false, 4, lim)
            .unwrap()
            .unwrap();
        // New telemetry makes room by dropping the old telemetry first.
        assert!(
            s.enqueue(Class::Telemetry, "health", b"t3", false, 5, lim)
                .unwrap()
                .is_some()
        );
        // Alerts are accepted even over the limit.
        for i in 0..5 {
            s.enqueue(Class::Alert, "alert", b"a", false, 6 + i, lim)
                .unwrap()
                .unwrap();
        }
        assert!(
            s.enqueue(Class::Telemetry, "health", b"t4", false, 20, lim)
                .unwrap()
                .is_none()
        );
        let st = s.outbox_stats().unwrap();
        assert_eq!(st[0].depth, 7);
        assert_eq!(st[3].dropped, 4);
        let next = s.outbox_next(100, &[]).unwrap();
        assert!(
            next.iter().take(7).all(|m| m.class == Class::Alert),
            "alerts first"
        );
    }

    #[test]
    fn ids_are_never_reused_after_ack() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let a = s
            .enqueue(Class::Alert, "alert", b"x", false, 1, Limits::default())
            .unwrap()
            .unwrap();
        s.outbox_ack(&[a]).unwrap();
        let b = s
            .enqueue(Class::Alert, "alert", b"y", false, 2, Limits::default())
            .unwrap()
            .unwrap();
        assert!(b > a);
        assert_eq!(s.outbox_stats().unwrap()[0].delivered, 1);
    }
}
