//! The `quantize` step: `int8` is a pass (per-channel int8 in the safetensors folder); a GGUF
//! type (`q8_0`, `q4_k`, ...) is the variant's GGUF sink, so it closes the variant. `method`
//! says how GGUF blocks are chosen:
//!
//! * `rtn`: round to nearest with llama.cpp's reference search (what `llama-quantize` does
//!   without an importance matrix);
//! * `candle`: candle's quantiser (its Q4_K search is llama.cpp's older one), kept to measure
//!   the difference;
//! * `imatrix`: llama.cpp's importance-weighted search, with the importance matrix (mean `x²`
//!   per input channel) measured on the calibration blocks, or read from a llama.cpp imatrix
//!   file; the matrix is written next to the GGUF file for `llama-quantize --imatrix`;
//! * `gptq`: GPTQ with the type's blocks as its quantiser, layer by layer on the calibration
//!   blocks (see [`crate::passes::quantization::gptq`]).
//!
//! `imatrix` and `gptq` encode the layer matrices and the head (a tied embedding for its role
//! as the head) in a pass before the sink; the sink writes those blocks as they are.

pub mod gptq;
pub mod int8;

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use serde::Deserialize;

use crate::calibration::obs::inverse_hessian;
use crate::calibration::walk::{walk, Collect, SiteStats};
use crate::error::CompressError;
use crate::formats::gguf::blocks::{decode, quantize_rows, Format};
use crate::formats::gguf::export::{fitting_type, gguf_tensor_name, parse_qtype, GgufType, Search};
use crate::formats::gguf::imatrix::Imatrix;
use crate::framework::pass::{Candidate, Context, Pass, PassReport};
use crate::framework::sink::Sink;
use crate::framework::technique::{schema_of, settings, Built, Defaults, Settings, Technique};
use crate::model::tensors::{values_f32, Stored};
use crate::passes::quantization::gptq::gptq_quantize;
use crate::passes::quantization::int8::Int8;

/// How GGUF blocks are chosen.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum QuantMethod {
    /// Round to nearest, llama.cpp's reference search.
    #[default]
    Rtn,
    /// candle's quantiser.
    Candle,
    /// llama.cpp's importance-matrix search.
    Imatrix,
    /// GPTQ with the type's blocks as quantiser.
    Gptq,
}

/// Settings of `quantize`.
#[derive(Clone, Debug, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuantizeSettings {
    /// `int8` (per-channel, safetensors) or a GGUF type (`q8_0`, `q6_k`, `q5_k`, `q4_k`,
    /// `q5_0`, `q4_0`, `f16`; Llama only, exported as GGUF and measured through QMatMul).
    #[serde(rename = "type")]
    pub to: String,
    /// How GGUF blocks are chosen: `rtn`, `candle`, `imatrix` or `gptq`.
    #[serde(default)]
    pub method: QuantMethod,
    /// A llama.cpp importance-matrix file to use instead of measuring one (`imatrix` only).
    #[serde(default)]
    pub imatrix: Option<PathBuf>,
    /// GPTQ's dampening, a share of the mean Hessian diagonal added to it.
    #[serde(default = "d_damp")]
    pub damp: f64,
    /// GGUF type of the token embeddings and the output head (a tied embedding is both),
    /// as llama-quantize's `--token-embedding-type`; default: `type`. Small models spend a
    /// large share of their parameters there and feel its error in every logit.
    #[serde(default)]
    pub embeddings: Option<GgufType>,
    /// Per-tensor types by Hugging Face tensor name (`model.layers.3.mlp.down_proj.weight:
    /// q8_0`), over `type` and `embeddings`; `imatrix` and `gptq` only (what `distill auto`
    /// writes for a mixed-precision artifact).
    #[serde(default)]
    pub types: BTreeMap<String, GgufType>,
}

fn d_damp() -> f64 {
    crate::calibration::obs::DAMP
}

pub(crate) const TECHNIQUE: Technique = Technique {
    name: "quantize",
    summary: "int8 per channel, or a GGUF type written as the variant's GGUF file (last step), rounded by rtn, candle, imatrix or gptq",
    build,
    schema: schema_of::<QuantizeSettings>,
};

