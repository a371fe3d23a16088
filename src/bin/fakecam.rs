//! fakecam: a fleet of fake RTSP cameras on one port, for tests, benchmarks and the demo.
//!
//! Serves `rtsp://127.0.0.1:PORT/camN` (H.264), optionally `/h265camN` (H.265) and `/mjpeg`
//! (RTP/JPEG). Encodes ONCE per codec and fans the access units out to one `appsrc` per
//! client media: an encoder per camera would saturate the box at 24 cameras.
//!
//! With `--auth USER:PASS` every mount needs those credentials (basic auth).
//!
//! stdout: one `READY rtsp://127.0.0.1:PORT/` line, then one `OK ...`/`ERR ...` reply per
//! stdin command: `stop NAME`, `start NAME`, `stall NAME`, `resume NAME`, `stats`, `quit`.
//! EOF on stdin quits. Logs go to stderr.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use gst::glib;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp;
use rtsp::prelude::*;
use tracing::{error, info, warn};

/// An appsrc holding more than this is not being drained (client paused or gone):
/// stop feeding it and restart at a keyframe once it drains.
const MAX_QUEUED_BYTES: u64 = 4 * 1024 * 1024;
/// Time for the EOS pushed on `stop` to reach the client as an RTCP BYE before the
/// connection is closed.
const BYE_GRACE: Duration = Duration::from_millis(300);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const TRANSCODE_TIMEOUT: Duration = Duration::from_secs(600);

static FAILED: AtomicBool = AtomicBool::new(false);

#[derive(Parser, Debug)]
#[command(name = "fakecam", about = "Fake RTSP camera fleet (dev/test fixture)")]
struct Args {
    /// TCP port to serve RTSP on, 0 picks a free one (printed in the READY line).
    #[arg(long, default_value_t = 8554)]
    port: u16,
    /// Number of H.264 cameras, served as /cam1../camN.
    #[arg(long, default_value_t = 4)]
    cameras: u32,
    #[arg(long, default_value_t = 640)]
    width: u32,
    #[arg(long, default_value_t = 360)]
    height: u32,
    #[arg(long, default_value_t = 15)]
    fps: u32,
    /// Keyframe interval in frames.
    #[arg(long, default_value_t = 30)]
    gop: u32,
    /// Encoder bitrate in kbit/s.
    #[arg(long, default_value_t = 1000)]
    bitrate: u32,
    /// `test` (moving ball with a UTC clock) or a video file path, transcoded once and looped.
    #[arg(long, default_value = "test")]
    source: String,
    /// Extra H.265 cameras, served as /h265cam1../h265camM.
    #[arg(long, default_value_t = 0)]
    h265_cameras: u32,
    /// Also serve /mjpeg (RTP/JPEG, 640x360), to exercise "unsupported codec" paths.
    #[arg(long)]
    mjpeg: bool,
    /// Where transcoded file sources are cached.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Require RTSP basic authentication as USER:PASS on every mount; other clients get
    /// 401 Unauthorized, as a camera with a changed password would answer.
    #[arg(long, value_name = "USER:PASS")]
    auth: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Codec {
    H264,
    H265,
    Jpeg,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
            Codec::Jpeg => "jpeg",
        }
    }

    /// Encoder element with its settings. No B-frames: the fan-out restamps PTS = DTS.
    /// One slice per frame: zerolatency's sliced threads made the parser hand out an IDR
    /// in two buffers, which the fan-out then stamped as two frames.
    fn encoder(self, gop: u32, bitrate: u32, preset: &str) -> String {
        match self {
            Codec::H264 => format!(
                "x264enc tune=zerolatency sliced-threads=false speed-preset={preset} key-int-max={gop} \
                 bitrate={bitrate} option-string=scenecut=0"
            ),
            Codec::H265 => format!(
                "x265enc tune=zerolatency speed-preset={preset} key-int-max={gop} bitrate={bitrate} \
                 option-string=scenecut=0"
            ),
            Codec::Jpeg => "jpegenc quality=75".to_string(),
        }
    }

    /// Live encoder chain ending in AU-aligned byte-stream with parameter sets on every
    /// keyframe (or JPEG frames).
    fn live_encoder(self, gop: u32, bitrate: u32) -> String {
        match self {
            Codec::Jpeg => self.encoder(gop, bitrate, "ultrafast"),
            _ => format!(
                "{} ! {} config-interval=-1 ! {}",
                self.encoder(gop, bitrate, "ultrafast"),
                self.parser(),
                self.parsed_caps()
            ),
        }
    }

    fn parsed_caps(self) -> &'static str {
        match self {
            Codec::H264 => "video/x-h264,stream-format=byte-stream,alignment=au",
            Codec::H265 => "video/x-h265,stream-format=byte-stream,alignment=au",
            Codec::Jpeg => "image/jpeg",
        }
    }

    fn parser(self) -> &'static str {
        match self {
            Codec::H264 => "h264parse",
            Codec::H265 => "h265parse",
            Codec::Jpeg => "jpegparse",
        }
    }

    fn encoder_element(self) -> &'static str {
        match self {
            Codec::H264 => "x264enc",
            Codec::H265 => "x265enc",
            Codec::Jpeg => "jpegenc",
        }
    }

    /// Per-client media: the fan-out feeds `src`.
    fn media_launch(self) -> &'static str {
        match self {
            Codec::H264 => {
                "( appsrc name=src is-live=true format=time ! h264parse ! \
                 rtph264pay name=pay0 pt=96 config-interval=-1 )"
            }
            Codec::H265 => {
                "( appsrc name=src is-live=true format=time ! h265parse ! \
                 rtph265pay name=pay0 pt=96 config-interval=-1 )"
            }
            Codec::Jpeg => {
                "( appsrc name=src is-live=true format=time ! rtpjpegpay name=pay0 pt=26 )"
            }
        }
    }
}

