//! Persistence: the one owner of the data directory and the SQLite database.
//!
//! Every other module reads and writes durable state through `Store`; none opens the
//! database or lays out files itself. See docs/persistence.md for the schema, time
//! representation and crash-safety rules.

pub mod clock;
pub mod events;
pub mod outbox;
pub mod package;
pub mod recording;
pub mod remote;
mod schema;
pub mod upload;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use schema::SCHEMA_VERSION;

/// Marks our databases ("SGRD"), so a foreign SQLite file is refused, not reused.
const APPLICATION_ID: i32 = 0x5347_5244;
pub const DB_FILE: &str = "storeguard.db";
const LOCK_FILE: &str = "storeguard.lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {path}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {path} is already in use by another storeguard{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, pid: Option<u32> },
    #[error("{path} is not a storeguard database ({detail}); refusing to touch it")]
    Foreign { path: PathBuf, detail: String },
    #[error("{path} is corrupt: {detail}; the file was left as it is for inspection")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{path} has schema version {found}, newer than this storeguard understands ({known}); downgrade is not supported"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("evidence file {path}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    db_path: PathBuf,
    conn: Mutex<Connection>,
    /// The outbox limits from `[uplink]`, for every producer (see `outbox::Limits`).
    limits: Mutex<outbox::Limits>,
    /// Every recorded clock step's correction, by the epoch it ends: rows of an old
    /// epoch committed after its step are corrected as they are committed.
    fixes: Mutex<clock::Fixes>,
    _lock: File,
}

/// How late a step can be seen after it happened (the time keeper polls the clock every
/// 100 ms; frames and events stamped in between are on the new clock already): added to
/// the error bound of footage a step corrected.
pub const STEP_UNCERTAINTY_NS: i64 = 100_000_000;

impl Store {
    /// Opens (creating if needed) the data directory and database, taking the
    /// one-instance lock. Never resets or rewrites an existing file it doesn't recognise.
    pub fn open(data_dir: &Path) -> Result<Store> {
        let dd = |source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(data_dir).map_err(dd)?;
        let lock = take_lock(data_dir)?;
        probe_writable(data_dir).map_err(dd)?;

        let db_path = data_dir.join(DB_FILE);
        check_header(&db_path)?;
        let sq = |source| StoreError::Sqlite {
            path: db_path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &db_path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sq)?;
        let store = Store {
            inner: Arc::new(Inner {
                data_dir: data_dir.to_path_buf(),
                db_path: db_path.clone(),
                conn: Mutex::new(conn),
                limits: Mutex::new(outbox::Limits::default()),
                fixes: Mutex::new(clock::Fixes::default()),
                _lock: lock,
            }),
        };
        store.init()?;
        Ok(store)
    }

