//! A full 31-day ring index, and what the box does on it (docs/reliability.md, "A full
//! ring"). Run by `scripts/bench-ring.sh`; by hand:
//!
//! ```text
//! cargo run --release --example full_ring -- generate DATA_DIR [--real RECORDED_DIR] [--cameras 24] [--days 31] [--no-files]
//! cargo run --release --example full_ring -- bench DATA_DIR [--presses 200]
//! ```
//!
//! `generate` opens DATA_DIR through `Store::open` (the real migrations), then bulk-inserts
//! synthetic rows: 30 s segments with a keyframe every 2 s for every camera over `--days`,
//! with gaps, health events, presses with their clips, holds and queued telemetry. Every
//! synthetic segment gets an empty file (so start-up reconciliation sees the ring it would
//! see on a real box) unless `--no-files`. The newest minutes of every camera are real:
//! the segments of the first camera of RECORDED_DIR (a data directory the daemon recorded
//! into), hard-linked under every camera's name and indexed with their keyframes.
//!
//! `bench` times, on that ring: the queries on the hot paths, the usage load, one
//! eviction pass, press commits (event + alert + 4 clip jobs and locks, fsynced), and
//! cutting and sealing a 90 s clip of the real footage. One `FIGURE name value unit` line
//! each.

use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};
use std::time::Instant;
use storeguard::config::{Budget, Site};
use storeguard::evidence::clip::{self, ClipSpec};
use storeguard::recording::ring::{self, Policy, Usage};
use storeguard::recording::writer::segment_rel_path;
use storeguard::store::Store;
use storeguard::store::events::{EventRow, NewClip};
use storeguard_proto::DeviceKey;
use storeguard_proto::manifest::EventKind;

const S: i64 = 1_000_000_000;
const SEG_NS: i64 = 30 * S;
const GOP_NS: i64 = 2 * S;
/// 3 Mbit/s for 30 s.
const SEG_BYTES: i64 = 11_250_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    let has = |name: &str| args.iter().any(|a| a == name);
    match (args.first().map(String::as_str), args.get(1)) {
        (Some("generate"), Some(dir)) => generate(&Gen {
            dir: PathBuf::from(dir),
            real: flag("--real").map(PathBuf::from),
            cameras: flag("--cameras").map_or(Ok(24), |v| v.parse())?,
            days: flag("--days").map_or(Ok(31), |v| v.parse())?,
            files: !has("--no-files"),
        }),
        (Some("bench"), Some(dir)) => bench(
            Path::new(dir),
            flag("--presses").map_or(Ok(200), |v| v.parse())?,
        ),
        _ => anyhow::bail!(
            "usage: full_ring generate DATA_DIR [--real DIR] [--cameras N] [--days N] [--no-files] | bench DATA_DIR [--presses N]"
        ),
    }
}

struct Gen {
    dir: PathBuf,
    real: Option<PathBuf>,
    cameras: usize,
    days: i64,
    files: bool,
}

/// A recorded segment to copy: its row and its keyframes.
struct RealSeg {
    path: PathBuf,
    start_ns: i64,
    end_ns: i64,
    bytes: i64,
    frames: i64,
    codec: String,
    width: i64,
    height: i64,
    params: Option<Vec<u8>>,
    keyframes: Vec<(i64, i64)>,
}

