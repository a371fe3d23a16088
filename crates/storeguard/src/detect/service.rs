//! Detection in the daemon: pictures in (keyframes from the recording path, or a sub
//! stream), events, best shots and tamper alarms out.
//!
//! Two threads. The pipeline thread decodes the latest picture of each camera (one slot
//! per camera: a newer picture replaces one not yet taken, counted as dropped), runs
//! tamper and motion on a small grey frame, plans crops, and hands them to the fair
//! scheduler; it also tracks, applies the rules and keeps best shots. The inference thread
//! takes batches across cameras and runs the one detector. The recording only ever copies
//! a keyframe into a slot, so it never waits on any of this.
//!
//! The inference thread is supervised from the pipeline thread: one that errs, panics or
//! runs a batch longer than `hang_timeout` is replaced by a new one with a fresh session
//! (a hung one is abandoned; its late result is discarded), and each restart is a health
//! event.

use super::decode::{KeyframeDecoder, Picture, SubStream};
use super::detector::{DetectError, Detector, Item, OrtDetector};
use super::picture;
use crate::config::detect::Detect;
use crate::config::{Camera, Config};
use crate::recording::ts::VideoCodec;
use crate::recording::{Keyframe, KeyframeTap};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use storeguard_base::clock::monotonic_ns;
use storeguard_base::now_ns;
use storeguard_detect::model::{self, INPUT_SIZE, PERSON};
use storeguard_detect::motion::{CropPlan, Gate, MotionConfig, MotionDetector, Plan};
use storeguard_detect::rules::{RuleEvent, Rules};
use storeguard_detect::sched::Scheduler;
use storeguard_detect::schedule::Schedule;
use storeguard_detect::tamper::{TamperConfig, TamperDetector, TamperKind};
use storeguard_detect::track::{self, Sighting, TrackEvent, Tracker, TrackerConfig};
use storeguard_detect::{Luma, Rect, quality};

/// Best shots of tracks that ended are kept this long, for the today image of a press.
const KEEP_ENDED_NS: i64 = 10 * 60 * 1_000_000_000;
/// The pipeline thread's tick: supervision and sub-stream restarts.
const TICK: Duration = Duration::from_millis(100);
/// Backoff between detector restarts after failures, doubling up to the maximum.
const RESTART_MIN: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(60);
/// A camera without motion or tracks for this long is quiet: only every
/// `QUIET_STRIDE`th picture is decoded until something moves again. Someone walking into
/// a still scene is then seen one picture later (a GOP, 2 s typically); it keeps a still
/// camera's cost under 0.3 % of a core.
const QUIET_AFTER_NS: i64 = 15_000_000_000;
const QUIET_STRIDE: u64 = 2;
/// A sub stream that failed is tried again after this long.
const SUB_RETRY_NS: i64 = 5_000_000_000;

/// Makes a detector: the real one opens ONNX Runtime; benchmarks may pass another.
pub type DetectorFactory =
    Arc<dyn Fn(&Detect) -> Result<Box<dyn Detector>, DetectError> + Send + Sync>;

pub fn ort_factory() -> DetectorFactory {
    Arc::new(|cfg: &Detect| Ok(Box::new(OrtDetector::open(cfg)?) as Box<dyn Detector>))
}

/// One best shot, encoded.
#[derive(Debug, Clone)]
pub struct Shot {
    pub camera: String,
    pub track: Option<u64>,
    pub at_ns: i64,
    /// Frame pixels.
    pub rect: Option<Rect>,
    pub score: Option<f32>,
    pub frame_width: u32,
    pub frame_height: u32,
    pub crop_jpeg: Option<Vec<u8>>,
    pub frame_jpeg: Vec<u8>,
}

impl Shot {
    /// The `shot` message; `event_id` is set by whoever commits it with its event.
    pub fn payload(
        &self,
        site: &crate::config::Site,
        reason: &str,
    ) -> storeguard_proto::topics::Shot {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let (w, h) = (self.frame_width as f32, self.frame_height as f32);
        storeguard_proto::topics::Shot {
            schema: storeguard_proto::topics::SCHEMA_SHOT.into(),
            site_id: site.site_id.clone(),
            device_id: site.device_id.clone(),
            event_id: None,
            reason: reason.into(),
            health: None,
            camera: self.camera.clone(),
            at: storeguard_base::utc_ms(self.at_ns),
            track: self.track,
            score: self.score.map(|s| (s * 1000.0).round() / 1000.0),
            bbox: self.rect.map(|r| {
                let n = r.clamp(w, h).normalise(w, h);
                [n.x0, n.y0, n.x1, n.y1]
            }),
            frame_width: self.frame_width,
            frame_height: self.frame_height,
            crop_jpeg: self.crop_jpeg.as_deref().map(b64),
            frame_jpeg: b64(&self.frame_jpeg),
        }
    }
}

