//! Keeps every camera recording: starts pipelines, notices failures and stalls, retries
//! with backoff and jitter, and opens/closes gaps in the index. One thread polls all
//! cameras every 100 ms; nothing here waits on a camera.

use super::pipeline::mono_ns;
use super::{CameraSource, SourceEvent};
use crate::config::{Camera, Config, mask_url};
use crate::recording::{Recorder, SharedWriter, lock};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use storeguard_base::now_ns;

const TICK: Duration = Duration::from_millis(100);
/// Reconnects stay fast for this long, so a camera back from a short outage records
/// again within 2 s; after that we back off further to spare the network. The 2 s are
/// this cap (+20 % jitter), the RTSP handshake and the wait for the first keyframe, so
/// the cap must stay well under 2 s: 1.5 s measured up to 1.8 s of waiting alone.
const FAST_RETRY_WINDOW: Duration = Duration::from_secs(300);
const FAST_RETRY_CAP: Duration = Duration::from_millis(1000);

pub type SourceFactory = Box<dyn Fn(&Camera, SharedWriter) -> Box<dyn CameraSource> + Send>;

#[derive(Debug, Clone, Serialize, Default)]
pub struct CameraHealth {
    pub id: String,
    pub name: String,
    pub url: String,
    pub state: &'static str,
    /// `retina` or `gstreamer`.
    pub ingest: &'static str,
    pub codec: Option<&'static str>,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub bitrate_kbps: f64,
    pub last_frame_age_s: Option<f64>,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub offline_since_ns: Option<i64>,
    pub clock_steps: u64,
    pub frames: u64,
    /// Frames the ingest dropped rather than record them broken (packet loss).
    pub frames_dropped: u64,
    pub write_errors: u64,
    /// The camera's own clock (RTCP sender reports) minus the box clock, in ms; None
    /// until a sender report came.
    pub clock_offset_ms: Option<i64>,
    /// The offset is beyond `health.camera_clock_tolerance` (health event raised).
    pub clock_off: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Pipeline started, no frame yet.
    Starting,
    Recording,
    Retrying,
    Disabled,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Starting => "connecting",
            Phase::Recording => "recording",
            Phase::Retrying => "offline",
            Phase::Disabled => "disabled",
        }
    }
}

struct Slot {
    cfg: Camera,
    src: Box<dyn CameraSource>,
    writer: SharedWriter,
    phase: Phase,
    started_at: Instant,
    attempt: u32,
    next_attempt: Instant,
    reconnects: u64,
    /// Frames dropped by earlier connections (each start counts afresh).
    dropped_before: u64,
    last_error: Option<String>,
    offline_since: Option<(Instant, i64)>,
    offline_reported: bool,
    /// A `camera_clock_off` health event is standing.
    clock_off: bool,
    /// A `recording_write_failed` health event is standing.
    write_fault_reported: bool,
    rate_at: Instant,
    rate_frames: u64,
    rate_bytes: u64,
    fps: f64,
    kbps: f64,
}

#[derive(Debug, Clone)]
struct Timing {
    stall: Duration,
    offline_alert: Duration,
    max_backoff: Duration,
    segment_len: Duration,
    camera_clock_tolerance: Duration,
}

impl Timing {
    fn from(c: &Config) -> Timing {
        Timing {
            stall: c.health.stall_timeout.0,
            offline_alert: c.health.offline_alert_after.0,
            max_backoff: c.health.max_reconnect_backoff.0,
            segment_len: c.storage.segment_length.0,
            camera_clock_tolerance: c.health.camera_clock_tolerance.0,
        }
    }
}

enum Cmd {
    Apply(Vec<Camera>, Timing),
    Restart(String),
    Shutdown,
}