const RUNNING: u8 = 0;
const STALLED: u8 = 1;
const STOPPED: u8 = 2;

/// One mount point (`/cam3`, `/h265cam1`, `/mjpeg`).
struct Camera {
    name: String,
    hub: Arc<Hub>,
    factory: rtsp::RTSPMediaFactory,
    state: AtomicU8,
    pushed: AtomicU64,
    medias: Mutex<Vec<glib::WeakRef<rtsp::RTSPMedia>>>,
}

impl Camera {
    fn path(&self) -> String {
        format!("/{}", self.name)
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }

    fn live_medias(&self) -> Vec<rtsp::RTSPMedia> {
        let mut medias = lock(&self.medias);
        medias.retain(|m| m.upgrade().is_some());
        medias.iter().filter_map(|m| m.upgrade()).collect()
    }
}

/// A client's appsrc fed by a hub.
struct Sub {
    cam: Arc<Camera>,
    src: glib::WeakRef<gst_app::AppSrc>,
    need_key: bool,
    /// Subscriber running time minus encoder running time, fixed at each (re)start so
    /// frame spacing stays as even as the encoder's rather than our scheduling's.
    offset: Option<i64>,
    last: Option<gst::ClockTime>,
}

/// The output of one encoder, fanned out to every subscribed appsrc.
struct Hub {
    codec: Codec,
    caps: Mutex<Option<gst::Caps>>,
    subs: Mutex<Vec<Sub>>,
    timeline: Mutex<Timeline>,
}

/// Makes the encoder's running time gapless and monotonic across file loops: a
/// non-flushing segment seek restarts running time at the last frame's start, not its end.
#[derive(Default)]
struct Timeline {
    shift: gst::ClockTime,
    next: Option<gst::ClockTime>,
}

impl Timeline {
    fn place(&mut self, rt: gst::ClockTime, duration: Option<gst::ClockTime>) -> gst::ClockTime {
        let mut t = rt + self.shift;
        if let Some(next) = self.next.filter(|n| t < *n) {
            self.shift += next - t;
            t = next;
        }
        self.next = Some(t + duration.unwrap_or(gst::ClockTime::ZERO));
        t
    }
}

