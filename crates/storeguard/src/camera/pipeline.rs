//! The GStreamer side of one camera: `rtspsrc ! depay ! parse ! appsink`, never decoding.
//! Access units go straight from the appsink callback into the camera's segment writer.

use super::timeline::Timeline;
use super::{CameraSource, SourceEvent};
use crate::config::{Camera, Transport, mask_url};
use crate::recording::ts::VideoCodec;
use crate::recording::{Frame, SharedWriter, StreamFormat, lock};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters the streaming thread updates and the supervisor reads without locking.
#[derive(Default)]
pub struct Live {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    /// Monotonic ns (see `mono_ns`) of the last frame; 0 = none yet.
    pub last_frame_mono: AtomicU64,
    pub last_frame_utc: AtomicI64,
    pub clock_steps: AtomicU64,
    /// Frames not recorded: lost packets, or waiting for a keyframe after a loss.
    pub dropped: AtomicU64,
    pub format: Mutex<Option<StreamFormat>>,
    /// Set by the streaming thread when it can't go on (unsupported codec, disk).
    pub fatal: Mutex<Option<String>>,
    /// The camera's own clock minus the box clock (ns), from its RTCP sender reports;
    /// valid once `camera_offset_known`.
    pub camera_offset_ns: AtomicI64,
    pub camera_offset_known: std::sync::atomic::AtomicBool,
}

impl Live {
    pub fn set_camera_offset(&self, ns: i64) {
        self.camera_offset_ns.store(ns, Ordering::Relaxed);
        self.camera_offset_known.store(true, Ordering::Relaxed);
    }

    /// The camera's clock minus the box clock, once a sender report said.
    pub fn camera_offset(&self) -> Option<i64> {
        self.camera_offset_known
            .load(Ordering::Relaxed)
            .then(|| self.camera_offset_ns.load(Ordering::Relaxed))
    }
}

pub use storeguard_base::clock::monotonic_ns as mono_ns;

