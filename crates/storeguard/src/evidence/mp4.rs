//! Cut a clip out of MPEG-TS segments into a faststart MP4, without transcoding.
//!
//! The TS packets of the video PID are unpacked here (PES reassembly and 33-bit PTS/DTS
//! handling) and the elementary stream goes through GStreamer:
//! `appsrc ! h264parse|h265parse ! mp4mux faststart=true ! filesink`.
//! `tsdemux` is deliberately not used: it smooths PCR/PTS jumps between concatenated pieces
//! into a continuous timeline (a 2.1 s camera gap came out as 0.5 s), which would hide gaps
//! in evidence. Here every source timestamp is kept: a forward jump stays a jump, so the MP4
//! timeline is wall-clock faithful and players hold the last frame across a gap. A backward
//! jump (the recorder restarted its clock) cannot be placed in time; such a frame follows its
//! predecessor by one frame interval and is reported in [`Mp4Info::discontinuities`].

use crate::recording::ts::{parse_timestamp, read_full};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::{fsync_dir, parent_dir};

const TS_PACKET: usize = 188;
const PTS_MASK: u64 = (1 << 33) - 1;
/// Source bytes read per `read` call.
const READ_CHUNK: usize = TS_PACKET * 4096;
/// How much elementary stream may wait in appsrc before we stop reading.
const MAX_QUEUED_BYTES: u64 = 8 << 20;
/// Forward DTS jumps above both of these are reported as gaps (90 kHz ticks).
const GAP_MIN_TICKS: i64 = 45_000;
const GAP_MIN_FRAMES: i64 = 4;
/// Frame interval assumed before one has been measured (90 kHz ticks, 1/30 s).
const DEFAULT_FRAME_TICKS: i64 = 3_000;
/// How far into a segment to look for PAT/PMT.
const PROGRAM_SCAN_BYTES: u64 = 4 << 20;
/// Upper bound for muxer finalisation (faststart copies the whole mdat) after the last push.
const FINISH_TIMEOUT: Duration = Duration::from_secs(600);

/// One byte range of a TS segment file. `start` must be the first byte of a TS packet,
/// normally the packet starting a keyframe (or the PAT just before it). `end` is exclusive;
/// `None` means to the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsSlice {
    pub path: PathBuf,
    pub start: u64,
    pub end: Option<u64>,
    /// Added to the slice's timestamps: the correction a clock step applied to the
    /// segment's times in the index (its file keeps the times as recorded).
    pub shift_ns: i64,
}

/// Video codec of a clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    H265,
}

impl VideoCodec {
    /// `"h264"` or `"h265"`, as written in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::H265 => "h265",
        }
    }

    fn from_stream_type(st: u8) -> Option<VideoCodec> {
        match st {
            0x1b => Some(VideoCodec::H264),
            0x24 => Some(VideoCodec::H265),
            _ => None,
        }
    }

    fn caps_name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "video/x-h264",
            VideoCodec::H265 => "video/x-h265",
        }
    }

    fn parser(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264parse",
            VideoCodec::H265 => "h265parse",
        }
    }
}

impl std::fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A place where the source timestamps did not advance by a normal frame interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discontinuity {
    /// Index into the `sources` slice.
    pub slice: usize,
    /// File offset of the TS packet starting the frame after the discontinuity.
    pub offset: u64,
    /// MP4 decode time of that frame.
    pub at: Duration,
    pub kind: DiscontinuityKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscontinuityKind {
    /// The DTS advanced by this much (more than 0.5 s and 4 frame intervals). Kept in the MP4.
    Gap(Duration),
    /// The DTS went back by this much (or stood still). The frame was placed one frame
    /// interval after its predecessor, so the MP4 timeline is not wall-clock after this point.
    Backwards(Duration),
}

/// What was written. Times are on the MP4 timeline (the first decoded frame is at zero), so
/// with `t0` the wall-clock time of the first frame, the last frame is at
/// `t0 + (last_pts - first_pts)` as long as there is no [`DiscontinuityKind::Backwards`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mp4Info {
    /// Presentation time of the earliest frame.
    pub first_pts: Duration,
    /// Presentation time of the latest frame.
    pub last_pts: Duration,
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    pub codec: VideoCodec,
    pub discontinuities: Vec<Discontinuity>,
    /// `"mp4mux"`, or `"qtmux"` if mp4mux did not put `moov` before `mdat`.
    pub muxer: &'static str,
}

impl Mp4Info {
    /// Time from the first to the last presented frame.
    pub fn span(&self) -> Duration {
        self.last_pts.saturating_sub(self.first_pts)
    }
}

