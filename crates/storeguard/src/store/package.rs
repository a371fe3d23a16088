//! Evidence packages queued for upload (the `package` remote command), and the one view
//! of "an evidence item" the uplink works with: a sealed clip or a package. Both travel
//! the same way (manifest message, chunks, signed receipt), so the upload and receipt code
//! asks for an item by uid and does not care which it is.

use super::events::audit_receipt;
use super::outbox::{Class, enqueue_tx};
use super::{Result, Store};
use rusqlite::params;
use serde::Serialize;

/// What an uploaded evidence item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    Clip,
    Package,
}

/// A clip or a package, as the uplink sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub kind: ItemKind,
    pub uid: String,
    /// `sealed` (waiting for the receipt) or `acked`; clips also `pending`, `failed`.
    pub state: String,
    /// Relative to the data directory.
    pub path: Option<String>,
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PackageRow {
    pub uid: String,
    pub event: Option<String>,
    pub request_id: Option<String>,
    pub path: String,
    pub sha256: String,
    pub bytes: i64,
    pub state: String,
    pub created_ns: i64,
    pub acked_ns: Option<i64>,
    /// The control centre's signed receipt (its payload, verbatim) once accepted.
    pub receipt: Option<String>,
    pub receipt_key: Option<String>,
}

/// A package written and ready to go upstream.
#[derive(Debug, Clone)]
pub struct NewPackage<'a> {
    pub uid: &'a str,
    pub event: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// Relative to the data directory.
    pub path: &'a str,
    pub sha256: &'a str,
    pub bytes: u64,
}

const PACKAGE_COLS: &str = "uid, event, request_id, path, sha256, bytes, state, created_ns, acked_ns, receipt, receipt_key";

fn package_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PackageRow> {
    Ok(PackageRow {
        uid: r.get(0)?,
        event: r.get(1)?,
        request_id: r.get(2)?,
        path: r.get(3)?,
        sha256: r.get(4)?,
        bytes: r.get(5)?,
        state: r.get(6)?,
        created_ns: r.get(7)?,
        acked_ns: r.get(8)?,
        receipt: r.get(9)?,
        receipt_key: r.get(10)?,
    })
}

