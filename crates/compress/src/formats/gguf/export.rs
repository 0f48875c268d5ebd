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
use distill_models::{LlamaConfig, WeightSource};

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

/// llama.cpp's name for the Hugging Face tensor `hf` of a Llama-family model.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let short = match rest {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}"))
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
    check(e)?;
    let mut out = Tensors {
        e,
        tensors: vec![],
        fallbacks: vec![],
    };
    out.matrices()?;
    out.norms()?;
    let md = metadata(e);
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

/// An architecture this export writes, with tokenizer metadata.
fn check(e: &GgufExport) -> Result<(), CompressError> {
    if !matches!(e.config.model_type.as_str(), "llama" | "mistral") {
        return Err(CompressError::Unsupported(format!(
            "GGUF export knows the llama architecture (llama, mistral configs); `{}` is not supported",
            e.config.model_type
        )));
    }
    if !e.tokenizer.contains_key("tokenizer.ggml.tokens") {
        return Err(CompressError::Config {
            key: "tokenizer".into(),
            msg: "GGUF export needs tokenizer.ggml.* metadata (e.g. from the teacher's GGUF)"
                .into(),
        });
    }
    Ok(())
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
    tensors: Vec<(String, QTensor)>,
    fallbacks: Vec<Fallback>,
}

impl Tensors<'_> {
    /// The embeddings (and an untied head), then each layer's seven matrices.
    fn matrices(&mut self) -> Result<(), CompressError> {
        let cfg = self.e.config;
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let hd = cfg.head_dim();
        let (heads, kv) = (cfg.num_attention_heads, cfg.kv_heads());
        self.matrix("model.embed_tokens.weight", [cfg.vocab_size, h], None)?;
        if !cfg.tie_word_embeddings {
            self.matrix("lm_head.weight", [cfg.vocab_size, h], None)?;
        }
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let attn = |m: &str| format!("{p}.self_attn.{m}.weight");
            let mlp = |m: &str| format!("{p}.mlp.{m}.weight");
            self.matrix(&attn("q_proj"), [heads * hd, h], Some(heads))?;
            self.matrix(&attn("k_proj"), [kv * hd, h], Some(kv))?;
            self.matrix(&attn("v_proj"), [kv * hd, h], None)?;
            self.matrix(&attn("o_proj"), [h, heads * hd], None)?;
            self.matrix(&mlp("gate_proj"), [f, h], None)?;
            self.matrix(&mlp("up_proj"), [f, h], None)?;
            self.matrix(&mlp("down_proj"), [h, f], None)?;
        }
        Ok(())
    }

    /// The final norm, then each layer's two norms, in f32.
    fn norms(&mut self) -> Result<(), CompressError> {
        let cfg = self.e.config;
        self.norm("output_norm.weight".into(), "model.norm.weight")?;
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            self.norm(
                format!("blk.{i}.attn_norm.weight"),
                &format!("{p}.input_layernorm.weight"),
            )?;
            self.norm(
                format!("blk.{i}.ffn_norm.weight"),
                &format!("{p}.post_attention_layernorm.weight"),
            )?;
        }
        Ok(())
    }

    fn norm(&mut self, gguf: String, name: &str) -> Result<(), CompressError> {
        let t = self.get(name, &[self.e.config.hidden_size])?;
        let q = QTensor::quantize(&t, GgmlDType::F32).map_err(ctx(&gguf))?;
        self.tensors.push((gguf, q));
        Ok(())
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, CompressError> {
        Ok(self.e.weights.tensor(name, shape, Init::Const(0.0))?)
    }

    /// One matrix: the blocks a pass encoded, or the dense values rounded here; `heads`
    /// permutes Q/K rows for llama.cpp's rope (blocks are whole rows, so rows move as bytes).
    fn matrix(
        &mut self,
        hf: &str,
        shape: [usize; 2],
        heads: Option<usize>,
    ) -> Result<(), CompressError> {
        let gguf = gguf_tensor_name(hf).expect("a Llama tensor name");
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
fn metadata(e: &GgufExport) -> Vec<(String, Value)> {
    let cfg = e.config;
    let (h, hd, heads) = (cfg.hidden_size, cfg.head_dim(), cfg.num_attention_heads);
    let u32v = |v: usize| Value::U32(v as u32);
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String(e.name.clone())),
        ("general.file_type".into(), Value::U32(file_type(e.qtype))),
        ("general.quantization_version".into(), Value::U32(2)),
        ("llama.vocab_size".into(), u32v(cfg.vocab_size)),
        (
            "llama.context_length".into(),
            u32v(cfg.max_position_embeddings),
        ),
        ("llama.embedding_length".into(), u32v(h)),
        ("llama.block_count".into(), u32v(cfg.num_hidden_layers)),
        (
            "llama.feed_forward_length".into(),
            u32v(cfg.intermediate_size),
        ),
        ("llama.attention.head_count".into(), u32v(heads)),
        ("llama.attention.head_count_kv".into(), u32v(cfg.kv_heads())),
        ("llama.rope.dimension_count".into(), u32v(hd)),
        (
            "llama.rope.freq_base".into(),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    if hd * heads != h {
        md.push(("llama.attention.key_length".into(), u32v(hd)));
        md.push(("llama.attention.value_length".into(), u32v(hd)));
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