/// Why a remux failed. Source problems name the file and byte offset.
#[derive(Debug, thiserror::Error)]
pub enum Mp4Error {
    #[error("no source slices given")]
    NoSources,
    #[error("{path} at offset {offset}")]
    Io {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error("{path}: bad slice {start}..{end:?}: {reason}")]
    BadSlice {
        path: PathBuf,
        start: u64,
        end: Option<u64>,
        reason: String,
    },
    #[error("{path} at offset {offset}: lost MPEG-TS sync (byte is {found:#04x}, expected 0x47)")]
    Sync {
        path: PathBuf,
        offset: u64,
        found: u8,
    },
    #[error(
        "{path}: no PAT/PMT with an H.264 or H.265 stream in the first {PROGRAM_SCAN_BYTES} bytes of the file or the slice at offset {offset}"
    )]
    NoProgram { path: PathBuf, offset: u64 },
    #[error(
        "{path} at offset {offset}: codec is {found}, earlier slices are {expected}; export them separately"
    )]
    CodecChange {
        path: PathBuf,
        offset: u64,
        expected: VideoCodec,
        found: VideoCodec,
    },
    #[error("{path} at offset {offset}: packet is scrambled")]
    Scrambled { path: PathBuf, offset: u64 },
    #[error("{path} at offset {offset}: malformed PES header: {reason}")]
    BadPes {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("no video frames in the given slices")]
    NoFrames,
    #[error("GStreamer: {0}")]
    Gst(String),
    #[error("GStreamer error while feeding {path} near offset {offset}: {message}")]
    Pipeline {
        path: PathBuf,
        offset: u64,
        message: String,
    },
    #[error("{path}: moov is not before mdat (muxer {muxer})")]
    NotFaststart { path: PathBuf, muxer: &'static str },
    #[error("output {path}")]
    Output { path: PathBuf, source: io::Error },
    #[error("output {path} already exists; refusing to overwrite evidence")]
    OutputExists { path: PathBuf },
}

/// Remuxes `sources`, in order, into a faststart MP4 at `out`.
///
/// Writes `out.partial` and renames it to `out` after fsync; `out` must not exist. No
/// transcoding: the H.264/H.265 access units are copied. Blocks until done.
pub fn remux_ts_to_mp4(sources: &[TsSlice], out: &Path) -> Result<Mp4Info, Mp4Error> {
    remux_ts_to_mp4_timed(sources, out, None)
}

/// [`remux_ts_to_mp4`] plus, with `clock`, a timed-text (tx3g) track that shows the
/// wall-clock time once a second, so any player shows when a frame was recorded without
/// re-encoding the pictures.
pub fn remux_ts_to_mp4_timed(
    sources: &[TsSlice],
    out: &Path,
    clock: Option<&TimeText>,
) -> Result<Mp4Info, Mp4Error> {
    if sources.is_empty() {
        return Err(Mp4Error::NoSources);
    }
    if out.exists() {
        return Err(Mp4Error::OutputExists { path: out.into() });
    }
    gst::init().map_err(|e| Mp4Error::Gst(format!("init: {e}")))?;
    let with_suffix = |suffix: &str| {
        let mut p = out.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let partial = with_suffix(".partial");
    // mp4mux's faststart scratch file; its default is in /tmp, possibly a small tmpfs.
    let scratch = with_suffix(".partial.mdat");
    let result = remux_attempts(sources, out, &partial, &scratch, clock);
    for leftover in [&partial, &scratch] {
        match std::fs::remove_file(leftover) {
            Ok(()) if result.is_ok() => {
                tracing::warn!(path = %leftover.display(), "removed a leftover temp file");
            }
            _ => {}
        }
    }
    result
}

fn remux_attempts(
    sources: &[TsSlice],
    out: &Path,
    partial: &Path,
    scratch: &Path,
    clock: Option<&TimeText>,
) -> Result<Mp4Info, Mp4Error> {
    let output_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Mp4Error::Output { path, source }
    };
    for muxer in ["mp4mux", "qtmux"] {
        let info = run_pipeline(sources, partial, scratch, muxer, clock)?;
        if !moov_before_mdat(partial).map_err(output_err(partial))? {
            tracing::warn!(path = %partial.display(), muxer, "moov after mdat, trying the next muxer");
            std::fs::remove_file(partial).map_err(output_err(partial))?;
            continue;
        }
        File::open(partial)
            .and_then(|f| f.sync_all())
            .map_err(output_err(partial))?;
        std::fs::rename(partial, out).map_err(output_err(out))?;
        fsync_dir(&parent_dir(out)).map_err(output_err(out))?;
        return Ok(info);
    }
    Err(Mp4Error::NotFaststart {
        path: out.into(),
        muxer: "qtmux",
    })
}

/// True if the file's top-level `moov` box comes before its `mdat` box.
pub fn moov_before_mdat(path: &Path) -> io::Result<bool> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut pos = 0u64;
    while pos + 8 <= len {
        f.seek(SeekFrom::Start(pos))?;
        let mut hdr = [0u8; 16];
        f.read_exact(&mut hdr[..8])?;
        let mut size = u64::from(u32::from_be_bytes(hdr[..4].try_into().unwrap()));
        match &hdr[4..8] {
            b"moov" => return Ok(true),
            b"mdat" => return Ok(false),
            _ => {}
        }
        if size == 1 {
            f.read_exact(&mut hdr[8..16])?;
            size = u64::from_be_bytes(hdr[8..16].try_into().unwrap());
        } else if size == 0 {
            break;
        }
        if size < 8 {
            break;
        }
        pos += size;
    }
    Ok(false)
}