impl Hub {
    fn new(codec: Codec) -> Arc<Hub> {
        Arc::new(Hub {
            codec,
            caps: Mutex::new(None),
            subs: Mutex::new(Vec::new()),
            timeline: Mutex::new(Timeline::default()),
        })
    }

    fn caps(&self) -> Option<gst::Caps> {
        lock(&self.caps).clone()
    }

    /// Takes one encoder output; `pace` (file sources) waits until its running time first,
    /// as a synchronising sink would.
    fn on_sample(&self, sink: &gst_app::AppSink, sample: &gst::Sample, pace: bool) {
        if let Some(caps) = sample.caps() {
            let mut cur = lock(&self.caps);
            if cur.as_ref().is_none_or(|c| c != caps) {
                *cur = Some(caps.to_owned());
            }
        }
        let Some(buf) = sample.buffer_owned() else {
            return;
        };
        // Running time, not PTS: it keeps growing across the file source's loop seeks.
        let rt = sample
            .segment()
            .and_then(|seg| seg.downcast_ref::<gst::ClockTime>())
            .and_then(|seg| seg.to_running_time(buf.pts()))
            .map(|rt| lock(&self.timeline).place(rt, buf.duration()));
        if pace && let (Some(rt), Some(clock), Some(base)) = (rt, sink.clock(), sink.base_time()) {
            let _ = clock.new_single_shot_id(base + rt).wait();
        }
        self.push(buf, rt);
    }