pub struct Supervisor {
    tx: mpsc::Sender<Cmd>,
    health: Arc<Mutex<Vec<CameraHealth>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Supervisor {
    pub fn start(recorder: Arc<Recorder>, config: &Config, factory: SourceFactory) -> Supervisor {
        let (tx, rx) = mpsc::channel();
        let health = Arc::new(Mutex::new(Vec::new()));
        let h = health.clone();
        let _ = tx.send(Cmd::Apply(config.cameras.clone(), Timing::from(config)));
        let thread = std::thread::Builder::new()
            .name("sg-cameras".into())
            .spawn(move || run(rx, recorder, factory, h))
            .expect("spawn camera supervisor");
        Supervisor {
            tx,
            health,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Applies a new camera list: only added, removed or changed cameras are touched.
    pub fn apply(&self, config: &Config) {
        let _ = self
            .tx
            .send(Cmd::Apply(config.cameras.clone(), Timing::from(config)));
    }

    /// Reconnects one camera's stream now (its recording shows a gap with the reason).
    pub fn restart(&self, id: &str) {
        let _ = self.tx.send(Cmd::Restart(id.to_string()));
    }

    pub fn health(&self) -> Vec<CameraHealth> {
        lock(&self.health).clone()
    }

    pub fn is_alive(&self) -> bool {
        lock(&self.thread)
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Stops every pipeline; the recorder then closes the segments.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Cmd::Shutdown);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

fn run(
    rx: mpsc::Receiver<Cmd>,
    recorder: Arc<Recorder>,
    factory: SourceFactory,
    health: Arc<Mutex<Vec<CameraHealth>>>,
) {
    let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
    let mut timing: Option<Timing> = None;
    let mut rng = mono_ns() | 1;
    loop {
        match rx.recv_timeout(TICK) {
            Ok(Cmd::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Cmd::Apply(cams, t)) => {
                apply(&mut slots, cams, &t, &recorder, &factory);
                timing = Some(t);
            }
            Ok(Cmd::Restart(id)) => {
                if let Some(slot) = slots.get_mut(&id).filter(|s| s.phase != Phase::Disabled) {
                    slot.src.stop();
                    lock(&slot.writer).mark_down("restarted on request", now_ns());
                    tracing::info!(camera = %id, "camera stream restarted on request");
                    start(slot);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let Some(t) = &timing else { continue };
        for slot in slots.values_mut() {
            tick(slot, t, &recorder, &mut rng);
        }
        *lock(&health) = slots.values().map(snapshot).collect();
    }
    for slot in slots.values_mut() {
        slot.src.stop();
    }
}

fn apply(
    slots: &mut BTreeMap<String, Slot>,
    cams: Vec<Camera>,
    t: &Timing,
    recorder: &Arc<Recorder>,
    factory: &SourceFactory,
) {
    let wanted: Vec<&str> = cams.iter().map(|c| c.id.as_str()).collect();
    let removed: Vec<String> = slots
        .keys()
        .filter(|k| !wanted.contains(&k.as_str()))
        .cloned()
        .collect();
    for id in removed {
        if let Some(mut s) = slots.remove(&id) {
            s.src.stop();
            recorder.remove(&id);
            tracing::info!(camera = %id, "camera removed; recording stopped");
        }
    }
    for cam in cams {
        let same = slots
            .get(&cam.id)
            .is_some_and(|s| same_camera(&s.cfg, &cam));
        if same {
            continue;
        }
        let writer = match recorder.writer(&cam.id, t.segment_len) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(camera = %cam.id, "cannot set up recording: {e:#}");
                continue;
            }
        };
        if let Some(mut old) = slots.remove(&cam.id) {
            old.src.stop();
            lock(&writer).mark_down("camera settings changed", now_ns());
            tracing::info!(camera = %cam.id, "camera settings changed; restarting its stream only");
        }
        let now = Instant::now();
        let mut slot = Slot {
            src: factory(&cam, writer.clone()),
            writer,
            phase: if cam.enabled {
                Phase::Retrying
            } else {
                Phase::Disabled
            },
            started_at: now,
            attempt: 0,
            next_attempt: now,
            reconnects: 0,
            dropped_before: 0,
            last_error: None,
            offline_since: None,
            offline_reported: false,
            clock_off: false,
            write_fault_reported: false,
            rate_at: now,
            rate_frames: 0,
            rate_bytes: 0,
            fps: 0.0,
            kbps: 0.0,
            cfg: cam,
        };
        if slot.phase == Phase::Retrying {
            start(&mut slot);
        }
        slots.insert(slot.cfg.id.clone(), slot);
    }
}

/// Changes that need a new stream; weight/min_days only affect the ring.
fn same_camera(a: &Camera, b: &Camera) -> bool {
    a.url == b.url
        && a.username == b.username
        && a.password == b.password
        && a.transport == b.transport
        && a.ingest == b.ingest
        && a.enabled == b.enabled
        && a.sub_url == b.sub_url
}

fn start(slot: &mut Slot) {
    slot.started_at = Instant::now();
    slot.dropped_before += slot.src.live().dropped.load(Ordering::Relaxed);
    match slot.src.start() {
        Ok(()) => slot.phase = Phase::Starting,
        Err(e) => fail(slot, e, None),
    }
}

fn tick(slot: &mut Slot, t: &Timing, recorder: &Recorder, rng: &mut u64) {
    if slot.phase == Phase::Disabled {
        return;
    }
    for ev in slot.src.poll() {
        match ev {
            SourceEvent::Failed(msg) => fail(slot, msg, Some((t, &mut *rng))),
        }
    }
    let live = slot.src.live().clone();
    let frames = live.frames.load(Ordering::Relaxed);
    match slot.phase {
        Phase::Starting if frames > 0 => {
            slot.phase = Phase::Recording;
            slot.attempt = 0;
            if let Some((since, _)) = slot.offline_since.take() {
                tracing::info!(camera = %slot.cfg.id, offline_s = since.elapsed().as_secs_f64(), "camera back; recording");
                if slot.offline_reported {
                    let _ = recorder.store().health_event(
                        now_ns(),
                        "camera_online",
                        Some(&slot.cfg.id),
                        "camera recording again",
                    );
                }
            } else {
                tracing::info!(camera = %slot.cfg.id, "recording");
            }
            slot.offline_reported = false;
            slot.last_error = None;
        }
        Phase::Starting if slot.started_at.elapsed() > t.stall => {
            let msg = format!("connected but no video for {} s", t.stall.as_secs());
            fail(slot, msg, Some((t, rng)));
        }
        Phase::Recording => {
            let age = Duration::from_nanos(
                mono_ns().saturating_sub(live.last_frame_mono.load(Ordering::Relaxed)),
            );
            if age > t.stall {
                let msg = format!("stalled: no frames for {} s", age.as_secs());
                fail(slot, msg, Some((t, rng)));
            }
        }
        Phase::Retrying if Instant::now() >= slot.next_attempt => {
            slot.reconnects += 1;
            start(slot);
        }
        _ => {}
    }
    if let Some((since, _)) = slot.offline_since
        && !slot.offline_reported
        && since.elapsed() > t.offline_alert
    {
        slot.offline_reported = true;
        let detail = format!(
            "offline for {} s: {}",
            since.elapsed().as_secs(),
            slot.last_error.as_deref().unwrap_or("unknown reason")
        );
        tracing::error!(camera = %slot.cfg.id, "{detail}");
        let _ =
            recorder
                .store()
                .health_event(now_ns(), "camera_offline", Some(&slot.cfg.id), &detail);
    }
    check_camera_clock(slot, &live, t, recorder);
    check_write_fault(slot, recorder);
    let dt = slot.rate_at.elapsed();
    if dt >= Duration::from_secs(2) {
        let bytes = live.bytes.load(Ordering::Relaxed);
        slot.fps = frames.saturating_sub(slot.rate_frames) as f64 / dt.as_secs_f64();
        slot.kbps = bytes.saturating_sub(slot.rate_bytes) as f64 * 8.0 / 1000.0 / dt.as_secs_f64();
        slot.rate_frames = frames;
        slot.rate_bytes = bytes;
        slot.rate_at = Instant::now();
    }
}

/// A camera whose own clock, which is also the time burnt into its picture, is off the
/// synchronised box clock by more than the tolerance raises `camera_clock_off` (and
/// `camera_clock_ok` once within three quarters of it again). Against an unsynchronised
/// box clock nothing can be said about the camera's.
fn check_camera_clock(slot: &mut Slot, live: &super::Live, t: &Timing, recorder: &Recorder) {
    let Some(off) = live.camera_offset() else {
        return;
    };
    if !storeguard_base::clock::box_clock().synced {
        return;
    }
    let tol = t.camera_clock_tolerance.as_nanos() as i64;
    let ms = off / 1_000_000;
    if !slot.clock_off && off.abs() > tol {
        slot.clock_off = true;
        let detail = format!(
            "camera clock is {:+.3} s off the box clock (tolerance {} ms): the time in its picture disagrees with the recording; set the camera's NTP server",
            off as f64 / 1e9,
            tol / 1_000_000
        );
        tracing::warn!(camera = %slot.cfg.id, offset_ms = ms, "{detail}");
        let _ = recorder.store().health_event(
            now_ns(),
            "camera_clock_off",
            Some(&slot.cfg.id),
            &detail,
        );
    } else if slot.clock_off && off.abs() < tol * 3 / 4 {
        slot.clock_off = false;
        let detail = format!("camera clock is within {ms} ms of the box clock again");
        tracing::info!(camera = %slot.cfg.id, offset_ms = ms, "{detail}");
        let _ =
            recorder
                .store()
                .health_event(now_ns(), "camera_clock_ok", Some(&slot.cfg.id), &detail);
    }
}

/// A recording that cannot be written raises `recording_write_failed` (and
/// `recording_write_ok` once it is durable again). While the database cannot commit the
/// event either, it is tried again every tick.
fn check_write_fault(slot: &mut Slot, recorder: &Recorder) {
    let fault = lock(&slot.writer).fault().cloned();
    let id = &slot.cfg.id;
    match (fault, slot.write_fault_reported) {
        (Some(f), false) => {
            let detail = format!("recording cannot be written: {}", f.error);
            if recorder
                .store()
                .health_event(now_ns(), "recording_write_failed", Some(id), &detail)
                .is_ok()
            {
                tracing::error!(camera = %id, "{detail}");
                slot.write_fault_reported = true;
            }
        }
        (None, true) => {
            let detail = "recording is written and durable again";
            if recorder
                .store()
                .health_event(now_ns(), "recording_write_ok", Some(id), detail)
                .is_ok()
            {
                tracing::info!(camera = %id, "{detail}");
                slot.write_fault_reported = false;
            }
        }
        _ => {}
    }
}

fn fail(slot: &mut Slot, msg: String, t: Option<(&Timing, &mut u64)>) {
    slot.src.stop();
    let now = now_ns();
    lock(&slot.writer).mark_down(&msg, now);
    let first = slot.offline_since.is_none();
    let since = *slot.offline_since.get_or_insert((Instant::now(), now));
    let cap = match t {
        Some((t, _)) if since.0.elapsed() > FAST_RETRY_WINDOW => t.max_backoff,
        Some((t, _)) => t.max_backoff.min(FAST_RETRY_CAP),
        None => FAST_RETRY_CAP,
    };
    let delay = backoff(slot.attempt, cap, t.map(|x| x.1));
    slot.attempt = slot.attempt.saturating_add(1);
    slot.next_attempt = Instant::now() + delay;
    slot.phase = Phase::Retrying;
    slot.fps = 0.0;
    slot.kbps = 0.0;
    if first || slot.last_error.as_deref() != Some(&msg) {
        tracing::warn!(camera = %slot.cfg.id, url = %mask_url(&slot.cfg.url), retry_in_ms = delay.as_millis() as u64, "{msg}");
    }
    slot.last_error = Some(msg);
}

/// 250 ms × 1.6^attempt, capped, ±20 % jitter so cameras behind one switch that
/// dropped together don't reconnect in lockstep.
pub fn backoff(attempt: u32, cap: Duration, rng: Option<&mut u64>) -> Duration {
    let base = 250.0 * 1.6f64.powi(attempt.min(30) as i32);
    let ms = base.min(cap.as_millis() as f64);
    let jitter = match rng {
        Some(r) => {
            *r ^= *r << 13;
            *r ^= *r >> 7;
            *r ^= *r << 17;
            0.8 + 0.4 * ((*r % 10_000) as f64 / 10_000.0)
        }
        None => 1.0,
    };
    Duration::from_millis((ms * jitter) as u64)
}

fn snapshot(s: &Slot) -> CameraHealth {
    let live = s.src.live();
    let last = live.last_frame_mono.load(Ordering::Relaxed);
    let fmt = *lock(&live.format);
    let w = lock(&s.writer);
    let fault = w.fault().filter(|_| s.phase == Phase::Recording);
    CameraHealth {
        id: s.cfg.id.clone(),
        name: s.cfg.name.clone(),
        url: mask_url(&s.cfg.url),
        // Frames arrive but don't reach the disk: not recording, whatever the stream does.
        state: if fault.is_some() {
            "write-error"
        } else {
            s.phase.name()
        },
        ingest: s.cfg.ingest.name(),
        codec: fmt.map(|f| crate::recording::writer::codec_name(f.codec)),
        width: fmt.map(|f| f.width).unwrap_or(0),
        height: fmt.map(|f| f.height).unwrap_or(0),
        fps: (s.fps * 10.0).round() / 10.0,
        bitrate_kbps: s.kbps.round(),
        last_frame_age_s: (last > 0).then(|| (mono_ns().saturating_sub(last)) as f64 / 1e9),
        reconnects: s.reconnects,
        last_error: fault
            .map(|f| f.error.clone())
            .or_else(|| s.last_error.clone()),
        offline_since_ns: s.offline_since.map(|o| o.1),
        clock_steps: live.clock_steps.load(Ordering::Relaxed),
        frames: w.stats.frames,
        frames_dropped: live.dropped.load(Ordering::Relaxed) + s.dropped_before,
        write_errors: w.stats.write_errors,
        clock_offset_ms: live.camera_offset().map(|o| o / 1_000_000),
        clock_off: s.clock_off,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_cap_with_jitter() {
        let cap = FAST_RETRY_CAP;
        assert_eq!(backoff(0, cap, None), Duration::from_millis(250));
        assert_eq!(backoff(10, cap, None), cap);
        let mut r = 12345u64;
        for a in 0..20 {
            let d = backoff(a, cap, Some(&mut r));
            assert!(
                d <= cap.mul_f64(1.2) && d >= Duration::from_millis(200),
                "{d:?}"
            );
        }
    }
}