#[derive(Default)]
struct Stats {
    frames: u64,
    first_pts: Option<gst::ClockTime>,
    last_pts: Option<gst::ClockTime>,
}

fn make(factory: &str) -> Result<gst::Element, Mp4Error> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| Mp4Error::Gst(format!("element {factory} is not available")))
}

fn run_pipeline(
    sources: &[TsSlice],
    partial: &Path,
    scratch: &Path,
    muxer: &'static str,
    clock: Option<&TimeText>,
) -> Result<Mp4Info, Mp4Error> {
    // The codec decides the parser, so find it before building the pipeline.
    let first = &sources[0];
    let program = find_program(&first.path, first.start)?;

    let pipeline = gst::Pipeline::new();
    let caps = gst::Caps::builder(program.codec.caps_name())
        .field("stream-format", "byte-stream")
        .build();
    let appsrc = gst_app::AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .build();
    let parse = make(program.codec.parser())?;
    let mux = make(muxer)?;
    mux.set_property("faststart", true);
    // The source clock is 90 kHz; keep every timestamp exact instead of a framerate grid.
    mux.set_property("trak-timescale", 90_000u32);
    mux.set_property("faststart-file", scratch.to_string_lossy().as_ref());
    let sink = make("filesink")?;
    sink.set_property("location", partial.to_string_lossy().as_ref());
    pipeline
        .add_many([appsrc.upcast_ref(), &parse, &mux, &sink])
        .map_err(|e| Mp4Error::Gst(format!("add elements: {e}")))?;
    gst::Element::link_many([appsrc.upcast_ref(), &parse, &mux, &sink]).map_err(|e| {
        Mp4Error::Gst(format!(
            "link appsrc ! {} ! {muxer} ! filesink: {e}",
            program.codec.parser()
        ))
    })?;

    // The text track gets its own appsrc on a subtitle pad of the same muxer.
    let text_src = match clock {
        None => None,
        Some(_) => {
            let caps = gst::Caps::builder("text/x-raw")
                .field("format", "utf8")
                .build();
            let src = gst_app::AppSrc::builder()
                .caps(&caps)
                .format(gst::Format::Time)
                .build();
            pipeline
                .add(&src)
                .map_err(|e| Mp4Error::Gst(format!("add text appsrc: {e}")))?;
            let pad = mux
                .request_pad_simple("subtitle_%u")
                .ok_or_else(|| Mp4Error::Gst(format!("{muxer} has no subtitle pad")))?;
            src.static_pad("src")
                .ok_or_else(|| Mp4Error::Gst("text appsrc has no src pad".into()))?
                .link(&pad)
                .map_err(|e| Mp4Error::Gst(format!("link text appsrc ! {muxer}: {e}")))?;
            Some(src)
        }
    };

    let stats = Arc::new(Mutex::new(Stats::default()));
    let parse_src = parse
        .static_pad("src")
        .ok_or_else(|| Mp4Error::Gst("parser has no src pad".into()))?;
    {
        let stats = stats.clone();
        parse_src.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer() {
                let mut s = stats.lock().unwrap();
                s.frames += 1;
                if let Some(pts) = buf.pts() {
                    s.first_pts = Some(s.first_pts.map_or(pts, |f| f.min(pts)));
                    s.last_pts = Some(s.last_pts.map_or(pts, |l| l.max(pts)));
                }
            }
            gst::PadProbeReturn::Ok
        });
    }

    let bus = pipeline.bus().expect("a pipeline has a bus");
    let guard = StopOnDrop(&pipeline);
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| Mp4Error::Gst(format!("start pipeline: {e}")))?;

    let mut demux = Demuxer::new(program);
    let mut feeder = Feeder {
        appsrc: &appsrc,
        bus: &bus,
        text: text_src.as_ref().zip(clock).map(|(src, clock)| TextFeed {
            src,
            clock: clock.clone(),
            next: Duration::ZERO,
        }),
        last_pts: Duration::ZERO,
    };
    for (i, slice) in sources.iter().enumerate() {
        demux.run_slice(i, slice, &mut feeder)?;
    }
    if demux.pushed == 0 {
        return Err(Mp4Error::NoFrames);
    }
    let last = sources.last().expect("non-empty");
    feeder.finish_text(demux.frame_interval())?;
    appsrc
        .end_of_stream()
        .map_err(|e| Mp4Error::Gst(format!("end of stream: {e:?}")))?;
    match bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(FINISH_TIMEOUT.as_nanos() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    ) {
        Some(msg) => {
            if let gst::MessageView::Error(err) = msg.view() {
                return Err(Mp4Error::Pipeline {
                    path: last.path.clone(),
                    offset: demux.last_offset,
                    message: describe_error(err),
                });
            }
        }
        None => {
            return Err(Mp4Error::Gst(format!(
                "{muxer} did not finish within {FINISH_TIMEOUT:?}"
            )));
        }
    }
    let caps = parse_src
        .current_caps()
        .ok_or_else(|| Mp4Error::Gst("parser negotiated no caps".into()))?;
    drop(guard);

    let s = caps
        .structure(0)
        .ok_or_else(|| Mp4Error::Gst("empty caps".into()))?;
    let dim = |name: &str| {
        s.get::<i32>(name)
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| Mp4Error::Gst(format!("parser caps lack {name}: {caps}")))
    };
    let (width, height) = (dim("width")?, dim("height")?);
    let stats = stats.lock().unwrap();
    if stats.frames == 0 {
        return Err(Mp4Error::NoFrames);
    }
    let to_dur = |t: Option<gst::ClockTime>| Duration::from_nanos(t.map_or(0, |t| t.nseconds()));
    Ok(Mp4Info {
        first_pts: to_dur(stats.first_pts),
        last_pts: to_dur(stats.last_pts),
        frames: stats.frames,
        width,
        height,
        codec: program.codec,
        discontinuities: std::mem::take(&mut demux.discontinuities),
        muxer,
    })
}

