//! `distill inspect`: what a model is, read from its headers (weights are not loaded).

use std::collections::BTreeMap;

use distill_models::{ArchConfig, GgufFile, LlamaConfig, SafetensorsWeights};
use serde::Serialize;

use crate::error::Result;
use crate::hub::HubOptions;
use crate::source::TeacherSource;
use crate::teacher::{load_tokenizer, resolve, Resolved};
use crate::tokenizer::TokenizerInfo;

/// A model's architecture, sizes, storage and tokenizer.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub source: String,
    /// `gguf` or `safetensors`.
    pub format: String,
    /// `model_type` of config.json, or `general.architecture` of a GGUF file.
    pub architecture: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub attention_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tied_embeddings: Option<bool>,
    /// Elements of every floating-point tensor in the files.
    pub parameters: u64,
    pub tensors: usize,
    pub dtypes: Vec<DtypeStat>,
    pub bytes_on_disk: u64,
    pub files: Vec<String>,
    pub tokenizer: Option<TokenizerInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DtypeStat {
    pub dtype: String,
    pub tensors: usize,
    pub bytes: u64,
}

/// Describes the model named by `source`.
pub fn inspect(source: &TeacherSource, hub: &HubOptions) -> Result<ModelInfo> {
    let resolved = resolve(source, hub)?;
    let tokenizer = load_tokenizer(&resolved).ok().map(|t| t.info);
    match &resolved {
        Resolved::Gguf(path) => {
            let g = GgufFile::open(path)?;
            let cfg = LlamaConfig::from_gguf(&g)?;
            let parameters = g
                .tensor_infos()
                .values()
                .map(|i| i.shape.elem_count() as u64)
                .sum();
            let dtypes = g
                .bytes_by_dtype()
                .into_iter()
                .map(|(dtype, tensors, bytes)| DtypeStat {
                    dtype,
                    tensors,
                    bytes,
                })
                .collect();
            Ok(ModelInfo {
                source: source.to_string(),
                format: "gguf".into(),
                architecture: g.get_str("general.architecture")?.to_string(),
                tensors: g.tensor_infos().len(),
                bytes_on_disk: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                files: vec![path.display().to_string()],
                parameters,
                dtypes,
                tokenizer,
                ..from_llama(&cfg)
            })
        }
        Resolved::Folder(folder) => {
            let st = SafetensorsWeights::open(
                &folder.weight_files,
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?;
            let mut by: BTreeMap<String, (usize, u64)> = BTreeMap::new();
            let mut parameters = 0u64;
            let infos = st.tensor_infos();
            for (_, dtype, shape) in &infos {
                let n: u64 = shape.iter().map(|&d| d as u64).product();
                let bytes = n * dtype_bytes(dtype);
                if is_float(dtype) {
                    parameters += n;
                }
                let e = by.entry(dtype.clone()).or_default();
                e.0 += 1;
                e.1 += bytes;
            }
            let base = match &folder.config {
                ArchConfig::Llama(c) => from_llama(c),
                ArchConfig::Bert(c) => ModelInfo {
                    architecture: c.model_type.clone(),
                    layers: c.num_hidden_layers,
                    hidden_size: c.hidden_size,
                    intermediate_size: c.intermediate_size,
                    attention_heads: c.num_attention_heads,
                    kv_heads: c.num_attention_heads,
                    head_dim: c.hidden_size / c.num_attention_heads,
                    vocab_size: c.vocab_size,
                    max_positions: c.max_position_embeddings,
                    ..empty()
                },
            };
            Ok(ModelInfo {
                source: source.to_string(),
                format: "safetensors".into(),
                tensors: infos.len(),
                parameters,
                dtypes: by
                    .into_iter()
                    .map(|(dtype, (tensors, bytes))| DtypeStat {
                        dtype,
                        tensors,
                        bytes,
                    })
                    .collect(),
                bytes_on_disk: distill_models::weights::bytes_on_disk(&folder.weight_files),
                files: folder
                    .weight_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
                tokenizer,
                ..base
            })
        }
    }
}

fn empty() -> ModelInfo {
    ModelInfo {
        source: String::new(),
        format: String::new(),
        architecture: String::new(),
        layers: 0,
        hidden_size: 0,
        intermediate_size: 0,
        attention_heads: 0,
        kv_heads: 0,
        head_dim: 0,
        vocab_size: 0,
        max_positions: 0,
        tied_embeddings: None,
        parameters: 0,
        tensors: 0,
        dtypes: vec![],
        bytes_on_disk: 0,
        files: vec![],
        tokenizer: None,
    }
}

fn from_llama(c: &LlamaConfig) -> ModelInfo {
    ModelInfo {
        architecture: c.model_type.clone(),
        layers: c.num_hidden_layers,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        attention_heads: c.num_attention_heads,
        kv_heads: c.kv_heads(),
        head_dim: c.head_dim(),
        vocab_size: c.vocab_size,
        max_positions: c.max_position_embeddings,
        tied_embeddings: Some(c.tie_word_embeddings),
        ..empty()
    }
}

fn is_float(dtype: &str) -> bool {
    matches!(
        dtype,
        "F64" | "F32" | "F16" | "BF16" | "F8_E4M3" | "F8_E5M2"
    )
}

fn dtype_bytes(dtype: &str) -> u64 {
    match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        _ => 1,
    }
}