fn realtime_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Where the camera's frames go besides the recording (detection, later).
pub type FrameTap = Arc<dyn Fn(&str, &Frame<'_>) + Send + Sync>;

pub struct GstCamera {
    id: String,
    url: String,
    username: Option<String>,
    password: Option<String>,
    transport: Transport,
    writer: SharedWriter,
    on_write_error: Arc<dyn Fn() + Send + Sync>,
    pipeline: Option<gst::Pipeline>,
    started: std::time::Instant,
    live: Arc<Live>,
}

impl GstCamera {
    pub fn new(
        cam: &Camera,
        writer: SharedWriter,
        on_write_error: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        GstCamera {
            id: cam.id.clone(),
            url: cam.url.clone(),
            username: cam.username.clone(),
            password: cam.password.as_ref().map(|p| p.expose().to_string()),
            transport: cam.transport,
            writer,
            on_write_error,
            pipeline: None,
            started: std::time::Instant::now(),
            live: Arc::new(Live::default()),
        }
    }

    fn build(&self) -> Result<gst::Pipeline, String> {
        let p = gst::Pipeline::with_name(&format!("cam-{}", self.id));
        let src = gst::ElementFactory::make("rtspsrc")
            .property("location", &self.url)
            .property("latency", 200u32)
            // Fail a dead host in 5 s instead of 20, so reconnects keep their pace.
            .property("tcp-timeout", 5_000_000u64)
            .property("teardown-timeout", gst::ClockTime::from_mseconds(200))
            .property("do-rtcp", true)
            .build()
            .map_err(|e| {
                format!("rtspsrc unavailable (gstreamer1.0-plugins-good missing?): {e}")
            })?;
        src.set_property_from_str(
            "protocols",
            if self.transport == Transport::Tcp {
                "tcp"
            } else {
                "udp"
            },
        );
        if let Some(u) = &self.username {
            src.set_property("user-id", u);
        }
        if let Some(pw) = &self.password {
            src.set_property("user-pw", pw);
        }
        p.add(&src).map_err(|e| e.to_string())?;

        let ctx = Arc::new(Ctx {
            camera: self.id.clone(),
            writer: self.writer.clone(),
            live: self.live.clone(),
            on_write_error: self.on_write_error.clone(),
            timeline: Mutex::new(Timeline::new(500_000_000)),
            last_caps: Mutex::new(None),
            ntp: Mutex::new(NtpMap {
                source: "arrival",
                ..Default::default()
            }),
            last_rt: Mutex::new(None),
        });
        let c = ctx.clone();
        src.connect("new-manager", false, move |args| {
            if let Some(bin) = args.get(1).and_then(|v| v.get::<gst::Element>().ok()) {
                lock(&c.ntp).rtpbin = Some(bin.downgrade());
            }
            None
        });
        let pw = p.downgrade();
        src.connect_pad_added(move |_src, pad| {
            let Some(pipeline) = pw.upgrade() else { return };
            if let Err(e) = link_stream(&pipeline, pad, ctx.clone()) {
                // The supervisor logs it (once) with the camera's URL.
                lock(&ctx.live.fatal).get_or_insert(e);
            }
        });
        Ok(p)
    }
}

struct Ctx {
    camera: String,
    writer: SharedWriter,
    live: Arc<Live>,
    on_write_error: Arc<dyn Fn() + Send + Sync>,
    timeline: Mutex<Timeline>,
    last_caps: Mutex<Option<gst::Caps>>,
    ntp: Mutex<NtpMap>,
    /// Running time of the latest frame, for frames that arrive without a timestamp.
    last_rt: Mutex<Option<i64>>,
}

/// Camera wall clock from RTCP sender reports: the last SR's (NTP, RTP) pair, plus the
/// latest (running time, RTP timestamp) pair seen on the RTP packets.
#[derive(Default)]
struct NtpMap {
    rtpbin: Option<gst::glib::WeakRef<gst::Element>>,
    /// (ntp as unix ns, rtp timestamp, clock rate)
    sr: Option<(i64, u32, u32)>,
    /// (running time ns, rtp timestamp) of the latest RTP packet.
    packet: Option<(i64, u32)>,
    polled_mono: u64,
    /// Warned once that the camera clock is off; box time is used meanwhile.
    skew_warned: bool,
    source: &'static str,
}

/// Camera time more than this away from box time is not trusted (camera clocks are
/// often unset or in the wrong zone); we fall back to arrival time.
pub(crate) const MAX_CAMERA_SKEW_NS: i64 = 2_000_000_000;
const NTP_UNIX_OFFSET_S: i64 = 2_208_988_800;

impl NtpMap {
    /// Refreshes the SR from the RTP session's statistics, at most every 2 s.
    fn poll_sr(&mut self) {
        let now = mono_ns();
        if now.saturating_sub(self.polled_mono) < 2_000_000_000 {
            return;
        }
        self.polled_mono = now;
        let Some(bin) = self.rtpbin.as_ref().and_then(|w| w.upgrade()) else {
            return;
        };
        let session =
            bin.emit_by_name::<Option<gst::glib::Object>>("get-internal-session", &[&0u32]);
        let Some(session) = session else { return };
        let stats = session.property::<gst::Structure>("stats");
        let Ok(sources) = stats.get::<gst::glib::ValueArray>("source-stats") else {
            return;
        };
        for v in sources.iter() {
            let Ok(st) = v.get::<gst::Structure>() else {
                continue;
            };
            let sender = st.get::<bool>("is-sender").unwrap_or(false);
            let have_sr = st.get::<bool>("have-sr").unwrap_or(false);
            if !(sender && have_sr) {
                continue;
            }
            let (Ok(ntp), Ok(rtp), Ok(rate)) = (
                st.get::<u64>("sr-ntptime"),
                st.get::<u32>("sr-rtptime"),
                st.get::<i32>("clock-rate"),
            ) else {
                continue;
            };
            if rate <= 0 || ntp == 0 {
                continue;
            }
            let secs = (ntp >> 32) as i64 - NTP_UNIX_OFFSET_S;
            let frac = ((ntp & 0xFFFF_FFFF) as u128 * 1_000_000_000 / (1u128 << 32)) as i64;
            self.sr = Some((secs * 1_000_000_000 + frac, rtp, rate as u32));
        }
    }

    /// The camera's wall-clock estimate for running time `rt`, if an SR is known.
    fn camera_utc(&self, rt: i64) -> Option<i64> {
        let (sr_ns, sr_rtp, rate) = self.sr?;
        let (pkt_rt, pkt_rtp) = self.packet?;
        let d_ticks = pkt_rtp.wrapping_sub(sr_rtp) as i32 as i64;
        let pkt_utc = sr_ns + d_ticks * 1_000_000_000 / rate as i64;
        Some(pkt_utc + (rt - pkt_rt))
    }
}

fn link_stream(pipeline: &gst::Pipeline, pad: &gst::Pad, ctx: Arc<Ctx>) -> Result<(), String> {
    let caps = pad.current_caps().ok_or("stream pad without caps")?;
    let s = caps.structure(0).ok_or("empty caps")?;
    let media = s.get::<&str>("media").unwrap_or("");
    let enc = s
        .get::<&str>("encoding-name")
        .unwrap_or("")
        .to_ascii_uppercase();
    let make = |f: &str| {
        gst::ElementFactory::make(f)
            .build()
            .map_err(|e| format!("{f}: {e}"))
    };
    if media != "video" {
        // Audio and metadata tracks are not recorded; sink them so the source doesn't stall.
        let sink = make("fakesink")?;
        sink.set_property("async", false);
        pipeline.add(&sink).map_err(|e| e.to_string())?;
        sink.sync_state_with_parent().map_err(|e| e.to_string())?;
        return pad
            .link(&sink.static_pad("sink").unwrap())
            .map(|_| ())
            .map_err(|e| format!("{e:?}"));
    }
    let (depay, parse, caps_name) = match enc.as_str() {
        "H264" => ("rtph264depay", "h264parse", "video/x-h264"),
        "H265" => ("rtph265depay", "h265parse", "video/x-h265"),
        other => {
            return Err(format!(
                "unsupported codec: camera sends {} video; only H.264 and H.265 can be recorded without transcoding — set the camera's encoder to H.264 or H.265",
                if other.is_empty() {
                    "an unknown kind of"
                } else {
                    other
                }
            ));
        }
    };
    let depay = make(depay)?;
    let parse = gst::ElementFactory::make(parse)
        .property("config-interval", -1i32)
        .build()
        .map_err(|e| format!("{parse}: {e} (gstreamer1.0-plugins-bad missing?)"))?;
    let sink = gst_app::AppSink::builder()
        .caps(
            &gst::Caps::builder(caps_name)
                .field("stream-format", "byte-stream")
                .field("alignment", "au")
                .build(),
        )
        .sync(false)
        .max_buffers(200)
        .build();
    let elems = [&depay, &parse, sink.upcast_ref()];
    pipeline.add_many(elems).map_err(|e| e.to_string())?;
    gst::Element::link_many(elems).map_err(|e| e.to_string())?;
    let c = ctx.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                on_sample(sink, &c)
                    .map(|_| gst::FlowSuccess::Ok)
                    .map_err(|_| gst::FlowError::Error)
            })
            .build(),
    );
    for e in elems {
        e.sync_state_with_parent().map_err(|e| e.to_string())?;
    }
    let depay_sink = depay
        .static_pad("sink")
        .ok_or("depayloader without sink pad")?;
    let c = ctx.clone();
    depay_sink.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_pad, info| {
            // Remember (running time, RTP timestamp) so frames can be mapped to the camera's
            // NTP clock from its sender reports. Only a frame's last (marker) packet is
            // looked at: one lock per frame, not one per packet.
            let last = match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => Some(b.as_ref()),
                Some(gst::PadProbeData::BufferList(l)) => l.iter().last(),
                _ => None,
            };
            if let Some(buf) = last
                && let Some(pts) = buf.pts()
                && let Ok(map) = buf.map_readable()
                && map.len() >= 8
                && map[1] & 0x80 != 0
            {
                let rtp = u32::from_be_bytes([map[4], map[5], map[6], map[7]]);
                lock(&c.ntp).packet = Some((pts.nseconds() as i64, rtp));
            }
            gst::PadProbeReturn::Ok
        },
    );
    pad.link(&depay_sink)
        .map(|_| ())
        .map_err(|e| format!("linking camera stream: {e:?}"))
}

