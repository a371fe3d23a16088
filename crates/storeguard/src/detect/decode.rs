//! Pictures for detection, decoded by GStreamer: keyframes handed over by the recording
//! path, or a camera's sub stream. The decoder is picked by rank, so a box with a V4L2
//! stateful decoder (rank primary + 1) uses it and others fall back to libav.

use crate::recording::ts::VideoCodec;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::sync::Arc;
use std::time::Duration;

/// A decoded picture as the decoder gives it, I420 (planes packed, no row padding): motion
/// and tamper read the luma plane alone, and only the pixels that go to the model or into
/// a JPEG are ever turned into RGB. Half the memory of RGB, and no full-frame conversion.
#[derive(Debug, Clone)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub y: Vec<u8>,
    /// Chroma planes, `cw()`×`ch()` each.
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

impl Picture {
    pub fn cw(&self) -> usize {
        (self.width as usize).div_ceil(2)
    }

    pub fn ch(&self) -> usize {
        (self.height as usize).div_ceil(2)
    }

    pub fn luma(&self, x: usize, y: usize) -> u8 {
        self.y[y * self.width as usize + x]
    }

    /// RGB of one pixel (BT.601, limited range: what cameras send).
    pub fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
        let c = (self.y[y * self.width as usize + x] as i32 - 16).max(0) * 298;
        let ci = (y / 2) * self.cw() + x / 2;
        let (d, e) = (self.u[ci] as i32 - 128, self.v[ci] as i32 - 128);
        let k = |v: i32| ((v + 128) >> 8).clamp(0, 255) as u8;
        [k(c + 409 * e), k(c - 100 * d - 208 * e), k(c + 516 * d)]
    }

    /// A test picture from packed RGB (the inverse conversion).
    pub fn from_rgb(width: u32, height: u32, rgb: &[u8]) -> Picture {
        let (w, h) = (width as usize, height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut p = Picture {
            width,
            height,
            y: vec![0; w * h],
            u: vec![128; cw * ch],
            v: vec![128; cw * ch],
        };
        for yy in 0..h {
            for xx in 0..w {
                let i = (yy * w + xx) * 3;
                let (r, g, b) = (rgb[i] as i32, rgb[i + 1] as i32, rgb[i + 2] as i32);
                p.y[yy * w + xx] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
                if xx % 2 == 0 && yy % 2 == 0 {
                    let ci = (yy / 2) * cw + xx / 2;
                    p.u[ci] = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128) as u8;
                    p.v[ci] = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128) as u8;
                }
            }
        }
        p
    }
}

/// How long one keyframe may take to come out of the decoder.
const DECODE_TIMEOUT: Duration = Duration::from_secs(5);

fn caps_for(codec: VideoCodec) -> gst::Caps {
    let name = match codec {
        VideoCodec::H264 => "video/x-h264",
        VideoCodec::H265 => "video/x-h265",
    };
    gst::Caps::builder(name)
        .field("stream-format", "byte-stream")
        .field("alignment", "au")
        .build()
}

/// The highest-ranked decoder for `codec` that is installed.
pub fn pick_decoder(codec: VideoCodec) -> Result<gst::ElementFactory, String> {
    gst::init().map_err(|e| format!("GStreamer init: {e}"))?;
    let mut found: Vec<gst::ElementFactory> = gst::ElementFactory::factories_with_type(
        gst::ElementFactoryType::DECODER | gst::ElementFactoryType::MEDIA_VIDEO,
        gst::Rank::MARGINAL,
    )
    .into_iter()
    .filter(|f| {
        f.static_pad_templates().iter().any(|t| {
            t.direction() == gst::PadDirection::Sink && t.caps().can_intersect(&caps_parsed(codec))
        })
    })
    .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.rank()));
    found.into_iter().next().ok_or_else(|| {
        format!(
            "no {} decoder installed (gstreamer1.0-libav provides avdec_h264 and avdec_h265)",
            crate::recording::writer::codec_name(codec)
        )
    })
}

