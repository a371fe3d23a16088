//! End-to-end checks of `recording::ts::TsWriter` with real encoders (x264enc, x265enc),
//! checked by ffprobe and GStreamer's tsdemux.
//!
//! Run: `cargo test --test it`. Benchmark (release, ignored by default):
//! `cargo test --release --test it -- --ignored --nocapture bench`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use storeguard::recording::ts::{
    AuWritten, Resolution, TsWriter, VideoCodec, is_keyframe, parameter_sets,
};

const FRAMES: usize = 150;
const MASK_33: i64 = (1 << 33) - 1;

struct Au {
    data: Vec<u8>,
    pts: u64,
    dts: Option<u64>,
    keyframe: bool,
}

struct Encoded {
    codec: VideoCodec,
    aus: Vec<Au>,
    caps: Resolution,
}

fn init() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| gst::init().expect("gst::init"));
}

fn has_element(name: &str) -> bool {
    init();
    gst::ElementFactory::find(name).is_some()
}

fn ns_to_90k(t: gst::ClockTime) -> u64 {
    ((u128::from(t.nseconds()) * 9 + 50_000) / 100_000) as u64
}

/// Runs `desc` (ending in `appsink name=sink`) to EOS and returns its access units.
fn encode(codec: VideoCodec, desc: &str) -> Encoded {
    init();
    let pipeline = gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("parse {desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut aus = Vec::new();
    let mut caps = None;
    while let Ok(sample) = sink.pull_sample() {
        if caps.is_none() {
            let s = sample.caps().unwrap().structure(0).unwrap().to_owned();
            caps = Some(Resolution {
                width: s.get::<i32>("width").unwrap() as u32,
                height: s.get::<i32>("height").unwrap() as u32,
            });
        }
        let buf = sample.buffer().unwrap();
        aus.push(Au {
            data: buf.map_readable().unwrap().to_vec(),
            pts: ns_to_90k(buf.pts().expect("buffer PTS")),
            dts: buf.dts().map(ns_to_90k),
            keyframe: !buf.flags().contains(gst::BufferFlags::DELTA_UNIT),
        });
    }
    let bus = pipeline.bus().unwrap();
    if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        panic!("encoder pipeline {desc}: {msg:?}");
    }
    pipeline.set_state(gst::State::Null).unwrap();
    Encoded {
        codec,
        aus,
        caps: caps.expect("no samples from encoder"),
    }
}

fn h264_desc(frames: usize, raw_caps: &str, enc_opts: &str) -> String {
    format!(
        "videotestsrc num-buffers={frames} pattern=ball ! {raw_caps} ! \
         x264enc {enc_opts} ! h264parse config-interval=-1 ! \
         video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
}

fn h265_desc(frames: usize, raw_caps: &str, enc_opts: &str) -> String {
    format!(
        "videotestsrc num-buffers={frames} pattern=ball ! {raw_caps} ! \
         x265enc {enc_opts} ! h265parse config-interval=-1 ! \
         video/x-h265,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
}

/// 150 frames with B-frames and a keyframe every 30; no AUDs, as from most RTSP cameras.
fn h264() -> &'static Encoded {
    static E: OnceLock<Encoded> = OnceLock::new();
    E.get_or_init(|| {
        encode(
            VideoCodec::H264,
            &h264_desc(
                FRAMES,
                "video/x-raw,format=I420,width=640,height=360,framerate=30/1",
                "key-int-max=30 bframes=2 aud=false speed-preset=veryfast",
            ),
        )
    })
}

/// None when x265enc is not installed.
fn h265() -> Option<&'static Encoded> {
    static E: OnceLock<Option<Encoded>> = OnceLock::new();
    E.get_or_init(|| {
        if !has_element("x265enc") {
            storeguard_fixtures::harness::skip("ts_writer H.265", "x265enc is not available");
            return None;
        }
        Some(encode(
            VideoCodec::H265,
            &h265_desc(
                FRAMES,
                "video/x-raw,format=I420,width=640,height=360,framerate=30/1",
                "key-int-max=30 speed-preset=veryfast option-string=bframes=2",
            ),
        ))
    })
    .as_ref()
}

struct Muxed {
    bytes: Vec<u8>,
    written: Vec<AuWritten>,
}