fn on_sample(sink: &gst_app::AppSink, ctx: &Ctx) -> Result<(), ()> {
    let sample = sink.pull_sample().map_err(|_| ())?;
    let buffer = sample.buffer().ok_or(())?;
    let caps = sample.caps();
    {
        let mut last = lock(&ctx.last_caps);
        // Pointer comparison: the caps object only changes when the format does.
        if let Some(caps) = caps
            && last.as_ref().map(|c| c.as_ptr()) != Some(caps.as_ptr())
        {
            if let Some(f) = stream_format(caps) {
                let mut known = lock(&ctx.live.format);
                if *known != Some(f) {
                    tracing::info!(camera = %ctx.camera, codec = ?f.codec, width = f.width, height = f.height, "stream format");
                    lock(&ctx.writer).set_format(f);
                    *known = Some(f);
                }
            }
            *last = Some(caps.to_owned());
        }
    }
    let segment = sample
        .segment()
        .and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned());
    let rt = |t: Option<gst::ClockTime>| -> Option<i64> {
        let t = t?;
        let r = segment
            .as_ref()
            .map(|s| s.to_running_time(t))
            .unwrap_or(Some(t))?;
        Some(r.nseconds() as i64)
    };
    // Some cameras (and depayloaders fed repeated RTP timestamps) leave a frame without
    // any timestamp: place it one frame after the previous one rather than drop it.
    let (pts, dts) = match (rt(buffer.pts()), rt(buffer.dts())) {
        (Some(p), d) => (p, d),
        (None, Some(d)) => (d, Some(d)),
        (None, None) => {
            let Some(prev) = *lock(&ctx.last_rt) else {
                return Ok(());
            };
            (prev + 66_666_667, None)
        }
    };
    {
        let mut last = lock(&ctx.last_rt);
        *last = Some(last.map_or(dts.unwrap_or(pts), |l| l.max(dts.unwrap_or(pts))));
    }
    // Arrival-based UTC of this frame: now, minus how long ago its timestamp was.
    let clock_now = sink.clock().map(|c| c.time().nseconds() as i64);
    let base = sink.base_time().map(|t| t.nseconds() as i64);
    let now = storeguard_base::clock::from_system_ns(realtime_ns());
    let arrival = match (clock_now, base) {
        (Some(c), Some(b)) => now - (c - (b + dts.unwrap_or(pts))).max(0),
        _ => now,
    };
    // Prefer the camera's own clock (RTCP SR) when it agrees with ours within 2 s.
    let est = {
        let mut ntp = lock(&ctx.ntp);
        ntp.poll_sr();
        let cam = ntp.camera_utc(dts.unwrap_or(pts));
        if let Some(c) = cam {
            ctx.live.set_camera_offset(c - arrival);
        }
        match cam {
            Some(cam) if (cam - arrival).abs() <= MAX_CAMERA_SKEW_NS => {
                if ntp.source != "ntp" {
                    ntp.source = "ntp";
                    tracing::info!(camera = %ctx.camera, skew_ms = (cam - arrival) / 1_000_000, "using the camera's NTP clock from RTCP sender reports");
                    lock(&ctx.writer).set_time_source("ntp");
                }
                cam
            }
            Some(cam) => {
                if !ntp.skew_warned {
                    ntp.skew_warned = true;
                    tracing::warn!(camera = %ctx.camera, skew_s = (cam - arrival) / 1_000_000_000,
                        "camera clock disagrees with the box clock; recording with box time (set the camera's NTP server)");
                }
                if ntp.source != "arrival" {
                    ntp.source = "arrival";
                    lock(&ctx.writer).set_time_source("arrival");
                }
                arrival
            }
            None => arrival,
        }
    };
    let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
    let box_time = lock(&ctx.ntp).source == "arrival";
    let clock = storeguard_base::clock::box_clock();
    let mapped = lock(&ctx.timeline).map_on(pts, dts, est, box_time, keyframe, clock);
    if let Some((epoch, moved)) = mapped.rebase {
        lock(&ctx.writer).rebase(epoch, moved);
    }
    if let Some(step) = mapped.step_ns {
        ctx.live.clock_steps.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(camera = %ctx.camera, step_ms = step / 1_000_000, "clock step: camera media time and box time drifted apart; re-anchored");
    }
    let map = buffer.map_readable().map_err(|_| ())?;
    let frame = Frame {
        data: map.as_slice(),
        pts_utc_ns: mapped.pts_utc,
        dts_utc_ns: mapped.dts_utc.filter(|d| *d != mapped.pts_utc),
        keyframe,
    };
    let r = lock(&ctx.writer).write(&frame);
    if let Err(e) = r {
        tracing::error!(camera = %ctx.camera, error = %e, "writing recording failed; evicting and continuing with a new segment");
        (ctx.on_write_error)();
    }
    ctx.live.frames.fetch_add(1, Ordering::Relaxed);
    ctx.live
        .bytes
        .fetch_add(map.len() as u64, Ordering::Relaxed);
    ctx.live.last_frame_mono.store(mono_ns(), Ordering::Relaxed);
    ctx.live
        .last_frame_utc
        .store(mapped.pts_utc, Ordering::Relaxed);
    Ok(())
}