/// What a parser hands the decoder (decoders want parsed caps, not byte-stream).
fn caps_parsed(codec: VideoCodec) -> gst::Caps {
    gst::Caps::builder(match codec {
        VideoCodec::H264 => "video/x-h264",
        VideoCodec::H265 => "video/x-h265",
    })
    .build()
}

/// libav decodes frame-threaded by default, which holds each picture back until the next
/// arrives: a GOP of latency when only keyframes come. One thread decodes at once.
fn no_frame_delay(dec: &gst::Element) {
    if dec.find_property("max-threads").is_some() {
        dec.set_property_from_str("max-threads", "1");
    }
}

fn repack(sample: &gst::Sample) -> Result<Picture, String> {
    let caps = sample.caps().ok_or("a sample without caps")?;
    let st = caps.structure(0).ok_or("empty caps")?;
    let dim = |f: &str| st.get::<i32>(f).map_err(|e| format!("caps {f}: {e}"));
    let (w, h) = (dim("width")? as usize, dim("height")? as usize);
    let buf = sample.buffer().ok_or("a sample without a buffer")?;
    let map = buf.map_readable().map_err(|e| e.to_string())?;
    // GStreamer's default I420 layout: rows padded to 4 bytes, planes one after another.
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let ys = (w + 3) & !3;
    let cs = (cw + 3) & !3;
    let (uo, vo) = (ys * h, ys * h + cs * ch);
    let src = map.as_slice();
    if src.len() < vo + cs * (ch - 1) + cw {
        return Err(format!("decoder gave {} bytes for {w}x{h} I420", src.len()));
    }
    let plane = |off: usize, stride: usize, pw: usize, ph: usize| {
        let mut out = Vec::with_capacity(pw * ph);
        for row in 0..ph {
            out.extend_from_slice(&src[off + row * stride..off + row * stride + pw]);
        }
        out
    };
    Ok(Picture {
        width: w as u32,
        height: h as u32,
        y: plane(0, ys, w, h),
        u: plane(uo, cs, cw, ch),
        v: plane(vo, cs, cw, ch),
    })
}

fn bus_error(p: &gst::Pipeline) -> Option<String> {
    let bus = p.bus()?;
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos]) {
        match msg.view() {
            gst::MessageView::Error(e) => return Some(e.error().to_string()),
            gst::MessageView::Eos(_) => return Some("stream ended".into()),
            _ => {}
        }
    }
    None
}

/// A keyframe decoder, kept playing between keyframes so each costs one picture's decode
/// and no pipeline set-up. One serves every camera of a codec and size: keyframes carry
/// their parameter sets and refer to nothing before them, and a decoder per camera would
/// hold its frame pool (tens of MB at 1080p) for a picture every few seconds.
pub struct KeyframeDecoder {
    codec: VideoCodec,
    factory: gst::ElementFactory,
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    sink: gst_app::AppSink,
    pushed: u64,
    /// The stream has B-frames: the decoder holds a picture back until it is told the
    /// stream ended, so each keyframe is drained (and the pipeline rebuilt after).
    drain_each: bool,
    ended: bool,
}

/// How long a picture may take before the decoder is taken to be holding it back.
const HELD_BACK: Duration = Duration::from_millis(300);