/// Sets the pipeline to NULL however we leave, so no streaming thread outlives the call.
struct StopOnDrop<'a>(&'a gst::Pipeline);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

fn describe_error(err: &gst::message::Error) -> String {
    let src = err
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_default();
    match err.debug() {
        Some(d) => format!("{src}: {} ({d})", err.error()),
        None => format!("{src}: {}", err.error()),
    }
}

/// What the timed-text track shows: the wall-clock time of MP4 time zero, and the zone
/// for the local time line.
#[derive(Debug, Clone)]
pub struct TimeText {
    /// UTC (ns since the epoch) of the first frame, which is at MP4 time zero.
    pub t0_ns: i64,
    /// Local time is shown in this offset's zone; `None` is the box's own zone (`TZ`,
    /// `/etc/localtime`).
    pub fixed_offset: Option<chrono::FixedOffset>,
}

impl TimeText {
    /// The cue for the second holding `at` (MP4 time): UTC, then local time with offset.
    pub fn cue(&self, at: Duration) -> String {
        let ns = self.t0_ns + at.as_nanos() as i64;
        let utc = chrono::DateTime::from_timestamp_nanos(ns);
        let local = match self.fixed_offset {
            Some(o) => utc.with_timezone(&o).fixed_offset(),
            None => utc.with_timezone(&chrono::Local).fixed_offset(),
        };
        format!(
            "{} UTC\n{} local (UTC{})",
            utc.format("%Y-%m-%d %H:%M:%S"),
            local.format("%Y-%m-%d %H:%M:%S"),
            local.format("%:z")
        )
    }

    /// MP4 time of the first whole wall-clock second after `at`.
    fn next_second(&self, at: Duration) -> Duration {
        let ns = self.t0_ns + at.as_nanos() as i64;
        let next = (ns.div_euclid(1_000_000_000) + 1) * 1_000_000_000;
        at + Duration::from_nanos((next - ns) as u64)
    }
}

/// The text track being fed: one cue per wall-clock second, each pushed with the first
/// frame it covers (the muxer interleaves by time, so it waits at most a second of video).
struct TextFeed<'a> {
    src: &'a gst_app::AppSrc,
    clock: TimeText,
    /// MP4 time where the next cue starts.
    next: Duration,
}

impl TextFeed<'_> {
    fn push_until(&mut self, until: Duration, end: Option<Duration>) -> Result<(), Mp4Error> {
        while self.next <= until && end.is_none_or(|e| self.next < e) {
            let start = self.next;
            let mut stop = self.clock.next_second(start);
            if let Some(e) = end {
                stop = stop.min(e);
            }
            let mut buf = gst::Buffer::from_mut_slice(self.clock.cue(start).into_bytes());
            {
                let b = buf.get_mut().expect("fresh buffer is writable");
                b.set_pts(gst::ClockTime::from_nseconds(start.as_nanos() as u64));
                b.set_duration(gst::ClockTime::from_nseconds(
                    (stop - start).as_nanos() as u64
                ));
            }
            self.src
                .push_buffer(buf)
                .map_err(|e| Mp4Error::Gst(format!("text appsrc refused a cue: {e:?}")))?;
            self.next = stop;
        }
        Ok(())
    }
}

/// Pushes access units into appsrc with backpressure, watching the bus for errors.
struct Feeder<'a> {
    appsrc: &'a gst_app::AppSrc,
    bus: &'a gst::Bus,
    text: Option<TextFeed<'a>>,
    /// Latest video presentation time pushed.
    last_pts: Duration,
}

