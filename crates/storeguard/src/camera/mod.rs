//! Camera ingest: one supervised stream per camera, reconnecting on its own, with
//! health for `storeguard cameras`. Two ingests sit behind `CameraSource`: retina
//! (`retina_ingest.rs`, the default) and GStreamer's rtspsrc (`pipeline.rs`, the
//! fallback for RTSPS and UDP-only cameras), chosen per camera by `ingest`.

pub mod pipeline;
pub mod retina_ingest;
pub mod supervisor;
pub mod timeline;

use std::sync::Arc;

pub use pipeline::{GstCamera, Live};
pub use retina_ingest::RetinaCamera;
pub use supervisor::{CameraHealth, Supervisor};

#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// The stream failed or ended; the message says why, for the technician.
    Failed(String),
}

/// One camera's stream, as the supervisor sees it.
pub trait CameraSource: Send {
    /// Starts (or restarts) the stream; frames flow to the recorder on their own.
    fn start(&mut self) -> Result<(), String>;
    fn stop(&mut self);
    /// Drains what happened since the last poll. Never blocks.
    fn poll(&mut self) -> Vec<SourceEvent>;
    fn live(&self) -> &Arc<Live>;
}

pub fn init_gstreamer() -> anyhow::Result<()> {
    gstreamer::init().map_err(|e| anyhow::anyhow!("GStreamer failed to initialise: {e}"))?;
    for f in ["rtspsrc", "rtph264depay", "h264parse", "appsink"] {
        if gstreamer::ElementFactory::find(f).is_none() {
            anyhow::bail!(
                "GStreamer element {f} is missing: install gstreamer1.0-plugins-good and -bad"
            );
        }
    }
    Ok(())
}
