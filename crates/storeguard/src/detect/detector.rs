//! The detector: ONNX Runtime through `ort`, the library loaded at run time.
//!
//! One environment per process (an ONNX Runtime rule) and one session for all cameras;
//! batches of crops, each already stretched to the model's 416×416 input.

use crate::config::detect::Detect;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use storeguard_detect::geom::Rect;
use storeguard_detect::model::{
    self, ChannelOrder, DecodeParams, Detection, Heads, INPUT_LEN, INPUT_NAME, INPUT_SIZE,
    OUTPUT_NAMES,
};

/// The detector edge: what the pipeline needs from a model.
pub trait Detector: Send {
    /// Boxes per item, in frame pixels (each item's `crop` mapped back).
    fn detect(&mut self, items: &[Item<'_>]) -> Result<Vec<Vec<Detection>>, DetectError>;
}

/// One input: 416×416 packed RGB pixels, cut from the frame region `crop` (frame pixels).
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub rgb: &'a [u8],
    pub crop: Rect,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("ONNX Runtime library {path}: {reason}")]
    Library { path: PathBuf, reason: String },
    #[error("model {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("model {path} does not match the detector's contract: {reason}")]
    Contract { path: PathBuf, reason: String },
    #[error("inference: {0}")]
    Run(String),
    #[error("decoding the model's output: {0}")]
    Decode(#[from] model::ModelError),
}

/// The library path: the config's, else `ORT_DYLIB_PATH`, else where the package puts it.
pub fn library_path(cfg: &Detect) -> PathBuf {
    cfg.onnxruntime
        .clone()
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::config::detect::DEFAULT_ONNXRUNTIME))
}

static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process's one ONNX Runtime environment, from `lib` (the first call decides).
fn environment(lib: &Path) -> Result<&'static ort::environment::Environment, DetectError> {
    let env = ENV.get_or_init(|| {
        if !lib.is_file() {
            return Err(
                "no such file (scripts/setup.sh fetches it; or set detect.onnxruntime)".into(),
            );
        }
        ort::init_from(lib)
            .map_err(|e| e.to_string())?
            .with_name("storeguard")
            .build()
            .map_err(|e| e.to_string())
    });
    env.as_ref().map_err(|reason| DetectError::Library {
        path: lib.to_path_buf(),
        reason: reason.clone(),
    })
}

/// What `doctor` reports about the model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub sha256: String,
    pub library: PathBuf,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

pub struct OrtDetector {
    session: ort::session::Session,
    params: DecodeParams,
    input: Vec<f32>,
    info: ModelInfo,
}