fn mux(enc: &Encoded) -> Muxed {
    let mut w = TsWriter::new(enc.codec);
    let mut bytes = Vec::new();
    let written = enc
        .aus
        .iter()
        .map(|au| {
            w.write_access_unit(&mut bytes, &au.data, au.pts, au.dts, au.keyframe)
                .expect("write to Vec")
        })
        .collect();
    Muxed { bytes, written }
}

fn tmp_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ts_writer");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

struct Frame {
    pts: i64,
    key: bool,
    pict_type: String,
}

struct Probe {
    frames: Vec<Frame>,
    stderr: String,
}

/// Decodes every frame of `path` with ffprobe.
fn probe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=pts,key_frame,pict_type",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ffprobe json for {}: {e}", path.display()));
    let frames = v["frames"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|f| Frame {
            pts: f["pts"]
                .as_i64()
                .unwrap_or_else(|| panic!("frame without pts in {}", path.display())),
            key: f["key_frame"].as_i64() == Some(1),
            pict_type: f["pict_type"].as_str().unwrap_or("?").to_string(),
        })
        .collect();
    Probe {
        frames,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// PTS modulo 2^33, as both sides may or may not have unwrapped it.
fn wrap33(pts: i64) -> i64 {
    pts & MASK_33
}

fn sorted_pts<'a>(pts: impl Iterator<Item = &'a i64>) -> Vec<i64> {
    let mut v: Vec<i64> = pts.map(|&p| wrap33(p)).collect();
    v.sort_unstable();
    v
}

fn input_pts(aus: &[Au]) -> Vec<i64> {
    sorted_pts(aus.iter().map(|a| a.pts as i64).collect::<Vec<_>>().iter())
}

/// Demuxes and parses `path` with tsdemux, returning the number of access units; panics on
/// any error or warning on the bus.
fn gst_demux_count(path: &Path, codec: VideoCodec) -> usize {
    init();
    let parse = match codec {
        VideoCodec::H264 => "h264parse",
        VideoCodec::H265 => "h265parse",
    };
    let desc = format!(
        "filesrc location={} ! tsdemux ! {parse} ! appsink name=sink sync=false",
        path.display()
    );
    let pipeline = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut n = 0;
    while sink.pull_sample().is_ok() {
        n += 1;
    }
    let bus = pipeline.bus().unwrap();
    let bad = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Warning]);
    pipeline.set_state(gst::State::Null).unwrap();
    if let Some(msg) = bad {
        panic!("{desc}: {msg:?}");
    }
    n
}

fn check_full_file(enc: &Encoded, name: &str) {
    for au in &enc.aus {
        assert_eq!(
            is_keyframe(enc.codec, &au.data),
            au.keyframe,
            "is_keyframe vs buffer flags at pts {}",
            au.pts
        );
    }
    let m = mux(enc);
    let path = tmp_path(name);
    std::fs::write(&path, &m.bytes).unwrap();

    let p = probe(&path);
    assert!(p.stderr.is_empty(), "ffprobe errors: {}", p.stderr);
    assert_eq!(p.frames.len(), enc.aus.len(), "decoded frame count");
    assert_eq!(
        sorted_pts(p.frames.iter().map(|f| &f.pts)),
        input_pts(&enc.aus),
        "PTS preserved"
    );
    assert!(
        p.frames.iter().any(|f| f.pict_type == "B"),
        "test stream should contain B-frames"
    );
    let keys = enc.aus.iter().filter(|a| a.keyframe).count();
    assert!(keys >= 4, "only {keys} keyframes");
    assert!(p.frames.iter().filter(|f| f.key).count() >= keys);

    assert_eq!(gst_demux_count(&path, enc.codec), enc.aus.len());
    std::fs::remove_file(&path).unwrap();
}

/// Cuts at pseudo-random, non-packet-aligned positions: every AU fully written before the cut
/// must decode; at most the cut AU may add one damaged frame.
fn check_truncation(enc: &Encoded, name: &str) {
    let m = mux(enc);
    let path = tmp_path(name);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..16 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let cut = (seed % m.bytes.len() as u64) as usize;
        std::fs::write(&path, &m.bytes[..cut]).unwrap();
        let complete: Vec<&Au> = enc
            .aus
            .iter()
            .zip(&m.written)
            .filter(|(_, w)| w.offset + w.bytes <= cut as u64)
            .map(|(a, _)| a)
            .collect();
        let decoded = sorted_pts(probe(&path).frames.iter().map(|f| &f.pts));
        for au in &complete {
            assert!(
                decoded.binary_search(&wrap33(au.pts as i64)).is_ok(),
                "cut at {cut}: complete AU with pts {} not decoded ({} of {} decoded)",
                au.pts,
                decoded.len(),
                complete.len()
            );
        }
        assert!(decoded.len() <= complete.len() + 1, "cut at {cut}");
    }
    std::fs::remove_file(&path).unwrap();
}

