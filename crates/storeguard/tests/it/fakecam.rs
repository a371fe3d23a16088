//! The fake-camera fleet, checked with real RTSP readers (GStreamer pipelines).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use storeguard_fixtures::{FakeCamFleet, FleetOptions, FleetSource};

/// Deadline for anything a reader waits for: generous, the box is shared and slow.
const WAIT: Duration = Duration::from_secs(20);
const H264: &str = "rtph264depay ! h264parse";
const H265: &str = "rtph265depay ! h265parse";

fn bin() -> PathBuf {
    storeguard_fixtures::fixture_bin("fakecam")
}

fn spawn(opts: FleetOptions) -> FakeCamFleet {
    FakeCamFleet::spawn(&bin(), &opts).expect("fakecam fleet starts")
}

/// An RTSP client: `rtspsrc ! CHAIN ! appsink`.
struct Reader {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
}

impl Reader {
    fn open(url: &str, chain: &str, protocols: &str) -> Reader {
        gst::init().unwrap();
        let chain = if chain.is_empty() {
            String::new()
        } else {
            format!("{chain} ! ")
        };
        let desc = format!(
            "rtspsrc location={url} protocols={protocols} latency=200 ! {chain}\
             appsink name=sink sync=false max-buffers=300 drop=true"
        );
        let pipeline = gst::parse::launch(&desc)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let sink = pipeline
            .by_name("sink")
            .and_downcast::<gst_app::AppSink>()
            .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        Reader { pipeline, sink }
    }

    /// The next sample, or why there is none: `eos`, `error: ...` or `timeout`.
    fn next(&self, within: Duration) -> Result<gst::Sample, String> {
        let bus = self.pipeline.bus().unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(sample) = self.sink.try_pull_sample(gst::ClockTime::from_mseconds(50)) {
                return Ok(sample);
            }
            if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos]) {
                return Err(match msg.view() {
                    gst::MessageView::Error(e) => format!("error: {}", e.error()),
                    _ => "eos".to_string(),
                });
            }
            if self.sink.is_eos() {
                return Err("eos".to_string());
            }
            if Instant::now() > deadline {
                return Err("timeout".to_string());
            }
        }
    }

    fn take(&self, n: usize) -> Result<Vec<gst::Sample>, String> {
        (0..n).map(|_| self.next(WAIT)).collect()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Connects, reads `n` samples, disconnects; returns the first sample's caps.
fn read(url: &str, chain: &str, n: usize) -> Result<gst::Caps, String> {
    let reader = Reader::open(url, chain, "udp+tcp");
    let samples = reader.take(n)?;
    Ok(samples[0].caps().unwrap().to_owned())
}

fn structure_name(caps: &gst::Caps) -> String {
    caps.structure(0).unwrap().name().to_string()
}

fn assert_h264(url: &str) {
    let caps = read(url, H264, 5).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(structure_name(&caps), "video/x-h264", "{url}: {caps}");
}

fn is_key(sample: &gst::Sample) -> bool {
    !sample
        .buffer()
        .unwrap()
        .flags()
        .contains(gst::BufferFlags::DELTA_UNIT)
}

#[test]
fn fleet_serves_every_codec_and_obeys_stop_start_stall() {
    let fleet = spawn(FleetOptions {
        gop: 15,
        h265_cameras: 1,
        mjpeg: true,
        // Shown only when a test fails.
        echo_stderr: true,
        ..FleetOptions::default()
    });

    // Every mount at once, as the recorder would connect.
    std::thread::scope(|s| {
        for n in 1..=4 {
            let url = fleet.url(n);
            s.spawn(move || assert_h264(&url));
        }
        s.spawn(|| {
            let caps = read(&fleet.h265_url(1), H265, 5).expect("h265cam1 reads");
            assert_eq!(structure_name(&caps), "video/x-h265", "{caps}");
        });
        s.spawn(|| {
            // Undepayloaded: the RTP caps say what the stream is.
            let caps = read(&fleet.mjpeg_url(), "", 5).expect("mjpeg reads");
            let st = caps.structure(0).unwrap();
            assert_eq!(st.name(), "application/x-rtp", "{caps}");
            assert_eq!(st.get::<&str>("encoding-name").unwrap(), "JPEG", "{caps}");
        });
    });

    // stop: attached readers (UDP and TCP) see the stream end, new ones are refused.
    let udp = Reader::open(&fleet.url(2), H264, "udp");
    let tcp = Reader::open(&fleet.url(2), H264, "tcp");
    udp.take(3).expect("cam2 over UDP");
    tcp.take(3).expect("cam2 over TCP");
    fleet.stop(2).unwrap();
    for (name, reader) in [("udp", &udp), ("tcp", &tcp)] {
        let end = loop {
            match reader.next(WAIT) {
                Ok(_) => continue,
                Err(why) => break why,
            }
        };
        assert_ne!(end, "timeout", "{name} reader of stopped cam2 saw no end");
    }
    drop((udp, tcp));
    let refused = read(&fleet.url(2), H264, 1);
    assert!(refused.is_err(), "stopped cam2 still serves: {refused:?}");
    assert_h264(&fleet.url(1));
    fleet.start(2).unwrap();
    assert_h264(&fleet.url(2));

    // stall: the session stays open without data; resume restarts at a keyframe.
    let reader = Reader::open(&fleet.url(3), H264, "tcp");
    reader.take(3).expect("cam3 reads");
    fleet.stall(3).unwrap();
    assert!(fleet.command("stats").unwrap().contains("cam3=stalled"));
    // Drain what was in flight, then nothing may come and nothing may end.
    while reader.next(Duration::from_millis(1500)).is_ok() {}
    assert_eq!(
        reader.next(Duration::from_secs(3)).err().as_deref(),
        Some("timeout")
    );
    fleet.resume(3).unwrap();
    let first = reader.next(WAIT).expect("cam3 sends again after resume");
    assert!(
        is_key(&first),
        "first access unit after resume is not a keyframe"
    );
    reader.take(3).expect("cam3 keeps sending");

    assert!(fleet.command("stop cam9").is_err());
}

/// A cache dir shared across runs, so only the first run pays for the transcode.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fakecam-cache")
}

