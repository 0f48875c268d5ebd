//! A frozen teacher: model and tokenizer loaded from any source, batched inference on the
//! chosen device and dtype.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use distill_models::{
    pad_batch as pad_rows, ArchConfig, Bert, GgmlDecoder, GgufFile, GgufMode, GgufWeights, Input,
    Llama, LlamaConfig, Model, SafetensorsWeights, WeightSource,
};

use crate::cache_config::CacheConfig;
use crate::device::{DTypeSpec, DeviceSpec};
use crate::error::{Result, TeacherError};
use crate::folder::HfFolder;
use crate::hub::{snapshot, HubOptions};
use crate::source::TeacherSource;
use crate::tokenizer::{load_tokenizer_json, tokenizer_from_gguf, LoadedTokenizer};

/// How to load a teacher.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    /// Dtype of dense weights and activations.
    pub dtype: DType,
    /// For GGUF sources: how matrices are multiplied.
    pub gguf_mode: GgufCompute,
    pub hub: HubOptions,
    /// What NaN or infinite values in the weight files do.
    pub non_finite: NonFinite,
}

/// What to do when a model's weight files hold NaN or infinite values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonFinite {
    /// An error naming the tensors (a teacher or student must not train or teach on them).
    #[default]
    Refuse,
    /// Load anyway, warn naming them and list them in [`Teacher::non_finite`] (for `eval`,
    /// which reports what such a model does).
    Report,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            gguf_mode: GgufCompute::Quantized,
            hub: HubOptions::from_env(),
            non_finite: NonFinite::Refuse,
        }
    }
}

/// How a GGUF teacher's matrices are multiplied.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum GgufCompute {
    /// In their stored format through candle's `QMatMul` (any device, any GGUF type).
    Quantized,
    /// Dequantised to dense matrices (fastest on CPU; no activation quantisation).
    Dequantized,
    /// With llama.cpp's CPU arithmetic ([`GgmlDecoder`]): the logits llama.cpp computes from the
    /// same file, bit for bit. CPU only; `llama` architecture with `Q4_1`/`Q8_0` matrices.
    Ggml,
}

impl std::fmt::Display for GgufCompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Quantized => "quantized",
            Self::Dequantized => "dequantized",
            Self::Ggml => "ggml",
        })
    }
}

impl GgufCompute {
    /// Parses `quantized | dequantized | ggml`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "quantized" => Some(Self::Quantized),
            "dequantized" => Some(Self::Dequantized),
            "ggml" => Some(Self::Ggml),
            _ => None,
        }
    }
}

/// A source resolved to local files.
#[derive(Clone, Debug)]
pub enum Resolved {
    Folder(Box<HfFolder>),
    Gguf(PathBuf),
}

/// Resolves a source to local files, downloading from the Hub when needed.
pub fn resolve(source: &TeacherSource, hub: &HubOptions) -> Result<Resolved> {
    match source {
        TeacherSource::Hub { repo, revision } => Ok(Resolved::Folder(Box::new(HfFolder::open(
            &snapshot(repo, revision, hub)?,
        )?))),
        TeacherSource::Folder(dir) => Ok(Resolved::Folder(Box::new(HfFolder::open(dir)?))),
        TeacherSource::Gguf(path) => {
            if !path.is_file() {
                return Err(TeacherError::NotFound { path: path.clone() });
            }
            Ok(Resolved::Gguf(path.clone()))
        }
    }
}

/// The tensors of a resolved source's weight files that hold NaN or infinite values.
pub fn non_finite_tensors(resolved: &Resolved) -> Result<Vec<String>> {
    Ok(match resolved {
        Resolved::Folder(f) => distill_models::finite::non_finite_in_safetensors(&f.weight_files)?,
        Resolved::Gguf(p) => distill_models::finite::non_finite_in_gguf(p)?,
    })
}

/// Scans the weight files of `resolved` and applies `policy`: the damaged tensors (empty when
/// all are finite), or an error naming them.
pub fn check_finite(
    source: &TeacherSource,
    resolved: &Resolved,
    policy: NonFinite,
) -> Result<Vec<String>> {
    let bad = non_finite_tensors(resolved)?;
    if bad.is_empty() {
        return Ok(bad);
    }
    let err = TeacherError::NonFinite {
        source_name: source.to_string(),
        tensors: bad.clone(),
    };
    match policy {
        NonFinite::Refuse => Err(err),
        NonFinite::Report => {
            tracing::warn!("{err}");
            Ok(bad)
        }
    }
}

/// The tokenizer of a source, without loading its weights.
pub fn load_tokenizer(resolved: &Resolved) -> Result<LoadedTokenizer> {
    match resolved {
        Resolved::Folder(f) => match &f.tokenizer_path {
            Some(p) => load_tokenizer_json(p),
            None => Err(TeacherError::Tokenizer {
                source_name: f.dir.display().to_string(),
                msg: "no tokenizer.json in the model folder".into(),
            }),
        },
        Resolved::Gguf(p) => tokenizer_from_gguf(&GgufFile::open(p)?),
    }
}