    fn init(&self) -> Result<()> {
        let path = self.inner.db_path.clone();
        let mut c = self.conn();
        let corrupt = |e: rusqlite::Error| classify(&path, e);
        // Identify the file before anything that writes: switching journal_mode rewrites
        // the header, and a foreign database must be left byte-for-byte as it was.
        c.execute_batch("PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;")
            .map_err(corrupt)?;
        let app_id: i32 = c
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(corrupt)?;
        let tables: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table'",
                [],
                |r| r.get(0),
            )
            .map_err(corrupt)?;
        if app_id != APPLICATION_ID && (app_id != 0 || tables > 0) {
            return Err(StoreError::Foreign {
                path,
                detail: format!("application_id {app_id:#x}, {tables} tables of another program"),
            });
        }
        // FULL: a commit that returned is on disk. The outbox promises exactly that.
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .map_err(corrupt)?;
        if app_id == 0 {
            c.execute_batch(&format!("PRAGMA application_id={APPLICATION_ID};"))
                .map_err(corrupt)?;
        }
        schema::migrate(&mut c).map_err(|e| match e {
            schema::MigrateError::TooNew(found) => StoreError::TooNew {
                path: path.clone(),
                found,
                known: SCHEMA_VERSION,
            },
            schema::MigrateError::Sql(e) => classify(&path, e),
        })?;
        let fixes = clock::Fixes::load(&c).map_err(|e| classify(&path, e))?;
        drop(c);
        *self.fixes() = fixes;
        Ok(())
    }

    pub(crate) fn fixes(&self) -> MutexGuard<'_, clock::Fixes> {
        self.inner.fixes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The outbox limits every producer enqueues under; the daemon sets them from
    /// `[uplink]` at start and on reload.
    pub fn outbox_limits(&self) -> outbox::Limits {
        *self.inner.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_outbox_limits(&self, limits: outbox::Limits) {
        *self.inner.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    pub fn db_path(&self) -> &Path {
        &self.inner.db_path
    }

    /// The connection, for the store's own submodules. Callers in async code wrap
    /// store calls in `spawn_blocking`; queries here are short.
    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        debug_assert!(
            !storeguard_base::runtime::on_async_worker(),
            "SQLite called on an async worker thread; use spawn_blocking (cmd::blocking)"
        );
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.inner.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn sq<T>(&self, r: rusqlite::Result<T>) -> Result<T> {
        r.map_err(|e| classify(&self.inner.db_path, e))
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<String>> {
        let c = self.conn();
        self.sq(c
            .query_row("SELECT value FROM meta WHERE key=?1", [key], |r| r.get(0))
            .optional())
    }

    pub fn meta_set(&self, key: &str, value: &str) -> Result<()> {
        let c = self.conn();
        self.sq(c.execute("INSERT INTO meta(key,value) VALUES(?1,?2) ON CONFLICT(key) DO UPDATE SET value=excluded.value", [key, value]))
            .map(|_| ())
    }

    /// `PRAGMA integrity_check`; returns the problems found (empty when healthy).
    pub fn integrity_check(&self) -> Result<Vec<String>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare("PRAGMA integrity_check"))?;
        let rows: Vec<String> =
            self.sq(st.query_map([], |r| r.get(0)).and_then(|m| m.collect()))?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    pub fn schema_version(&self) -> Result<i64> {
        let c = self.conn();
        self.sq(c.query_row("PRAGMA user_version", [], |r| r.get(0)))
    }
}

fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(DatabaseCorrupt) | Some(NotADatabase) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => StoreError::Sqlite {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// A non-empty file that doesn't start with the SQLite magic is someone else's.
fn check_header(db: &Path) -> Result<()> {
    let mut f = match File::open(db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::DataDir {
                path: db.to_path_buf(),
                source: e,
            });
        }
    };
    let mut head = [0u8; 16];
    let n = f.read(&mut head).map_err(|e| StoreError::DataDir {
        path: db.to_path_buf(),
        source: e,
    })?;
    if n == 0 {
        return Ok(());
    }
    if n < 16 || &head != b"SQLite format 3\0" {
        return Err(StoreError::Foreign {
            path: db.to_path_buf(),
            detail: "no SQLite header".into(),
        });
    }
    Ok(())
}

fn take_lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::DataDir {
            path: path.clone(),
            source: e,
        })?;
    // flock is released by the kernel when the process dies, so a crash never leaves
    // a stale lock behind (a pid file alone would).
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        return Err(StoreError::Locked {
            path: dir.to_path_buf(),
            pid: s.trim().parse().ok(),
        });
    }
    let _ = f.set_len(0);
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let p = dir.join(".write-probe");
    fs::write(&p, b"ok")?;
    fs::remove_file(&p)
}

/// Syncs a directory so a rename or create inside it survives a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_with_pid() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        match Store::open(d.path()) {
            Err(StoreError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("second open succeeded"),
        }
        drop(s);
        Store::open(d.path()).unwrap();
    }

    #[test]
    fn foreign_files_are_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join(DB_FILE);
        fs::write(&db, b"this is not a database at all, it is a shopping list").unwrap();
        let e = Store::open(d.path()).err().unwrap();
        assert!(matches!(e, StoreError::Foreign { .. }), "{e}");
        assert_eq!(
            fs::read(&db).unwrap(),
            b"this is not a database at all, it is a shopping list"
        );

        fs::remove_file(&db).unwrap();
        let c = Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE recipes(x)").unwrap();
        drop(c);
        let before = fs::read(&db).unwrap();
        let e = Store::open(d.path()).err().unwrap();
        assert!(e.to_string().contains("not a storeguard database"), "{e}");
        assert_eq!(
            fs::read(&db).unwrap(),
            before,
            "foreign database was modified"
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let d = tempfile::tempdir().unwrap();
        drop(Store::open(d.path()).unwrap());
        let c = Connection::open(d.path().join(DB_FILE)).unwrap();
        c.execute_batch(&format!("PRAGMA user_version={}", SCHEMA_VERSION + 1))
            .unwrap();
        drop(c);
        let e = Store::open(d.path()).err().unwrap();
        assert!(matches!(e, StoreError::TooNew { .. }), "{e}");
    }

    #[test]
    fn meta_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.meta_get("k").unwrap(), None);
        s.meta_set("k", "v1").unwrap();
        s.meta_set("k", "v2").unwrap();
        assert_eq!(s.meta_get("k").unwrap().as_deref(), Some("v2"));
        assert!(s.integrity_check().unwrap().is_empty());
    }
}