#[test]
fn file_source_serves_vtest_as_h264() {
    let vtest = storeguard_fixtures::media::vtest();
    let fleet = spawn(FleetOptions {
        cameras: 1,
        source: FleetSource::File(vtest),
        cache_dir: Some(cache_dir()),
        echo_stderr: true,
        ..FleetOptions::default()
    });
    let caps = read(&fleet.url(1), H264, 5).expect("vtest camera reads");
    let st = caps.structure(0).unwrap();
    assert_eq!(st.name(), "video/x-h264");
    assert_eq!(st.get::<i32>("width").unwrap(), 768, "{caps}");
    assert_eq!(st.get::<i32>("height").unwrap(), 576, "{caps}");
    let cached = std::fs::read_dir(cache_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with("vtest-") && name.ends_with(".mp4")
        });
    assert!(cached, "no vtest transcode in {}", cache_dir().display());
}

#[test]
fn file_source_loops_with_monotonic_timestamps() {
    gst::init().unwrap();
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fakecam-loop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 20 frames at 10 fps: a 2 s clip.
    let clip = dir.join("short.avi");
    let make = gst::parse::launch(&format!(
        "videotestsrc num-buffers=20 ! video/x-raw,width=320,height=240,framerate=10/1 ! \
         jpegenc ! avimux ! filesink location={}",
        clip.display()
    ))
    .unwrap();
    make.set_state(gst::State::Playing).unwrap();
    let bus = make.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("clip written");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    make.set_state(gst::State::Null).unwrap();

    let fleet = spawn(FleetOptions {
        cameras: 1,
        gop: 10,
        source: FleetSource::File(clip),
        cache_dir: Some(dir.clone()),
        echo_stderr: true,
        ..FleetOptions::default()
    });
    // 45 frames of a 20-frame clip: it looped at least twice.
    let reader = Reader::open(&fleet.url(1), H264, "tcp");
    let samples = reader.take(45).expect("looped clip keeps playing");
    let pts: Vec<gst::ClockTime> = samples
        .iter()
        .map(|s| s.buffer().unwrap().pts().expect("pts"))
        .collect();
    for w in pts.windows(2) {
        assert!(w[1] > w[0], "timestamps go back across the loop: {pts:?}");
    }
    drop(reader);
    drop(fleet);
    let _ = std::fs::remove_dir_all(&dir);
}
