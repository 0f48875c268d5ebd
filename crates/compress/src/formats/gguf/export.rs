//! GGUF export of Llama-family models, as llama.cpp's converter writes them: its tensor names,
//! Q/K rows permuted for its interleaved rope, the `llama.*` hyper-parameters, the tokenizer
//! metadata, and matrices quantised through `candle_core::quantized` with a per-tensor fallback
//! (llama.cpp's own) where a row length is not a multiple of the type's block size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use candle_nn::Init;
use distill_models::family::{self, gemma3, LayerKind};
use distill_models::gguf::{GgufTensorRef, NameMap};
use distill_models::{Family, LlamaConfig, WeightSource};

use crate::error::CompressError;
use crate::formats::gguf::blocks::{qtensor, quantize_rows, Format};

/// A GGUF type an export can ask for: the one place that names them (configs, the CLI and
/// every message list them from here).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum GgufType {
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f16")]
    F16,
    /// The default of `distill compress --gguf`.
    #[default]
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q6_k")]
    Q6K,
    #[serde(rename = "q5_k")]
    Q5K,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q5_0")]
    Q5_0,
    #[serde(rename = "q4_0")]
    Q4_0,
}

impl GgufType {
    /// Every type, largest first.
    pub const ALL: [GgufType; 8] = [
        GgufType::F32,
        GgufType::F16,
        GgufType::Q8_0,
        GgufType::Q6K,
        GgufType::Q5K,
        GgufType::Q4K,
        GgufType::Q5_0,
        GgufType::Q4_0,
    ];

    /// The name configs and llama.cpp use (`q4_k`).
    pub fn name(self) -> &'static str {
        match self {
            GgufType::F32 => "f32",
            GgufType::F16 => "f16",
            GgufType::Q8_0 => "q8_0",
            GgufType::Q6K => "q6_k",
            GgufType::Q5K => "q5_k",
            GgufType::Q4K => "q4_k",
            GgufType::Q5_0 => "q5_0",
            GgufType::Q4_0 => "q4_0",
        }
    }

    pub fn ggml(self) -> GgmlDType {
        match self {
            GgufType::F32 => GgmlDType::F32,
            GgufType::F16 => GgmlDType::F16,
            GgufType::Q8_0 => GgmlDType::Q8_0,
            GgufType::Q6K => GgmlDType::Q6K,
            GgufType::Q5K => GgmlDType::Q5K,
            GgufType::Q4K => GgmlDType::Q4K,
            GgufType::Q5_0 => GgmlDType::Q5_0,
            GgufType::Q4_0 => GgmlDType::Q4_0,
        }
    }

    /// `f32, f16, q8_0, …`, for messages.
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl std::fmt::Display for GgufType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for GgufType {
    type Err = CompressError;

    /// `q4_k`, `Q4_K`, `q8_0`, `f16`, …
    fn from_str(s: &str) -> Result<Self, CompressError> {
        let lower = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|t| t.name() == lower)
            .ok_or_else(|| CompressError::Config {
                key: "quantize".into(),
                msg: format!("unknown type `{s}`; expected one of {}", Self::names()),
            })
    }
}

/// Parses a type name (`q4_k`, `Q4_K`, `q8_0`, `f16`, ...).
pub fn parse_qtype(s: &str) -> Result<GgmlDType, CompressError> {
    s.parse::<GgufType>().map(GgufType::ggml)
}

/// The type a tensor whose rows have `cols` values gets when `wanted` does not fit: llama.cpp's
/// fallbacks (K-quants to the 32-block type of about the same size), then f16.
pub fn fitting_type(wanted: GgmlDType, cols: usize) -> GgmlDType {
    let fits = |t: GgmlDType| cols.is_multiple_of(t.block_size());
    if fits(wanted) {
        return wanted;
    }
    let next = match wanted {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        _ => GgmlDType::F16,
    };
    if fits(next) {
        next
    } else {
        GgmlDType::F16
    }
}

/// llama.cpp's `general.file_type` for the model's main type.
fn file_type(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q4K => 15,
        GgmlDType::Q5K => 17,
        GgmlDType::Q6K => 18,
        _ => 0,
    }
}

