//! Continuous recording into the ring buffer.
//!
//! Camera pipelines push access units into one `SegmentWriter` per camera. A single
//! syncer thread makes them durable every `sync_interval`: fsync the files, then commit
//! the index rows for all cameras in one transaction (data before index, one WAL sync
//! per round). The same thread enforces the disk budget (`ring`). See
//! docs/recording.md for the time model and the crash-safety argument.

pub mod reconcile;
pub mod ring;
pub mod scan;
pub mod ts;
pub mod writer;

use crate::config::Config;
use crate::store::Store;
use crate::store::recording::{GapChange, SegmentProgress};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use storeguard_base::now_ns;
pub use writer::{DiskFault, Frame, Keyframe, KeyframeTap, SegmentWriter, StreamFormat};

pub type SharedWriter = Arc<Mutex<SegmentWriter>>;

/// Rows kept for a retry after failed commits; a day of 24 cameras at 1 s rounds is far
/// more than a disk-full episode lasts.
const MAX_UNCOMMITTED: usize = 100_000;

struct Shared {
    store: Store,
    writers: Mutex<HashMap<String, SharedWriter>>,
    policy: Mutex<ring::Policy>,
    sync_interval: Mutex<Duration>,
    stop: AtomicBool,
    /// Set by a writer that hit a write error (disk full): evict now, not at the next round.
    evict_now: AtomicBool,
    status: Mutex<ring::RingStatus>,
    /// Index rows whose commit failed (disk full): committed again with the next round,
    /// or their segments would never be evicted and their gaps never shown.
    uncommitted: Mutex<(Vec<SegmentProgress>, Vec<GapChange>)>,
    /// The ring's totals. Its lock also serialises sync rounds and eviction passes, so
    /// rows reach the index (and the totals) in the order they were written.
    usage: Mutex<ring::Usage>,
    /// Given to every writer, present and future.
    tap: Mutex<Option<KeyframeTap>>,
}

pub struct Recorder {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    scrub: Mutex<Option<JoinHandle<()>>>,
}