/// The `teacher:` section of a run config.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// A `.gguf` file, a Hugging Face folder, or `hf://org/name[@revision]`.
    pub source: String,
    /// `auto | cpu | cuda | cuda:N | metal`.
    #[serde(default)]
    pub device: DeviceSpec,
    /// `auto | f32 | f16 | bf16`.
    #[serde(default)]
    pub dtype: DTypeSpec,
    /// For GGUF teachers: `dequantized` (default: dense matrices, fastest on CPU), `quantized`
    /// (multiply in the stored format through candle's QMatMul; least memory, any device) or
    /// `ggml` (llama.cpp's CPU arithmetic: its logits bit for bit; CPU, Q4_1/Q8_0 files).
    #[serde(default = "dequantized")]
    pub gguf_weights: GgufCompute,
    /// An offline teacher cache (`distill cache-teacher` makes it): training reads the
    /// teacher's top-k targets from it instead of running the teacher.
    #[serde(default)]
    pub cache: Option<CacheConfig>,
}

fn dequantized() -> GgufCompute {
    GgufCompute::Dequantized
}

impl TeacherConfig {
    /// Load options for this config; errors name the key.
    pub fn load_options(&self) -> Result<LoadOptions> {
        let device = self.device.open()?;
        Ok(LoadOptions {
            dtype: self.dtype.on(&device),
            device,
            gguf_mode: self.gguf_weights,
            hub: HubOptions::from_env(),
            non_finite: NonFinite::Refuse,
        })
    }
}

/// The network of a teacher.
pub enum TeacherModel {
    Llama(Llama),
    /// A GGUF decoder run with llama.cpp's CPU arithmetic.
    Ggml(GgmlDecoder),
    Bert(Bert),
}

/// A teacher's files, tokenizer and config without its network: what a run needs that reads
/// the teacher's outputs from a cache (and initialises the student from its weights).
pub struct TeacherFiles {
    pub source: TeacherSource,
    pub resolved: Resolved,
    pub tokenizer: LoadedTokenizer,
    /// The decoder's config (an encoder is an error).
    pub config: LlamaConfig,
    /// Files the weights are read from.
    pub files: Vec<PathBuf>,
    device: Device,
}

impl TeacherFiles {
    /// Resolves `source` and reads its config and tokenizer; loads no weights.
    pub fn open(source: &TeacherSource, opts: &LoadOptions) -> Result<Self> {
        let resolved = resolve(source, &opts.hub)?;
        check_finite(source, &resolved, opts.non_finite)?;
        let (config, files) = match &resolved {
            Resolved::Folder(folder) => match &folder.config {
                ArchConfig::Llama(c) => (c.clone(), folder.weight_files.clone()),
                ArchConfig::Bert(_) => return Err(TeacherError::Source {
                    source_spec: source.to_string(),
                    msg:
                        "a causal-LM run needs a decoder teacher (Llama family); this is an encoder"
                            .into(),
                }),
            },
            Resolved::Gguf(path) => (
                LlamaConfig::from_gguf(&GgufFile::open(path)?)?,
                vec![path.clone()],
            ),
        };
        let tokenizer = load_tokenizer(&resolved)?;
        Ok(Self {
            source: source.clone(),
            resolved,
            tokenizer,
            config,
            files,
            device: opts.device.clone(),
        })
    }

    /// Dense reads of the teacher's tensors under Hugging Face names.
    pub fn dense_weights(&self, dtype: DType) -> Result<Box<dyn WeightSource>> {
        dense_weights(&self.resolved, dtype, &self.device)
    }

    /// Bytes of the teacher's weight files.
    pub fn bytes_on_disk(&self) -> u64 {
        distill_models::weights::bytes_on_disk(&self.files)
    }
}

fn dense_weights(
    resolved: &Resolved,
    dtype: DType,
    device: &Device,
) -> Result<Box<dyn WeightSource>> {
    Ok(match resolved {
        Resolved::Folder(f) => Box::new(SafetensorsWeights::open(&f.weight_files, dtype, device)?),
        Resolved::Gguf(path) => {
            Box::new(gguf_weights(path, GgufMode::Dequantized, dtype, device)?.1)
        }
    })
}

/// A frozen teacher.
pub struct Teacher {
    pub source: TeacherSource,
    /// The local files the teacher was loaded from.
    pub resolved: Resolved,
    pub model: TeacherModel,
    pub tokenizer: LoadedTokenizer,
    /// Files the weights were read from.
    pub files: Vec<PathBuf>,
    /// Tensors holding NaN or infinite values (loaded only with [`NonFinite::Report`]).
    pub non_finite: Vec<String>,
    device: Device,
}