/// How the exporter rounds a matrix no pass has encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Search {
    /// llama.cpp's reference search (`quantize_row_*_ref`, what `llama-quantize` does without
    /// an importance matrix) for Q4_K, Q5_0, Q4_0 and Q8_0; candle's for the other types.
    #[default]
    Reference,
    /// candle's quantiser for every type (its Q4_K search is llama.cpp's older
    /// `make_qkx1_quants`).
    Candle,
}

/// llama.cpp's name for the Hugging Face tensor `hf` of a Llama-family model (an untied head:
/// `output.weight`), from the family's own table.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    distill_models::family::llama::tensor_name(hf, false)
}

/// What to export.
pub struct GgufExport<'a> {
    pub config: &'a LlamaConfig,
    /// Dense weights under Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, ...).
    pub weights: &'a dyn WeightSource,
    /// `tokenizer.ggml.*` (and `tokenizer.chat_template`) keys, e.g. from the teacher's GGUF.
    pub tokenizer: BTreeMap<String, Value>,
    /// Type of the matrices; norms stay f32.
    pub qtype: GgmlDType,
    /// Type of the token embeddings and the output head (llama-quantize's
    /// `--token-embedding-type` / `--output-tensor-type`); `None`: `qtype`.
    pub embeddings: Option<GgmlDType>,
    pub name: String,
    /// Matrices a pass already encoded (GPTQ, importance-matrix search), written as they are.
    pub encoded: Option<&'a BTreeMap<String, crate::model::tensors::Stored>>,
    /// How the remaining matrices are rounded.
    pub search: Search,
}

/// A tensor stored in another type than asked, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Fallback {
    pub tensor: String,
    pub wanted: String,
    pub used: String,
    pub row_length: usize,
}

/// What an export wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GgufSummary {
    pub path: PathBuf,
    pub bytes: u64,
    pub tensors: usize,
    pub fallbacks: Vec<Fallback>,
}