fn build(s: &Settings, _: &Defaults) -> Result<Built, CompressError> {
    let q: QuantizeSettings = settings("quantize", s)?;
    let bad = |key: &str, msg: String| CompressError::Config {
        key: key.into(),
        msg,
    };
    if q.imatrix.is_some() && q.method != QuantMethod::Imatrix {
        return Err(bad(
            "imatrix",
            "an importance-matrix file is used by `method: imatrix`".into(),
        ));
    }
    if !(q.damp > 0.0 && q.damp < 10.0) {
        return Err(bad("damp", format!("{} is outside (0, 10)", q.damp)));
    }
    if q.to == "int8" {
        if q.method != QuantMethod::Rtn {
            return Err(bad(
                "method",
                "int8 is per-channel round to nearest; methods choose GGUF blocks".into(),
            ));
        }
        return Ok(Built::Pass(Box::new(Int8)));
    }
    let qtype = parse_qtype(&q.to).map_err(|_| CompressError::Config {
        key: "type".into(),
        msg: format!("`{}`: expected int8, {}", q.to, GgufType::names()),
    })?;
    let embeddings = q.embeddings.map(GgufType::ggml);
    let types: BTreeMap<String, GgmlDType> = q
        .types
        .iter()
        .map(|(name, t)| (name.clone(), t.ggml()))
        .collect();
    if !types.is_empty() && !matches!(q.method, QuantMethod::Imatrix | QuantMethod::Gptq) {
        return Err(bad(
            "types",
            "per-tensor types are encoded by `method: imatrix` or `gptq`".into(),
        ));
    }
    let search = match q.method {
        QuantMethod::Candle => Search::Candle,
        _ => Search::Reference,
    };
    let mut name = match &q.embeddings {
        Some(e) => format!("{} ({e} embeddings)", q.to),
        None => q.to.clone(),
    };
    if !types.is_empty() {
        name = format!("{name}, {} tensors typed", types.len());
    }
    let sink = Sink::Gguf {
        qtype,
        embeddings,
        name: name.clone(),
        search,
    };
    Ok(match q.method {
        QuantMethod::Rtn | QuantMethod::Candle => Built::Sink(sink),
        QuantMethod::Imatrix | QuantMethod::Gptq => Built::PassThenSink(
            Box::new(Calibrated {
                qtype,
                embeddings,
                types,
                name,
                method: q.method,
                file: q.imatrix,
                damp: q.damp,
            }),
            sink,
        ),
    })
}

/// The pass of `imatrix` and `gptq`: encodes the layer matrices and the head as GGUF blocks.
pub(crate) struct Calibrated {
    pub qtype: GgmlDType,
    pub embeddings: Option<GgmlDType>,
    /// Per-tensor types, over `qtype` and `embeddings`.
    pub types: BTreeMap<String, GgmlDType>,
    pub name: String,
    pub method: QuantMethod,
    pub file: Option<PathBuf>,
    pub damp: f64,
}

/// Whether `name` is a matrix the calibrated methods encode: a layer's projection or the head.
pub(crate) fn encodes_matrix(name: &str) -> bool {
    crate::passes::pruning::sparsity::is_layer_matrix(name)
        || name == "lm_head.weight"
        || name == "model.embed_tokens.weight"
}

impl Calibrated {
    /// Encodes `name` with the input statistics `stats` (or importance `imp` alone); returns
    /// a note when the type or the method fell back.
    fn encode(
        &self,
        c: &mut Candidate,
        name: &str,
        stats: Option<&SiteStats>,
        imp: &[f32],
        chunks: u32,
    ) -> Result<Option<String>, CompressError> {
        let t = &c.weights.tensors[name];
        let terr = |source| CompressError::Tensor {
            context: format!("quantizing `{name}`"),
            source,
        };
        let (rows, cols) = t.dims2().map_err(terr)?;
        let wanted = match (self.types.get(name), name) {
            (Some(&t), _) => t,
            (None, "model.embed_tokens.weight" | "lm_head.weight") => {
                self.embeddings.unwrap_or(self.qtype)
            }
            _ => self.qtype,
        };
        let used = fitting_type(wanted, cols);
        let values = values_f32(name, t)?;
        let hinv = match (Format::of(used), self.method, stats) {
            (Some(_), QuantMethod::Gptq, Some(st)) => Some(inverse_hessian(name, st, self.damp)?),
            _ => None,
        };
        let (data, dense, fell_back) =
            encode_matrix(used, &values, rows, cols, imp, hinv.as_ref()).map_err(terr)?;
        let note = (fell_back && self.method == QuantMethod::Gptq).then(|| {
            format!("{name}: GPTQ has no grid for {used:?}; importance-matrix search instead")
        });
        let dense = Tensor::from_vec(dense, (rows, cols), &c.weights.device).map_err(terr)?;
        c.weights.tensors.insert(name.to_string(), dense);
        c.weights.stored.insert(
            name.to_string(),
            Stored::Gguf {
                dtype: used,
                data,
                importance: Some(imp.to_vec()),
                chunks,
            },
        );
        Ok(note)
    }
}