/// What detection tells the daemon.
#[derive(Debug, Clone)]
pub enum Output {
    Event {
        camera: String,
        /// `person_in_zone`, `loitering`, `closed_hours`.
        kind: &'static str,
        at_ns: i64,
        track: u64,
        zone: Option<String>,
        dwell_ns: Option<i64>,
        score: f32,
        shot: Option<Shot>,
    },
    Tamper {
        camera: String,
        /// `tamper_covered`, `tamper_turned_away`, `tamper_defocused`.
        kind: &'static str,
        raised: bool,
        at_ns: i64,
        still: Option<Shot>,
    },
    /// The detector failed, hung or came back; camera-less health.
    Health { kind: &'static str, detail: String },
}

pub fn tamper_kind(k: TamperKind) -> &'static str {
    match k {
        TamperKind::Covered => "tamper_covered",
        TamperKind::TurnedAway => "tamper_turned_away",
        TamperKind::Defocused => "tamper_defocused",
    }
}

/// A fault a test asks for (`detect.fault_injection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None = 0,
    /// The next batch never returns.
    Hang = 1,
    /// The next batch panics.
    Panic = 2,
}

/// Per-camera counters, for `cameras`.
#[derive(Debug, Default, Serialize)]
pub struct CamStats {
    /// Pictures offered (keyframes or sub-stream pictures).
    pub pictures: AtomicU64,
    /// Pictures replaced by a newer one before they were looked at.
    pub dropped: AtomicU64,
    pub decoded: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Pictures sent to the detector, and inferences the motion gate saved.
    pub inferences: AtomicU64,
    pub skipped_static: AtomicU64,
    /// Pictures not decoded because the camera was quiet (see `QUIET_AFTER_NS`).
    pub skipped_quiet: AtomicU64,
    pub events: AtomicU64,
    #[serde(skip)]
    pub last_inference_mono: AtomicU64,
    /// (monotonic ns, picture-to-result ms) of the latest `LATENCIES` inferences.
    #[serde(skip)]
    pub latency_ms: Mutex<VecDeque<(u64, u32)>>,
}

const LATENCIES: usize = 256;

impl CamStats {
    /// Inferences a second over the last minute.
    fn rate(&self) -> f64 {
        let since = monotonic_ns().saturating_sub(60_000_000_000);
        let n = lock(&self.latency_ms)
            .iter()
            .filter(|(t, _)| *t >= since)
            .count();
        (n as f64 / 60.0 * 100.0).round() / 100.0
    }