/// Reads the tokenizer keys of a GGUF file (all `tokenizer.*` metadata).
pub fn tokenizer_metadata(path: &Path) -> Result<BTreeMap<String, Value>, CompressError> {
    let mut f = std::fs::File::open(path).map_err(|e| CompressError::Io {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| CompressError::Io {
        path: path.to_path_buf(),
        msg: format!("not a readable GGUF file: {e}"),
    })?;
    let keys: BTreeMap<String, Value> = content
        .metadata
        .into_iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .collect();
    if !keys.contains_key("tokenizer.ggml.tokens") {
        return Err(CompressError::Io {
            path: path.to_path_buf(),
            msg: "has no tokenizer.ggml.tokens metadata".into(),
        });
    }
    Ok(keys)
}

/// llama.cpp's conversion-time permutation of Q/K rows (`[heads, 2, hd/2, cols]` → swap 1, 2).
fn permute_qk(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    let hd = rows / heads;
    t.reshape((heads, 2, hd / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// Writes `e` to `path` (through a temporary file, renamed when complete).
pub fn export_gguf(path: &Path, e: &GgufExport) -> Result<GgufSummary, CompressError> {
    let family = check(e)?;
    let mut out = Tensors {
        e,
        names: family::gguf_names(e.config)?,
        tensors: vec![],
        fallbacks: vec![],
    };
    out.matrices()?;
    out.norms()?;
    let md = metadata(e, family);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| CompressError::Io {
            path: p,
            msg: e.to_string(),
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    distill_files::write_file_with(path, |tmp| -> Result<(), CompressError> {
        let mut file = std::fs::File::create(tmp).map_err(io(tmp))?;
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> =
            out.tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut file, &md_refs, &t_refs).map_err(ctx("writing GGUF"))?;
        file.sync_all().map_err(io(tmp))
    })?;
    warn_fallbacks(&out.fallbacks);
    Ok(GgufSummary {
        path: path.to_path_buf(),
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        tensors: out.tensors.len(),
        fallbacks: out.fallbacks,
    })
}

/// The family of an export this writes (one llama.cpp reads as the model's own), with
/// tokenizer metadata.
fn check(e: &GgufExport) -> Result<Family, CompressError> {
    let family = e.config.family()?;
    match family {
        Family::Llama | Family::Mistral => {}
        Family::Gemma3 => check_gemma3_pattern(e.config)?,
        other => {
            return Err(CompressError::Unsupported(format!(
                "GGUF export writes the llama (llama, mistral) and gemma3 architectures; `{}` is not supported yet",
                other.model_type()
            )))
        }
    }
    if !e.tokenizer.contains_key("tokenizer.ggml.tokens") {
        return Err(CompressError::Config {
            key: "tokenizer".into(),
            msg: "GGUF export needs tokenizer.ggml.* metadata (e.g. from the teacher's GGUF)"
                .into(),
        });
    }
    Ok(family)
}

/// llama.cpp reads a Gemma 3 file's layer kinds from a fixed pattern (every sixth layer
/// global) and scales scores by `head_dim^-½`; a model that differs would run with the wrong
/// windows, rotary bases or scale.
fn check_gemma3_pattern(cfg: &LlamaConfig) -> Result<(), CompressError> {
    if let Some(q) = cfg
        .query_pre_attn_scalar
        .filter(|&q| q != cfg.head_dim() as f64)
    {
        return Err(CompressError::Unsupported(format!(
            "llama.cpp scales a Gemma 3 GGUF's attention by head_dim ({}), not query_pre_attn_scalar {q}; this model cannot be written as one",
            cfg.head_dim()
        )));
    }
    let kinds: Vec<bool> = (0..cfg.num_hidden_layers)
        .map(|i| matches!(cfg.layer_kind(i), LayerKind::Sliding { .. }))
        .collect();
    let llama_cpp: Vec<bool> = (0..cfg.num_hidden_layers)
        .map(|i| cfg.sliding_window.is_some() && gemma3::sliding_by_pattern(i, None))
        .collect();
    if kinds == llama_cpp {
        return Ok(());
    }
    let show = |k: &[bool]| {
        k.iter()
            .map(|&s| if s { "sliding" } else { "global" })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(CompressError::Unsupported(format!(
        "llama.cpp runs a {}-layer Gemma 3 GGUF with layers [{}] (every sixth global), but this model's are [{}]; \
         start the student from teacher layers of those kinds (student.init.layers) or use the Hugging Face folder",
        kinds.len(),
        show(&llama_cpp),
        show(&kinds)
    )))
}

fn ctx(what: &str) -> impl FnOnce(candle_core::Error) -> CompressError {
    let what = what.to_string();
    move |source| CompressError::Tensor {
        context: what,
        source,
    }
}

/// The tensors of an export, in llama.cpp's order, and the types that fell back.
struct Tensors<'a> {
    e: &'a GgufExport<'a>,
    /// The family's Hugging Face → GGUF names and transforms.
    names: NameMap,
    tensors: Vec<(String, QTensor)>,
    fallbacks: Vec<Fallback>,
}

impl Tensors<'_> {
    /// The embeddings (and an untied head), then each layer's matrices, in the order the
    /// config lists them.
    fn matrices(&mut self) -> Result<(), CompressError> {
        let cfg = self.e.config;
        let h = cfg.hidden_size;
        self.matrix("model.embed_tokens.weight", [cfg.vocab_size, h])?;
        if !cfg.tie_word_embeddings {
            self.matrix("lm_head.weight", [cfg.vocab_size, h])?;
        }
        for (name, shape) in self.layer_tensors(2) {
            self.matrix(&name, [shape[0], shape[1]])?;
        }
        Ok(())
    }

    /// The final norm, then each layer's one-dimensional tensors (norms), in f32.
    fn norms(&mut self) -> Result<(), CompressError> {
        self.norm("model.norm.weight", self.e.config.hidden_size)?;
        for (name, shape) in self.layer_tensors(1) {
            self.norm(&name, shape[0])?;
        }
        Ok(())
    }

    /// The per-layer tensors of `rank` dimensions, layer by layer.
    fn layer_tensors(&self, rank: usize) -> Vec<(String, Vec<usize>)> {
        self.e
            .config
            .tensor_shapes()
            .into_iter()
            .filter(|(n, shape)| family::layer_of(n).is_some() && shape.len() == rank)
            .collect()
    }

    /// Where `hf` goes in the file, and how it is transformed on the way.
    fn place(&self, hf: &str) -> Result<GgufTensorRef, CompressError> {
        (self.names)(hf).ok_or_else(|| {
            CompressError::Unsupported(format!("`{hf}` has no GGUF name in its family's table"))
        })
    }

    /// A norm in f32, shifted as the family stores it (Gemma: `1 + w`).
    fn norm(&mut self, name: &str, len: usize) -> Result<(), CompressError> {
        let r = self.place(name)?;
        let gguf = r.name;
        let t = self.get(name, &[len])?;
        let t = if r.shift == 0.0 {
            t
        } else {
            (t + f64::from(r.shift)).map_err(ctx(&gguf))?
        };
        let q = QTensor::quantize(&t, GgmlDType::F32).map_err(ctx(&gguf))?;
        self.tensors.push((gguf, q));
        Ok(())
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, CompressError> {
        Ok(self.e.weights.tensor(name, shape, Init::Const(0.0))?)
    }

    /// One matrix: the blocks a pass encoded, or the dense values rounded here; `heads`
    /// permutes Q/K rows for llama.cpp's rope (blocks are whole rows, so rows move as bytes).
    fn matrix(&mut self, hf: &str, shape: [usize; 2]) -> Result<(), CompressError> {
        let r = self.place(hf)?;
        let (gguf, heads) = (r.name, r.unpermute_heads);
        let wanted = match hf {
            "model.embed_tokens.weight" | "lm_head.weight" => {
                self.e.embeddings.unwrap_or(self.e.qtype)
            }
            _ => self.e.qtype,
        };
        if let Some(crate::model::tensors::Stored::Gguf { dtype, data, .. }) =
            self.e.encoded.and_then(|m| m.get(hf))
        {
            return self.encoded(hf, gguf, shape, heads, (*dtype, data, wanted));
        }
        let [rows, cols] = shape;
        let mut t = self.get(hf, &shape)?;
        if let Some(h) = heads {
            t = permute_qk(&t, h).map_err(ctx(&gguf))?;
        }
        let used = fitting_type(wanted, cols);
        if used != wanted {
            self.fallback(&gguf, wanted, used, cols);
        }
        let q = match (self.e.search, Format::of(used)) {
            (Search::Reference, Some(f)) => {
                let values = crate::model::tensors::values_f32(hf, &t)?;
                let bytes = quantize_rows(f, &values, cols, None);
                qtensor(bytes, used, rows, cols).map_err(ctx(&gguf))?
            }
            _ => QTensor::quantize(&t, used).map_err(ctx(&gguf))?,
        };
        self.tensors.push((gguf, q));
        Ok(())
    }

    /// A matrix a pass already encoded as GGUF blocks of `dtype` (`wanted` was asked for),
    /// its rows permuted as bytes when `heads` says so.
    fn encoded(
        &mut self,
        hf: &str,
        gguf: String,
        [rows, cols]: [usize; 2],
        heads: Option<usize>,
        (dtype, data, wanted): (GgmlDType, &Vec<u8>, GgmlDType),
    ) -> Result<(), CompressError> {
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        if cols % dtype.block_size() != 0 || data.len() != rows * row_bytes {
            return Err(CompressError::Unsupported(format!(
                "{hf}: {} bytes of {dtype:?} blocks do not make a [{rows}, {cols}] matrix",
                data.len()
            )));
        }
        let data = match heads {
            Some(h) => {
                let hd = rows / h;
                let mut out = Vec::with_capacity(data.len());
                for n in 0..rows {
                    let (head, a, b) = (n / hd, (n % hd) / 2, n % 2);
                    let old = head * hd + b * (hd / 2) + a;
                    out.extend_from_slice(&data[old * row_bytes..(old + 1) * row_bytes]);
                }
                out
            }
            None => data.clone(),
        };
        // A type the rows do not fit, replaced as llama.cpp does (a pass that chose per-tensor
        // types chose them: not a fallback).
        if dtype != wanted && dtype == fitting_type(wanted, cols) {
            self.fallback(&gguf, wanted, dtype, cols);
        }
        let q = qtensor(data, dtype, rows, cols).map_err(ctx(&gguf))?;
        self.tensors.push((gguf, q));
        Ok(())
    }

    fn fallback(&mut self, gguf: &str, wanted: GgmlDType, used: GgmlDType, cols: usize) {
        self.fallbacks.push(Fallback {
            tensor: gguf.to_string(),
            wanted: format!("{wanted:?}"),
            used: format!("{used:?}"),
            row_length: cols,
        });
    }
}

/// The `general.*` and `llama.*` metadata of `e`, then its tokenizer's keys.
fn metadata(e: &GgufExport, family: Family) -> Vec<(String, Value)> {
    let cfg = e.config;
    let arch = family.gguf_architecture().unwrap_or("llama");
    let (h, hd, heads) = (cfg.hidden_size, cfg.head_dim(), cfg.num_attention_heads);
    let u32v = |v: usize| Value::U32(v as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(e.name.clone())),
        ("general.file_type".into(), Value::U32(file_type(e.qtype))),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    if family != Family::Gemma3 {
        md.push((key("vocab_size"), u32v(cfg.vocab_size)));
    }
    md.extend([
        (key("context_length"), u32v(cfg.max_position_embeddings)),
        (key("embedding_length"), u32v(h)),
        (key("block_count"), u32v(cfg.num_hidden_layers)),
        (key("feed_forward_length"), u32v(cfg.intermediate_size)),
        (key("attention.head_count"), u32v(heads)),
        (key("attention.head_count_kv"), u32v(cfg.kv_heads())),
    ]);
    if family != Family::Gemma3 {
        md.push((key("rope.dimension_count"), u32v(hd)));
    }
    md.extend([
        (key("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ]);
    if hd * heads != h || family == Family::Gemma3 {
        md.push((key("attention.key_length"), u32v(hd)));
        md.push((key("attention.value_length"), u32v(hd)));
    }
    if let (Family::Gemma3, Some(w)) = (family, cfg.sliding_window) {
        md.push((key("attention.sliding_window"), u32v(w)));
    }
    md.extend(e.tokenizer.iter().map(|(k, v)| (k.clone(), v.clone())));
    md
}

/// One line per kind of fallback, not per tensor.
fn warn_fallbacks(fallbacks: &[Fallback]) {
    let mut kinds: BTreeMap<(String, String, usize), Vec<&str>> = BTreeMap::new();
    for fb in fallbacks {
        kinds
            .entry((fb.wanted.clone(), fb.used.clone(), fb.row_length))
            .or_default()
            .push(&fb.tensor);
    }
    for ((wanted, used, cols), names) in kinds {
        tracing::warn!(
            "{} tensors with rows of {cols} values do not fit {wanted} blocks; stored as {used} (e.g. {})",
            names.len(),
            names[0]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_follow_llama_cpp() {
        assert_eq!(fitting_type(GgmlDType::Q4K, 512), GgmlDType::Q4K);
        assert_eq!(fitting_type(GgmlDType::Q4K, 576), GgmlDType::Q5_0);
        assert_eq!(fitting_type(GgmlDType::Q6K, 576), GgmlDType::Q8_0);
        assert_eq!(fitting_type(GgmlDType::Q5K, 576), GgmlDType::Q5_1);
        assert_eq!(fitting_type(GgmlDType::Q8_0, 48), GgmlDType::F16);
        assert_eq!(fitting_type(GgmlDType::Q8_0, 64), GgmlDType::Q8_0);
        assert!(parse_qtype("Q4_K").is_ok());
        let e = parse_qtype("q3_xs").unwrap_err().to_string();
        assert!(e.contains("q3_xs") && e.contains("q4_k"), "{e}");
    }
}