    /// Pushes one access unit (`rt`: its running time in the encoder pipeline) to every
    /// running subscriber, restamped (PTS = DTS) into the running time of that subscriber's
    /// pipeline: encoder timestamps mean nothing there.
    fn push(&self, buf: gst::Buffer, rt: Option<gst::ClockTime>) {
        let is_key = !buf.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let mut subs = lock(&self.subs);
        subs.retain_mut(|s| {
            let Some(src) = s.src.upgrade() else {
                return false;
            };
            if s.cam.state() != RUNNING || src.current_level_bytes() > MAX_QUEUED_BYTES {
                s.need_key = true;
                return true;
            }
            if s.need_key && !is_key {
                return true;
            }
            // No running time before the media's pipeline plays.
            let Some(now) = src.current_running_time() else {
                return true;
            };
            if s.need_key {
                s.offset = rt.map(|rt| now.nseconds() as i64 - rt.nseconds() as i64);
            }
            let mapped = match (rt, s.offset) {
                (Some(rt), Some(off)) => (rt.nseconds() as i64 + off).max(0) as u64,
                _ => now.nseconds(),
            };
            let mut ts = gst::ClockTime::from_nseconds(mapped);
            // Two access units with one RTP timestamp: the client's h264parse drops the
            // second one's PTS.
            if let Some(last) = s.last.filter(|l| ts <= *l) {
                ts = last + gst::ClockTime::MSECOND;
            }
            let mut out = buf.copy();
            {
                let b = out.make_mut();
                b.set_pts(ts);
                b.set_dts(ts);
                if s.need_key {
                    b.set_flags(gst::BufferFlags::DISCONT);
                }
            }
            match src.push_buffer(out) {
                Ok(_) => {
                    s.need_key = false;
                    s.last = Some(ts);
                    s.cam.pushed.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(gst::FlowError::Flushing) => {
                    s.need_key = true;
                    true
                }
                Err(_) => false,
            }
        });
    }

    fn subscribe(&self, cam: Arc<Camera>, src: &gst_app::AppSrc) {
        lock(&self.subs).push(Sub {
            cam,
            src: src.downgrade(),
            need_key: true,
            offset: None,
            last: None,
        });
    }

    fn unsubscribe(&self, src: &gst_app::AppSrc) {
        lock(&self.subs).retain(|s| s.src.upgrade().is_some_and(|x| &x != src));
    }

    /// Ends every stream of `cam` (EOS makes the server send RTCP BYE) and forgets them.
    fn end_streams(&self, cam: &Arc<Camera>) -> usize {
        let mut ended = 0;
        lock(&self.subs).retain(|s| {
            if !Arc::ptr_eq(&s.cam, cam) {
                return true;
            }
            if let Some(src) = s.src.upgrade() {
                let _ = src.end_of_stream();
                ended += 1;
            }
            false
        });
        ended
    }

    fn clients(&self, cam: &Arc<Camera>) -> usize {
        lock(&self.subs)
            .iter()
            .filter(|s| Arc::ptr_eq(&s.cam, cam) && s.src.upgrade().is_some())
            .count()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Fleet {
    server: rtsp::RTSPServer,
    mounts: rtsp::RTSPMountPoints,
    cams: Vec<Arc<Camera>>,
}

impl Fleet {
    fn camera(&self, name: &str) -> Option<&Arc<Camera>> {
        self.cams.iter().find(|c| c.name == name)
    }

    /// Runs one stdin command on the main context; `reply` gets exactly one line.
    fn handle(self: &Arc<Self>, line: &str, reply: mpsc::Sender<String>) {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or("");
        if verb == "stats" {
            let parts: Vec<String> = self
                .cams
                .iter()
                .map(|c| {
                    let state = match c.state() {
                        RUNNING => "running",
                        STALLED => "stalled",
                        _ => "stopped",
                    };
                    format!(
                        "{}={}:clients={}:pushed={}",
                        c.name,
                        state,
                        c.hub.clients(c),
                        c.pushed.load(Ordering::Relaxed)
                    )
                })
                .collect();
            let _ = reply.send(format!("OK {}", parts.join(" ")));
            return;
        }
        let (Some(name), None) = (words.next(), words.next()) else {
            let _ = reply.send(format!(
                "ERR usage: stop|start|stall|resume NAME, stats, quit (got `{line}`)"
            ));
            return;
        };
        let Some(cam) = self.camera(name).cloned() else {
            let _ = reply.send(format!("ERR unknown camera `{name}`"));
            return;
        };
        match verb {
            "stop" => {
                if cam.state.swap(STOPPED, Ordering::SeqCst) == STOPPED {
                    let _ = reply.send(format!("OK {name} already stopped"));
                    return;
                }
                // New connects now get 404; running streams end with BYE, then lose
                // their connection, as when a camera dies.
                self.mounts.remove_factory(&cam.path());
                let ended = cam.hub.end_streams(&cam);
                let fleet = self.clone();
                glib::timeout_add_once(BYE_GRACE, move || {
                    let closed = fleet.close_sessions(&cam);
                    info!(camera = %cam.name, ended, closed, "stopped");
                    let _ = reply.send(format!("OK {} stopped", cam.name));
                });
            }
            "start" => {
                if cam.state.swap(RUNNING, Ordering::SeqCst) == STOPPED {
                    self.mounts.add_factory(&cam.path(), cam.factory.clone());
                }
                info!(camera = %name, "started");
                let _ = reply.send(format!("OK {name} started"));
            }
            "stall" | "resume" => {
                let (from, to, done) = if verb == "stall" {
                    (RUNNING, STALLED, "stalled")
                } else {
                    (STALLED, RUNNING, "resumed")
                };
                let msg =
                    match cam
                        .state
                        .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
                    {
                        Ok(_) => format!("OK {name} {done}"),
                        Err(cur) if cur == to => format!("OK {name} already {done}"),
                        Err(_) => format!("ERR {name} is stopped"),
                    };
                info!(camera = %name, "{verb}");
                let _ = reply.send(msg);
            }
            _ => {
                let _ = reply.send(format!("ERR unknown command `{verb}`"));
            }
        }
    }

    /// Drops every RTSP session on `cam`'s medias and closes those clients' connections.
    fn close_sessions(&self, cam: &Camera) -> usize {
        let medias = cam.live_medias();
        if medias.is_empty() {
            return 0;
        }
        let pool = self.server.session_pool();
        let mut closed = 0;
        for client in self.server.client_filter(None) {
            let hit: Vec<rtsp::RTSPSession> = client
                .session_filter(None)
                .into_iter()
                .filter(|s| {
                    s.filter(None)
                        .iter()
                        .any(|sm| sm.media().is_some_and(|m| medias.contains(&m)))
                })
                .collect();
            if hit.is_empty() {
                continue;
            }
            client.session_filter(Some(&mut |_, s| {
                if hit.contains(s) {
                    rtsp::RTSPFilterResult::Remove
                } else {
                    rtsp::RTSPFilterResult::Keep
                }
            }));
            if let Some(pool) = &pool {
                for s in &hit {
                    let _ = pool.remove(s);
                }
            }
            client.close();
            closed += 1;
        }
        for m in medias {
            if m.status() == rtsp::RTSPMediaStatus::Prepared {
                let _ = m.unprepare();
            }
        }
        closed
    }
}

fn main() {
    // SAFETY: first thing in main, no other threads exist yet. clockoverlay renders local
    // time; the fleet's clocks are meant to read UTC.
    unsafe { std::env::set_var("TZ", "UTC") };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let code = match run(&args) {
        Ok(()) if !FAILED.load(Ordering::SeqCst) => 0,
        Ok(()) => 1,
        Err(e) => {
            error!("fakecam: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(args: &Args) -> Result<()> {
    if args.fps == 0 || args.gop == 0 || args.bitrate == 0 {
        bail!("--fps, --gop and --bitrate must be positive");
    }
    if args.width < 16
        || args.height < 16
        || !args.width.is_multiple_of(2)
        || !args.height.is_multiple_of(2)
    {
        bail!(
            "--width/--height must be even and at least 16 (got {}x{})",
            args.width,
            args.height
        );
    }
    if args.cameras + args.h265_cameras == 0 && !args.mjpeg {
        bail!("nothing to serve: --cameras 0 without --h265-cameras or --mjpeg");
    }
    gst::init().context("initialising GStreamer")?;

    let file = match args.source.as_str() {
        "test" => None,
        path => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!("--source {}: not a file", path.display());
            }
            Some(path)
        }
    };
    let mut wanted = Vec::new();
    if args.cameras > 0 {
        wanted.push(Codec::H264);
    }
    if args.h265_cameras > 0 {
        wanted.push(Codec::H265);
    }
    if args.mjpeg {
        wanted.push(Codec::Jpeg);
    }
    for codec in &wanted {
        if gst::ElementFactory::find(codec.encoder_element()).is_none() {
            bail!(
                "{} cameras need the GStreamer element {}, which is not installed",
                codec.name(),
                codec.encoder_element()
            );
        }
    }

    let main_loop = glib::MainLoop::new(None, false);
    let mut pipelines = Vec::new();
    let mut watches = Vec::new();
    let mut hubs = Vec::new();
    for codec in wanted {
        let hub = Hub::new(codec);
        let (desc, looping) = match (&file, codec) {
            (Some(path), Codec::H264 | Codec::H265) => {
                let cached = cached_transcode(path, codec, args)?;
                (file_desc(&cached, codec)?, true)
            }
            _ => (test_desc(codec, args), false),
        };
        let (pipeline, watch) = start_encoder(&desc, hub.clone(), looping, &main_loop)
            .with_context(|| format!("starting the {} encoder `{desc}`", codec.name()))?;
        pipelines.push(pipeline);
        watches.push(watch);
        hubs.push(hub);
    }

    let server = rtsp::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(&args.port.to_string());
    let mounts = server
        .mount_points()
        .context("RTSP server has no mount points")?;
    let auth = args.auth.as_deref().map(parse_auth).transpose()?;
    if let Some((user, pass)) = &auth {
        let a = rtsp::RTSPAuth::new();
        let token = rtsp::RTSPToken::builder()
            .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE, AUTH_ROLE)
            .build();
        a.add_basic(&rtsp::RTSPAuth::make_basic(user, pass), &token);
        server.set_auth(Some(&a));
    }
    let mut cams = Vec::new();
    for hub in &hubs {
        let names: Vec<String> = match hub.codec {
            Codec::H264 => (1..=args.cameras).map(|n| format!("cam{n}")).collect(),
            Codec::H265 => (1..=args.h265_cameras)
                .map(|n| format!("h265cam{n}"))
                .collect(),
            Codec::Jpeg => vec!["mjpeg".to_string()],
        };
        for name in names {
            let cam = make_camera(name, hub.clone());
            if auth.is_some() {
                cam.factory.add_role_from_structure(
                    &gst::Structure::builder(AUTH_ROLE)
                        .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                        .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                        .build(),
                );
            }
            mounts.add_factory(&cam.path(), cam.factory.clone());
            cams.push(cam);
        }
    }
    // Without a pool, clients share one thread and only about half of 24 got served.
    let pool = server.thread_pool().unwrap_or_else(|| {
        let p = rtsp::RTSPThreadPool::new();
        server.set_thread_pool(Some(&p));
        p
    });
    pool.set_max_threads((cams.len() as i32 * 2).max(16));

    let _server_source = server
        .attach(None)
        .with_context(|| format!("binding the RTSP server to 127.0.0.1:{}", args.port))?;
    let port = server.bound_port();
    if port <= 0 {
        bail!("RTSP server did not bind a port (asked for {})", args.port);
    }
    let fleet = Arc::new(Fleet {
        server,
        mounts,
        cams,
    });

    // READY once every encoder has produced output, so the first client gets caps at once.
    let started = Instant::now();
    let ready_loop = main_loop.clone();
    let ready_fleet = fleet.clone();
    glib::timeout_add_local(Duration::from_millis(20), move || {
        if hubs.iter().all(|h| h.caps().is_some()) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "READY rtsp://127.0.0.1:{port}/");
            let _ = out.flush();
            info!(port, cameras = ready_fleet.cams.len(), "serving");
            spawn_control(ready_fleet.clone(), ready_loop.clone());
            return glib::ControlFlow::Break;
        }
        if started.elapsed() > STARTUP_TIMEOUT {
            error!("no encoder output after {STARTUP_TIMEOUT:?}");
            FAILED.store(true, Ordering::SeqCst);
            ready_loop.quit();
            return glib::ControlFlow::Break;
        }
        glib::ControlFlow::Continue
    });

    main_loop.run();
    drop(watches);
    for p in pipelines {
        let _ = p.set_state(gst::State::Null);
    }
    Ok(())
}

/// The role `--auth` grants; anonymous clients have none, so they are refused.
const AUTH_ROLE: &str = "viewer";

/// `USER:PASS` of `--auth`.
fn parse_auth(s: &str) -> Result<(String, String)> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => bail!("--auth wants USER:PASS, both non-empty"),
    }
}

