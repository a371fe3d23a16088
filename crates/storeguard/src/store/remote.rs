//! Remote control's durable state: the request ids already run, holds, and the config
//! report that must reach the control centre.

use super::outbox::{Class, enqueue_tx};
use super::{Result, Store};
use rusqlite::{OptionalExtension, params};

/// The meta key of the remote-config status (applied, pending, last rejected and rolled
/// back versions), JSON written by `remote::desired` and shown by `config status`.
pub const CONFIG_STATUS_META: &str = "remote_config_status";

/// What is known of a request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Never seen: it is now recorded as running.
    New,
    /// Ran: the result payload that was sent.
    Done(Vec<u8>),
    /// Started but never finished (the box stopped while running it).
    Interrupted,
}

impl Store {
    /// Records `request_id` as running unless it is known, in one step, so a repeat can
    /// never run a command twice.
    pub fn remote_request_begin(
        &self,
        request_id: &str,
        name: &str,
        now_ns: i64,
    ) -> Result<Request> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            let known: Option<(String, Option<Vec<u8>>)> = tx
                .query_row(
                    "SELECT state, result FROM remote_request WHERE request_id = ?1",
                    [request_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let out = match known {
                Some((state, Some(result))) if state == "done" => Request::Done(result),
                Some(_) => Request::Interrupted,
                None => {
                    tx.execute(
                        "INSERT INTO remote_request(request_id, name, received_ns, state) \
                         VALUES (?1, ?2, ?3, 'running')",
                        params![request_id, name, now_ns],
                    )?;
                    Request::New
                }
            };
            tx.commit()?;
            Ok(out)
        })();
        self.sq(r)
    }

    /// Stores a request's result and queues it upstream in one transaction: a result is
    /// kept exactly when it will be sent. `request_id` None: a request that could not be
    /// read, answered but not recorded.
    pub fn remote_result(
        &self,
        request_id: Option<&str>,
        topic: &str,
        payload: &[u8],
        now_ns: i64,
    ) -> Result<()> {
        let limits = self.outbox_limits();
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            if let Some(id) = request_id {
                tx.execute(
                    "UPDATE remote_request SET state = 'done', result = ?2 WHERE request_id = ?1",
                    params![id, payload],
                )?;
            }
            enqueue_tx(&tx, Class::Evidence, topic, payload, false, now_ns, limits)?;
            tx.commit()
        })();
        self.sq(r)
    }

    /// Keeps the latest config report (the uplink republishes it on every connect) and
    /// queues it, retained, in one transaction.
    pub fn report_config(
        &self,
        meta_key: &str,
        topic: &str,
        payload: &[u8],
        now_ns: i64,
    ) -> Result<()> {
        let limits = self.outbox_limits();
        let text = String::from_utf8_lossy(payload).into_owned();
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![meta_key, text],
            )?;
            enqueue_tx(&tx, Class::Evidence, topic, payload, true, now_ns, limits)?;
            tx.commit()
        })();
        self.sq(r)
    }

    /// A hold: retention locks on `cameras` over a range until released or `expires_ns`.
    pub fn add_hold(
        &self,
        hold_id: &str,
        cameras: &[String],
        (from_ns, to_ns): (i64, i64),
        reason: &str,
        expires_ns: i64,
        now_ns: i64,
    ) -> Result<()> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            for cam in cameras {
                tx.execute(
                    "INSERT INTO retention_lock(camera, from_ns, to_ns, reason, created_ns, hold_id, expires_ns) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![cam, from_ns, to_ns, reason, now_ns, hold_id, expires_ns],
                )?;
            }
            tx.commit()
        })();
        self.sq(r)
    }

    /// Releases a hold; the number of locks it had.
    pub fn release_hold(&self, hold_id: &str) -> Result<usize> {
        let c = self.conn();
        self.sq(c.execute("DELETE FROM retention_lock WHERE hold_id = ?1", [hold_id]))
    }

    /// Ends holds whose time is up; how many locks went.
    pub fn expire_holds(&self, now_ns: i64) -> Result<usize> {
        let c = self.conn();
        self.sq(c.execute(
            "DELETE FROM retention_lock WHERE expires_ns IS NOT NULL AND expires_ns <= ?1",
            [now_ns],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_runs_once_and_its_result_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.remote_request_begin("r1", "status", 1).unwrap(),
            Request::New
        );
        assert_eq!(
            s.remote_request_begin("r1", "status", 2).unwrap(),
            Request::Interrupted
        );
        s.remote_result(Some("r1"), "cmd/status/result", b"{\"ok\":1}", 3)
            .unwrap();
        assert_eq!(
            s.remote_request_begin("r1", "status", 4).unwrap(),
            Request::Done(b"{\"ok\":1}".to_vec())
        );
    }

    #[test]
    fn holds_are_released_by_id_or_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let cams = vec!["cam1".to_string(), "cam2".to_string()];
        s.add_hold("h1", &cams, (10, 20), "police", 100, 1).unwrap();
        s.add_hold("h2", &cams[..1], (10, 20), "police", 50, 1)
            .unwrap();
        assert_eq!(s.expire_holds(60).unwrap(), 1);
        assert_eq!(s.release_hold("h1").unwrap(), 2);
        assert_eq!(s.release_hold("h1").unwrap(), 0);
    }
}
