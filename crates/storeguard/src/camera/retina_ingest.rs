//! The retina side of one camera: RTSP over interleaved TCP, depacketized by the
//! `retina` crate on one shared tokio runtime (two workers, whatever the camera count).
//! Access units go from the session task straight into the camera's segment writer.

use super::pipeline::{Live, MAX_CAMERA_SKEW_NS, mono_ns};
use super::timeline::Timeline;
use super::{CameraSource, SourceEvent};
use crate::config::{Camera, mask_url};
use crate::recording::ts::{self, VideoCodec};
use crate::recording::{Frame, SharedWriter, StreamFormat, lock};
use futures_util::StreamExt;
use retina::client::{
    Credentials, InitialTimestampPolicy, PlayOptions, SessionGroup, SessionOptions, SetupOptions,
    TcpTransportOptions, TeardownPolicy, Transport, UnknownRtcpSsrcPolicy,
};
use retina::codec::{CodecItem, ParametersRef, VideoFrame, VideoParametersCodec};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A dead host fails in 5 s, as rtspsrc's tcp-timeout does, so reconnects keep their pace.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reconnect waits for the old session's TEARDOWN: cameras with a session
/// limit refuse the new one while the stale one lives.
const TEARDOWN_WAIT: Duration = Duration::from_secs(2);
const NTP_UNIX_OFFSET_S: i64 = 2_208_988_800;

/// The ingest runtime: a fixed two workers for all cameras. Separate from the daemon's
/// runtime so recording never queues behind control or clip work. Never dropped (a
/// runtime can't be dropped from async code, and the daemon ends by exiting).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(2)
            .thread_name("sg-ingest")
            .enable_all()
            .build()
            .expect("start the ingest runtime")
    })
}

pub struct RetinaCamera {
    ctx: Arc<Static>,
    task: Option<tokio::task::JoinHandle<()>>,
    live: Arc<Live>,
}

/// What stays the same across reconnects.
struct Static {
    id: String,
    url: String,
    creds: Option<Credentials>,
    writer: SharedWriter,
    on_write_error: Arc<dyn Fn() + Send + Sync>,
    /// One group per camera: a reconnect first tears down what the last session left.
    group: Arc<SessionGroup>,
}

impl RetinaCamera {
    pub fn new(
        cam: &Camera,
        writer: SharedWriter,
        on_write_error: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        let creds = cam.username.as_ref().map(|u| Credentials {
            username: u.clone(),
            password: cam
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
        });
        RetinaCamera {
            ctx: Arc::new(Static {
                id: cam.id.clone(),
                url: cam.url.clone(),
                creds,
                writer,
                on_write_error,
                group: Arc::new(SessionGroup::default().named(cam.id.clone())),
            }),
            task: None,
            live: Arc::new(Live::default()),
        }
    }
}

impl CameraSource for RetinaCamera {
    fn start(&mut self) -> Result<(), String> {
        self.stop();
        self.live = Arc::new(Live::default());
        let ctx = self.ctx.clone();
        let live = self.live.clone();
        self.task = Some(runtime().spawn(async move {
            let msg = match session(&ctx, &live).await {
                Ok(()) => "stream ended: camera closed the connection".to_string(),
                Err(e) => e.message(),
            };
            lock(&live.fatal).get_or_insert(msg);
        }));
        Ok(())
    }