/// The tail of the file from every keyframe offset is a valid stream starting at that frame.
fn check_keyframe_offsets(enc: &Encoded, name: &str) {
    let m = mux(enc);
    let path = tmp_path(name);
    let mut checked = 0;
    for (i, (au, w)) in enc.aus.iter().zip(&m.written).enumerate() {
        if !au.keyframe {
            continue;
        }
        let off = w.offset as usize;
        assert_eq!(off % 188, 0);
        assert_eq!(&m.bytes[off..off + 3], &[0x47, 0x40, 0x00], "PAT at offset");
        std::fs::write(&path, &m.bytes[off..]).unwrap();
        let p = probe(&path);
        assert!(p.stderr.is_empty(), "from offset {off}: {}", p.stderr);
        let first = p
            .frames
            .first()
            .unwrap_or_else(|| panic!("nothing decoded from offset {off}"));
        assert_eq!(
            wrap33(first.pts),
            wrap33(au.pts as i64),
            "from offset {off}"
        );
        assert!(first.key, "from offset {off}");
        // Leading pictures of an open-GOP CRA (RASL) are undecodable from there.
        let rasl = rasl_after(enc, i);
        assert_eq!(
            p.frames.len(),
            enc.aus.len() - i - rasl,
            "from offset {off}"
        );
        checked += 1;
    }
    assert!(checked >= 4);
    std::fs::remove_file(&path).unwrap();
}

/// RASL pictures that follow the keyframe at `i` in decode order (H.265 open GOP only).
fn rasl_after(enc: &Encoded, i: usize) -> usize {
    if enc.codec != VideoCodec::H265 {
        return 0;
    }
    enc.aus[i + 1..]
        .iter()
        .take_while(|a| !a.keyframe)
        .filter(|a| matches!(first_vcl_type_h265(&a.data), Some(8 | 9)))
        .count()
}

fn first_vcl_type_h265(au: &[u8]) -> Option<u8> {
    au.windows(4)
        .filter(|w| w[..3] == [0, 0, 1])
        .map(|w| (w[3] >> 1) & 0x3F)
        .find(|&t| t < 32)
}

#[test]
fn h264_full_file_decodes_with_pts_and_gst() {
    check_full_file(h264(), "h264_full.ts");
}

#[test]
fn h264_truncated_files_decode_to_the_cut() {
    check_truncation(h264(), "h264_cut.ts");
}

#[test]
fn h264_every_keyframe_offset_is_a_start_point() {
    check_keyframe_offsets(h264(), "h264_tail.ts");
}

#[test]
fn h265_full_file_decodes_with_pts_and_gst() {
    if let Some(enc) = h265() {
        check_full_file(enc, "h265_full.ts");
    }
}

#[test]
fn h265_truncated_files_decode_to_the_cut() {
    if let Some(enc) = h265() {
        check_truncation(enc, "h265_cut.ts");
    }
}

#[test]
fn h265_every_keyframe_offset_is_a_start_point() {
    if let Some(enc) = h265() {
        check_keyframe_offsets(enc, "h265_tail.ts");
    }
}

/// Segments: `start_file` at each keyframe gives files that each decode on their own.
#[test]
fn start_file_at_keyframes_gives_standalone_segments() {
    let enc = h264();
    let mut w = TsWriter::new(enc.codec);
    let mut segments: Vec<Vec<u8>> = Vec::new();
    for au in &enc.aus {
        if au.keyframe {
            w.start_file();
            segments.push(Vec::new());
        }
        let seg = segments.last_mut().unwrap();
        let r = w
            .write_access_unit(seg, &au.data, au.pts, au.dts, au.keyframe)
            .unwrap();
        assert_eq!(r.offset + r.bytes, seg.len() as u64);
    }
    let path = tmp_path("h264_segment.ts");
    let mut total = 0;
    for seg in &segments {
        std::fs::write(&path, seg).unwrap();
        let p = probe(&path);
        assert!(p.stderr.is_empty(), "{}", p.stderr);
        total += p.frames.len();
    }
    assert_eq!(total, enc.aus.len());
    std::fs::remove_file(&path).unwrap();
}