fn build(
    codec: VideoCodec,
    factory: &gst::ElementFactory,
) -> Result<(gst::Pipeline, gst_app::AppSrc, gst_app::AppSink), String> {
    let parse = match codec {
        VideoCodec::H264 => "h264parse",
        VideoCodec::H265 => "h265parse",
    };
    let pipeline = gst::Pipeline::with_name("detect-decode");
    let src = gst_app::AppSrc::builder()
        .caps(&caps_for(codec))
        .format(gst::Format::Time)
        .build();
    let mk = |name: &str| {
        gst::ElementFactory::make(name)
            .build()
            .map_err(|e| format!("{name}: {e}"))
    };
    let parser = mk(parse)?;
    let dec = factory
        .create()
        .build()
        .map_err(|e| format!("{}: {e}", factory.name()))?;
    no_frame_delay(&dec);
    let convert = mk("videoconvert")?;
    let sink = gst_app::AppSink::builder()
        .caps(
            &gst::Caps::builder("video/x-raw")
                .field("format", "I420")
                .build(),
        )
        .sync(false)
        .max_buffers(2)
        .build();
    pipeline
        .add_many([src.upcast_ref(), &parser, &dec, &convert, sink.upcast_ref()])
        .map_err(|e| e.to_string())?;
    gst::Element::link_many([src.upcast_ref(), &parser, &dec, &convert, sink.upcast_ref()])
        .map_err(|e| format!("linking the decoder: {e}"))?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("starting the decoder: {e}"))?;
    Ok((pipeline, src, sink))
}

impl KeyframeDecoder {
    pub fn new(codec: VideoCodec) -> Result<KeyframeDecoder, String> {
        let factory = pick_decoder(codec)?;
        let (pipeline, src, sink) = build(codec, &factory)?;
        Ok(KeyframeDecoder {
            codec,
            factory,
            pipeline,
            src,
            sink,
            pushed: 0,
            drain_each: false,
            ended: false,
        })
    }

    pub fn codec(&self) -> VideoCodec {
        self.codec
    }

    /// The decoder element's factory name (`avdec_h264`, `v4l2h264dec`…).
    pub fn decoder(&self) -> String {
        self.factory.name().to_string()
    }

    /// Decodes one keyframe (Annex B, parameter sets included).
    pub fn decode(&mut self, au: &[u8]) -> Result<Picture, String> {
        if self.ended {
            let _ = self.pipeline.set_state(gst::State::Null);
            (self.pipeline, self.src, self.sink) = build(self.codec, &self.factory)?;
            self.ended = false;
        }
        let mut buf = gst::Buffer::from_slice(au.to_vec());
        {
            let b = buf.get_mut().expect("a new buffer is writable");
            // Stamps only need to increase; a decoder drops what has none on some paths.
            b.set_pts(gst::ClockTime::from_mseconds(self.pushed * 40));
        }
        self.pushed += 1;
        self.src
            .push_buffer(buf)
            .map_err(|e| format!("feeding the decoder: {e:?}"))?;
        if !self.drain_each {
            if let Some(s) = self
                .sink
                .try_pull_sample(gst::ClockTime::from_nseconds(HELD_BACK.as_nanos() as u64))
            {
                return repack(&s);
            }
            // A reorder delay (B-frames): from now on, drain every keyframe.
            self.drain_each = true;
        }
        let _ = self.src.end_of_stream();
        self.ended = true;
        match self.sink.try_pull_sample(gst::ClockTime::from_nseconds(
            DECODE_TIMEOUT.as_nanos() as u64
        )) {
            Some(s) => repack(&s),
            None => Err(bus_error(&self.pipeline).unwrap_or_else(|| {
                format!(
                    "{}: no picture within {} s",
                    self.factory.name(),
                    DECODE_TIMEOUT.as_secs()
                )
            })),
        }
    }
}

impl Drop for KeyframeDecoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// A camera's sub stream, decoded in full at up to `max_rate` pictures a second; each
/// picture goes to `on_picture`.
pub struct SubStream {
    pipeline: gst::Pipeline,
}

pub type OnPicture = Arc<dyn Fn(Picture) + Send + Sync>;