impl OrtDetector {
    /// Loads the library (once per process) and the model, and holds the model to the
    /// contract: input `image` f32 [batch, 3, 416, 416], the six `cls_*`/`reg_*` heads.
    pub fn open(cfg: &Detect) -> Result<OrtDetector, DetectError> {
        let lib = library_path(cfg);
        let path = cfg.model.clone();
        let model_err = |reason: String| DetectError::Model {
            path: path.clone(),
            reason,
        };
        let (_, sha256) = storeguard_proto::sha256_file(&path).map_err(|e| {
            model_err(if e.kind() == std::io::ErrorKind::NotFound {
                format!("{e} (the storeguard-model package installs it; or set detect.model)")
            } else {
                e.to_string()
            })
        })?;
        if let Some(want) = &cfg.model_sha256
            && !want.eq_ignore_ascii_case(&sha256)
        {
            return Err(model_err(format!(
                "sha256 is {sha256}, detect.model_sha256 says {want}"
            )));
        }
        let env = environment(&lib)?;
        let session = ort::session::Session::builder(env)
            .map_err(|e| model_err(e.to_string()))?
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
            .map_err(|e| model_err(e.to_string()))?
            .with_intra_threads(cfg.threads.max(1))
            .map_err(|e| model_err(e.to_string()))?
            .commit_from_file(&path)
            .map_err(|e| model_err(e.to_string()))?;
        let describe = |o: &ort::value::Outlet| format!("{} {}", o.name(), o.dtype());
        let info = ModelInfo {
            path: path.clone(),
            sha256,
            library: lib,
            inputs: session.inputs().iter().map(describe).collect(),
            outputs: session.outputs().iter().map(describe).collect(),
        };
        let contract = |reason: String| DetectError::Contract {
            path: path.clone(),
            reason,
        };
        match session.inputs() {
            [i] if i.name() == INPUT_NAME => {
                let shape = i.dtype().tensor_shape().map(|s| s.to_vec());
                let ok = shape.as_deref().is_some_and(|s| {
                    s.len() == 4
                        && s[1] == 3
                        && s[2] == INPUT_SIZE as i64
                        && s[3] == INPUT_SIZE as i64
                });
                if !ok {
                    return Err(contract(format!(
                        "input is {}, expected [batch, 3, 416, 416]",
                        describe(i)
                    )));
                }
            }
            other => {
                return Err(contract(format!(
                    "inputs are [{}], expected one named {INPUT_NAME}",
                    other.iter().map(describe).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        for name in OUTPUT_NAMES {
            if !session.outputs().iter().any(|o| o.name() == name) {
                return Err(contract(format!("no output {name}")));
            }
        }
        Ok(OrtDetector {
            session,
            params: DecodeParams {
                min_score: cfg.min_score,
                ..DecodeParams::default()
            },
            input: Vec::new(),
            info,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// ONNX Runtime alone on the input of the last `detect`, for benchmarks: the session
    /// run and reading the outputs, without preprocessing or decoding.
    pub fn run_raw(&mut self, batch: usize) -> Result<usize, DetectError> {
        self.input.resize(batch.max(1) * INPUT_LEN, 0.0);
        let outputs = run(&mut self.session, &self.input, batch.max(1))?;
        let mut n = 0;
        for name in OUTPUT_NAMES {
            n += output(&outputs, name)?.len();
        }
        Ok(n)
    }
}

/// One session run on `batch` preprocessed images.
fn run<'s>(
    session: &'s mut ort::session::Session,
    input: &[f32],
    batch: usize,
) -> Result<ort::session::SessionOutputs<'s>, DetectError> {
    let shape = [batch, 3, INPUT_SIZE, INPUT_SIZE];
    let tensor = ort::value::TensorRef::from_array_view((shape, &input[..batch * INPUT_LEN]))
        .map_err(|e| DetectError::Run(e.to_string()))?;
    session
        .run(ort::inputs![INPUT_NAME => tensor])
        .map_err(|e| DetectError::Run(e.to_string()))
}

/// One output head's values.
fn output<'o>(
    outputs: &'o ort::session::SessionOutputs<'_>,
    name: &str,
) -> Result<&'o [f32], DetectError> {
    outputs
        .get(name)
        .ok_or_else(|| DetectError::Run(format!("no output {name}")))?
        .try_extract_tensor::<f32>()
        .map(|(_, data)| data)
        .map_err(|e| DetectError::Run(format!("{name}: {e}")))
}

impl Detector for OrtDetector {
    fn detect(&mut self, items: &[Item<'_>]) -> Result<Vec<Vec<Detection>>, DetectError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.input.resize(items.len() * INPUT_LEN, 0.0);
        for (item, out) in items.iter().zip(self.input.chunks_exact_mut(INPUT_LEN)) {
            model::preprocess(item.rgb, INPUT_SIZE, INPUT_SIZE, ChannelOrder::Rgb, out)?;
        }
        let outputs = run(&mut self.session, &self.input, items.len())?;
        let get = |name: &str| output(&outputs, name);
        let cls = [
            get(OUTPUT_NAMES[0])?,
            get(OUTPUT_NAMES[1])?,
            get(OUTPUT_NAMES[2])?,
        ];
        let reg = [
            get(OUTPUT_NAMES[3])?,
            get(OUTPUT_NAMES[4])?,
            get(OUTPUT_NAMES[5])?,
        ];
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let heads = Heads::item(cls, reg, i)?;
                Ok(model::decode(&heads, item.crop, &self.params)?)
            })
            .collect()
    }
}