    fn stop(&mut self) {
        // Dropping the session inside the aborted task sends its TEARDOWN in the background.
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    fn poll(&mut self) -> Vec<SourceEvent> {
        lock(&self.live.fatal)
            .take()
            .map(SourceEvent::Failed)
            .into_iter()
            .collect()
    }

    fn live(&self) -> &Arc<Live> {
        &self.live
    }
}

impl Drop for RetinaCamera {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a session ended, turned into a technician's message by `message`.
enum Failure {
    Retina(retina::Error),
    Timeout(&'static str),
    Other(String),
}

impl From<retina::Error> for Failure {
    fn from(e: retina::Error) -> Self {
        Failure::Retina(e)
    }
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::Timeout(step) => format!(
                "connection failed: camera unreachable or not answering (no answer to {step} in {} s)",
                CONNECT_TIMEOUT.as_secs()
            ),
            Failure::Other(m) => m.clone(),
            Failure::Retina(e) => describe_error(e),
        }
    }
}

/// retina's messages carry Wireshark-grade context on the lines after the first; the
/// first line says what failed, and a hint says what to check.
fn describe_error(e: &retina::Error) -> String {
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("").trim().to_string();
    let l = full.to_ascii_lowercase();
    let hint = match e.status_code() {
        Some(401) => "authentication failed: check username/password",
        Some(404) => "stream path not found on the camera: check the URL path",
        Some(453 | 503) => {
            "camera refused a new session (its session limit?): retrying once the old one times out"
        }
        Some(_) => "",
        None if l.contains("connection refused") => {
            "connection refused: camera down, or wrong IP address or port"
        }
        None if l.contains("unable to connect") => {
            "connection failed: camera unreachable or not answering (check power, cabling, IP address and port)"
        }
        None if l.contains("error reading from rtsp peer")
            || l.contains("eof")
            || l.contains("connection reset")
            || l.contains("broken pipe") =>
        {
            "stream ended: camera closed the connection"
        }
        None => "",
    };
    if hint.is_empty() {
        first
    } else {
        format!("{hint} ({first})")
    }
}

fn parse_url(raw: &str) -> Result<url::Url, Failure> {
    let mut u = url::Url::parse(raw)
        .map_err(|e| Failure::Other(format!("{}: not a valid URL: {e}", mask_url(raw))))?;
    // rtspt:// is RTSP over TCP, which is what retina speaks anyway.
    if u.scheme() == "rtspt" {
        let _ = u.set_scheme("rtsp");
    }
    Ok(u)
}

/// Pulls credentials out of the URL (`rtsp://user:pw@host/`): retina takes them apart.
fn split_creds(mut u: url::Url) -> (url::Url, Option<Credentials>) {
    if u.username().is_empty() && u.password().is_none() {
        return (u, None);
    }
    let c = Credentials {
        username: percent_decode(u.username()),
        password: percent_decode(u.password().unwrap_or("")),
    };
    let _ = u.set_username("");
    let _ = u.set_password(None);
    (u, Some(c))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn timed<T>(
    step: &'static str,
    f: impl std::future::Future<Output = Result<T, retina::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(CONNECT_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Failure::Timeout(step)),
    }
}

/// One RTSP session, from DESCRIBE to the end of the stream.
async fn session(ctx: &Static, live: &Live) -> Result<(), Failure> {
    if ctx.group.stale_sessions().num_sessions > 0 {
        // Best effort: a camera that never answers the TEARDOWN times the session out.
        let _ = tokio::time::timeout(TEARDOWN_WAIT, ctx.group.await_teardown()).await;
    }
    let (url, url_creds) = split_creds(parse_url(&ctx.url)?);
    let opts = SessionOptions::default()
        .creds(ctx.creds.clone().or(url_creds))
        .session_group(ctx.group.clone())
        // Also on a fresh connection when the old one is gone: a camera with a session
        // limit refuses us until the stale session is torn down or times out.
        .teardown(TeardownPolicy::Always)
        .user_agent(format!("storeguard/{}", storeguard_base::VERSION));
    let mut described = timed("DESCRIBE", retina::client::Session::describe(url, opts)).await?;
    let Some(i) = described
        .streams()
        .iter()
        .position(|s| s.media() == "video")
    else {
        return Err(Failure::Other(
            "the camera's stream has no video track".into(),
        ));
    };
    let enc = described.streams()[i].encoding_name().to_ascii_uppercase();
    let codec = match enc.as_str() {
        "H264" => VideoCodec::H264,
        "H265" => VideoCodec::H265,
        other => {
            return Err(Failure::Other(format!(
                "unsupported codec: camera sends {} video; only H.264 and H.265 can be recorded without transcoding — set the camera's encoder to H.264 or H.265",
                if other.is_empty() {
                    "an unknown kind of"
                } else {
                    other
                }
            )));
        }
    };
    timed(
        "SETUP",
        described.setup(
            i,
            SetupOptions::default().transport(Transport::Tcp(TcpTransportOptions::default())),
        ),
    )
    .await?;
    // A missing or wrong RTP-Info rtptime is ignored: the first packet is media time 0.
    // RTCP for an SSRC we don't know (cameras that restart their encoder) is dropped.
    let play = PlayOptions::default()
        .initial_timestamp(InitialTimestampPolicy::Ignore)
        .unknown_rtcp_ssrc(UnknownRtcpSsrcPolicy::DropPackets);
    let playing = timed("PLAY", described.play(play)).await?;
    let mut demuxed = playing.demuxed()?;
    let mut st = StreamState::new(&ctx.id, codec);
    while let Some(item) = demuxed.next().await {
        match item? {
            CodecItem::VideoFrame(f) if f.stream_id() == i => {
                if st.params.is_none() || f.has_new_parameters() {
                    st.new_parameters(demuxed.streams()[i].parameters(), ctx, live);
                }
                st.frame(f, ctx, live);
            }
            CodecItem::Rtcp(r) if r.stream_id() == i => st.rtcp(&r),
            _ => {}
        }
    }
    Ok(())
}

/// Per-session state of the frame path.
struct StreamState {
    camera: String,
    codec: VideoCodec,
    /// VPS/SPS/PPS in Annex B, put in front of keyframes that don't carry their own.
    params: Option<Vec<u8>>,
    format: Option<StreamFormat>,
    timeline: Timeline,
    /// Last SR: (camera UTC ns, RTP time elapsed in ticks, clock rate).
    sr: Option<(i64, i64, u32)>,
    skew_warned: bool,
    source: &'static str,
    /// The camera's clock minus the box clock, from the last sender report.
    camera_offset: Option<i64>,
    /// After a loss, frames are skipped up to the next keyframe: what follows a hole
    /// refers to pictures the decoder never got.
    need_keyframe: bool,
    /// Decode-order timestamps, synthesised: RTP carries presentation time only.
    last_dts: Option<i64>,
    max_pts: Option<i64>,
    /// How far presentation runs ahead of decode order (B-frames), once seen.
    reorder_ns: i64,
}

impl StreamState {
    fn new(camera: &str, codec: VideoCodec) -> Self {
        StreamState {
            camera: camera.to_string(),
            codec,
            params: None,
            format: None,
            timeline: Timeline::new(500_000_000),
            sr: None,
            skew_warned: false,
            source: "arrival",
            camera_offset: None,
            need_keyframe: false,
            last_dts: None,
            max_pts: None,
            reorder_ns: 0,
        }
    }

