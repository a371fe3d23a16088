//! The disk under the box fails: `sg-lazyfs` (storeguard_fixtures::lazyfs) keeps unsynced
//! file contents in memory and drops them on a simulated power cut, and injects EIO,
//! ENOSPC and a read-only remount. First the filesystem itself is checked against what a
//! power cut does to plain files and to SQLite; then the daemon runs on it.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use storeguard_fixtures::broker::{BrokerOpts, MosquittoBroker};
use storeguard_fixtures::harness::*;
use storeguard_fixtures::lazyfs::LazyFs;

use crate::isb::{SEC, button, isb_config, pattern_fleet};
use crate::uplink::Rx;

/// Mounts a fresh lazyfs at `<dir>/<name>` over `<dir>/<name>.backing`; `None` (a logged
/// skip) where this machine has no FUSE.
pub(crate) fn lazyfs(dir: &Path, name: &str, test: &str) -> Option<LazyFs> {
    if let Err(e) = File::open("/dev/fuse") {
        skip(test, &format!("cannot open /dev/fuse: {e}"));
        return None;
    }
    let (backing, mnt) = (dir.join(format!("{name}.backing")), dir.join(name));
    fs::create_dir_all(&backing).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    Some(LazyFs::mount(&backing, &mnt).expect("sg-lazyfs mounts (cargo build --workspace --bins)"))
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn lazyfs_a_cut_drops_exactly_what_was_not_fsynced() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs_) = lazyfs(tmp.path(), "m", "lazyfs cut") else {
        return;
    };
    let m = fs_.mountpoint().to_path_buf();

    // Never synced: the name survives (metadata), the contents do not.
    fs::write(m.join("unsynced"), b"gone after the cut").unwrap();
    // Synced, then appended to (O_APPEND) without a sync: only the synced part survives.
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(m.join("log"))
        .unwrap();
    f.write_all(b"kept;").unwrap();
    f.sync_data().unwrap();
    f.write_all(b"lost;").unwrap();
    f.write_all(b"lost too;").unwrap();
    drop(f);
    assert_eq!(fs::read(m.join("log")).unwrap(), b"kept;lost;lost too;");
    // Synced, then truncated without a sync: the old contents come back.
    let f = File::create(m.join("truncated")).unwrap();
    (&f).write_all(b"0123456789").unwrap();
    f.sync_all().unwrap();
    f.set_len(3).unwrap();
    drop(f);
    // write_atomic's pattern: temp file, fsync, rename over, fsync the directory.
    fs::write(m.join("config"), b"old").unwrap();
    File::open(m.join("config")).unwrap().sync_all().unwrap();
    let t = File::create(m.join("config.tmp")).unwrap();
    (&t).write_all(b"new").unwrap();
    t.sync_all().unwrap();
    fs::rename(m.join("config.tmp"), m.join("config")).unwrap();
    File::open(&m).unwrap().sync_all().unwrap();
    // Locks are the kernel's: a second flock on the same file is refused.
    let a = File::create(m.join("lock")).unwrap();
    let b = File::open(m.join("lock")).unwrap();
    // SAFETY: valid descriptors; flock has no memory arguments.
    assert_eq!(
        unsafe { libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    assert_eq!(
        unsafe { libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        -1
    );
    drop((a, b));

    let st = fs_.stats().unwrap();
    assert_eq!((st.dirty_files, st.cuts), (3, 0), "{st:?}");
    let cut = fs_.cut().unwrap();
    assert_eq!(
        cut.files, 3,
        "unsynced, log and truncated were dirty: {cut:?}"
    );
    assert_eq!(cut.bytes, 18 + 14, "{cut:?}");

    assert_eq!(fs::read(m.join("unsynced")).unwrap(), b"");
    assert_eq!(fs::read(m.join("log")).unwrap(), b"kept;");
    assert_eq!(fs::metadata(m.join("log")).unwrap().len(), 5);
    assert_eq!(fs::read(m.join("truncated")).unwrap(), b"0123456789");
    assert_eq!(fs::read(m.join("config")).unwrap(), b"new");
    assert!(!m.join("config.tmp").exists());
    assert_eq!(fs_.stats().unwrap().dirty_files, 0);

    // Unmounting writes what is pending, like a clean shutdown.
    fs::write(m.join("at-unmount"), b"flushed").unwrap();
    let backing = tmp.path().join("m.backing");
    fs_.unmount().unwrap();
    assert_eq!(fs::read(backing.join("at-unmount")).unwrap(), b"flushed");
    assert_eq!(fs::read(backing.join("log")).unwrap(), b"kept;");
}

#[test]
fn lazyfs_injects_eio_enospc_and_read_only_under_a_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs_) = lazyfs(tmp.path(), "m", "lazyfs faults") else {
        return;
    };
    let m = fs_.mountpoint().to_path_buf();
    fs::create_dir(m.join("recordings")).unwrap();
    let seg = m.join("recordings/seg.ts");
    fs::write(&seg, b"x").unwrap();

    fs_.fault("write eio recordings").unwrap();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    assert_eq!(errno_of(f.write_all(b"y")), Some(libc::EIO));
    fs::write(m.join("db"), b"outside the prefix").unwrap();
    fs_.clear().unwrap();
    f.write_all(b"y").unwrap();

    fs_.fault("fsync eio recordings").unwrap();
    assert_eq!(errno_of(f.sync_all()), Some(libc::EIO));
    // A failed fsync made nothing durable; the data is still there to read.
    assert_eq!(fs::read(&seg).unwrap(), b"xy");
    File::open(m.join("db")).unwrap().sync_all().unwrap();
    fs_.clear().unwrap();
    f.sync_all().unwrap();

    fs_.fault("write enospc").unwrap();
    assert_eq!(errno_of(f.write_all(b"z")), Some(libc::ENOSPC));
    assert_eq!(errno_of(File::create(m.join("new"))), Some(libc::ENOSPC));
    assert_eq!(errno_of(fs::create_dir(m.join("d"))), Some(libc::ENOSPC));
    fs_.clear().unwrap();

    fs_.fault("readonly recordings").unwrap();
    assert_eq!(errno_of(f.write_all(b"z")), Some(libc::EROFS));
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(&seg)),
        Some(libc::EROFS)
    );
    assert_eq!(errno_of(fs::remove_file(&seg)), Some(libc::EROFS));
    assert_eq!(
        errno_of(fs::rename(m.join("db"), m.join("recordings/db"))),
        Some(libc::EROFS)
    );
    assert_eq!(fs::read(&seg).unwrap(), b"xy", "reads still work");
    fs::write(m.join("db2"), b"outside").unwrap();
    assert!(fs_.stats().unwrap().faulted >= 8);
    assert!(fs_.fault("write eperm").is_err(), "a bad fault is refused");
    fs_.clear().unwrap();
    f.write_all(b"z").unwrap();
    f.sync_all().unwrap();
    fs_.cut().unwrap();
    assert_eq!(fs::read(&seg).unwrap(), b"xyz");
    let e = fs::remove_file(m.join("nope")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

/// Runs as a separate process (the re-executed test binary) for the SQLite cut test:
/// commits transactions in WAL mode with synchronous=FULL, printing each id once its
/// commit returned, until it is killed.
#[test]
fn child_sqlite_writer() {
    let Ok(db) = std::env::var("SG_CHILD_SQLITE") else {
        return; // a no-op in a normal test run
    };
    let c = rusqlite::Connection::open(&db).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.pragma_update(None, "wal_autocheckpoint", 50).unwrap();
    // A small page cache: a transaction spills pages into the WAL before its commit,
    // so a kill mid-transaction leaves unsynced WAL frames for the cut to drop.
    c.pragma_update(None, "cache_size", 8).unwrap();
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, pad BLOB);
         CREATE TABLE IF NOT EXISTS filler (pad BLOB);",
    )
    .unwrap();
    let first: i64 = c
        .query_row("SELECT coalesce(max(id), 0) + 1 FROM t", [], |r| r.get(0))
        .unwrap();
    let out = std::io::stdout();
    let mut c = c;
    for id in first.. {
        let tx = c.transaction().unwrap();
        tx.execute(
            "INSERT INTO t (id, pad) VALUES (?1, zeroblob(?2))",
            (id, 100 + (id * 37) % 3000),
        )
        .unwrap();
        for _ in 0..(id % 24) {
            tx.execute("INSERT INTO filler (pad) VALUES (zeroblob(3000))", [])
                .unwrap();
        }
        tx.commit().unwrap();
        let mut o = out.lock();
        writeln!(o, "committed {id}").unwrap();
        o.flush().unwrap();
    }
}