impl Recorder {
    /// Reconciles the data directory with the index, then starts the syncer thread.
    pub fn start(store: Store, config: &Config) -> anyhow::Result<Recorder> {
        let (report, deferred) = reconcile::at_start(&store)?;
        if !report.is_clean() {
            tracing::warn!(
                ?report,
                "reconciled recordings with the index after an unclean stop"
            );
        }
        let usage = ring::Usage::load(&store)?;
        let shared = Arc::new(Shared {
            usage: Mutex::new(usage),
            store,
            writers: Mutex::new(HashMap::new()),
            policy: Mutex::new(ring::Policy::from_config(config)),
            sync_interval: Mutex::new(config.storage.sync_interval.0),
            stop: AtomicBool::new(false),
            evict_now: AtomicBool::new(true),
            status: Mutex::new(ring::RingStatus::default()),
            uncommitted: Mutex::new((Vec::new(), Vec::new())),
            tap: Mutex::new(None),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sg-syncer".into())
            .spawn(move || syncer(s))?;
        let s = shared.clone();
        let scrub = std::thread::Builder::new()
            .name("sg-scrub".into())
            .spawn(move || scrub(s, deferred))?;
        Ok(Recorder {
            shared,
            thread: Mutex::new(Some(thread)),
            scrub: Mutex::new(Some(scrub)),
        })
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The writer for a camera, created on first use.
    pub fn writer(&self, camera: &str, segment_len: Duration) -> anyhow::Result<SharedWriter> {
        let mut w = lock(&self.shared.writers);
        if let Some(x) = w.get(camera) {
            lock(x).set_segment_len(segment_len.as_nanos() as i64);
            return Ok(x.clone());
        }
        let last = self.shared.store.last_segment_end(camera)?;
        let dir = self.shared.store.data_dir().to_path_buf();
        let mut writer = SegmentWriter::new(camera, &dir, segment_len.as_nanos() as i64, last);
        writer.set_tap(lock(&self.shared.tap).clone());
        let x = Arc::new(Mutex::new(writer));
        w.insert(camera.to_string(), x.clone());
        Ok(x)
    }

    /// Hands every camera's keyframes, as written, to `tap` (None: to nobody).
    pub fn set_keyframe_tap(&self, tap: Option<KeyframeTap>) {
        *lock(&self.shared.tap) = tap.clone();
        for w in lock(&self.shared.writers).values() {
            lock(w).set_tap(tap.clone());
        }
    }

    /// Stops recording a camera: its open segment is closed and made durable.
    pub fn remove(&self, camera: &str) {
        if let Some(w) = lock(&self.shared.writers).remove(camera) {
            lock(&w).finish_all();
            sync_round(&self.shared, &[w]);
        }
    }

    pub fn reconfigure(&self, config: &Config) {
        *lock(&self.shared.policy) = ring::Policy::from_config(config);
        *lock(&self.shared.sync_interval) = config.storage.sync_interval.0;
        self.shared.evict_now.store(true, Ordering::Relaxed);
    }

    /// UTC up to which a camera's frames have been written (not necessarily synced).
    pub fn written_until(&self, camera: &str) -> Option<i64> {
        let w = lock(&self.shared.writers).get(camera).cloned()?;
        lock(&w).written_until()
    }

    /// Makes one camera's recording durable and indexed now, instead of at the next
    /// round: an evidence clip shouldn't wait up to a sync interval.
    pub fn sync_now(&self, camera: &str) {
        if let Some(w) = lock(&self.shared.writers).get(camera).cloned() {
            sync_round(&self.shared, &[w]);
        }
    }

    /// Asks for an eviction pass at once (after a write error such as a full disk).
    pub fn evict_soon(&self) {
        self.shared.evict_now.store(true, Ordering::Relaxed);
    }

    pub fn ring_status(&self) -> ring::RingStatus {
        lock(&self.shared.status).clone()
    }

    /// Closes every segment, makes it durable and stops the syncer.
    pub fn shutdown(&self) {
        let writers: Vec<SharedWriter> = lock(&self.shared.writers).values().cloned().collect();
        for w in &writers {
            lock(w).finish_all();
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in [lock(&self.thread).take(), lock(&self.scrub).take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
        sync_round(&self.shared, &writers);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often the in-memory totals are re-read from the index, in case they drifted.
const USAGE_RELOAD: Duration = Duration::from_secs(600);
/// Evictions are logged as a summary at most this often.
const EVICTION_LOG_EVERY: Duration = Duration::from_secs(60);

/// Every round: sync and index, then an eviction pass. With the totals in memory a pass
/// that evicts nothing costs about a millisecond, and evicting right away keeps usage
/// within one sync interval of writing over the budget.
fn syncer(shared: Arc<Shared>) {
    let mut last_reload = Instant::now();
    let mut last_log = Instant::now();
    let (mut evicted, mut evicted_bytes) = (0u64, 0u64);
    let mut totals = (0u64, 0u64);
    let mut warned: HashMap<String, Instant> = HashMap::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let interval = *lock(&shared.sync_interval);
        let started = Instant::now();
        let writers: Vec<SharedWriter> = lock(&shared.writers).values().cloned().collect();
        sync_round(&shared, &writers);
        shared.evict_now.store(false, Ordering::Relaxed);
        let policy = lock(&shared.policy).clone();
        let mut usage = lock(&shared.usage);
        if last_reload.elapsed() >= USAGE_RELOAD {
            if let Err(e) = usage.reload(&shared.store) {
                tracing::error!("reading the ring's usage failed: {e:#}");
            }
            last_reload = Instant::now();
        }
        match ring::enforce_with(&shared.store, &policy, &mut usage) {
            Ok(mut st) => {
                report_shortfalls(
                    &shared.store,
                    &st,
                    policy.retention_target_days,
                    &mut warned,
                );
                evicted += st.evicted_segments;
                evicted_bytes += st.evicted_bytes;
                totals.0 += st.evicted_segments;
                totals.1 += st.evicted_bytes;
                // The status reports evictions since start, not of the last pass.
                (st.evicted_segments, st.evicted_bytes) = totals;
                *lock(&shared.status) = st;
            }
            Err(e) => {
                tracing::error!("ring buffer eviction failed: {e:#}");
                // What it deleted before failing is not in the totals: re-read them.
                if let Err(e) = usage.reload(&shared.store) {
                    tracing::error!("reading the ring's usage failed: {e:#}");
                }
            }
        }
        drop(usage);
        if evicted > 0 && last_log.elapsed() >= EVICTION_LOG_EVERY {
            tracing::info!(
                segments = evicted,
                bytes = evicted_bytes,
                seconds = last_log.elapsed().as_secs(),
                "evicted oldest recordings to stay within the disk budget"
            );
            (evicted, evicted_bytes) = (0, 0);
            last_log = Instant::now();
        }
        // Sleep in short steps so shutdown (or a write error asking for room) isn't held
        // up by a long interval.
        while started.elapsed() < interval
            && !shared.stop.load(Ordering::Relaxed)
            && !shared.evict_now.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(20).min(interval));
        }
    }
}

/// Pause between two directories of the scrub: a day of one camera is one `read_dir`
/// and one index range, so a full 31-day ring of 24 cameras (672 directories) took 45 s
/// from a cold cache, 12 s of it work.
const SCRUB_PAUSE: Duration = Duration::from_millis(50);

/// The rest of start-up reconciliation, after recording has resumed: the day directories
/// between each camera's two ends, oldest first. Each holds the ring's lock (no sync
/// round or eviction meanwhile) and keeps the totals matching what it changed.
fn scrub(shared: Arc<Shared>, dirs: Vec<(String, std::path::PathBuf)>) {
    if dirs.is_empty() {
        return;
    }
    let started = Instant::now();
    let mut report = reconcile::Report::default();
    let n = dirs.len();
    for (camera, dir) in dirs {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        // Listed once outside the lock, so the listing under it comes from the cache.
        let _ = std::fs::read_dir(&dir).map(|d| d.count());
        {
            let mut usage = lock(&shared.usage);
            let before = report.changes();
            if let Err(e) = reconcile::reconcile_dir(&shared.store, &camera, &dir, &mut report) {
                tracing::error!(camera = %camera, dir = %dir.display(), "checking recordings against the index failed: {e:#}");
            }
            if report.changes() != before
                && let Err(e) = usage.reload(&shared.store)
            {
                tracing::error!("reading the ring's usage failed: {e:#}");
            }
        }
        let paused = Instant::now();
        while paused.elapsed() < SCRUB_PAUSE && !shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if report.is_clean() {
        tracing::info!(
            directories = n,
            secs,
            "recordings checked against the index"
        );
    } else {
        tracing::warn!(
            directories = n,
            secs,
            ?report,
            "recordings checked against the index: repaired"
        );
    }
}

/// A camera whose share of the disk can't hold the retention target at its bitrate
/// raises a health event, at most once a day per camera.
fn report_shortfalls(
    store: &Store,
    st: &ring::RingStatus,
    target_days: u32,
    warned: &mut HashMap<String, Instant>,
) {
    for (cam, days) in ring::retention_shortfalls(st, target_days) {
        if warned
            .get(&cam)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(86_400))
        {
            continue;
        }
        warned.insert(cam.clone(), Instant::now());
        let detail = format!(
            "at its current bitrate {cam}'s share of the disk holds about {days:.1} days; the target is {target_days}"
        );
        tracing::warn!(camera = %cam, "{detail}");
        let _ = store.health_event(now_ns(), "retention_target_unmet", Some(&cam), &detail);
    }
}

/// One durability round: flush each writer (briefly holding its lock), fsync the files
/// without holding any writer's lock, then index what was synced. Rounds run one at a
/// time (the usage lock), so a clip's `sync_now` waits for a running round.
fn sync_round(shared: &Shared, writers: &[SharedWriter]) {
    let mut usage = lock(&shared.usage);
    // Rows a failed round left behind (disk full) are committed first, before the writers
    // take whatever space eviction has just freed: without them in the index those
    // segments could never be evicted.
    let pending = std::mem::take(&mut *lock(&shared.uncommitted));
    let retry_ok =
        (pending.0.is_empty() && pending.1.is_empty()) || commit(shared, &mut usage, &pending);
    let (mut segments, mut gaps) = if retry_ok {
        (Vec::new(), Vec::new())
    } else {
        pending
    };
    // Every writer is checkpointed before any file is fsynced, and the files are fsynced
    // side by side: one after another, a slow disk (or a loaded box) made a round of 24
    // cameras outlast the loss bound.
    let mut items: Vec<(&SharedWriter, SegmentProgress, std::fs::File)> = Vec::new();
    for w in writers {
        let cp = {
            let mut w = lock(w);
            let errors = w.stats.write_errors;
            let cp = w.checkpoint();
            if w.stats.write_errors != errors {
                // A full disk: make room now rather than at the next eviction round.
                shared.evict_now.store(true, Ordering::Relaxed);
            }
            cp
        };
        gaps.extend(cp.gaps);
        segments.extend(cp.rows);
        items.extend(cp.items.into_iter().map(|(p, f)| (w, p, f)));
    }
    let files: Vec<&std::fs::File> = items.iter().map(|i| &i.2).collect();
    let synced = sync_files(&files);
    drop(files);
    for ((w, progress, _file), r) in items.into_iter().zip(synced) {
        match r {
            Ok(()) => {
                lock(w).synced(&progress);
                segments.push(progress)
            }
            Err(e) => {
                tracing::error!(camera = %progress.camera, path = %progress.path, error = %e, "fsync failed; not indexing unsynced data");
                // The segment ends at its last durable point; the rest is a gap.
                lock(w).sync_failed(&progress, &e);
                shared.evict_now.store(true, Ordering::Relaxed);
            }
        }
    }
    if segments.is_empty() && gaps.is_empty() {
        return;
    }
    // A new file's directory entry must survive a power cut too. A file's first
    // checkpoint is the one carrying its offset-0 keyframe.
    let mut dirs: Vec<std::path::PathBuf> = segments
        .iter()
        .filter(|s| s.new_keyframes.first().is_some_and(|k| k.1 == 0))
        .filter_map(|s| {
            shared
                .store
                .data_dir()
                .join(&s.path)
                .parent()
                .map(|p| p.to_path_buf())
        })
        .collect();
    dirs.dedup();
    for d in dirs {
        let _ = crate::store::sync_dir(&d);
    }
    // Behind rows that failed, these must wait too: a gap's close can't precede its open.
    let batch = (segments, gaps);
    if !retry_ok || !commit(shared, &mut usage, &batch) {
        let n = batch.0.len() + batch.1.len();
        if n > MAX_UNCOMMITTED {
            tracing::error!(
                "index rows pending for too long; dropping {n} (start-up reconciliation indexes their files again)"
            );
            return;
        }
        *lock(&shared.uncommitted) = batch;
    }
}

/// At most this many fsyncs run at once in a round.
const SYNC_THREADS: usize = 8;

/// `sync_data` on every file, up to `SYNC_THREADS` at a time; results in input order. The
/// calling thread takes part, so a round still completes if no thread can be spawned.
fn sync_files(files: &[&std::fs::File]) -> Vec<std::io::Result<()>> {
    if files.len() <= 1 {
        return files.iter().map(|f| f.sync_data()).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Mutex<Option<std::io::Result<()>>>> =
        files.iter().map(|_| Mutex::new(None)).collect();
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(f) = files.get(i) else { break };
            *lock(&results[i]) = Some(f.sync_data());
        }
    };
    std::thread::scope(|s| {
        for _ in 1..SYNC_THREADS.min(files.len()) {
            let spawned = std::thread::Builder::new()
                .name("sg-fsync".into())
                .spawn_scoped(s, work);
            if spawned.is_err() {
                break;
            }
        }
        work();
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Err(std::io::Error::other("fsync not run")))
        })
        .collect()
}

fn commit(
    shared: &Shared,
    usage: &mut ring::Usage,
    rows: &(Vec<SegmentProgress>, Vec<GapChange>),
) -> bool {
    match shared.store.commit_sync(&rows.0, &rows.1) {
        Ok(()) => {
            usage.committed(&rows.0);
            true
        }
        Err(e) => {
            tracing::error!(
                segments = rows.0.len(),
                gaps = rows.1.len(),
                "indexing recorded segments failed, retrying with the next round: {e}"
            );
            shared.evict_now.store(true, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sync_files;

    #[test]
    fn sync_files_answers_for_every_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<std::fs::File> = (0..20)
            .map(|i| std::fs::File::create(dir.path().join(format!("f{i}"))).unwrap())
            .collect();
        let refs: Vec<&std::fs::File> = files.iter().collect();
        for n in [0, 1, 2, 20] {
            let r = sync_files(&refs[..n]);
            assert_eq!(r.len(), n);
            assert!(r.iter().all(|r| r.is_ok()));
        }
    }
}