fn make_camera(name: String, hub: Arc<Hub>) -> Arc<Camera> {
    let factory = rtsp::RTSPMediaFactory::new();
    factory.set_launch(hub.codec.media_launch());
    // One media per client: a single shared media behind many mounts aborted the server.
    factory.set_shared(false);
    let cam = Arc::new(Camera {
        name,
        hub,
        factory: factory.clone(),
        state: AtomicU8::new(RUNNING),
        pushed: AtomicU64::new(0),
        medias: Mutex::new(Vec::new()),
    });
    let weak = Arc::downgrade(&cam);
    factory.connect_media_configure(move |_, media| {
        let Some(cam) = weak.upgrade() else { return };
        let src = media
            .element()
            .downcast_ref::<gst::Bin>()
            .and_then(|b| b.by_name("src"))
            .and_downcast::<gst_app::AppSrc>();
        let Some(src) = src else {
            error!(camera = %cam.name, "media has no appsrc named src");
            return;
        };
        src.set_caps(cam.hub.caps().as_ref());
        src.set_max_bytes(2 * MAX_QUEUED_BYTES);
        if cam.state() == STOPPED {
            // Raced with `stop`: fail this client instead of leaving it waiting for data.
            let _ = src.end_of_stream();
            return;
        }
        lock(&cam.medias).push(media.downgrade());
        cam.hub.subscribe(cam.clone(), &src);
        info!(camera = %cam.name, "client attached");
        let weak_cam = Arc::downgrade(&cam);
        let weak_src = src.downgrade();
        media.connect_unprepared(move |_| {
            if let (Some(cam), Some(src)) = (weak_cam.upgrade(), weak_src.upgrade()) {
                cam.hub.unsubscribe(&src);
                info!(camera = %cam.name, "client detached");
            }
        });
    });
    cam
}