impl ModelInfo {
    /// A human-readable summary.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "source        {}", self.source);
        let _ = writeln!(s, "format        {}", self.format);
        let _ = writeln!(s, "architecture  {}", self.architecture);
        let _ = writeln!(
            s,
            "layers        {}   hidden {}   ffn {}   heads {} (kv {})   head_dim {}",
            self.layers,
            self.hidden_size,
            self.intermediate_size,
            self.attention_heads,
            self.kv_heads,
            self.head_dim
        );
        let _ = writeln!(
            s,
            "vocab         {}   max positions {}",
            self.vocab_size, self.max_positions
        );
        if let Some(t) = self.tied_embeddings {
            let _ = writeln!(s, "embeddings    {}", if t { "tied" } else { "untied" });
        }
        let _ = writeln!(
            s,
            "parameters    {} ({:.1} M)",
            self.parameters,
            self.parameters as f64 / 1e6
        );
        let _ = writeln!(s, "tensors       {}", self.tensors);
        for d in &self.dtypes {
            let _ = writeln!(
                s,
                "  {:<10} {:>4} tensors  {:>12} bytes",
                d.dtype, d.tensors, d.bytes
            );
        }
        let _ = writeln!(
            s,
            "on disk       {} bytes ({:.1} MB)",
            self.bytes_on_disk,
            self.bytes_on_disk as f64 / 1e6
        );
        match &self.tokenizer {
            Some(t) => {
                let _ = writeln!(
                    s,
                    "tokenizer     {} · {} tokens{} · add BOS: {} · chat template: {}",
                    t.kind,
                    t.vocab_size,
                    t.pre_tokenizer
                        .as_ref()
                        .map(|p| format!(" · pre-tokenizer {p}"))
                        .unwrap_or_default(),
                    t.add_bos,
                    if t.has_chat_template { "yes" } else { "no" }
                );
                let specials: Vec<String> = t
                    .special_tokens
                    .iter()
                    .take(16)
                    .map(|x| format!("{}={}", x.content, x.id))
                    .collect();
                let more = t.special_tokens.len().saturating_sub(16);
                let _ = writeln!(
                    s,
                    "special       {}{}",
                    specials.join(" "),
                    if more > 0 {
                        format!(" (+{more} more)")
                    } else {
                        String::new()
                    }
                );
            }
            None => {
                let _ = writeln!(s, "tokenizer     none found");
            }
        }
        s
    }
}
