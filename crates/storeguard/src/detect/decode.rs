//! Pictures for detection, decoded by GStreamer: keyframes handed over by the recording
//! path, or a camera's sub stream. The decoder is picked by rank, so a box with a V4L2
//! stateful decoder (rank primary + 1) uses it and others fall back to libav.

use crate::recording::ts::VideoCodec;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::sync::Arc;
use std::time::Duration;

/// A decoded picture, packed RGB (3 bytes a pixel, no row padding).
#[derive(Debug, Clone)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Rgb {
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
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

fn repack(sample: &gst::Sample) -> Result<Rgb, String> {
    let caps = sample.caps().ok_or("a sample without caps")?;
    let st = caps.structure(0).ok_or("empty caps")?;
    let dim = |f: &str| st.get::<i32>(f).map_err(|e| format!("caps {f}: {e}"));
    let (w, h) = (dim("width")? as usize, dim("height")? as usize);
    let buf = sample.buffer().ok_or("a sample without a buffer")?;
    let map = buf.map_readable().map_err(|e| e.to_string())?;
    // GStreamer's packed RGB rows are padded to 4 bytes.
    let stride = (w * 3 + 3) & !3;
    let offset = 0;
    let src = map.as_slice();
    if src.len() < offset + stride * h.saturating_sub(1) + w * 3 {
        return Err(format!("decoder gave {} bytes for {w}x{h} RGB", src.len()));
    }
    let mut data = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        let s = offset + row * stride;
        data.extend_from_slice(&src[s..s + w * 3]);
    }
    Ok(Rgb {
        width: w as u32,
        height: h as u32,
        data,
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

/// One camera's keyframe decoder: kept playing between keyframes, so each costs one
/// picture's decode and no pipeline set-up.
pub struct KeyframeDecoder {
    codec: VideoCodec,
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    sink: gst_app::AppSink,
    decoder: String,
    pushed: u64,
}

impl KeyframeDecoder {
    pub fn new(codec: VideoCodec) -> Result<KeyframeDecoder, String> {
        let factory = pick_decoder(codec)?;
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
                    .field("format", "RGB")
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
        Ok(KeyframeDecoder {
            codec,
            pipeline,
            src,
            sink,
            decoder: factory.name().to_string(),
            pushed: 0,
        })
    }

    pub fn codec(&self) -> VideoCodec {
        self.codec
    }

    /// The decoder element's factory name (`avdec_h264`, `v4l2h264dec`…).
    pub fn decoder(&self) -> &str {
        &self.decoder
    }

    /// Decodes one keyframe (Annex B, parameter sets included).
    pub fn decode(&mut self, au: &[u8]) -> Result<Rgb, String> {
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
        match self.sink.try_pull_sample(gst::ClockTime::from_nseconds(
            DECODE_TIMEOUT.as_nanos() as u64
        )) {
            Some(s) => repack(&s),
            None => Err(bus_error(&self.pipeline).unwrap_or_else(|| {
                format!(
                    "{}: no picture within {} s",
                    self.decoder,
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
/// picture goes to `on_picture` with its arrival time (UTC ns).
pub struct SubStream {
    pipeline: gst::Pipeline,
}

pub type OnPicture = Arc<dyn Fn(Rgb) + Send + Sync>;

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
             video/x-raw,format=RGB ! appsink name=sink sync=false max-buffers=1 drop=true"
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
                        Ok(rgb) => on_picture(rgb),
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

    #[test]
    fn a_software_decoder_is_found_for_both_codecs() {
        for c in [VideoCodec::H264, VideoCodec::H265] {
            let f = pick_decoder(c).expect("a decoder");
            assert!(f.rank() >= gst::Rank::MARGINAL, "{}", f.name());
        }
    }
}