impl Feeder<'_> {
    /// Ends the text track one frame after the last picture, and closes it.
    fn finish_text(&mut self, frame: Duration) -> Result<(), Mp4Error> {
        if let Some(t) = self.text.as_mut() {
            let end = self.last_pts + frame;
            t.push_until(end, Some(end))?;
            t.src
                .end_of_stream()
                .map_err(|e| Mp4Error::Gst(format!("text end of stream: {e:?}")))?;
        }
        Ok(())
    }

    fn push(&mut self, buf: gst::Buffer, path: &Path, offset: u64) -> Result<(), Mp4Error> {
        if let Some(pts) = buf.pts() {
            self.last_pts = self.last_pts.max(Duration::from_nanos(pts.nseconds()));
        }
        if let Some(t) = self.text.as_mut() {
            t.push_until(self.last_pts, None)?;
        }
        let fail = |message: String| Mp4Error::Pipeline {
            path: path.into(),
            offset,
            message,
        };
        loop {
            let room = self.appsrc.current_level_bytes() < MAX_QUEUED_BYTES;
            let wait = if room {
                gst::ClockTime::ZERO
            } else {
                gst::ClockTime::from_mseconds(5)
            };
            if let Some(msg) = self
                .bus
                .timed_pop_filtered(wait, &[gst::MessageType::Error])
                && let gst::MessageView::Error(err) = msg.view()
            {
                return Err(fail(describe_error(err)));
            }
            if room {
                break;
            }
        }
        self.appsrc
            .push_buffer(buf)
            .map(|_| ())
            .map_err(|e| fail(format!("appsrc refused buffer: {e:?}")))
    }
}

#[derive(Debug, Clone, Copy)]
struct Program {
    pid: u16,
    codec: VideoCodec,
}

/// Finds the video PID and codec from the PAT/PMT at the head of the file, or failing that
/// at the head of the slice.
fn find_program(path: &Path, slice_start: u64) -> Result<Program, Mp4Error> {
    let mut f = File::open(path).map_err(|source| Mp4Error::Io {
        path: path.into(),
        offset: 0,
        source,
    })?;
    for start in [0, slice_start] {
        if let Some(p) = scan_program(&mut f, path, start)? {
            return Ok(p);
        }
        if slice_start == 0 {
            break;
        }
    }
    Err(Mp4Error::NoProgram {
        path: path.into(),
        offset: slice_start,
    })
}

fn scan_program(f: &mut File, path: &Path, start: u64) -> Result<Option<Program>, Mp4Error> {
    let io_err = |offset, source| Mp4Error::Io {
        path: path.into(),
        offset,
        source,
    };
    f.seek(SeekFrom::Start(start))
        .map_err(|e| io_err(start, e))?;
    let mut data = Vec::new();
    f.take(PROGRAM_SCAN_BYTES)
        .read_to_end(&mut data)
        .map_err(|e| io_err(start, e))?;
    let mut pmt_pid = None;
    for pkt in data.chunks_exact(TS_PACKET) {
        if pkt[0] != 0x47 {
            return Ok(None);
        }
        let pid = u16::from_be_bytes([pkt[1] & 0x1f, pkt[2]]);
        let pusi = pkt[1] & 0x40 != 0;
        if !pusi || (pid != 0 && Some(pid) != pmt_pid) {
            continue;
        }
        let Some(section) = psi_section(pkt) else {
            continue;
        };
        if pid == 0 && section.first() == Some(&0x00) {
            // PAT: program loop after the 8-byte header, minus the CRC.
            let end = section_end(section);
            pmt_pid = section
                .get(8..end)
                .unwrap_or_default()
                .chunks_exact(4)
                .find(|e| u16::from_be_bytes([e[0], e[1]]) != 0)
                .map(|e| u16::from_be_bytes([e[2] & 0x1f, e[3]]));
        } else if Some(pid) == pmt_pid && section.first() == Some(&0x02) {
            let end = section_end(section);
            if section.len() < 12 {
                continue;
            }
            let info_len = usize::from(u16::from_be_bytes([section[10] & 0x0f, section[11]]));
            let mut i = 12 + info_len;
            while i + 5 <= end {
                let st = section[i];
                let es_pid = u16::from_be_bytes([section[i + 1] & 0x1f, section[i + 2]]);
                let es_info =
                    usize::from(u16::from_be_bytes([section[i + 3] & 0x0f, section[i + 4]]));
                if let Some(codec) = VideoCodec::from_stream_type(st) {
                    return Ok(Some(Program { pid: es_pid, codec }));
                }
                i += 5 + es_info;
            }
        }
    }
    Ok(None)
}

/// The PSI section starting in this packet (after the pointer field), if any.
fn psi_section(pkt: &[u8]) -> Option<&[u8]> {
    let payload = ts_payload(pkt)?;
    let pointer = usize::from(*payload.first()?);
    payload.get(1 + pointer..)
}