fn stream_format(caps: &gst::CapsRef) -> Option<StreamFormat> {
    let s = caps.structure(0)?;
    let codec = match s.name().as_str() {
        "video/x-h264" => VideoCodec::H264,
        "video/x-h265" => VideoCodec::H265,
        _ => return None,
    };
    Some(StreamFormat {
        codec,
        width: s.get::<i32>("width").unwrap_or(0).max(0) as u32,
        height: s.get::<i32>("height").unwrap_or(0).max(0) as u32,
    })
}

impl CameraSource for GstCamera {
    fn start(&mut self) -> Result<(), String> {
        self.stop();
        self.live = Arc::new(Live::default());
        self.started = std::time::Instant::now();
        let p = self.build()?;
        p.set_state(gst::State::Playing)
            .map_err(|_| format!("{}: pipeline refused to start", mask_url(&self.url)))?;
        self.pipeline = Some(p);
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(p) = self.pipeline.take() {
            let _ = p.set_state(gst::State::Null);
        }
    }

    /// At most one failure per poll: the first is the cause, and what follows it (a
    /// not-linked error after an unsupported codec, EOS after an error) would only
    /// overwrite it and count as extra reconnects.
    fn poll(&mut self) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        if let Some(msg) = lock(&self.live.fatal).take() {
            out.push(SourceEvent::Failed(msg));
        }
        let Some(p) = &self.pipeline else { return out };
        let Some(bus) = p.bus() else { return out };
        while let Some(m) = bus.pop() {
            use gst::MessageView;
            match m.view() {
                MessageView::Error(e) if out.is_empty() => {
                    let debug = e.debug().map(|d| d.to_string()).unwrap_or_default();
                    out.push(SourceEvent::Failed(describe_error(
                        &e.error().to_string(),
                        &debug,
                        self.started.elapsed(),
                    )));
                }
                MessageView::Error(e) => {
                    tracing::debug!(camera = %self.id, error = %e.error(), "further pipeline error");
                }
                // rtspsrc reports a server that went away as EOS, not as an error.
                MessageView::Eos(_) if out.is_empty() => out.push(SourceEvent::Failed(
                    "stream ended: camera closed the connection".into(),
                )),
                MessageView::Warning(w) => {
                    tracing::debug!(camera = %self.id, warning = %w.error(), "pipeline warning");
                }
                _ => {}
            }
        }
        out
    }

    fn live(&self) -> &Arc<Live> {
        &self.live
    }
}