/// Reads stdin commands on a thread, runs them on the main context, prints replies.
fn spawn_control(fleet: Arc<Fleet>, main_loop: glib::MainLoop) {
    std::thread::spawn(move || {
        let ctx = glib::MainContext::default();
        let mut quit_reply = false;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let line = line.trim().to_string();
            if line.is_empty() {
                continue;
            }
            if line == "quit" {
                quit_reply = true;
                break;
            }
            let (tx, rx) = mpsc::channel();
            let f = fleet.clone();
            let cmd = line.clone();
            ctx.invoke(move || f.handle(&cmd, tx));
            let reply = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| format!("ERR `{line}` got no answer"));
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{reply}");
            let _ = out.flush();
        }
        if quit_reply {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "OK quit");
            let _ = out.flush();
        }
        info!("quitting");
        main_loop.quit();
    });
}

fn test_desc(codec: Codec, args: &Args) -> String {
    let (w, h) = if codec == Codec::Jpeg {
        (640, 360)
    } else {
        (args.width, args.height)
    };
    let overlay = if gst::ElementFactory::find("clockoverlay").is_some() {
        "clockoverlay time-format=\"%Y-%m-%d %H:%M:%S UTC\" ! "
    } else {
        warn!(
            "clockoverlay missing (package gstreamer1.0-x): serving the test pattern without a clock"
        );
        ""
    };
    format!(
        "videotestsrc is-live=true pattern=ball ! \
         video/x-raw,format=I420,width={w},height={h},framerate={}/1 ! {overlay}\
         {} ! appsink name=sink sync=false max-buffers=8",
        args.fps,
        codec.live_encoder(args.gop, args.bitrate)
    )
}