/// End of a section's loop data within this packet (excludes the CRC).
fn section_end(section: &[u8]) -> usize {
    if section.len() < 3 {
        return 0;
    }
    let len = usize::from(u16::from_be_bytes([section[1] & 0x0f, section[2]]));
    (3 + len).saturating_sub(4).min(section.len())
}

fn ts_payload(pkt: &[u8]) -> Option<&[u8]> {
    let afc = (pkt[3] >> 4) & 3;
    match afc {
        1 => Some(&pkt[4..]),
        3 => {
            let start = 5 + usize::from(pkt[4]);
            pkt.get(start..).filter(|p| !p.is_empty())
        }
        _ => None,
    }
}

/// A PES being reassembled.
struct Pes {
    data: Vec<u8>,
    offset: u64,
    discont: bool,
    /// The adaptation field flagged a random access point (keyframe).
    random_access: bool,
    /// Ticks added to its timestamps (its slice's `shift_ns`).
    shift: u64,
}

/// Maps 33-bit source DTS/PTS onto the MP4 timeline (90 kHz ticks, first DTS at 0).
#[derive(Default)]
struct Timeline {
    last_raw_dts: Option<u64>,
    ext_dts: i64,
    shift: i64,
    last_out_dts: i64,
    frame_ticks: i64,
}

impl Timeline {
    /// Returns (pts, dts) in ticks and what kind of jump preceded this frame, if any.
    fn place(&mut self, raw_pts: u64, raw_dts: u64) -> (i64, i64, Option<DiscontinuityKind>) {
        let pts_minus_dts = ((raw_pts.wrapping_sub(raw_dts)) & PTS_MASK) as i64;
        // More than 2^32 ticks "ahead" means PTS < DTS, which is invalid: use the DTS.
        let cto = if pts_minus_dts >= 1 << 32 {
            0
        } else {
            pts_minus_dts
        };
        let Some(last_raw) = self.last_raw_dts else {
            self.last_raw_dts = Some(raw_dts);
            self.ext_dts = raw_dts as i64;
            self.shift = -(raw_dts as i64);
            self.last_out_dts = 0;
            return (cto, 0, None);
        };
        self.last_raw_dts = Some(raw_dts);
        let mut diff = ((raw_dts.wrapping_sub(last_raw)) & PTS_MASK) as i64;
        if diff >= 1 << 32 {
            diff -= 1 << 33;
        }
        self.ext_dts += diff;
        let mut out = self.ext_dts + self.shift;
        let delta = out - self.last_out_dts;
        let frame = if self.frame_ticks > 0 {
            self.frame_ticks
        } else {
            DEFAULT_FRAME_TICKS
        };
        let kind = if delta <= 0 {
            let placed = self.last_out_dts + frame;
            self.shift += placed - out;
            out = placed;
            Some(DiscontinuityKind::Backwards(ticks_to_duration(-delta)))
        } else if delta > GAP_MIN_TICKS && delta > GAP_MIN_FRAMES * frame {
            Some(DiscontinuityKind::Gap(ticks_to_duration(delta)))
        } else {
            self.frame_ticks = delta;
            None
        };
        self.last_out_dts = out;
        (out + cto, out, kind)
    }

    /// Ticks for a frame without timestamps: one interval after the previous one.
    fn extrapolate(&mut self) -> i64 {
        self.last_out_dts += if self.frame_ticks > 0 {
            self.frame_ticks
        } else {
            DEFAULT_FRAME_TICKS
        };
        self.last_out_dts
    }
}

fn ticks_to_duration(t: i64) -> Duration {
    Duration::from_nanos((t.max(0) as u64).saturating_mul(100_000) / 9)
}

fn ticks_to_clock(t: i64) -> gst::ClockTime {
    gst::ClockTime::from_nseconds((t.max(0) as u64).saturating_mul(100_000) / 9)
}

struct Demuxer {
    program: Program,
    pes: Option<Pes>,
    cc: Option<u8>,
    timeline: Timeline,
    discontinuities: Vec<Discontinuity>,
    pushed: u64,
    last_offset: u64,
    /// First offset and count of lost/errored packets in the current slice.
    damage: Option<(u64, u32)>,
    /// The current slice's `shift_ns` in 90 kHz ticks, modulo 2^33.
    shift_ticks: u64,
}

impl Demuxer {
    /// The measured frame interval (the default before one is known).
    fn frame_interval(&self) -> Duration {
        ticks_to_duration(if self.timeline.frame_ticks > 0 {
            self.timeline.frame_ticks
        } else {
            DEFAULT_FRAME_TICKS
        })
    }

    fn new(program: Program) -> Demuxer {
        Demuxer {
            program,
            pes: None,
            cc: None,
            timeline: Timeline::default(),
            discontinuities: Vec::new(),
            pushed: 0,
            last_offset: 0,
            damage: None,
            shift_ticks: 0,
        }
    }