impl Drop for GstCamera {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Turns GStreamer's error text into something a technician can act on. `elapsed`:
/// time since the attempt started. rtspsrc says only "Failed to connect. (Generic
/// error)" both for a refused connection, which fails at once, and for a host that
/// doesn't answer, which fails after seconds, so the time tells them apart.
fn describe_error(msg: &str, debug: &str, elapsed: std::time::Duration) -> String {
    let d = debug.to_ascii_lowercase();
    let hint = if d.contains("401") || d.contains("unauthorized") {
        "authentication failed: check username/password"
    } else if d.contains("404") || d.contains("not found") {
        "stream path not found on the camera: check the URL path"
    } else if d.contains("connection refused")
        || (d.contains("failed to connect")
            && d.contains("generic error")
            && elapsed < std::time::Duration::from_secs(1))
    {
        "connection refused: camera down, or wrong IP address or port"
    } else if d.contains("timeout")
        || d.contains("timed out")
        || d.contains("no route")
        || d.contains("unreachable")
        || d.contains("failed to connect")
    {
        "connection failed: camera unreachable or not answering (check power, cabling, IP address and port)"
    } else {
        ""
    };
    let first_debug = debug.lines().last().unwrap_or("").trim();
    match (hint.is_empty(), first_debug.is_empty()) {
        (false, _) => format!("{hint} ({msg})"),
        (true, false) => format!("{msg}: {first_debug}"),
        (true, true) => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::describe_error;
    use std::time::Duration;

    const CONNECT: &str = "Could not open resource for reading and writing.";

    #[test]
    fn errors_name_their_cause() {
        let quick = Duration::from_millis(20);
        let slow = Duration::from_secs(3);
        let d = |debug: &str, t| describe_error(CONNECT, debug, t);
        assert!(d("gstrtspsrc.c: Unauthorized (401)", quick).starts_with("authentication failed"));
        assert!(d("gstrtspsrc.c: Not found (404)", quick).starts_with("stream path not found"));
        let generic =
            "gstrtspsrc.c(8336): gst_rtspsrc_retrieve_sdp ():\nFailed to connect. (Generic error)";
        assert!(d(generic, quick).starts_with("connection refused"));
        assert!(d(generic, slow).starts_with("connection failed: camera unreachable"));
        let timeout = "Could not receive message. (Timeout while waiting for server response)";
        assert!(d(timeout, slow).starts_with("connection failed"));
        assert_eq!(describe_error("odd", "", quick), "odd");
    }
}