fn file_desc(cached: &Path, codec: Codec) -> Result<String> {
    Ok(format!(
        "filesrc location={} ! qtdemux ! {} config-interval=-1 ! {} ! appsink name=sink sync=false max-buffers=8",
        quote(cached)?,
        codec.parser(),
        codec.parsed_caps()
    ))
}

/// Quotes a path for gst_parse_launch.
fn quote(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8", path.display()))?;
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

fn start_encoder(
    desc: &str,
    hub: Arc<Hub>,
    looping: bool,
    main_loop: &glib::MainLoop,
) -> Result<(gst::Pipeline, gst::bus::BusWatchGuard)> {
    let pipeline = gst::parse::launch(desc)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))?;
    let sink = pipeline
        .by_name("sink")
        .and_downcast::<gst_app::AppSink>()
        .context("no appsink named sink")?;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                hub.on_sample(sink, &sample, looping);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );

    if looping {
        pipeline.set_state(gst::State::Paused)?;
        let (res, _, _) = pipeline.state(gst::ClockTime::from_seconds(10));
        res.context("prerolling the file source")?;
    }

    let weak = pipeline.downgrade();
    let ml = main_loop.clone();
    let watch = pipeline
        .bus()
        .context("pipeline has no bus")?
        .add_watch(move |_, msg| {
            use gst::MessageView;
            let Some(pipeline) = weak.upgrade() else {
                return glib::ControlFlow::Break;
            };
            match msg.view() {
                MessageView::Error(e) => {
                    error!(
                        "encoder pipeline error from {:?}: {} ({:?})",
                        e.src().map(|s| s.path_string()),
                        e.error(),
                        e.debug()
                    );
                    FAILED.store(true, Ordering::SeqCst);
                    ml.quit();
                }
                // Loop the file: a non-flushing segment seek keeps running time monotonic.
                MessageView::SegmentDone(_) => {
                    if let Err(e) = loop_seek(&pipeline, gst::SeekFlags::empty()) {
                        warn!("loop seek failed: {e}");
                    }
                }
                MessageView::Eos(_) if looping => {
                    warn!("file source hit EOS, restarting it");
                    let _ = loop_seek(&pipeline, gst::SeekFlags::FLUSH);
                }
                MessageView::Eos(_) => {
                    error!("encoder pipeline ended");
                    FAILED.store(true, Ordering::SeqCst);
                    ml.quit();
                }
                _ => {}
            }
            glib::ControlFlow::Continue
        })?;

    if looping {
        loop_seek(&pipeline, gst::SeekFlags::FLUSH).context("segment seek on the file source")?;
    }
    pipeline.set_state(gst::State::Playing)?;
    Ok((pipeline, watch))
}