    fn run_slice(
        &mut self,
        index: usize,
        slice: &TsSlice,
        feeder: &mut Feeder<'_>,
    ) -> Result<(), Mp4Error> {
        let path = slice.path.as_path();
        let bad = |reason: String| Mp4Error::BadSlice {
            path: path.into(),
            start: slice.start,
            end: slice.end,
            reason,
        };
        let io_err = |offset, source| Mp4Error::Io {
            path: path.into(),
            offset,
            source,
        };
        if index > 0 {
            let program = find_program(path, slice.start)?;
            if program.codec != self.program.codec {
                return Err(Mp4Error::CodecChange {
                    path: path.into(),
                    offset: slice.start,
                    expected: self.program.codec,
                    found: program.codec,
                });
            }
            self.program = program;
        }
        self.shift_ticks = crate::recording::writer::utc_to_90k(slice.shift_ns);
        let mut f = File::open(path).map_err(|e| io_err(0, e))?;
        let len = f.metadata().map_err(|e| io_err(0, e))?.len();
        let end = slice.end.unwrap_or(len);
        if end > len {
            return Err(bad(format!("end is beyond the file size {len}")));
        }
        if slice.start >= end {
            return Err(bad("empty range".into()));
        }
        f.seek(SeekFrom::Start(slice.start))
            .map_err(|e| io_err(slice.start, e))?;
        // Continuity counters restart at a slice boundary; and a slice never begins mid-PES.
        self.cc = None;
        self.pes = None;
        let mut reader = f.take(end - slice.start);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut pos = slice.start;
        loop {
            let n = read_full(&mut reader, &mut buf).map_err(|e| io_err(pos, e))?;
            let whole = n - n % TS_PACKET;
            for (i, pkt) in buf[..whole].chunks_exact(TS_PACKET).enumerate() {
                let offset = pos + (i * TS_PACKET) as u64;
                self.packet(index, path, offset, pkt, feeder)?;
            }
            pos += whole as u64;
            if n < buf.len() {
                if n > whole {
                    tracing::warn!(path = %path.display(), offset = pos, bytes = n - whole,
                        "ignoring a truncated TS packet at the end of the slice");
                }
                break;
            }
        }
        if let Some((first, count)) = self.damage.take() {
            tracing::warn!(path = %path.display(), first_offset = first, packets = count,
                "TS continuity errors or errored packets: some frames may show artifacts");
        }
        self.flush(index, path, feeder)
    }

    fn packet(
        &mut self,
        index: usize,
        path: &Path,
        offset: u64,
        pkt: &[u8],
        feeder: &mut Feeder<'_>,
    ) -> Result<(), Mp4Error> {
        if pkt[0] != 0x47 {
            return Err(Mp4Error::Sync {
                path: path.into(),
                offset,
                found: pkt[0],
            });
        }
        let pid = u16::from_be_bytes([pkt[1] & 0x1f, pkt[2]]);
        if pid != self.program.pid {
            return Ok(());
        }
        if pkt[1] & 0x80 != 0 {
            self.damaged(offset);
        }
        if pkt[3] & 0xc0 != 0 {
            return Err(Mp4Error::Scrambled {
                path: path.into(),
                offset,
            });
        }
        let afc = (pkt[3] >> 4) & 3;
        let cc = pkt[3] & 0x0f;
        let has_payload = afc & 1 != 0;
        if has_payload {
            match self.cc {
                Some(prev) if cc == prev => return Ok(()), // duplicate packet
                Some(prev) if cc != (prev + 1) & 0x0f => self.damaged(offset),
                _ => {}
            }
            self.cc = Some(cc);
        }
        let Some(payload) = ts_payload(pkt) else {
            return Ok(());
        };
        if pkt[1] & 0x40 != 0 {
            self.flush(index, path, feeder)?;
            self.pes = Some(Pes {
                data: Vec::with_capacity(64 * 1024),
                offset,
                discont: false,
                random_access: pkt[3] & 0x20 != 0 && pkt[4] > 0 && pkt[5] & 0x40 != 0,
                shift: self.shift_ticks,
            });
        }
        // Payload before the first PES start in a slice belongs to a frame we do not have.
        if let Some(p) = self.pes.as_mut() {
            p.data.extend_from_slice(payload);
        }
        Ok(())
    }

    /// Notes a lost or errored packet; the frame is kept (it is what was recorded) but flagged.
    fn damaged(&mut self, offset: u64) {
        if let Some(p) = self.pes.as_mut() {
            p.discont = true;
        }
        let (first, count) = self.damage.get_or_insert((offset, 0));
        *first = (*first).min(offset);
        *count += 1;
    }