/// SPS width/height against the encoder's caps, over profiles, cropping and interlacing.
#[test]
fn sps_resolution_matches_encoder_caps() {
    let mut cases = vec![
        (
            VideoCodec::H264,
            h264_desc(
                2,
                "video/x-raw,format=I420,width=640,height=360,framerate=30/1",
                "",
            ),
        ),
        (
            VideoCodec::H264,
            h264_desc(
                2,
                "video/x-raw,format=I420,width=1920,height=1080,framerate=30/1",
                "speed-preset=ultrafast",
            ),
        ),
        (
            VideoCodec::H264,
            h264_desc(
                2,
                "video/x-raw,format=I420,width=330,height=250,framerate=30/1",
                "",
            ),
        ),
        (
            VideoCodec::H264,
            h264_desc(
                2,
                "video/x-raw,format=Y444,width=352,height=288,framerate=30/1",
                "",
            ),
        ),
        (
            VideoCodec::H264,
            h264_desc(
                2,
                "video/x-raw,format=I420,width=1920,height=1080,framerate=30/1 ! \
                 interlace field-pattern=1:1 top-field-first=true",
                "interlaced=true speed-preset=ultrafast",
            ),
        ),
        (
            VideoCodec::H264,
            h264_desc(
                2,
                "video/x-raw,format=I420,width=176,height=144,framerate=30/1",
                "speed-preset=ultrafast",
            ),
        ),
    ];
    if has_element("x265enc") {
        for size in [
            "width=640,height=360",
            "width=1920,height=1080",
            "width=330,height=250",
        ] {
            cases.push((
                VideoCodec::H265,
                h265_desc(
                    2,
                    &format!("video/x-raw,format=I420,framerate=30/1,{size}"),
                    "speed-preset=ultrafast",
                ),
            ));
        }
    }
    for (codec, desc) in cases {
        let enc = encode(codec, &desc);
        let ps = parameter_sets(codec, &enc.aus[0].data)
            .unwrap_or_else(|| panic!("no parameter sets in first AU of {desc}"));
        assert_eq!(ps.resolution(), Some(enc.caps), "{desc}");
        assert!(
            enc.aus
                .iter()
                .skip(1)
                .all(|a| !a.keyframe || parameter_sets(codec, &a.data).is_some())
        );
    }
}

/// Throughput of `write_access_unit` over in-memory AUs shaped like 1080p15 at 4 Mbit/s
/// (2 s GOP: 100 kB keyframe + 29 x 13.8 kB). Reported, not asserted.
#[test]
#[ignore]
fn bench_write_access_unit() {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut gop: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            let len = if i == 0 { 100_000 } else { 13_800 };
            let mut au = vec![0, 0, 0, 1, if i == 0 { 0x65 } else { 0x41 }];
            au.extend((0..len).map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            }));
            au
        })
        .collect();
    gop.shrink_to_fit();
    let gop_bytes: usize = gop.iter().map(Vec::len).sum();

    for (label, to_vec) in [("into io::sink()", false), ("into a reused Vec", true)] {
        let mut w = TsWriter::new(VideoCodec::H264);
        let mut sink = Vec::with_capacity(256 * 1024);
        let rounds = 2_000;
        let start = Instant::now();
        let mut out_bytes = 0u64;
        let mut pts = 90_000u64;
        for _ in 0..rounds {
            for (i, au) in gop.iter().enumerate() {
                let key = is_keyframe(VideoCodec::H264, au);
                debug_assert_eq!(key, i == 0);
                let r = if to_vec {
                    sink.clear();
                    w.write_access_unit(&mut sink, au, pts + 12_000, Some(pts), key)
                } else {
                    w.write_access_unit(&mut std::io::sink(), au, pts + 12_000, Some(pts), key)
                }
                .unwrap();
                out_bytes += r.bytes;
                pts += 6000;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let in_mb = (gop_bytes * rounds) as f64 / 1e6;
        let cam_rate = 4e6 / 8.0 / 1e6; // MB/s of one 4 Mbit/s camera
        println!(
            "{label}: {:.0} MB/s of AU input ({:.0} MB/s TS out, overhead {:.2}%), \
             = {:.0} cameras at 4 Mbit/s on one core",
            in_mb / secs,
            out_bytes as f64 / 1e6 / secs,
            (out_bytes as f64 / 1e6 / in_mb - 1.0) * 100.0,
            in_mb / secs / cam_rate
        );
    }
}