impl Teacher {
    /// Loads the teacher named by `source`.
    pub fn load(source: &TeacherSource, opts: &LoadOptions) -> Result<Self> {
        let resolved = resolve(source, &opts.hub)?;
        let non_finite = check_finite(source, &resolved, opts.non_finite)?;
        let (model, files) = match &resolved {
            Resolved::Folder(folder) => {
                let weights =
                    SafetensorsWeights::open(&folder.weight_files, opts.dtype, &opts.device)?;
                let model = match &folder.config {
                    ArchConfig::Llama(c) => TeacherModel::Llama(Llama::load(c, &weights)?),
                    ArchConfig::Bert(c) => TeacherModel::Bert(Bert::load(c, &weights)?),
                };
                (model, folder.weight_files.clone())
            }
            Resolved::Gguf(path) => {
                let model = match opts.gguf_mode {
                    GgufCompute::Ggml => {
                        if !opts.device.is_cpu() {
                            return Err(TeacherError::Source {
                                source_spec: source.to_string(),
                                msg: format!(
                                    "gguf_weights `ggml` runs on the CPU, not {:?}; use `quantized` or `dequantized` on an accelerator",
                                    opts.device
                                ),
                            });
                        }
                        TeacherModel::Ggml(GgmlDecoder::load(&GgufFile::open(path)?)?)
                    }
                    mode => {
                        let mode = if mode == GgufCompute::Dequantized {
                            GgufMode::Dequantized
                        } else {
                            GgufMode::Quantized
                        };
                        let (cfg, weights) = gguf_weights(path, mode, opts.dtype, &opts.device)?;
                        TeacherModel::Llama(Llama::load(&cfg, &weights)?)
                    }
                };
                (model, vec![path.clone()])
            }
        };
        let tokenizer = load_tokenizer(&resolved)?;
        tracing::info!(source = %source, device = ?opts.device, dtype = ?opts.dtype, "teacher loaded");
        Ok(Self {
            source: source.clone(),
            resolved,
            model,
            tokenizer,
            files,
            non_finite,
            device: opts.device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Dense (dequantised) reads of the teacher's tensors under Hugging Face names, e.g. to
    /// initialise a student from its layers.
    pub fn dense_weights(&self, dtype: DType) -> Result<Box<dyn WeightSource>> {
        dense_weights(&self.resolved, dtype, &self.device)
    }

    /// Bytes of the teacher's weight files.
    pub fn bytes_on_disk(&self) -> u64 {
        distill_models::weights::bytes_on_disk(&self.files)
    }

    /// The teacher as a language model (every weight path behind the one forward
    /// interface), with its config; an encoder is an error.
    pub fn language_model(&self) -> Result<(&dyn Model, &LlamaConfig)> {
        match &self.model {
            TeacherModel::Llama(m) => Ok((m, m.config())),
            TeacherModel::Ggml(m) => Ok((m, m.config())),
            TeacherModel::Bert(_) => Err(TeacherError::Source {
                source_spec: self.source.to_string(),
                msg: "a causal-LM run needs a decoder teacher (Llama family); this is an encoder"
                    .into(),
            }),
        }
    }

    /// Vocabulary size of the model's output.
    pub fn vocab_size(&self) -> usize {
        match &self.model {
            TeacherModel::Llama(m) => m.config().vocab_size,
            TeacherModel::Ggml(m) => m.config().vocab_size,
            TeacherModel::Bert(m) => m.config().vocab_size,
        }
    }

    /// Logits `[batch, longest, vocab]` (f32) for every position of every sequence; shorter
    /// sequences are right-padded and their padding positions carry no meaning.
    pub fn logits(&self, batch: &[Vec<u32>]) -> Result<Tensor> {
        let (lm, _) = self.language_model().map_err(|_| TeacherError::Source {
            source_spec: self.source.to_string(),
            msg: "a BERT encoder has no language-model logits".into(),
        })?;
        let (ids, mask) = pad_batch(batch, &self.device)?;
        let out = lm.run(&Input::new(&ids).with_mask(mask.as_ref()))?;
        Ok(out
            .logits
            .to_dtype(DType::F32)
            .map_err(distill_models::ModelError::from)?)
    }
}

/// The config of a GGUF Llama-family model and its weights under Hugging Face names.
fn gguf_weights(
    path: &std::path::Path,
    mode: GgufMode,
    dtype: DType,
    device: &Device,
) -> Result<(LlamaConfig, GgufWeights)> {
    let g = Arc::new(GgufFile::open(path)?);
    let cfg = LlamaConfig::from_gguf(&g)?;
    let names = distill_models::family::gguf_names(&cfg)?;
    let weights = GgufWeights::new(g, names, mode, dtype, device);
    Ok((cfg, weights))
}

/// Right-pads `batch` with id 0 into `[b, longest]` and returns the mask (`None` when no
/// sequence needed padding).
pub fn pad_batch(batch: &[Vec<u32>], device: &Device) -> Result<(Tensor, Option<Tensor>)> {
    let rows: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
    let p = pad_rows(&rows, 0, device).map_err(|_| TeacherError::Source {
        source_spec: "input".into(),
        msg: "empty batch: no tokens to run".into(),
    })?;
    let mask = p.padded.then_some(p.mask);
    Ok((p.ids, mask))
}
