//! `[detect]`: the person detector (docs/detect.md).

use super::Validator;
use super::values::Dur;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use storeguard_detect::Polygon;
use storeguard_detect::rules::{ObjectFilter, Rules, RulesConfig, ZoneConfig};
use storeguard_detect::schedule::{Schedule, ScheduleConfig};

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
    /// Run detection in the daemon (the `detect` CLI works either way).
    #[serde(default)]
    pub enabled: bool,
    /// Most inferences per second per camera.
    #[serde(default = "default_max_rate")]
    pub max_rate: f64,
    /// Images per inference run. On this class of CPU a batch of 4 is no faster per image
    /// than 1 and costs ONNX Runtime about 90 MB more (docs/detect.md, Benchmarks).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// While someone is tracked, the whole frame is inferred this often even without
    /// motion, so a person standing still is kept.
    #[serde(default = "default_refresh")]
    pub refresh: Dur,
    /// An inference running longer than this is a hung detector: it is replaced.
    #[serde(default = "default_hang_timeout")]
    pub hang_timeout: Dur,
    /// A covered, turned or defocused camera is raised (and cleared) after holding this long.
    #[serde(default = "default_tamper_after")]
    pub tamper_after: Dur,
    /// The evidence window of a loitering or closed-hours event around its moment.
    #[serde(default = "default_pre_roll")]
    pub pre_roll: Dur,
    #[serde(default = "default_post_roll")]
    pub post_roll: Dur,
    /// The store's opening hours; a person seen outside them is a `closed_hours` event.
    /// Absent: always open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opening_hours: Option<ScheduleConfig>,
    /// Lets `storeguard debug detector-fault` hang or crash the detector. Tests only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fault_injection: bool,
}

/// `[cameras.detect]`: one camera's detection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraDetect {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Motion is ignored inside these polygons (normalised `[[x, y], …]`): clocks, screens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masks: Vec<Polygon>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<ZoneConfig>,
    /// Report a person seen while the store is closed.
    #[serde(default = "yes")]
    pub closed_hours: bool,
    /// Which people count for the closed-hours rule.
    #[serde(default)]
    pub filter: ObjectFilter,
}

impl Default for CameraDetect {
    fn default() -> Self {
        CameraDetect {
            enabled: true,
            masks: Vec::new(),
            zones: Vec::new(),
            closed_hours: true,
            filter: ObjectFilter::default(),
        }
    }
}

impl CameraDetect {
    pub fn rules(&self) -> RulesConfig {
        RulesConfig {
            zones: self.zones.clone(),
            closed_hours: self.closed_hours,
            filter: self.filter.clone(),
        }
    }

    pub(crate) fn validate(&self, field: &str, v: &mut Validator) {
        if let Err(e) = Rules::new(self.rules()) {
            v.err(field, e.to_string());
        }
    }
}

fn yes() -> bool {
    true
}
fn default_max_rate() -> f64 {
    2.0
}
fn default_batch() -> usize {
    1
}
fn default_refresh() -> Dur {
    Dur::secs(10)
}
fn default_hang_timeout() -> Dur {
    Dur::secs(15)
}
fn default_tamper_after() -> Dur {
    Dur::secs(10)
}
fn default_pre_roll() -> Dur {
    Dur::secs(10)
}
fn default_post_roll() -> Dur {
    Dur::secs(10)
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
            enabled: false,
            max_rate: default_max_rate(),
            batch: default_batch(),
            refresh: default_refresh(),
            hang_timeout: default_hang_timeout(),
            tamper_after: default_tamper_after(),
            pre_roll: default_pre_roll(),
            post_roll: default_post_roll(),
            opening_hours: None,
            fault_injection: false,
        }
    }
}

impl Detect {
    /// The opening hours (validated with the config, so this only fails on a tzdata change).
    pub fn schedule(&self) -> Result<Schedule, String> {
        match &self.opening_hours {
            None => Ok(Schedule::always_open()),
            Some(c) => Schedule::new(c.clone()).map_err(|e| e.to_string()),
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
        if !(0.05..=30.0).contains(&self.max_rate) {
            v.err(
                "detect.max_rate",
                format!("{} is out of range (0.05 to 30 per second)", self.max_rate),
            );
        }
        if !(1..=32).contains(&self.batch) {
            v.err(
                "detect.batch",
                format!("{} is out of range (1 to 32)", self.batch),
            );
        }
        v.range("detect.refresh", self.refresh, Dur::secs(1), Dur::secs(600));
        v.range(
            "detect.hang_timeout",
            self.hang_timeout,
            Dur::secs(1),
            Dur::secs(600),
        );
        v.range(
            "detect.tamper_after",
            self.tamper_after,
            Dur::secs(1),
            Dur::secs(600),
        );
        v.range(
            "detect.pre_roll",
            self.pre_roll,
            Dur::secs(0),
            Dur::secs(600),
        );
        v.range(
            "detect.post_roll",
            self.post_roll,
            Dur::secs(0),
            Dur::secs(600),
        );
        if let Err(e) = self.schedule() {
            v.err("detect.opening_hours", e);
        }
        if let Some(h) = &self.model_sha256
            && (h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
        {
            v.err("detect.model_sha256", format!("{h:?} is not 64 hex digits"));
        }
    }
}