fn spawn_sqlite_writer(db: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "disk::child_sqlite_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SG_CHILD_SQLITE", db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn lazyfs_sqlite_in_wal_mode_keeps_every_committed_transaction_through_cuts() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs_) = lazyfs(tmp.path(), "m", "lazyfs sqlite") else {
        return;
    };
    let db = fs_.mountpoint().join("t.db");
    let mut rng = Rng::new("lazyfs sqlite");
    let mut acknowledged = 0i64;
    for round in 0..3 {
        let mut child = spawn_sqlite_writer(&db);
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(id) = line.strip_prefix("committed ") {
                    let _ = tx.send(id.parse::<i64>().unwrap());
                }
            }
        });
        let stop_after = acknowledged + rng.range(30, 150) as i64;
        loop {
            let id = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the writer commits");
            acknowledged = acknowledged.max(id);
            if id >= stop_after {
                break;
            }
        }
        // The power-cut contract: kill everything on the mount, wait, then cut.
        child.kill().unwrap();
        child.wait().unwrap();
        while let Ok(id) = rx.recv_timeout(Duration::from_millis(200)) {
            acknowledged = acknowledged.max(id);
        }
        let cut = fs_.cut().unwrap();
        eprintln!("round {round}: {acknowledged} acknowledged, cut dropped {cut:?}");
        assert!(cut.files >= 1, "the -shm file at least was never fsynced");

        let c = rusqlite::Connection::open(&db).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "round {round}");
        let (n, max): (i64, i64) = c
            .query_row("SELECT count(*), coalesce(max(id), 0) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert!(
            max >= acknowledged && n == max,
            "round {round}: {acknowledged} commits acknowledged, {n} rows up to id {max} survived"
        );
        acknowledged = max;
    }
}