impl Store {
    /// Records a package (its zip written, fsynced and verified) and queues its manifest
    /// message upstream (class 1), in one transaction: the upload then follows as for a
    /// sealed clip, through outages and restarts.
    pub fn seal_package(
        &self,
        p: &NewPackage<'_>,
        manifest: (&str, &[u8]),
        now_ns: i64,
    ) -> Result<()> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO package(uid, event, request_id, path, sha256, bytes, state, created_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'sealed', ?7)",
                params![p.uid, p.event, p.request_id, p.path, p.sha256, p.bytes as i64, now_ns],
            )?;
            enqueue_tx(
                &tx,
                Class::Evidence,
                manifest.0,
                manifest.1,
                false,
                now_ns,
                self.outbox_limits(),
            )?;
            tx.commit()
        })();
        self.sq(r)
    }

    pub fn package(&self, uid: &str) -> Result<Option<PackageRow>> {
        Ok(self.packages_where("uid", uid)?.pop())
    }

    /// The packages made of an event (by its uid), oldest first.
    pub fn packages_of_event(&self, event: &str) -> Result<Vec<PackageRow>> {
        self.packages_where("event", event)
    }

    fn packages_where(&self, column: &str, value: &str) -> Result<Vec<PackageRow>> {
        let c = self.conn();
        let sql = format!("SELECT {PACKAGE_COLS} FROM package WHERE {column} = ?1 ORDER BY id");
        let mut st = self.sq(c.prepare_cached(&sql))?;
        let rows = st.query_map([value], package_row).and_then(|m| m.collect());
        self.sq(rows)
    }

    /// The clip or package with this uid.
    pub fn item(&self, uid: &str) -> Result<Option<Item>> {
        if let Some(c) = self.clip(uid)? {
            return Ok(Some(Item {
                kind: ItemKind::Clip,
                uid: c.uid,
                state: c.state,
                path: c.path,
                bytes: c.bytes,
                sha256: c.sha256,
            }));
        }
        Ok(self.package(uid)?.map(|p| Item {
            kind: ItemKind::Package,
            uid: p.uid,
            state: p.state,
            path: Some(p.path),
            bytes: Some(p.bytes),
            sha256: Some(p.sha256),
        }))
    }

    /// Accepts the control centre's receipt for a clip or a package (see
    /// [`Store::ack_clip`]; a package's is kept as `{zip}.receipt.json`, in its row and in
    /// the audit trail as `package_receipt`). False when it is not waiting for a receipt.
    pub fn ack_item(&self, uid: &str, now_ns: i64, receipt: &[u8], key_id: &str) -> Result<bool> {
        match self.item(uid)? {
            Some(Item {
                kind: ItemKind::Clip,
                ..
            }) => self.ack_clip(uid, now_ns, receipt, key_id),
            Some(Item {
                kind: ItemKind::Package,
                ..
            }) => self.ack_package(uid, now_ns, receipt, key_id),
            None => Ok(false),
        }
    }

    fn ack_package(&self, uid: &str, now_ns: i64, receipt: &[u8], key_id: &str) -> Result<bool> {
        let Some(row) = self.package(uid)? else {
            return Ok(false);
        };
        if row.state != "sealed" {
            return Ok(false);
        }
        self.keep_receipt(&row.path, receipt)?;
        let text = String::from_utf8_lossy(receipt).into_owned();
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE package SET state = 'acked', acked_ns = ?2, receipt = ?3, receipt_key = ?4 \
                 WHERE uid = ?1 AND state = 'sealed'",
                params![uid, now_ns, text, key_id],
            )?;
            if n == 0 {
                return Ok(false);
            }
            audit_receipt(&tx, "package_receipt", uid, now_ns, &text, key_id)?;
            tx.commit()?;
            Ok(true)
        })();
        self.sq(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_is_an_item_uploaded_and_acknowledged_like_a_clip() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        std::fs::create_dir_all(d.path().join("packages")).unwrap();
        std::fs::write(d.path().join("packages/pkg-1.zip"), b"PK").unwrap();
        let p = NewPackage {
            uid: "pkg-1",
            event: Some("ev-1"),
            request_id: Some("r-1"),
            path: "packages/pkg-1.zip",
            sha256: "ab",
            bytes: 2,
        };
        s.seal_package(&p, ("evidence/pkg-1/manifest", b"{}"), 1)
            .unwrap();
        let rows = s.outbox_next(10, &[]).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].topic, "evidence/pkg-1/manifest");
        let begun = s
            .uplink_delivered(&[rows[0].id], &["pkg-1".into()], 2)
            .unwrap();
        assert_eq!(begun, ["pkg-1"]);
        let u = s.upload("pkg-1").unwrap().unwrap();
        assert_eq!((u.total, u.path.as_str()), (2, "packages/pkg-1.zip"));
        let item = s.item("pkg-1").unwrap().unwrap();
        assert_eq!(
            (item.kind, item.state.as_str()),
            (ItemKind::Package, "sealed")
        );
        assert!(s.ack_item("pkg-1", 3, b"{\"r\":1}", "k1").unwrap());
        assert!(!s.ack_item("pkg-1", 4, b"{\"r\":1}", "k1").unwrap(), "once");
        let row = s.package("pkg-1").unwrap().unwrap();
        assert_eq!(
            (row.state.as_str(), row.receipt_key.as_deref(), row.acked_ns),
            ("acked", Some("k1"), Some(3))
        );
        assert_eq!(
            std::fs::read(d.path().join("packages/pkg-1.zip.receipt.json")).unwrap(),
            b"{\"r\":1}"
        );
        assert_eq!(s.packages_of_event("ev-1").unwrap().len(), 1);
        assert!(s.item("nope").unwrap().is_none());
    }
}