    /// Pushes the PES being assembled, if any, as one buffer.
    fn flush(
        &mut self,
        index: usize,
        path: &Path,
        feeder: &mut Feeder<'_>,
    ) -> Result<(), Mp4Error> {
        let Some(mut pes) = self.pes.take() else {
            return Ok(());
        };
        let bad = |reason: &str| Mp4Error::BadPes {
            path: path.into(),
            offset: pes.offset,
            reason: reason.into(),
        };
        let d = &pes.data;
        if d.len() < 9 || d[..3] != [0, 0, 1] {
            return Err(bad("no 00 00 01 start code"));
        }
        let header_end = 9 + usize::from(d[8]);
        if d.len() < header_end {
            return Err(bad("header longer than the PES"));
        }
        let flags = d[7] >> 6;
        let ts_at =
            |i: usize| -> Option<u64> { Some(parse_timestamp(d.get(i..i + 5)?.try_into().ok()?)) };
        let shifted = |t: u64| t.wrapping_add(pes.shift) & PTS_MASK;
        let pts = if flags & 2 != 0 {
            ts_at(9).map(shifted)
        } else {
            None
        };
        let dts = if flags == 3 {
            ts_at(14).map(shifted)
        } else {
            pts
        };
        let (out_pts, out_dts) = match (pts, dts) {
            (Some(p), Some(dt)) => {
                let (op, od, kind) = self.timeline.place(p, dt);
                if let Some(kind) = kind {
                    tracing::info!(path = %path.display(), offset = pes.offset, ?kind, "timestamp discontinuity");
                    self.discontinuities.push(Discontinuity {
                        slice: index,
                        offset: pes.offset,
                        at: ticks_to_duration(od),
                        kind,
                    });
                }
                (op, od)
            }
            _ => {
                let t = self.timeline.extrapolate();
                (t, t)
            }
        };
        if self.pushed == 0 && !pes.random_access {
            tracing::warn!(path = %path.display(), offset = pes.offset,
                "clip does not start on a keyframe: it will not decode cleanly until the first one");
        }
        pes.data.drain(..header_end);
        if pes.data.is_empty() {
            return Ok(());
        }
        let mut buffer = gst::Buffer::from_mut_slice(pes.data);
        {
            let b = buffer.get_mut().expect("fresh buffer is writable");
            b.set_pts(ticks_to_clock(out_pts));
            b.set_dts(ticks_to_clock(out_dts));
            if pes.discont || self.pushed == 0 {
                b.set_flags(gst::BufferFlags::DISCONT);
            }
        }
        self.last_offset = pes.offset;
        feeder.push(buffer, path, pes.offset)?;
        self.pushed += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticks(s: f64) -> i64 {
        (s * 90_000.0).round() as i64
    }

    #[test]
    fn time_text_cues_fall_on_wall_clock_seconds() {
        // The first frame is at 14:40:00.250 UTC; the box is an hour ahead.
        let t = TimeText {
            t0_ns: 1_764_600_000_250_000_000,
            fixed_offset: chrono::FixedOffset::east_opt(3600),
        };
        assert_eq!(t.next_second(Duration::ZERO), Duration::from_millis(750));
        assert_eq!(
            t.next_second(Duration::from_millis(750)),
            Duration::from_millis(1750)
        );
        assert_eq!(
            t.cue(Duration::from_millis(800)),
            "2025-12-01 14:40:01 UTC\n2025-12-01 15:40:01 local (UTC+01:00)"
        );
    }

    #[test]
    fn timeline_keeps_gaps_and_survives_wrap_and_reset() {
        let mut t = Timeline::default();
        let base = PTS_MASK - ticks(1.0) as u64; // wraps one second in
        let at = |s: f64| (base + ticks(s) as u64) & PTS_MASK;
        assert_eq!(t.place(at(0.0), at(0.0)), (0, 0, None));
        assert_eq!(t.place(at(0.1), at(0.1)), (ticks(0.1), ticks(0.1), None));
        // Across the 33-bit wrap, normal cadence.
        let (p, d, k) = t.place(at(1.1), at(1.1));
        assert_eq!(
            (p, d, k),
            (
                ticks(1.1),
                ticks(1.1),
                Some(DiscontinuityKind::Gap(Duration::from_secs(1)))
            )
        );
        let (_, d, k) = t.place(at(1.2), at(1.2));
        assert_eq!((d, k), (ticks(1.2), None));
        // Reordered frame: PTS ahead of DTS.
        let (p, d, _) = t.place(at(1.5), at(1.3));
        assert_eq!((p, d), (ticks(1.5), ticks(1.3)));
        // The clock restarts: placed one frame later, reported.
        let (_, d, k) = t.place(5, 5);
        assert_eq!(d, ticks(1.4));
        assert!(matches!(k, Some(DiscontinuityKind::Backwards(_))));
        let (_, d, k) = t.place(5 + ticks(0.1) as u64, 5 + ticks(0.1) as u64);
        assert_eq!((d, k), (ticks(1.5), None));
    }
}
