//! `[detect]`: the person detector (docs/detect.md).

use super::Validator;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the storeguard-model package installs the model.
pub const DEFAULT_MODEL: &str = "/usr/share/storeguard/models/nanodet-m-416-fp16w.onnx";
/// Where the storeguard-onnxruntime package installs the library (its unit drop-in also
/// sets `ORT_DYLIB_PATH`).
pub const DEFAULT_ONNXRUNTIME: &str = "/usr/lib/storeguard/onnxruntime/libonnxruntime.so.1.31.1";
/// SHA-256 of the model this storeguard was tested with (models/SHA256SUMS).
pub const MODEL_SHA256: &str = "cca976f3017f407a8e5c373cb46d2aa5f2597fd76d4b90e2c2cef951a16d9d9e";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    /// The ONNX model (NanoDet-m 416, the contract in models/README.md).
    #[serde(default = "default_model")]
    pub model: PathBuf,
    /// Refuse a model with another SHA-256 (hex); default: accept any that fits the contract.
    #[serde(default)]
    pub model_sha256: Option<String>,
    /// `libonnxruntime.so` (version 1.31); default: `ORT_DYLIB_PATH`, else the package's.
    #[serde(default)]
    pub onnxruntime: Option<PathBuf>,
    /// ONNX Runtime intra-op threads. The recording shares the box: keep it small.
    #[serde(default = "one")]
    pub threads: usize,
    #[serde(default)]
    pub provider: Provider,
    /// Detections below this score are dropped.
    #[serde(default = "default_min_score")]
    pub min_score: f32,
}

fn default_model() -> PathBuf {
    PathBuf::from(DEFAULT_MODEL)
}
fn one() -> usize {
    1
}
fn default_min_score() -> f32 {
    0.35
}

impl Default for Detect {
    fn default() -> Self {
        Detect {
            model: default_model(),
            model_sha256: None,
            onnxruntime: None,
            threads: one(),
            provider: Provider::Cpu,
            min_score: default_min_score(),
        }
    }
}

impl Detect {
    pub(crate) fn validate(&self, v: &mut Validator) {
        if !(1..=8).contains(&self.threads) {
            v.err(
                "detect.threads",
                format!("{} is out of range (1 to 8)", self.threads),
            );
        }
        if !(0.05..=0.99).contains(&self.min_score) {
            v.err(
                "detect.min_score",
                format!("{} is out of range (0.05 to 0.99)", self.min_score),
            );
        }
        if let Some(h) = &self.model_sha256
            && (h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
        {
            v.err("detect.model_sha256", format!("{h:?} is not 64 hex digits"));
        }
    }
}