    fn new_parameters(&mut self, p: Option<ParametersRef<'_>>, ctx: &Static, live: &Live) {
        let Some(ParametersRef::Video(v)) = p else {
            return;
        };
        let mut annexb = Vec::new();
        let mut push = |nal: &[u8]| {
            annexb.extend_from_slice(&[0, 0, 0, 1]);
            annexb.extend_from_slice(nal);
        };
        match v.codec_params() {
            VideoParametersCodec::H264 { sps, pps } => {
                push(sps);
                push(pps);
            }
            VideoParametersCodec::H265 { vps, sps, pps } => {
                push(vps);
                push(sps);
                push(pps);
            }
            _ => {}
        }
        self.params = Some(annexb);
        let (w, h) = v.pixel_dimensions();
        let f = StreamFormat {
            codec: self.codec,
            width: w,
            height: h,
        };
        if self.format != Some(f) {
            tracing::info!(camera = %self.camera, codec = ?f.codec, width = f.width, height = f.height, "stream format");
            lock(&ctx.writer).set_format(f);
            *lock(&live.format) = Some(f);
            self.format = Some(f);
        }
    }

    fn rtcp(&mut self, r: &retina::rtcp::ReceivedCompoundPacket) {
        let Some(ts) = r.rtp_timestamp() else { return };
        for pkt in r.pkts() {
            if let Ok(Some(sr)) = pkt.as_sender_report() {
                let ntp = sr.ntp_timestamp().0;
                if ntp == 0 {
                    continue;
                }
                let secs = (ntp >> 32) as i64 - NTP_UNIX_OFFSET_S;
                let frac = ((ntp & 0xFFFF_FFFF) as u128 * 1_000_000_000 / (1u128 << 32)) as i64;
                self.sr = Some((
                    secs * 1_000_000_000 + frac,
                    ts.elapsed(),
                    ts.clock_rate().get(),
                ));
            }
        }
    }