    fn latency(&self) -> serde_json::Value {
        let mut v: Vec<u32> = lock(&self.latency_ms).iter().map(|(_, l)| *l).collect();
        if v.is_empty() {
            return serde_json::Value::Null;
        }
        v.sort_unstable();
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        serde_json::json!({ "p50": q(0.5), "p95": q(0.95), "max": v[v.len() - 1], "n": v.len() })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TrackView {
    pub id: u64,
    pub confirmed: bool,
    pub score: f32,
    /// Normalised box.
    pub rect: [f32; 4],
}

/// The camera's state that commands read: tracks, tamper, the decoder in use.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CamView {
    pub source: String,
    pub decoder: Option<String>,
    pub last_error: Option<String>,
    pub tamper: Vec<&'static str>,
    pub tracks: Vec<TrackView>,
}

struct TrackShot {
    track: u64,
    first_seen_ns: i64,
    last_seen_ns: i64,
    shot: Shot,
}

/// Best shots of one camera, for presses. Pictures are not kept: a still comes from the
/// ring (`evidence::still`), so 24 cameras hold no decoded frames between pictures.
#[derive(Default)]
struct Book {
    live: HashMap<u64, TrackShot>,
    ended: VecDeque<TrackShot>,
}

enum Input {
    Keyframe {
        format: crate::recording::StreamFormat,
        data: Vec<u8>,
        at_ns: i64,
    },
    Picture {
        picture: Picture,
        at_ns: i64,
    },
}

struct Cam {
    slot: Mutex<Option<Input>>,
    stats: CamStats,
    view: Mutex<CamView>,
    book: Mutex<Book>,
}

struct Job {
    frame: Arc<Picture>,
    index: u64,
    crops: Vec<Rect>,
    inputs: Vec<Vec<u8>>,
}

struct Inferred {
    camera: usize,
    at_ns: i64,
    frame: Arc<Picture>,
    index: u64,
    searched: Vec<Rect>,
    detections: Vec<model::Detection>,
}

enum Msg {
    Wake,
    Inferred(Box<Inferred>),
}

struct Shared {
    cfg: Detect,
    cams: Vec<Cam>,
    by_id: HashMap<String, usize>,
    sched: Mutex<Scheduler<Job>>,
    sched_cv: Condvar,
    stop: AtomicBool,
    /// Bumped when an inference thread is replaced; an old one exits when it notices.
    generation: AtomicU64,
    /// Monotonic ns the running batch started; 0 when idle.
    busy_since: AtomicU64,
    fault: AtomicU8,
    restarts: AtomicU64,
    detector_error: Mutex<Option<String>>,
    msgs: Mutex<mpsc::Sender<Msg>>,
    out: tokio::sync::mpsc::UnboundedSender<Output>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running detection; dropping it (or `stop`) ends both threads.
pub struct Detection {
    shared: Arc<Shared>,
    pipeline: Option<JoinHandle<()>>,
}

/// What `status` and `cameras` show about detection as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub cameras: usize,
    pub detector_restarts: u64,
    pub detector_error: Option<String>,
    pub pending: usize,
}

impl Detection {
    /// Starts detection for the config's cameras with detection on. The returned tap goes
    /// to the recorder (`Recorder::set_keyframe_tap`).
    pub fn start(
        config: &Config,
        factory: DetectorFactory,
        out: tokio::sync::mpsc::UnboundedSender<Output>,
    ) -> anyhow::Result<(Detection, KeyframeTap)> {
        let cfg = config.detect.clone();
        let schedule = cfg
            .schedule()
            .map_err(|e| anyhow::anyhow!("detect.opening_hours: {e}"))?;
        let cams: Vec<&Camera> = config
            .cameras
            .iter()
            .filter(|c| c.enabled && c.detect.enabled)
            .collect();
        let min_interval = (0.8e9 / cfg.max_rate) as i64;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            by_id: cams
                .iter()
                .enumerate()
                .map(|(i, c)| (c.id.clone(), i))
                .collect(),
            cams: cams
                .iter()
                .map(|c| Cam {
                    slot: Mutex::new(None),
                    stats: CamStats::default(),
                    view: Mutex::new(CamView {
                        source: if c.sub_url.is_some() {
                            "sub stream".into()
                        } else {
                            "keyframes".into()
                        },
                        ..Default::default()
                    }),
                    book: Mutex::new(Book::default()),
                })
                .collect(),
            sched: Mutex::new(Scheduler::new(cams.len(), cfg.batch, min_interval)),
            sched_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
            fault: AtomicU8::new(0),
            restarts: AtomicU64::new(0),
            detector_error: Mutex::new(None),
            msgs: Mutex::new(tx),
            out,
            cfg,
        });
        let mut states = Vec::new();
        for c in &cams {
            states.push(CamState::new(c, &shared.cfg)?);
        }
        let s = shared.clone();
        let pipeline = std::thread::Builder::new()
            .name("sg-detect".into())
            .spawn(move || Pipeline::new(s, states, schedule, factory).run(rx))?;
        let s = shared.clone();
        let tap: KeyframeTap = Arc::new(move |k: &Keyframe<'_>| {
            if let Some(&i) = s.by_id.get(k.camera)
                && s.cams[i].view_is_keyframes()
            {
                s.offer(
                    i,
                    Input::Keyframe {
                        format: k.format,
                        data: k.data.to_vec(),
                        at_ns: k.pts_utc_ns,
                    },
                );
            }
        });
        Ok((
            Detection {
                shared,
                pipeline: Some(pipeline),
            },
            tap,
        ))
    }

    pub fn summary(&self) -> Summary {
        let s = &self.shared;
        Summary {
            cameras: s.cams.len(),
            detector_restarts: s.restarts.load(Ordering::Relaxed),
            detector_error: lock(&s.detector_error).clone(),
            pending: lock(&s.sched).pending(),
        }
    }

    /// Counters and state of one camera; None when detection is off for it.
    pub fn camera(&self, id: &str) -> Option<serde_json::Value> {
        let i = *self.shared.by_id.get(id)?;
        let c = &self.shared.cams[i];
        let mut v = serde_json::to_value(&c.stats).ok()?;
        let view = serde_json::to_value(&*lock(&c.view)).ok()?;
        if let (Some(o), serde_json::Value::Object(m)) = (v.as_object_mut(), view) {
            o.extend(m);
            let last = c.stats.last_inference_mono.load(Ordering::Relaxed);
            o.insert("latency_ms".into(), c.stats.latency());
            o.insert("rate_per_s".into(), c.stats.rate().into());
            o.insert(
                "last_inference_s_ago".into(),
                (last > 0)
                    .then(|| {
                        (monotonic_ns().saturating_sub(last) as f64 / 1e9 * 10.0).round() / 10.0
                    })
                    .into(),
            );
        }
        Some(v)
    }

    /// Best shots of the people tracked on `camera` between `from_ns` and `to_ns`, best
    /// first; empty when nobody was.
    pub fn shots(&self, camera: &str, from_ns: i64, to_ns: i64) -> Vec<Shot> {
        let Some(&i) = self.shared.by_id.get(camera) else {
            return Vec::new();
        };
        let book = lock(&self.shared.cams[i].book);
        let mut v: Vec<&TrackShot> = book
            .live
            .values()
            .chain(book.ended.iter())
            .filter(|t| t.last_seen_ns >= from_ns && t.first_seen_ns <= to_ns)
            .collect();
        v.sort_by(|a, b| {
            b.shot
                .score
                .unwrap_or(0.0)
                .total_cmp(&a.shot.score.unwrap_or(0.0))
                .then(a.track.cmp(&b.track))
        });
        v.into_iter().map(|t| t.shot.clone()).collect()
    }

    pub fn inject_fault(&self, f: Fault) {
        self.shared.fault.store(f as u8, Ordering::SeqCst);
        self.shared.sched_cv.notify_all();
    }

    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.sched_cv.notify_all();
        let _ = lock(&self.shared.msgs).send(Msg::Wake);
        if let Some(t) = self.pipeline.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Detection {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Cam {
    fn view_is_keyframes(&self) -> bool {
        lock(&self.view).source == "keyframes"
    }
}

impl Shared {
    /// Puts a picture in the camera's slot; wakes the pipeline when the slot was empty.
    fn offer(&self, i: usize, input: Input) {
        let c = &self.cams[i];
        c.stats.pictures.fetch_add(1, Ordering::Relaxed);
        let was = lock(&c.slot).replace(input);
        if was.is_some() {
            c.stats.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = lock(&self.msgs).send(Msg::Wake);
        }
    }

    fn emit(&self, o: Output) {
        let _ = self.out.send(o);
    }
}

fn still_shot(camera: &str, at_ns: i64, p: &Picture) -> Option<Shot> {
    Some(Shot {
        camera: camera.to_string(),
        track: None,
        at_ns,
        rect: None,
        score: None,
        frame_width: p.width,
        frame_height: p.height,
        crop_jpeg: None,
        frame_jpeg: picture::thumbnail_jpeg(p)?,
    })
}

/// The pipeline thread's own per-camera state.
struct CamState {
    id: String,
    sub_url: Option<String>,
    creds: Option<(String, String)>,
    masks: Vec<storeguard_detect::Polygon>,
    rules: Rules,
    sub: Option<SubStream>,
    sub_retry_at: i64,
    motion: Option<MotionDetector>,
    gate: Gate,
    tamper: TamperDetector,
    tracker: Option<Tracker>,
    frame_size: Option<(u32, u32)>,
    frames: u64,
    last_taken_ns: i64,
    /// Monotonic ns of the last motion or track; pictures taken since it.
    last_activity_ns: i64,
    taken: u64,
}

impl CamState {
    fn new(c: &Camera, cfg: &Detect) -> anyhow::Result<CamState> {
        let rules = Rules::new(c.detect.rules())
            .map_err(|e| anyhow::anyhow!("camera {}: detect: {e}", c.id))?;
        Ok(CamState {
            id: c.id.clone(),
            sub_url: c.sub_url.clone(),
            creds: c.username.clone().map(|u| {
                (
                    u,
                    c.password
                        .as_ref()
                        .map(|p| p.expose().to_string())
                        .unwrap_or_default(),
                )
            }),
            masks: c.detect.masks.clone(),
            rules,
            sub: None,
            sub_retry_at: 0,
            motion: None,
            gate: Gate::new(cfg.refresh.0, CropPlan::default()),
            tamper: TamperDetector::new(TamperConfig {
                raise_after: cfg.tamper_after.0,
                clear_after: cfg.tamper_after.0,
                ..TamperConfig::default()
            }),
            tracker: None,
            frame_size: None,
            frames: 0,
            last_taken_ns: 0,
            last_activity_ns: monotonic_ns() as i64,
            taken: 0,
        })
    }
}

struct Pipeline {
    shared: Arc<Shared>,
    cams: Vec<CamState>,
    schedule: Schedule,
    factory: DetectorFactory,
    inference: Option<JoinHandle<()>>,
    restart_at: Option<(i64, Duration)>,
    backoff: Duration,
    /// Since a restart (monotonic ns): waiting for the first batch to say it recovered.
    recovering: Option<u64>,
    crop_buf: Vec<Vec<u8>>,
    /// Keyframe decoders by codec and size, shared by the cameras that have them.
    decoders: HashMap<(VideoCodec, u32, u32), KeyframeDecoder>,
}

impl Pipeline {
    fn new(
        shared: Arc<Shared>,
        cams: Vec<CamState>,
        schedule: Schedule,
        factory: DetectorFactory,
    ) -> Pipeline {
        Pipeline {
            shared,
            cams,
            schedule,
            factory,
            inference: None,
            restart_at: None,
            backoff: RESTART_MIN,
            recovering: None,
            crop_buf: Vec::new(),
            decoders: HashMap::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        self.spawn_inference();
        // Pictures come on the camera's clock, not ours: a little early still counts.
        let min_interval = (0.8e9 / self.shared.cfg.max_rate) as i64;
        while !self.shared.stop.load(Ordering::SeqCst) {
            match rx.recv_timeout(TICK) {
                Ok(Msg::Inferred(r)) => self.inferred(*r),
                Ok(Msg::Wake) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Results first: they free the tracker for the next picture.
            while let Ok(m) = rx.try_recv() {
                if let Msg::Inferred(r) = m {
                    self.inferred(*r);
                }
            }
            let mono = monotonic_ns() as i64;
            for i in 0..self.cams.len() {
                if mono - self.cams[i].last_taken_ns < min_interval {
                    continue;
                }
                let Some(input) = lock(&self.shared.cams[i].slot).take() else {
                    continue;
                };
                self.cams[i].last_taken_ns = mono;
                self.picture(i, input);
            }
            self.supervise();
            self.sub_streams();
        }
        self.cams.clear();
        if let Some(t) = self.inference.take() {
            // A hung inference thread is not waited for.
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }

    fn picture(&mut self, i: usize, input: Input) {
        let shared = self.shared.clone();
        let cam = &shared.cams[i];
        let st = &mut self.cams[i];
        st.taken += 1;
        let quiet = monotonic_ns() as i64 - st.last_activity_ns > QUIET_AFTER_NS;
        if quiet && !st.taken.is_multiple_of(QUIET_STRIDE) {
            cam.stats.skipped_quiet.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (picture, at_ns) = match input {
            Input::Picture { picture, at_ns } => (picture, at_ns),
            Input::Keyframe {
                format,
                data,
                at_ns,
            } => {
                let key = (format.codec, format.width, format.height);
                let dec = match self.decoders.entry(key) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        match KeyframeDecoder::new(format.codec) {
                            Ok(d) => v.insert(d),
                            Err(e) => {
                                cam.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                                lock(&cam.view).last_error = Some(e);
                                return;
                            }
                        }
                    }
                };
                lock(&cam.view).decoder = Some(dec.decoder());
                match dec.decode(&data) {
                    Ok(p) => (p, at_ns),
                    Err(e) => {
                        tracing::warn!(camera = %st.id, error = %e, "detection: decoding a keyframe failed");
                        cam.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                        lock(&cam.view).last_error = Some(e);
                        // A fresh decoder for the next one: this one may be wedged.
                        self.decoders.remove(&key);
                        return;
                    }
                }
            }
        };
        cam.stats.decoded.fetch_add(1, Ordering::Relaxed);
        let frame = Arc::new(picture);
        let (small, sw, sh) = picture::small_luma(&frame);
        let Ok(luma) = Luma::new(&small, sw, sh) else {
            return;
        };
        for ev in st.tamper.update(at_ns, &luma) {
            let kind = tamper_kind(ev.kind);
            tracing::warn!(camera = %st.id, kind, raised = ev.raised, "camera tamper");
            shared.emit(Output::Tamper {
                camera: st.id.clone(),
                kind,
                raised: ev.raised,
                at_ns: ev.at_ns,
                still: still_shot(&st.id, at_ns, &frame),
            });
        }
        let tampered = [TamperKind::Covered, TamperKind::TurnedAway]
            .iter()
            .any(|k| st.tamper.active(*k));
        lock(&cam.view).tamper = [
            TamperKind::Covered,
            TamperKind::TurnedAway,
            TamperKind::Defocused,
        ]
        .into_iter()
        .filter(|k| st.tamper.active(*k))
        .map(tamper_kind)
        .collect();
        let (fw, fh) = (frame.width, frame.height);
        if st.frame_size != Some((fw, fh)) {
            // A new stream format: the background and the tracks start again.
            st.motion = MotionDetector::new(MotionConfig::default(), sw, sh, &st.masks).ok();
            st.tracker = Some(Tracker::new(
                tracker_config(),
                fw as f32,
                fh as f32,
                st.rules.zone_polygons(),
            ));
            st.frame_size = Some((fw, fh));
        }
        let Some(motion) = st.motion.as_mut().and_then(|m| m.update(&luma).ok()) else {
            return;
        };
        tracing::trace!(camera = %st.id, changed = motion.changed, boxes = ?motion.boxes, "motion");
        let tracking = st.tracker.as_ref().is_some_and(|t| !t.tracks().is_empty());
        // A covered lens shows nobody: no inference on it.
        let plan = if tampered {
            Plan::Skip
        } else {
            st.gate.decide(at_ns, &motion.boxes, fw, fh, tracking)
        };
        let crops = match plan {
            Plan::Skip => {
                cam.stats.skipped_static.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Plan::Crops(c) => c,
            Plan::Full(r) => vec![r],
        };
        st.frames += 1;
        let mut inputs = Vec::with_capacity(crops.len());
        for r in &crops {
            let mut buf = self.crop_buf.pop().unwrap_or_default();
            picture::stretch(&frame, r, INPUT_SIZE, &mut buf);
            inputs.push(buf);
        }
        let job = Job {
            frame,
            index: st.frames,
            crops,
            inputs,
        };
        let old = lock(&shared.sched).submit(i, at_ns, job);
        if let Ok(Some(old)) = old {
            cam.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.crop_buf.extend(old.inputs);
        }
        shared.sched_cv.notify_all();
    }

    fn inferred(&mut self, r: Inferred) {
        let shared = self.shared.clone();
        let cam = &shared.cams[r.camera];
        let st = &mut self.cams[r.camera];
        cam.stats.inferences.fetch_add(1, Ordering::Relaxed);
        cam.stats
            .last_inference_mono
            .store(monotonic_ns(), Ordering::Relaxed);
        {
            let mut l = lock(&cam.stats.latency_ms);
            if l.len() == LATENCIES {
                l.pop_front();
            }
            l.push_back((
                monotonic_ns(),
                ((now_ns() - r.at_ns).max(0) / 1_000_000).min(u32::MAX as i64) as u32,
            ));
        }
        let (fw, fh) = (r.frame.width as f32, r.frame.height as f32);
        let Some(tracker) = st.tracker.as_mut() else {
            return;
        };
        let sightings: Vec<Sighting> = r
            .detections
            .iter()
            .filter(|d| d.class == PERSON)
            .map(|d| Sighting {
                detection: *d,
                sharpness: picture::region_luma(&r.frame, &d.rect, 96)
                    .and_then(|(l, w, h)| Luma::new(&l, w, h).ok().map(|l| quality::sharpness(&l))),
            })
            .collect();
        let events = tracker.update(&track::Frame {
            at_ns: r.at_ns,
            index: r.index,
            sightings: &sightings,
            searched: &r.searched,
        });
        let mut book = lock(&cam.book);
        // New best shots are cut from this frame now: it is gone after.
        for t in tracker.tracks() {
            let Some(best) = &t.best else { continue };
            let e = book.live.entry(t.id);
            let stale = match &e {
                std::collections::hash_map::Entry::Occupied(o) => o.get().shot.at_ns != best.at_ns,
                std::collections::hash_map::Entry::Vacant(_) => true,
            };
            if best.frame == r.index && stale {
                let pad = best.rect.width().max(best.rect.height()) * 0.1;
                let shot = Shot {
                    camera: st.id.clone(),
                    track: Some(t.id),
                    at_ns: best.at_ns,
                    rect: Some(best.rect),
                    score: Some(best.score),
                    frame_width: r.frame.width,
                    frame_height: r.frame.height,
                    crop_jpeg: picture::crop_jpeg(&r.frame, &best.rect.expand(pad, pad)),
                    frame_jpeg: picture::thumbnail_jpeg(&r.frame).unwrap_or_default(),
                };
                book.live.insert(
                    t.id,
                    TrackShot {
                        track: t.id,
                        first_seen_ns: t.first_seen_ns,
                        last_seen_ns: t.last_seen_ns,
                        shot,
                    },
                );
            } else if let Some(ts) = book.live.get_mut(&t.id) {
                ts.last_seen_ns = t.last_seen_ns;
            }
        }
        for ev in &events {
            if let TrackEvent::Ended(t) = ev
                && let Some(mut ts) = book.live.remove(&t.id)
            {
                ts.last_seen_ns = t.last_seen_ns;
                if t.confirmed {
                    book.ended.push_back(ts);
                }
            }
        }
        while book
            .ended
            .front()
            .is_some_and(|t| r.at_ns - t.last_seen_ns > KEEP_ENDED_NS)
        {
            book.ended.pop_front();
        }
        let open = self.schedule.is_open(r.at_ns);
        let rule_events = st.rules.evaluate(r.at_ns, tracker.tracks(), fw, fh, open);
        for ev in rule_events {
            let (kind, track, zone, dwell, at_ns) = match ev {
                RuleEvent::PersonInZone { zone, track, at_ns } => {
                    ("person_in_zone", track, Some(zone), None, at_ns)
                }
                RuleEvent::Loitering {
                    zone,
                    track,
                    dwell_ns,
                    at_ns,
                } => ("loitering", track, Some(zone), Some(dwell_ns), at_ns),
                RuleEvent::ClosedHours { track, at_ns } => {
                    ("closed_hours", track, None, None, at_ns)
                }
            };
            let score = tracker
                .tracks()
                .iter()
                .find(|t| t.id == track)
                .map_or(0.0, |t| t.score);
            cam.stats.events.fetch_add(1, Ordering::Relaxed);
            tracing::info!(camera = %st.id, kind, track, zone = ?zone, "detection event");
            shared.emit(Output::Event {
                camera: st.id.clone(),
                kind,
                at_ns,
                track,
                zone,
                dwell_ns: dwell,
                score,
                shot: book.live.get(&track).map(|t| t.shot.clone()),
            });
        }
        drop(book);
        lock(&cam.view).tracks = tracker
            .tracks()
            .iter()
            .map(|t| {
                let n = t.rect.normalise(fw, fh);
                TrackView {
                    id: t.id,
                    confirmed: t.confirmed,
                    score: t.score,
                    rect: [n.x0, n.y0, n.x1, n.y1],
                }
            })
            .collect();
    }

    fn spawn_inference(&mut self) {
        let shared = self.shared.clone();
        let factory = self.factory.clone();
        let generation = shared.generation.load(Ordering::SeqCst);
        let t = std::thread::Builder::new()
            .name("sg-infer".into())
            .spawn(move || inference(shared, factory, generation));
        match t {
            Ok(t) => self.inference = Some(t),
            Err(e) => {
                tracing::error!(error = %e, "detection: cannot start the inference thread");
                self.restart_later(format!("cannot start the inference thread: {e}"));
            }
        }
    }

    fn restart_later(&mut self, why: String) {
        let s = &self.shared;
        s.restarts.fetch_add(1, Ordering::Relaxed);
        *lock(&s.detector_error) = Some(why.clone());
        s.emit(Output::Health {
            kind: "detector_restarted",
            detail: format!("{why}; restarting in {} s", self.backoff.as_secs()),
        });
        tracing::error!(reason = %why, backoff_s = self.backoff.as_secs(), "detector failed; restarting it");
        self.restart_at = Some((
            monotonic_ns() as i64 + self.backoff.as_nanos() as i64,
            self.backoff,
        ));
        self.backoff = (self.backoff * 2).min(RESTART_MAX);
    }

    fn supervise(&mut self) {
        let s = self.shared.clone();
        if let Some((at, _)) = self.restart_at {
            if (monotonic_ns() as i64) >= at {
                self.restart_at = None;
                self.recovering = Some(monotonic_ns());
                self.spawn_inference();
            }
            return;
        }
        let busy = s.busy_since.load(Ordering::SeqCst);
        let hung = busy > 0
            && monotonic_ns().saturating_sub(busy) > s.cfg.hang_timeout.0.as_nanos() as u64;
        if hung {
            // Abandon it: a new generation makes its result (if it ever comes) void.
            s.generation.fetch_add(1, Ordering::SeqCst);
            s.busy_since.store(0, Ordering::SeqCst);
            s.sched_cv.notify_all();
            self.inference = None;
            self.restart_later(format!(
                "an inference ran longer than detect.hang_timeout ({} s)",
                s.cfg.hang_timeout.0.as_secs()
            ));
            return;
        }
        if self.inference.as_ref().is_some_and(|t| t.is_finished()) {
            let t = self.inference.take().expect("checked");
            let why = match t.join() {
                Ok(()) => lock(&s.detector_error)
                    .clone()
                    .unwrap_or_else(|| "the inference thread stopped".into()),
                Err(p) => format!(
                    "the detector panicked: {}",
                    p.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default()
                ),
            };
            s.generation.fetch_add(1, Ordering::SeqCst);
            s.busy_since.store(0, Ordering::SeqCst);
            self.restart_later(why);
        } else if let Some(since) = self.recovering
            && s.cams
                .iter()
                .any(|c| c.stats.last_inference_mono.load(Ordering::Relaxed) > since)
        {
            self.recovering = None;
            // It has run a batch since it was restarted: healthy again.
            *lock(&s.detector_error) = None;
            self.backoff = RESTART_MIN;
            s.emit(Output::Health {
                kind: "detector_recovered",
                detail: "inference runs again".into(),
            });
        }
    }

    fn sub_streams(&mut self) {
        let now = monotonic_ns() as i64;
        let rate = self.shared.cfg.max_rate;
        for (i, st) in self.cams.iter_mut().enumerate() {
            let Some(url) = st.sub_url.clone() else {
                continue;
            };
            if let Some(why) = st.sub.as_ref().and_then(|s| s.failed()) {
                tracing::warn!(camera = %st.id, error = %why, "detection sub stream failed; retrying");
                lock(&self.shared.cams[i].view).last_error = Some(format!("sub stream: {why}"));
                st.sub = None;
                st.sub_retry_at = now + SUB_RETRY_NS;
            }
            if st.sub.is_some() || now < st.sub_retry_at {
                continue;
            }
            let s = self.shared.clone();
            // videorate caps by stream timestamps, which a jitter buffer bunches: the cap
            // is kept here too, by arrival.
            let gap = (0.8e9 / rate) as u64;
            let last = AtomicU64::new(0);
            let on_picture: super::decode::OnPicture = Arc::new(move |picture| {
                let now = monotonic_ns();
                let prev = last.load(Ordering::Relaxed);
                if prev != 0 && now.saturating_sub(prev) < gap {
                    return;
                }
                last.store(now, Ordering::Relaxed);
                s.offer(
                    i,
                    Input::Picture {
                        picture,
                        at_ns: now_ns(),
                    },
                )
            });
            let creds = st.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            match SubStream::start(&url, creds, rate, on_picture) {
                Ok(s) => {
                    lock(&self.shared.cams[i].view).decoder = Some("decodebin".into());
                    st.sub = Some(s);
                }
                Err(e) => {
                    lock(&self.shared.cams[i].view).last_error = Some(format!("sub stream: {e}"));
                    st.sub_retry_at = now + SUB_RETRY_NS;
                }
            }
        }
    }
}

fn tracker_config() -> TrackerConfig {
    TrackerConfig {
        // Pictures come seconds apart at keyframe rate: people move far between them.
        max_centre_distance: 1.5,
        min_hits: 2,
        // Three seconds of keyframes: a walker passing behind another keeps their id.
        max_missed: 6,
        max_unseen_ns: 30_000_000_000,
        ..TrackerConfig::default()
    }
}

/// The inference thread of one generation.
fn inference(shared: Arc<Shared>, factory: DetectorFactory, generation: u64) {
    let mut det = match factory(&shared.cfg) {
        Ok(d) => d,
        Err(e) => {
            *lock(&shared.detector_error) = Some(storeguard_base::error::chain(&e));
            return;
        }
    };
    let current = || shared.generation.load(Ordering::SeqCst) == generation;
    loop {
        let jobs = {
            let mut sched = lock(&shared.sched);
            loop {
                if shared.stop.load(Ordering::SeqCst) || !current() {
                    return;
                }
                let jobs = sched.next_batch(monotonic_ns() as i64);
                if !jobs.is_empty() {
                    break jobs;
                }
                let wait = sched
                    .next_ready_ns()
                    .map(|t| {
                        Duration::from_nanos(
                            (t - monotonic_ns() as i64).clamp(1_000_000, 200_000_000) as u64,
                        )
                    })
                    .unwrap_or(Duration::from_millis(200));
                sched = shared
                    .sched_cv
                    .wait_timeout(sched, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let items: Vec<Item<'_>> = jobs
            .iter()
            .flat_map(|j| {
                j.payload
                    .crops
                    .iter()
                    .zip(&j.payload.inputs)
                    .map(|(crop, rgb)| Item { rgb, crop: *crop })
            })
            .collect();
        shared
            .busy_since
            .store(monotonic_ns().max(1), Ordering::SeqCst);
        match Fault::from(shared.fault.swap(0, Ordering::SeqCst)) {
            Fault::Hang => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            Fault::Panic => panic!("fault injected: the detector crashed"),
            Fault::None => {}
        }
        // At most `batch` images a run, however many crops the cameras asked for: the
        // session's memory grows to its largest run and keeps it.
        let result = items.chunks(shared.cfg.batch.max(1)).try_fold(
            Vec::with_capacity(items.len()),
            |mut all, chunk| {
                all.extend(det.detect(chunk)?);
                Ok::<_, DetectError>(all)
            },
        );
        shared.busy_since.store(0, Ordering::SeqCst);
        if !current() {
            return;
        }
        let per_item = match result {
            Ok(r) => r,
            Err(e) => {
                *lock(&shared.detector_error) = Some(storeguard_base::error::chain(&e));
                return;
            }
        };
        let mut it = per_item.into_iter();
        for j in jobs {
            let n = j.payload.crops.len();
            let mut detections: Vec<model::Detection> = it.by_ref().take(n).flatten().collect();
            // One person seen in two overlapping crops is one.
            model::nms(&mut detections, 0.6);
            let msg = Msg::Inferred(Box::new(Inferred {
                camera: j.camera,
                at_ns: j.at_ns,
                frame: j.payload.frame,
                index: j.payload.index,
                searched: j.payload.crops,
                detections,
            }));
            let _ = lock(&shared.msgs).send(msg);
        }
    }
}

impl From<u8> for Fault {
    fn from(v: u8) -> Fault {
        match v {
            1 => Fault::Hang,
            2 => Fault::Panic,
            _ => Fault::None,
        }
    }
}