/// `values` (`[rows, cols]`, row-major) as GGUF blocks of `used` and their decoded values:
/// GPTQ when `hinv` (the upper Cholesky factor of the damped inverse Hessian) is given and the
/// type has a grid here, else llama.cpp's importance-weighted search; types without a grid
/// here go through candle's importance search (the `bool` says so).
pub(crate) fn encode_matrix(
    used: GgmlDType,
    values: &[f32],
    rows: usize,
    cols: usize,
    imp: &[f32],
    hinv: Option<&crate::calibration::obs::InverseHessian>,
) -> candle_core::Result<(Vec<u8>, Vec<f32>, bool)> {
    Ok(match (Format::of(used), hinv) {
        (Some(f), Some(h)) => {
            let q = gptq_quantize(values, rows, cols, f, h, Some(imp));
            (q.bytes, q.values, false)
        }
        (Some(f), None) => {
            let bytes = quantize_rows(f, values, cols, Some(imp));
            let dense = decode(&bytes, used, rows, cols)?;
            (bytes, dense, false)
        }
        (None, _) => {
            let t = Tensor::from_slice(values, (rows, cols), &candle_core::Device::Cpu)?;
            let q = match used {
                GgmlDType::Q2K
                | GgmlDType::Q3K
                | GgmlDType::Q4K
                | GgmlDType::Q5K
                | GgmlDType::Q6K => QTensor::quantize_imatrix(&t, imp, used),
                _ => QTensor::quantize(&t, used),
            }?;
            let dense = q
                .dequantize(&candle_core::Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            (q.data()?.to_vec(), dense, true)
        }
    })
}

impl Pass for Calibrated {
    fn name(&self) -> &'static str {
        "quantize"
    }
    fn label(&self) -> String {
        let by = match self.method {
            QuantMethod::Gptq => "gptq",
            _ if self.file.is_some() => "imatrix file",
            _ => "imatrix",
        };
        format!("encode {} blocks ({by})", self.name)
    }
    fn encodes(&self) -> bool {
        true
    }
    fn apply(&self, c: &mut Candidate, cx: &Context) -> Result<PassReport, CompressError> {
        if !matches!(c.arch, distill_models::ArchConfig::Llama(_)) {
            return Err(CompressError::Unsupported(format!(
                "quantize `{}`: the GGUF exporter knows Llama-family decoders, not BERT classifiers; use `type: int8` (per-channel safetensors)",
                self.name
            )));
        }
        let mut notes = vec![];
        if let Some(path) = &self.file {
            let m = Imatrix::read(path)?;
            let names: Vec<String> = c
                .weights
                .tensors
                .keys()
                .filter(|n| encodes_matrix(n))
                .cloned()
                .collect();
            let mut done = 0;
            for name in names {
                let gguf = if name == "model.embed_tokens.weight" {
                    if c.weights.tensors.contains_key("lm_head.weight") {
                        continue; // an untied embedding is a lookup, not a matmul input
                    }
                    "output.weight".to_string()
                } else {
                    gguf_tensor_name(&name).expect("a Llama matrix")
                };
                let cols = c.weights.tensors[&name].dims()[1];
                let imp = m.entries.get(&gguf).ok_or_else(|| CompressError::Io {
                    path: path.clone(),
                    msg: format!("has no entry `{gguf}` for the model's `{name}`: an importance matrix of another model?"),
                })?;
                if imp.len() != cols {
                    return Err(CompressError::Io {
                        path: path.clone(),
                        msg: format!(
                            "entry `{gguf}` has {} values; the model's `{name}` has {cols} input channels",
                            imp.len()
                        ),
                    });
                }
                notes.extend(self.encode(c, &name, None, &imp.clone(), m.chunks)?);
                done += 1;
            }
            notes.push(format!(
                "{done} matrices encoded with the importance matrix of {}",
                path.display()
            ));
            return Ok(PassReport { notes });
        }
        let blocks = cx.calibration.tokens().ok_or_else(|| {
            CompressError::Unsupported(
                "method: imatrix and gptq need calibration tokens, which this task does not provide".into(),
            )
        })?;
        let chunks = blocks.len() as u32;
        let collect = match self.method {
            QuantMethod::Gptq => Collect::Hessians,
            _ => Collect::Norms,
        };
        let mut count = 0;
        walk(c, &blocks, collect, &mut |stage, c| {
            for (name, stats) in &stage.matrices {
                if !encodes_matrix(name) {
                    continue;
                }
                notes.extend(self.encode(c, name, Some(stats), &stats.importance(), chunks)?);
                count += 1;
            }
            Ok(())
        })?;
        notes.push(format!(
            "{count} matrices encoded, layer by layer on {chunks} calibration blocks"
        ));
        Ok(PassReport { notes })
    }
}