    fn frame(&mut self, f: VideoFrame, ctx: &Static, live: &Live) {
        let lost = f.loss();
        let rap = f.is_random_access_point();
        let stamp = f.timestamp();
        let arrival = storeguard_base::clock::from_system_ns(wall_ns(f.end_ctx().received_wall()));
        let mut data = f.into_data();
        if !to_annex_b(&mut data) {
            live.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(camera = %self.camera, "malformed frame from the depacketizer; dropped");
            return;
        }
        // retina 0.4.21 flags only IDR pictures in H.265; CRA and BLA keyframes (x265's
        // default open GOP) are found by our own NAL scan.
        let keyframe = rap || ts::is_keyframe(self.codec, &data);
        if lost > 0 {
            // retina discarded the frame the lost packets belonged to.
            live.dropped.fetch_add(1, Ordering::Relaxed);
            if !keyframe {
                self.need_keyframe = true;
                tracing::debug!(camera = %self.camera, lost_packets = lost, "packet loss; skipping to the next keyframe");
            }
        }
        if self.need_keyframe && !keyframe {
            live.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.need_keyframe = false;
        if self.format.is_none() {
            // No SPS yet (neither in the SDP nor in-band): nothing to describe it with.
            live.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let rate = stamp.clock_rate().get() as i128;
        let pts = (stamp.elapsed() as i128 * 1_000_000_000 / rate) as i64;
        let dts = self.decode_time(pts);
        let reference = dts.unwrap_or(pts);
        let est = self.estimate(stamp.elapsed(), pts, reference, arrival, ctx);
        if let Some(o) = self.camera_offset {
            live.set_camera_offset(o);
        }
        let clock = storeguard_base::clock::box_clock();
        let box_time = self.source == "arrival";
        let mapped = self
            .timeline
            .map_on(pts, dts, est, box_time, keyframe, clock);
        if let Some((epoch, moved)) = mapped.rebase {
            lock(&ctx.writer).rebase(epoch, moved);
        }
        if let Some(step) = mapped.step_ns {
            live.clock_steps.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(camera = %self.camera, step_ms = step / 1_000_000, "clock step: camera media time and box time drifted apart; re-anchored");
        }
        if keyframe
            && let Some(p) = &self.params
            && !has_sps(self.codec, &data)
        {
            let mut with = Vec::with_capacity(p.len() + data.len());
            with.extend_from_slice(p);
            with.extend_from_slice(&data);
            data = with;
        }
        let frame = Frame {
            data: &data,
            pts_utc_ns: mapped.pts_utc,
            dts_utc_ns: mapped.dts_utc.filter(|d| *d != mapped.pts_utc),
            keyframe,
        };
        let r = lock(&ctx.writer).write(&frame);
        if let Err(e) = r {
            tracing::error!(camera = %self.camera, error = %e, "writing recording failed; evicting and continuing with a new segment");
            (ctx.on_write_error)();
        }
        live.frames.fetch_add(1, Ordering::Relaxed);
        live.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        live.last_frame_mono.store(mono_ns(), Ordering::Relaxed);
        live.last_frame_utc.store(mapped.pts_utc, Ordering::Relaxed);
    }

    /// RTP has no decode timestamps. Without B-frames presentation order is decode
    /// order and none is needed; once a frame shows up earlier than one before it, decode
    /// time runs `reorder` behind presentation time, strictly increasing.
    fn decode_time(&mut self, pts: i64) -> Option<i64> {
        if let Some(max) = self.max_pts
            && pts < max
        {
            // Twice the lag seen, so the next B-frames fit under their own PTS.
            self.reorder_ns = self.reorder_ns.max(2 * (max - pts));
        }
        self.max_pts = Some(self.max_pts.map_or(pts, |m| m.max(pts)));
        if self.reorder_ns == 0 {
            self.last_dts = Some(pts);
            return None;
        }
        let floor = self.last_dts.map_or(i64::MIN, |d| d + 1_000_000);
        let dts = (pts - self.reorder_ns).max(floor);
        self.last_dts = Some(dts);
        Some(dts)
    }

    /// Wall-clock estimate for the frame's decode reference: the camera's clock from its
    /// RTCP sender reports when that agrees with ours within 2 s, else arrival time.
    fn estimate(
        &mut self,
        ticks: i64,
        pts: i64,
        reference: i64,
        arrival: i64,
        ctx: &Static,
    ) -> i64 {
        let Some((sr_ns, sr_ticks, rate)) = self.sr else {
            return arrival;
        };
        let cam = sr_ns + ((ticks - sr_ticks) as i128 * 1_000_000_000 / rate as i128) as i64
            - (pts - reference);
        self.camera_offset = Some(cam - arrival);
        if (cam - arrival).abs() <= MAX_CAMERA_SKEW_NS {
            if self.source != "ntp" {
                self.source = "ntp";
                tracing::info!(camera = %self.camera, skew_ms = (cam - arrival) / 1_000_000, "using the camera's NTP clock from RTCP sender reports");
                lock(&ctx.writer).set_time_source("ntp");
            }
            return cam;
        }
        if !self.skew_warned {
            self.skew_warned = true;
            tracing::warn!(camera = %self.camera, skew_s = (cam - arrival) / 1_000_000_000,
                "camera clock disagrees with the box clock; recording with box time (set the camera's NTP server)");
        }
        if self.source != "arrival" {
            self.source = "arrival";
            lock(&ctx.writer).set_time_source("arrival");
        }
        arrival
    }
}

fn wall_ns(w: retina::WallTime) -> i64 {
    let t: std::time::SystemTime = w.into();
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// 4-byte length prefixes to Annex B start codes, in place (both are 4 bytes). False if
/// a length runs past the end.
pub fn to_annex_b(data: &mut [u8]) -> bool {
    let mut i = 0;
    while i < data.len() {
        let Some(h) = data.get(i..i + 4) else {
            return false;
        };
        let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        data[i..i + 4].copy_from_slice(&[0, 0, 0, 1]);
        i += 4 + n;
    }
    i == data.len()
}

/// Whether an Annex B access unit already carries its SPS (in-band parameter sets).
fn has_sps(codec: VideoCodec, au: &[u8]) -> bool {
    ts::parameter_sets(codec, au).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixes_become_start_codes() {
        let mut v = vec![0, 0, 0, 2, 0x65, 0xAA, 0, 0, 0, 1, 0x41];
        assert!(to_annex_b(&mut v));
        assert_eq!(v, [0, 0, 0, 1, 0x65, 0xAA, 0, 0, 0, 1, 0x41]);
        let mut bad = vec![0, 0, 0, 9, 0x65];
        assert!(!to_annex_b(&mut bad));
    }

    #[test]
    fn decode_time_only_with_reordering() {
        let mut s = StreamState::new("c", VideoCodec::H264);
        const F: i64 = 66_666_667;
        assert_eq!(s.decode_time(0), None);
        assert_eq!(s.decode_time(F), None);
        // I P B B: the B-frames come after the P they precede. Until the first B-frame
        // shows, decode time is presentation time.
        let mut last = i64::MIN;
        for pts in [
            4 * F,
            2 * F,
            3 * F,
            7 * F,
            5 * F,
            6 * F,
            10 * F,
            8 * F,
            9 * F,
        ] {
            let d = s.decode_time(pts).unwrap_or(pts);
            assert!(d > last, "decode time increases: {d} after {last}");
            last = d;
            if pts >= 5 * F {
                assert!(d <= pts, "dts {d} after pts {pts}");
            }
        }
    }

    #[test]
    fn credentials_leave_the_url() {
        let u = url::Url::parse("rtsp://admin:p%40ss@10.0.0.5/stream").unwrap();
        let (u, c) = split_creds(u);
        assert_eq!(u.as_str(), "rtsp://10.0.0.5/stream");
        let c = c.unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("admin", "p@ss")
        );
    }
}