impl SubStream {
    pub fn start(
        url: &str,
        creds: Option<(&str, &str)>,
        max_rate: f64,
        on_picture: OnPicture,
    ) -> Result<SubStream, String> {
        gst::init().map_err(|e| format!("GStreamer init: {e}"))?;
        let rate = max_rate.ceil().max(1.0) as i32;
        // decodebin plugs decoders by rank, as pick_decoder does.
        let desc = format!(
            "rtspsrc name=src protocols=tcp latency=200 tcp-timeout=5000000 ! decodebin ! \
             videorate drop-only=true max-rate={rate} ! videoconvert ! \
             video/x-raw,format=I420 ! appsink name=sink sync=false max-buffers=1 drop=true"
        );
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| format!("building the sub-stream decoder: {e}"))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| "not a pipeline".to_string())?;
        let src = pipeline.by_name("src").ok_or("no rtspsrc")?;
        src.set_property("location", url);
        if let Some((u, p)) = creds {
            src.set_property("user-id", u);
            src.set_property("user-pw", p);
        }
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or("no appsink")?;
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    match repack(&sample) {
                        Ok(p) => on_picture(p),
                        Err(e) => tracing::debug!(error = %e, "sub-stream picture dropped"),
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| format!("starting the sub stream: {e}"))?;
        Ok(SubStream { pipeline })
    }

    /// Why the stream stopped, if it has (the caller restarts it).
    pub fn failed(&self) -> Option<String> {
        bus_error(&self.pipeline)
    }
}

impl Drop for SubStream {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One H.264 keyframe of colour bars, as a camera would send it.
    fn bars_keyframe(w: u32, h: u32) -> Vec<u8> {
        gst::init().unwrap();
        let desc = format!(
            "videotestsrc num-buffers=1 pattern=smpte75 ! video/x-raw,format=I420,width={w},height={h} ! \
             x264enc key-int-max=1 ! h264parse config-interval=-1 ! \
             video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
        );
        let p = gst::parse::launch(&desc)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let sink = p
            .by_name("sink")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        p.set_state(gst::State::Playing).unwrap();
        let s = sink.pull_sample().unwrap();
        let data = s.buffer().unwrap().map_readable().unwrap().to_vec();
        p.set_state(gst::State::Null).unwrap();
        data
    }

    #[test]
    fn a_keyframe_decodes_to_the_colours_it_shows() {
        let (w, h) = (640, 360);
        let mut d = KeyframeDecoder::new(VideoCodec::H264).unwrap();
        // x264's defaults allow B-frames, so the decoder holds pictures back: drained, and
        // the next keyframe decodes on a fresh pipeline.
        let kf = bars_keyframe(w, h);
        let p = d.decode(&kf).unwrap();
        assert_eq!((p.width, p.height), (w, h));
        let again = d.decode(&kf).unwrap();
        assert_eq!(again.y, p.y);
        // 75 % bars: grey, yellow, cyan, green, magenta, red, blue, in 7 columns.
        let want = [
            [191, 191, 191],
            [191, 191, 0],
            [0, 191, 191],
            [0, 191, 0],
            [191, 0, 191],
            [191, 0, 0],
            [0, 0, 191],
        ];
        for (i, c) in want.iter().enumerate() {
            let x = (i * w as usize / 7) + w as usize / 14;
            let got = p.rgb(x, h as usize / 4);
            for k in 0..3 {
                assert!(
                    (got[k] as i32 - c[k]).abs() <= 12,
                    "bar {i} at x {x}: {got:?}, want {c:?}"
                );
            }
        }
        // And the same through the stretch that feeds the model.
        let mut out = Vec::new();
        crate::detect::picture::stretch(
            &p,
            &storeguard_detect::Rect::frame(w as f32, h as f32),
            416,
            &mut out,
        );
        let px = |x: usize, y: usize| &out[(y * 416 + x) * 3..(y * 416 + x) * 3 + 3];
        assert!(
            (px(30, 100)[2] as i32 - 191).abs() <= 12,
            "{:?}",
            px(30, 100)
        );
        assert!(
            (px(416 * 13 / 14, 100)[2] as i32 - 191).abs() <= 12 && px(416 * 13 / 14, 100)[0] < 20
        );
    }

    #[test]
    fn a_software_decoder_is_found_for_both_codecs() {
        for c in [VideoCodec::H264, VideoCodec::H265] {
            let f = pick_decoder(c).expect("a decoder");
            assert!(f.rank() >= gst::Rank::MARGINAL, "{}", f.name());
        }
    }
}