fn real_segments(dir: &Path) -> anyhow::Result<Vec<RealSeg>> {
    let db = Connection::open(dir.join("storeguard.db"))?;
    let cam: String = db.query_row(
        "SELECT camera FROM segment ORDER BY camera LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    let mut st = db.prepare(
        "SELECT id, path, start_ns, end_ns, bytes, frames, codec, width, height, params FROM segment
         WHERE camera = ?1 AND state != 0 ORDER BY start_ns",
    )?;
    let rows: Vec<(i64, RealSeg)> = st
        .query_map([&cam], |r| {
            Ok((
                r.get(0)?,
                RealSeg {
                    path: dir.join(r.get::<_, String>(1)?),
                    start_ns: r.get(2)?,
                    end_ns: r.get(3)?,
                    bytes: r.get(4)?,
                    frames: r.get(5)?,
                    codec: r.get(6)?,
                    width: r.get(7)?,
                    height: r.get(8)?,
                    params: r.get(9)?,
                    keyframes: Vec::new(),
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    let mut kf =
        db.prepare("SELECT utc_ns, offset FROM keyframe WHERE segment = ?1 ORDER BY offset")?;
    for (id, mut seg) in rows {
        seg.keyframes = kf
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        out.push(seg);
    }
    anyhow::ensure!(
        !out.is_empty(),
        "{} holds no closed segment of {cam}",
        dir.display()
    );
    Ok(out)
}

/// Deterministic noise (xorshift), so two runs build the same ring.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn generate(g: &Gen) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let real = match &g.real {
        Some(d) => real_segments(d)?,
        None => Vec::new(),
    };
    // The synthetic history ends where the real footage starts.
    let end_ns = real
        .first()
        .map(|s| s.start_ns)
        .unwrap_or_else(storeguard_base::now_ns);
    let end_ns = end_ns - end_ns % S;
    let start_ns = end_ns - g.days * 86_400 * S;
    let store = Store::open(&g.dir)?;
    let epoch = store.open_epoch("full-ring-generator", 0, start_ns)?;
    let db_path = store.db_path().to_path_buf();
    drop(store);

    let mut db = Connection::open(&db_path)?;
    // Bulk load: the file is not the product here, its content is.
    db.execute_batch(
        "PRAGMA synchronous=OFF; PRAGMA cache_size=-1000000; PRAGMA foreign_keys=OFF;",
    )?;
    let cams: Vec<String> = (1..=g.cameras).map(|i| format!("cam{i:02}")).collect();
    let mut rng = Rng(0x5347_5244_2026_1201);
    // Per camera the next segment start and the gaps still to come (start, length).
    let mut next: Vec<i64> = vec![start_ns; cams.len()];
    let mut gaps: Vec<Vec<(i64, i64)>> = cams
        .iter()
        .map(|_| {
            let mut v: Vec<(i64, i64)> = (0..g.days * 2)
                .map(|_| {
                    let at = start_ns + rng.below((end_ns - start_ns - 3600 * S) as u64) as i64;
                    (at, (10 + rng.below(600) as i64) * S)
                })
                .collect();
            v.sort();
            v.reverse();
            v
        })
        .collect();
    let (mut segments, mut keyframes, mut gap_rows) = (0u64, 0u64, 0u64);
    let mut files: Vec<String> = Vec::new();
    // One day per transaction, cameras interleaved in time as the syncer writes them.
    let mut day_end = start_ns;
    while day_end < end_ns {
        day_end = (day_end + 86_400 * S).min(end_ns);
        let tx = db.transaction()?;
        {
            let mut seg = tx.prepare_cached(
                "INSERT INTO segment(camera, path, start_ns, end_ns, bytes, frames, codec, width, height, params, time_source, state,
                    clock_epoch, time_synced, time_error_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, 450, 'h264', 1920, 1080, NULL, 'arrival', 1, ?6, 1, 5000000)",
            )?;
            let mut kf = tx.prepare_cached(
                "INSERT INTO keyframe(segment, utc_ns, offset) VALUES (?1, ?2, ?3)",
            )?;
            let mut gap = tx.prepare_cached(
                "INSERT INTO gap(camera, start_ns, end_ns, reason, clock_epoch) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut health = tx.prepare_cached(
                "INSERT INTO health_event(at_ns, kind, camera, detail) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut t = day_end - 86_400 * S;
            while t < day_end {
                t += SEG_NS;
                for (i, cam) in cams.iter().enumerate() {
                    // Up to where the real footage starts, without overlapping it.
                    while next[i] < t.min(day_end) && next[i] + SEG_NS <= end_ns {
                        let s = next[i];
                        if let Some(&(at, len)) = gaps[i].last()
                            && at <= s
                        {
                            gaps[i].pop();
                            let reason = [
                                "stalled: no frames for 10 s",
                                "stream ended: camera closed the connection",
                                "recorder not running",
                            ][rng.below(3) as usize];
                            gap.execute(params![cam, s, s + len, reason, epoch])?;
                            health.execute(params![s, "camera_offline", cam, reason])?;
                            health.execute(params![
                                s + len,
                                "camera_online",
                                cam,
                                "recording again"
                            ])?;
                            gap_rows += 1;
                            next[i] = s + len;
                            continue;
                        }
                        let path = segment_rel_path(cam, s);
                        let jitter = rng.below(2_000_000) as i64;
                        seg.execute(params![cam, path, s, s + SEG_NS, SEG_BYTES - jitter, epoch])?;
                        let id = tx.last_insert_rowid();
                        for k in 0..SEG_NS / GOP_NS {
                            kf.execute(params![id, s + k * GOP_NS, k * 750_000 / 188 * 188])?;
                        }
                        keyframes += (SEG_NS / GOP_NS) as u64;
                        segments += 1;
                        if g.files {
                            files.push(path);
                        }
                        next[i] = s + SEG_NS;
                    }
                }
            }
        }
        tx.commit()?;
        eprintln!(
            "generated to {} ({segments} segments, {:.0} s)",
            storeguard_base::utc_ms(day_end),
            t0.elapsed().as_secs_f64()
        );
    }
    let real_n = add_real(&mut db, &g.dir, &cams, &real, epoch)?;
    let presses = add_evidence(&mut db, &cams, start_ns, end_ns, &mut rng)?;
    let gen_secs = t0.elapsed().as_secs_f64();
    // Empty files: reconciliation checks that they exist, nothing reads them.
    let t1 = Instant::now();
    let mut made_dirs = std::collections::HashSet::new();
    for f in &files {
        let p = g.dir.join(f);
        let parent = p
            .parent()
            .expect("a segment path has a directory")
            .to_path_buf();
        if made_dirs.insert(parent.clone()) {
            std::fs::create_dir_all(&parent)?;
        }
        std::fs::File::create(&p)?;
    }
    let files_secs = t1.elapsed().as_secs_f64();
    let used: i64 = db.query_row("SELECT sum(bytes) FROM segment", [], |r| r.get(0))?;
    drop(db);
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "FIGURE generate_rows segments={segments} keyframes={keyframes} gaps={gap_rows} real_segments={real_n} presses={presses}"
    );
    println!("FIGURE generate_s {gen_secs:.1} s");
    println!(
        "FIGURE generate_files_s {files_secs:.1} s ({} files)",
        files.len()
    );
    println!("FIGURE used_bytes {used} B");
    println!("FIGURE db_bytes {} B", size(db_path.clone()));
    println!(
        "FIGURE wal_bytes_after_generate {} B",
        size(db_path.with_extension("db-wal"))
    );
    Ok(())
}

/// The real footage, hard-linked under every camera's name (eviction of one camera's copy
/// leaves the others).
fn add_real(
    db: &mut Connection,
    dir: &Path,
    cams: &[String],
    real: &[RealSeg],
    epoch: i64,
) -> anyhow::Result<usize> {
    let tx = db.transaction()?;
    for cam in cams {
        for r in real {
            let rel = segment_rel_path(cam, r.start_ns);
            let to = dir.join(&rel);
            std::fs::create_dir_all(to.parent().expect("a segment path has a directory"))?;
            if !to.exists() {
                std::fs::hard_link(&r.path, &to)
                    .or_else(|_| std::fs::copy(&r.path, &to).map(|_| ()))?;
            }
            tx.execute(
                "INSERT INTO segment(camera, path, start_ns, end_ns, bytes, frames, codec, width, height, params, time_source, state,
                    clock_epoch, time_synced, time_error_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'arrival', 1, ?11, 1, 5000000)",
                params![cam, rel, r.start_ns, r.end_ns, r.bytes, r.frames, r.codec, r.width, r.height, r.params, epoch],
            )?;
            let id = tx.last_insert_rowid();
            for (utc, off) in &r.keyframes {
                tx.execute(
                    "INSERT INTO keyframe(segment, utc_ns, offset) VALUES (?1, ?2, ?3)",
                    params![id, utc, off],
                )?;
            }
        }
    }
    tx.commit()?;
    Ok(real.len() * cams.len())
}

/// Presses (20 a day, 4 cameras each) with clips long acknowledged, the last day's still
/// sealed; a few remote holds; telemetry queued while the link was down; audit rows.
fn add_evidence(
    db: &mut Connection,
    cams: &[String],
    start_ns: i64,
    end_ns: i64,
    rng: &mut Rng,
) -> anyhow::Result<usize> {
    let tx = db.transaction()?;
    let n = ((end_ns - start_ns) / (86_400 * S) * 20) as usize;
    for i in 0..n {
        let at = start_ns + rng.below((end_ns - start_ns) as u64) as i64;
        let uid = format!("evt-gen-{i:05}");
        tx.execute(
            "INSERT INTO event(uid, kind, source, at_ns, test, detail, clock_epoch, time_synced, time_error_ns)
             VALUES (?1, 'isb_press', 'till', ?2, 0, '{}', 1, 1, 5000000)",
            params![uid, at],
        )?;
        let ev = tx.last_insert_rowid();
        let recent = end_ns - at < 86_400 * S;
        for c in 0..4 {
            let cam = &cams[(i + c) % cams.len()];
            let state = if recent { "sealed" } else { "acked" };
            tx.execute(
                "INSERT INTO clip(uid, event, camera, from_ns, to_ns, state, path, sha256, bytes, created_ns, sealed_ns, acked_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 20000000, ?5, ?5, ?9)",
                params![
                    format!("{uid}-{cam}"),
                    ev,
                    cam,
                    at - 30 * S,
                    at + 60 * S,
                    state,
                    format!("evidence/x/{uid}-{cam}.mp4"),
                    "0".repeat(64),
                    (!recent).then_some(at + 3600 * S),
                ],
            )?;
        }
    }
    for h in 0..20 {
        let cam = &cams[h % cams.len()];
        let from = start_ns + rng.below((end_ns - start_ns) as u64) as i64;
        tx.execute(
            "INSERT INTO retention_lock(camera, from_ns, to_ns, reason, created_ns, hold_id) VALUES (?1, ?2, ?3, 'hold', ?2, ?4)",
            params![cam, from, from + 600 * S, format!("req-{h}")],
        )?;
    }
    for m in 0..2000 {
        tx.execute(
            "INSERT INTO outbox(class, topic, payload, retain, created_ns) VALUES (3, 'health', ?1, 0, ?2)",
            params![format!("{{\"schema\":\"storeguard.health/v1\",\"n\":{m}}}").into_bytes(), end_ns - 3600 * S + m * S],
        )?;
    }
    for a in 0..500 {
        tx.execute(
            "INSERT INTO audit(at_ns, uid, pid, action, target, detail) VALUES (?1, 1000, 1, 'export', 'cam01', '{}')",
            params![start_ns + a * 3600 * S],
        )?;
    }
    tx.commit()?;
    Ok(n)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn bench(dir: &Path, presses: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    let store = Store::open(dir)?;
    println!("FIGURE open_ms {:.1} ms", ms(t));
    let t = Instant::now();
    let usage = store.camera_usage()?;
    println!(
        "FIGURE camera_usage_ms {:.1} ms (the totals start-up reads)",
        ms(t)
    );
    let cams: Vec<String> = usage.iter().map(|u| u.camera.clone()).collect();
    let newest = usage.iter().filter_map(|u| u.newest_ns).max().unwrap_or(0);
    let cam = cams.first().cloned().unwrap_or_default();

    // The queries on the hot paths, each at the ring's newest end (where presses are).
    let time =
        |name: &str, n: usize, f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<()> {
            let mut v = Vec::new();
            for _ in 0..n {
                let t = Instant::now();
                f()?;
                v.push(ms(t));
            }
            println!(
                "FIGURE {name}_ms {:.3} ms (median of {n})",
                pct(&mut v, 0.5)
            );
            Ok(())
        };
    {
        let t = Instant::now();
        let (report, deferred) = storeguard::recording::reconcile::at_start(&store)?;
        println!(
            "FIGURE reconcile_at_start_ms {:.1} ms ({} day directories left to the scrub, {} repairs at start)",
            ms(t),
            deferred.len(),
            report.changes()
        );
        let t = Instant::now();
        let mut scrub = storeguard::recording::reconcile::Report::default();
        for (camera, dir) in &deferred {
            storeguard::recording::reconcile::reconcile_dir(&store, camera, dir, &mut scrub)?;
        }
        println!(
            "FIGURE scrub_whole_ring_ms {:.0} ms ({} directories, no pauses; {} repairs)",
            ms(t),
            deferred.len(),
            scrub.changes()
        );
    }
    time("usage_by_camera", 3, &mut || {
        let _ = store.usage_by_camera()?;
        Ok(())
    })?;
    time("last_segment_end", 20, &mut || {
        let _ = store.last_segment_end(&cam)?;
        Ok(())
    })?;
    time("segments_between_recent_90s", 20, &mut || {
        let _ = store.segments_between(&cam, newest - 120 * S, newest - 30 * S)?;
        Ok(())
    })?;
    time("footage_time_recent_90s", 20, &mut || {
        let _ = store.footage_time(&cam, newest - 120 * S, newest - 30 * S)?;
        Ok(())
    })?;
    time("gaps_between_recent_90s", 20, &mut || {
        let _ = store.gaps_between(&cam, newest - 120 * S, newest - 30 * S)?;
        Ok(())
    })?;
    time("recent_gaps", 20, &mut || {
        let _ = store.recent_gaps(&cam, 5)?;
        Ok(())
    })?;
    time("evictable", 5, &mut || {
        let _ = store.evictable(&cam, 16)?;
        Ok(())
    })?;
    time("locked_bytes", 5, &mut || {
        let _ = store.locked_bytes()?;
        Ok(())
    })?;
    time("events_since_100", 5, &mut || {
        let _ = store.events_since(0, 100)?;
        Ok(())
    })?;
    time("clips_pending", 5, &mut || {
        let _ = store.clips_in_state("pending")?;
        Ok(())
    })?;

    // One eviction pass that must free 16 segments of every camera.
    let mut tally = Usage::load(&store)?;
    let used = tally.used_bytes();
    let policy = Policy {
        budget: Budget::Bytes(used - cams.len() as u64 * 16 * SEG_BYTES as u64),
        cameras: cams.iter().map(|c| (c.clone(), 1.0, None)).collect(),
        retention_target_days: 31,
    };
    let t = Instant::now();
    let st = ring::enforce_with(&store, &policy, &mut tally)?;
    println!(
        "FIGURE eviction_pass_ms {:.1} ms ({} segments)",
        ms(t),
        st.evicted_segments
    );
    let t = Instant::now();
    let st = ring::enforce_with(&store, &policy, &mut tally)?;
    println!(
        "FIGURE eviction_pass_idle_ms {:.2} ms ({} segments)",
        ms(t),
        st.evicted_segments
    );

    // Presses: what `Incidents::trigger` commits, 4 cameras each.
    let mut lat = Vec::new();
    let alert = vec![b'x'; 600];
    for i in 0..presses {
        let at = newest - 60 * S;
        let uid = format!("evt-bench-{}-{i}", std::process::id());
        let ev = EventRow {
            id: 0,
            uid: uid.clone(),
            kind: "isb_press".into(),
            source: "till".into(),
            at_ns: at,
            test: true,
            detail: serde_json::json!({}),
            time: None,
        };
        let clips: Vec<NewClip> = cams
            .iter()
            .take(4)
            .map(|c| NewClip {
                uid: format!("{uid}-{c}"),
                camera: c.clone(),
                from_ns: at - 30 * S,
                to_ns: at + 60 * S,
            })
            .collect();
        let t = Instant::now();
        store.record_event(
            &ev,
            Some(("alert", &alert)),
            &clips,
            storeguard_base::now_ns(),
        )?;
        lat.push(ms(t));
    }
    let max = lat.iter().cloned().fold(0.0, f64::max);
    println!(
        "FIGURE press_commit_ms p50={:.2} p99={:.2} max={:.2} ms ({presses} presses)",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        max
    );

    // A 90 s clip of the real footage: cut, remux, hash, sign, seal.
    let key = DeviceKey::from_seed([7; 32]);
    let site = Site {
        site_id: "bench".into(),
        device_id: "bench".into(),
        name: String::new(),
    };
    let mut seal = Vec::new();
    for (i, c) in cams.iter().take(4).enumerate() {
        let (from_ns, to_ns) = (newest - 100 * S, newest - 10 * S);
        let uid = format!("clip-bench-{}-{i}", std::process::id());
        let nc = NewClip {
            uid: uid.clone(),
            camera: c.clone(),
            from_ns,
            to_ns,
        };
        let id = store.insert_clip(&nc, None, None, storeguard_base::now_ns())?;
        let t = Instant::now();
        let spec = ClipSpec {
            uid: &uid,
            camera_id: c,
            camera_name: c,
            from_ns,
            to_ns,
            event: clip::event_ref(&uid, EventKind::new(EventKind::ISB_PRESS), true),
        };
        let sealed = clip::cut(&store, &key, &site, &spec)?;
        store.seal_clip(
            id,
            &sealed.rel_path,
            &sealed.manifest.file.sha256,
            sealed.manifest.file.size,
            None,
            storeguard_base::now_ns(),
        )?;
        seal.push(ms(t));
        println!(
            "clip {} {} bytes, {} to {}",
            sealed.rel_path,
            sealed.manifest.file.size,
            sealed.manifest.actual.first_frame,
            sealed.manifest.actual.last_frame
        );
    }
    let max = seal.iter().cloned().fold(0.0, f64::max);
    println!(
        "FIGURE clip_90s_sealed_ms p50={:.0} max={max:.0} ms ({} clips, one after the other)",
        pct(&mut seal, 0.5),
        seal.len()
    );
    let wal = std::fs::metadata(store.db_path().with_extension("db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("FIGURE wal_bytes_after_bench {wal} B");
    // Leaves the ring as it found it but for the evictions, so it can be measured again.
    let db = store.db_path().to_path_buf();
    drop(store);
    let c = Connection::open(db)?;
    c.execute_batch(
        "PRAGMA foreign_keys=ON;
         DELETE FROM retention_lock WHERE reason LIKE 'clip evt-bench-%';
         DELETE FROM clip WHERE uid LIKE 'evt-bench-%' OR uid LIKE 'clip-bench-%';
         DELETE FROM event WHERE uid LIKE 'evt-bench-%';
         DELETE FROM outbox WHERE class IN (0, 1);",
    )?;
    Ok(())
}
