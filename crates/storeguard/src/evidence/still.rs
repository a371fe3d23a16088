//! A JPEG still of a camera: its latest recorded keyframe, decoded by GStreamer.
//!
//! Read from the ring rather than the live stream, so a still costs one keyframe's decode
//! and never touches the camera or the recording path. The keyframe index only names
//! synced bytes, and every keyframe offset starts with PAT/PMT, so the slice from there
//! demuxes on its own.

use crate::store::Store;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::io::{Read, Seek, SeekFrom};

/// How far back a still may come from: older footage is not "now".
const MAX_AGE_NS: i64 = 60_000_000_000;
/// Bytes read from the keyframe on: enough for a keyframe at any sane bitrate.
const MAX_READ: u64 = 4 << 20;

#[derive(Debug, Clone)]
pub struct Still {
    pub camera: String,
    /// UTC of the keyframe shown.
    pub at_ns: i64,
    pub jpeg: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum StillError {
    #[error("camera {camera}: nothing recorded in the last minute")]
    NoFootage { camera: String },
    #[error("camera {camera}: {what}")]
    Store {
        camera: String,
        what: &'static str,
        #[source]
        source: Box<crate::store::StoreError>,
    },
    #[error("camera {camera}: read {path}")]
    Read {
        camera: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("camera {camera}: decoding the keyframe at {at}: {reason}")]
    Decode {
        camera: String,
        at: String,
        reason: String,
    },
}

/// The latest keyframe of `camera` as a JPEG (quality 85, native size).
pub fn latest(store: &Store, camera: &str, now_ns: i64) -> Result<Still, StillError> {
    let st = |what| {
        move |source| StillError::Store {
            camera: camera.to_string(),
            what,
            source: Box::new(source),
        }
    };
    let segs = store
        .segments_between(camera, now_ns - MAX_AGE_NS, i64::MAX)
        .map_err(st("listing segments"))?;
    for seg in segs.iter().rev() {
        let kfs = store.keyframes(seg.id).map_err(st("reading keyframes"))?;
        let Some(&(at_ns, offset)) = kfs.last() else {
            continue;
        };
        if offset >= seg.bytes {
            continue;
        }
        let path = store.data_dir().join(&seg.path);
        let read_err = |source| StillError::Read {
            camera: camera.to_string(),
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::File::open(&path).map_err(read_err)?;
        f.seek(SeekFrom::Start(offset)).map_err(read_err)?;
        let mut ts = Vec::new();
        f.take((seg.bytes - offset).min(MAX_READ))
            .read_to_end(&mut ts)
            .map_err(read_err)?;
        let jpeg = decode_first(&ts, &seg.codec).map_err(|reason| StillError::Decode {
            camera: camera.to_string(),
            at: storeguard_base::utc_ms(at_ns),
            reason,
        })?;
        return Ok(Still {
            camera: camera.to_string(),
            at_ns,
            jpeg,
        });
    }
    Err(StillError::NoFootage {
        camera: camera.to_string(),
    })
}

/// Decodes the first picture of an MPEG-TS slice into a JPEG.
pub fn decode_first(ts: &[u8], codec: &str) -> Result<Vec<u8>, String> {
    gst::init().map_err(|e| format!("GStreamer init: {e}"))?;
    let (parse, dec) = match codec {
        "h265" => ("h265parse", "avdec_h265"),
        _ => ("h264parse", "avdec_h264"),
    };
    let desc = format!(
        "appsrc name=src caps=video/mpegts,systemstream=true format=bytes ! tsdemux ! {parse} ! \
         {dec} ! videoconvert ! jpegenc quality=85 ! appsink name=sink sync=false max-buffers=1"
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| format!("building the decoder ({desc}): {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_string())?;
    let by_name = |n: &str| pipeline.by_name(n).ok_or_else(|| format!("no element {n}"));
    let src = by_name("src")?
        .downcast::<gst_app::AppSrc>()
        .map_err(|_| "src is not an appsrc".to_string())?;
    let sink = by_name("sink")?
        .downcast::<gst_app::AppSink>()
        .map_err(|_| "sink is not an appsink".to_string())?;
    let result = (|| {
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| format!("starting the decoder: {e}"))?;
        src.push_buffer(gst::Buffer::from_slice(ts.to_vec()))
            .map_err(|e| format!("feeding the decoder: {e}"))?;
        let _ = src.end_of_stream();
        match sink.try_pull_sample(gst::ClockTime::from_seconds(10)) {
            Some(sample) => {
                let buf = sample.buffer().ok_or("a sample without a buffer")?;
                let map = buf.map_readable().map_err(|e| e.to_string())?;
                Ok(map.as_slice().to_vec())
            }
            None => Err(bus_error(&pipeline).unwrap_or_else(|| {
                "no picture decoded (no keyframe in the slice, or a timeout)".to_string()
            })),
        }
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn bus_error(p: &gst::Pipeline) -> Option<String> {
    let bus = p.bus()?;
    while let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(0)) {
        if let gst::MessageView::Error(e) = msg.view() {
            return Some(e.error().to_string());
        }
    }
    None
}
