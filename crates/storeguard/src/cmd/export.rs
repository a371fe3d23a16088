//! Evidence on request: seal a clip of any range still in the ring (audited), and hand
//! out a sealed clip's files.

use super::{Caller, CmdError, Reply, blocking, time_arg};
use crate::evidence::clip::{self, ClipError};
use crate::state::State;
use serde_json::json;
use std::sync::Arc;
use storeguard_base::{now_ns, utc_ms};

/// Cuts a clip of any range still in the ring (a police request for earlier footage),
/// with the same manifest and signature as a press, and audits it.
#[derive(Debug, serde::Deserialize)]
pub struct ClipExport {
    pub camera: String,
    pub from: String,
    pub to: String,
    /// Where the caller will put the copy, for the audit trail.
    #[serde(default)]
    pub destination: String,
}

impl ClipExport {
    pub async fn apply(self, st: &Arc<State>, caller: Caller) -> Result<Reply, CmdError> {
        let cfg = st.config().config;
        let cam = cfg
            .known_camera(&self.camera)
            .map_err(CmdError::NotFound)?
            .clone();
        let from = time_arg("--from", &self.from)?;
        let to = time_arg("--to", &self.to)?;
        if from >= to {
            return Err(CmdError::Invalid("--from must be before --to".into()));
        }
        let now = now_ns();
        if to > now {
            return Err(CmdError::Invalid(format!(
                "--to {} is in the future (now {})",
                utc_ms(to),
                utc_ms(now)
            )));
        }
        let st = st.clone();
        blocking(move || {
            let uid = format!(
                "exp-{}-{}",
                chrono::DateTime::from_timestamp_nanos(now).format("%Y%m%dT%H%M%S%3fZ"),
                cam.id
            );
            let sealed = clip::seal_range(
                &st.store,
                &st.recorder,
                &st.incidents.key,
                &cfg.site,
                &cam,
                &uid,
                (from, to),
            )
            .map_err(|e| match e {
                ClipError::NoFootage { .. } => CmdError::NotFound(e.to_string()),
                e => CmdError::internal(e),
            })?;
            let m = &sealed.manifest;
            let detail = json!({ "clip": uid, "from": utc_ms(from), "to": utc_ms(to), "sha256": m.file.sha256, "destination": self.destination });
            st.store
                .audit(now, caller.uid, caller.pid, "clip_export", &cam.id, &detail.to_string())
                .map_err(CmdError::internal)?;
            tracing::info!(clip = %uid, camera = %cam.id, uid = ?caller.uid, destination = %self.destination, "evidence exported");
            Ok(Reply::Json(json!({ "clip": uid, "file": m.file, "manifest": m, "path": sealed.path, "manifest_path": sealed.manifest_path })))
        })
        .await
    }
}

/// Which file of a sealed clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Clip,
    Manifest,
    /// The control centre's signed receipt, once it confirmed the clip.
    Receipt,
}

/// A sealed clip's MP4 or its manifest.
#[derive(Debug)]
pub struct EvidenceFile {
    pub clip: String,
    pub part: Part,
}

impl EvidenceFile {
    pub async fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        let store = st.store.clone();
        let uid = self.clip.clone();
        let row = blocking(move || store.clip(&uid).map_err(CmdError::internal)).await?;
        let Some(clip) = row else {
            return Err(CmdError::NotFound(format!("no clip {}", self.clip)));
        };
        let Some(rel) = clip.path else {
            return Err(CmdError::NotFound(format!(
                "clip {} is {}: {}",
                self.clip,
                clip.state,
                clip.error.unwrap_or_default()
            )));
        };
        let path = st.store.data_dir().join(rel);
        Ok(match self.part {
            Part::Clip => Reply::File(path, "video/mp4"),
            Part::Manifest => {
                Reply::File(storeguard_proto::sidecar_path(&path), "application/json")
            }
            Part::Receipt => {
                let receipt = storeguard_proto::receipt::receipt_path(&path);
                if clip.receipt.is_none() || !receipt.exists() {
                    return Err(CmdError::NotFound(format!(
                        "clip {} has no receipt: it is {}, not yet confirmed by the control centre",
                        self.clip, clip.state
                    )));
                }
                Reply::File(receipt, "application/json")
            }
        })
    }
}