/// Plays the file from the start as a segment, so its end posts SEGMENT_DONE, not EOS.
fn loop_seek(pipeline: &gst::Pipeline, flags: gst::SeekFlags) -> Result<(), glib::BoolError> {
    pipeline.seek_simple(flags | gst::SeekFlags::SEGMENT, gst::ClockTime::ZERO)
}

fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("storeguard-fakecam");
    }
    // Next to the build output when run from target/<profile>/.
    if let Ok(exe) = std::env::current_exe()
        && let Some(target) = exe
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == "target"))
    {
        return target.join("fakecam-cache");
    }
    PathBuf::from("target/fakecam-cache")
}

/// Transcodes `input` once into the cache; later runs with the same file and settings reuse it.
const ENCODING_VERSION: u32 = 2;

fn cached_transcode(input: &Path, codec: Codec, args: &Args) -> Result<PathBuf> {
    let dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating cache dir {}", dir.display()))?;
    let meta = std::fs::metadata(input).with_context(|| format!("reading {}", input.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let stem = input
        .file_stem()
        .map_or("source".into(), |s| s.to_string_lossy());
    // ENCODING_VERSION changes whenever the encoder settings do, so a stale transcode
    // (e.g. one made with sliced threads) is never reused.
    let name = format!(
        "{stem}-{}-{mtime}-{}-g{}-b{}-e{ENCODING_VERSION}.mp4",
        meta.len(),
        codec.name(),
        args.gop,
        args.bitrate
    );
    let out = dir.join(name);
    if out.is_file() {
        info!(cache = %out.display(), "using cached transcode");
        return Ok(out);
    }
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        out.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    info!(source = %input.display(), out = %out.display(), "transcoding once");
    let started = Instant::now();
    transcode(input, &tmp, codec, args)
        .with_context(|| format!("transcoding {} to {}", input.display(), tmp.display()))?;
    std::fs::rename(&tmp, &out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    info!(secs = started.elapsed().as_secs_f32(), "transcoded");
    Ok(out)
}

fn transcode(input: &Path, out: &Path, codec: Codec, args: &Args) -> Result<()> {
    let desc = format!(
        "filesrc location={} ! decodebin ! videoconvert ! video/x-raw,format=I420 ! {} ! {} ! mp4mux ! filesink location={}",
        quote(input)?,
        // x265 at veryfast took 100 s for the 80 s vtest.avi on 2 cores.
        codec.encoder(
            args.gop,
            args.bitrate,
            if codec == Codec::H265 {
                "ultrafast"
            } else {
                "veryfast"
            }
        ),
        codec.parser(),
        quote(out)?
    );
    let pipeline = gst::parse::launch(&desc)?;
    let bus = pipeline.bus().context("no bus")?;
    pipeline.set_state(gst::State::Playing)?;
    let result = loop {
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(TRANSCODE_TIMEOUT.as_secs()),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) else {
            break Err(anyhow!("no EOS after {TRANSCODE_TIMEOUT:?}"));
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(e) => break Err(anyhow!("{} ({:?})", e.error(), e.debug())),
            _ => {}
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}