/// `O_EXCL` creation and a second opener see the same pending contents (one page cache).
#[test]
fn lazyfs_every_descriptor_sees_the_same_pending_data() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs_) = lazyfs(tmp.path(), "m", "lazyfs descriptors") else {
        return;
    };
    let p = fs_.mountpoint().join("f");
    let w = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .unwrap();
    (&w).write_all(b"abc").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"abc");
    // fsync on another descriptor makes the first one's writes durable too.
    File::open(&p).unwrap().sync_all().unwrap();
    drop(w);
    assert_eq!(fs_.cut().unwrap().files, 0);
    assert_eq!(fs::read(&p).unwrap(), b"abc");
}

// ------------------------------------------------------ the daemon on a failing disk

/// A site whose data dir is a lazyfs mount, with two test-pattern cameras, a button on
/// cam1 and the uplink to `broker`.
fn faulty_site(broker: &str, urls: &[String]) -> (Site, LazyFs) {
    let site = Site::new();
    let fs_ = lazyfs(site.dir.path(), "data", "daemon on lazyfs").expect("FUSE here");
    let uplink = format!(
        "\n{}\n[uplink]\nbroker = \"{broker}\"\nmax_reconnect_backoff = \"300ms\"\n",
        storeguard_fixtures::centre::trust_toml()
    );
    let mut cfg = isb_config(urls, "", &button("till", "normally-open", &["cam1"], ""));
    cfg.push_str(&uplink);
    site.write_config(&cfg);
    (site, fs_)
}

fn cameras(site: &Site) -> Vec<Value> {
    let out = site.cli(&["cameras", "--json"]);
    out.expect(0);
    let v: Value = serde_json::from_str(&out.stdout).expect("cameras --json is JSON");
    v["cameras"].as_array().cloned().unwrap_or_default()
}

