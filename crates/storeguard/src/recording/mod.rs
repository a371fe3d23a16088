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
pub use writer::{Frame, Keyframe, KeyframeTap, SegmentWriter, StreamFormat};

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
}

impl Recorder {
    /// Reconciles the data directory with the index, then starts the syncer thread.
    pub fn start(store: Store, config: &Config) -> anyhow::Result<Recorder> {
        let report = reconcile::run(&store)?;
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
        Ok(Recorder {
            shared,
            thread: Mutex::new(Some(thread)),
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
        if let Some(t) = lock(&self.thread).take() {
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
        for (progress, file) in cp.items {
            match file.sync_data() {
                Ok(()) => segments.push(progress),
                Err(e) => {
                    tracing::error!(camera = %progress.camera, path = %progress.path, error = %e, "fsync failed; not indexing unsynced data");
                    shared.evict_now.store(true, Ordering::Relaxed);
                }
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