fn health_kinds(rx: &Rx) -> Vec<(String, String)> {
    rx.health()
        .iter()
        .map(|h| {
            (
                h["payload"]["kind"].as_str().unwrap_or("").to_string(),
                h["payload"]["camera"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn all_recording(site: &Site) -> bool {
    let c = cameras(site);
    !c.is_empty() && c.iter().all(|c| c["state"] == "recording")
}

fn wait_idle(site: &Site) {
    wait_until_within("the button to be released", Duration::from_secs(30), || {
        site.status()["buttons"][0]["state"] == "idle"
    });
}

/// Closed gaps of `camera` that began at or after `since_ns`, with their reasons.
fn gaps_since(site: &Site, camera: &str, since_ns: i64) -> Vec<String> {
    let db = site.db();
    let mut st = db
        .prepare(
            "SELECT reason FROM gap WHERE camera = ?1 AND start_ns >= ?2 AND end_ns IS NOT NULL",
        )
        .unwrap();
    st.query_map((camera, since_ns), |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn count(kinds: &[(String, String)], kind: &str) -> usize {
    kinds.iter().filter(|(k, _)| k == kind).count()
}

#[test]
fn daemon_on_a_failing_disk_keeps_taking_presses_states_every_fault_and_recovers() {
    if let Err(e) = File::open("/dev/fuse") {
        skip("daemon on lazyfs", &format!("cannot open /dev/fuse: {e}"));
        return;
    }
    let broker = MosquittoBroker::start(BrokerOpts::default()).unwrap();
    let rx = Rx::start(&broker.url());
    rx.wait_subscribed(1);
    let fleet = pattern_fleet(2);
    let (site, fs_) = faulty_site(&broker.url(), &[fleet.url(1), fleet.url(2)]);
    let d = site.start();
    let minute = Duration::from_secs(60);
    wait_until_within("both cameras recording", minute, || all_recording(&site));

    let mut presses = 0;
    for (round, fault) in [
        "write eio recordings",
        "fsync eio recordings",
        "write enospc recordings",
        "readonly recordings",
    ]
    .into_iter()
    .enumerate()
    {
        // Gaps start where the last durable frame ended: a little before the fault.
        let since = storeguard_base::now_ns() - 3 * SEC;
        fs_.fault(fault).unwrap();
        wait_until_within(&format!("{fault}: cameras in write-error"), minute, || {
            cameras(&site).iter().all(|c| c["state"] == "write-error")
        });
        for c in cameras(&site) {
            let err = c["last_error"].as_str().unwrap_or_default();
            assert!(
                err.contains("/recordings/") && err.contains("os error"),
                "{fault}: {} says {err:?}",
                c["id"]
            );
        }
        let doc = site.cli(&["doctor"]);
        assert_ne!(doc.code(), Some(0), "{fault}: doctor passed\n{}", doc.all());
        for cam in ["cam1", "cam2"] {
            assert!(
                doc.stdout.lines().any(|l| l.starts_with("FAIL")
                    && l.contains(&format!("{cam} write-error"))
                    && l.contains("/recordings/")
                    && l.contains("os error")),
                "{fault}: no failing check for {cam}\n{}",
                doc.stdout
            );
        }
        // The database is outside the fault: presses are still recorded and sent.
        wait_idle(&site);
        let out = site.cli(&["button", "press", "till", "--test"]);
        out.expect(0);
        assert!(out.stdout.contains("recorded as event"), "{}", out.all());
        presses += 1;
        wait_until_within(&format!("{fault}: the alert upstream"), minute, || {
            rx.alerts_from("isb-box").len() == presses
        });
        wait_until_within(&format!("{fault}: health upstream"), minute, || {
            count(&health_kinds(&rx), "recording_write_failed") >= 2 * (round + 1)
        });

        fs_.clear().unwrap();
        wait_until_within(&format!("{fault} cleared: recording again"), minute, || {
            all_recording(&site)
        });
        wait_until_within(
            &format!("{fault} cleared: recovery upstream"),
            minute,
            || count(&health_kinds(&rx), "recording_write_ok") >= 2 * (round + 1),
        );
        for cam in ["cam1", "cam2"] {
            wait_until_within(&format!("{fault}: {cam}'s gap, closed"), minute, || {
                gaps_since(&site, cam, since)
                    .iter()
                    .any(|r| r.contains("os error"))
            });
        }
        let doc = site.cli(&["doctor"]);
        assert!(
            !doc.stdout
                .lines()
                .any(|l| l.starts_with("FAIL") && l.contains("camera")),
            "{fault} cleared: a camera still fails\n{}",
            doc.stdout
        );
    }

    // The whole data dir: the database cannot commit, so no press can be recorded.
    fs_.fault("write eio").unwrap();
    wait_idle(&site);
    let out = site.cli(&["button", "press", "till", "--test"]);
    assert_ne!(out.code(), Some(0), "a press was claimed\n{}", out.all());
    assert!(out.all().contains("NOT recorded"), "{}", out.all());
    fs_.clear().unwrap();
    // Not lost: recorded once the disk takes it, and the daemon goes on without a restart.
    wait_until_within("the refused press, recorded after all", minute, || {
        rx.alerts_from("isb-box").len() == presses + 1
    });
    wait_until_within("recording again", minute, || all_recording(&site));
    wait_idle(&site);
    site.cli(&["button", "press", "till", "--test"]).expect(0);
    wait_until_within("a press after the fault", minute, || {
        rx.alerts_from("isb-box").len() == presses + 2
    });
    let mut d = d;
    assert!(d.is_running(), "the daemon stopped\n{}", d.log());
    eprintln!(
        "disk faults: 5 injected, {} presses recorded, lazyfs {:?}",
        presses + 2,
        fs_.stats().unwrap()
    );
}
