//! Where a variant's artifact goes once its passes ran: a compressed safetensors folder (the
//! default, readable by every command) or a GGUF file for llama.cpp. A variant has exactly one
//! sink and it comes last, so "GGUF is the last step" holds by construction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::DType;
use distill_models::ArchConfig;

use crate::error::CompressError;
use crate::formats::folder::write_model_folder;
use crate::formats::gguf::export::{
    export_gguf, gguf_tensor_name, tokenizer_metadata, GgufExport, Search,
};
use crate::formats::gguf::imatrix::Imatrix;
use crate::formats::gguf::tokenizer::tokenizer_metadata_from_folder;
use crate::framework::pass::Candidate;
use crate::model::tensors::Stored;

/// How a variant's artifact is written.
#[derive(Clone, Debug, PartialEq)]
pub enum Sink {
    /// A Hugging Face folder: `config.json`, `model.safetensors` (in the forms the passes
    /// chose), the source's tokenizer files.
    Folder,
    /// A GGUF file with matrices of `qtype` (`name` as the config spelled it): blocks a pass
    /// encoded as they are, the rest rounded by `search`.
    Gguf {
        qtype: GgmlDType,
        /// Type of the token embeddings and head, if not `qtype`.
        embeddings: Option<GgmlDType>,
        name: String,
        search: Search,
    },
}

/// What an artifact takes from outside the weights.
pub struct Output<'a> {
    /// Folder whose tokenizer and other files a folder artifact copies.
    pub template: &'a Path,
    /// The source's `config.json`; the artifact's is this with the changed keys written over.
    pub base_config: &'a serde_json::Value,
    /// dtype dense weights are written in (the source's).
    pub dense_dtype: DType,
    /// A GGUF file whose tokenizer metadata GGUF artifacts carry.
    pub gguf_tokenizer: Option<&'a Path>,
}

/// What a sink wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
    /// Notes such as GGUF fall-back types.
    pub notes: Vec<String>,
}

impl Sink {
    pub fn label(&self) -> String {
        match self {
            Sink::Folder => "safetensors folder".into(),
            Sink::Gguf { name, .. } => format!("quantize {name}"),
        }
    }

    /// The artifact's path for a variant called `variant` under `out`.
    pub fn path(&self, out: &Path, variant: &str) -> PathBuf {
        match self {
            Sink::Folder => out.join(variant),
            Sink::Gguf { .. } => out.join(format!("{variant}.gguf")),
        }
    }

    /// Writes `c` at `path` (atomically: a temporary name renamed when complete).
    pub fn write(&self, c: &Candidate, path: &Path, o: &Output) -> Result<Written, CompressError> {
        match self {
            Sink::Folder => {
                let bytes = write_model_folder(
                    path,
                    o.template,
                    &config_json(&c.arch, o.base_config)?,
                    &c.weights,
                    o.dense_dtype,
                )?;
                Ok(Written {
                    path: path.to_path_buf(),
                    bytes,
                    notes: vec![],
                })
            }
            Sink::Gguf {
                qtype,
                embeddings,
                name,
                search,
            } => {
                let cfg = match &c.arch {
                    ArchConfig::Llama(cfg) => cfg,
                    ArchConfig::Bert(_) => return Err(CompressError::Unsupported(format!(
                        "quantize `{name}`: the GGUF exporter knows Llama-family decoders, not BERT classifiers; use `type: int8` (per-channel safetensors)"
                    ))),
                };
                // A GGUF teacher's own tokenizer keys; else built from the model's tokenizer.json.
                let tokenizer = match o.gguf_tokenizer {
                    Some(tok) => tokenizer_metadata(tok)?,
                    None => tokenizer_metadata_from_folder(o.template, cfg.vocab_size)?,
                };
                let summary = export_gguf(
                    path,
                    &GgufExport {
                        config: cfg,
                        weights: &c.weights,
                        tokenizer,
                        qtype: *qtype,
                        name: path
                            .file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "model".into()),
                        embeddings: *embeddings,
                        encoded: Some(&c.weights.stored),
                        search: *search,
                    },
                )?;
                let imatrix = write_imatrix(c, path)?;
                let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
                for f in &summary.fallbacks {
                    *kinds
                        .entry(format!(
                            "{} → {} (rows of {} do not fit its blocks)",
                            f.wanted, f.used, f.row_length
                        ))
                        .or_default() += 1;
                }
                let mut notes: Vec<String> = kinds
                    .into_iter()
                    .map(|(k, n)| format!("{n} tensors {k}"))
                    .collect();
                if let Some(p) = imatrix {
                    notes.push(format!(
                        "importance matrix for llama-quantize --imatrix: {}",
                        p.display()
                    ));
                }
                Ok(Written {
                    path: path.to_path_buf(),
                    bytes: summary.bytes,
                    notes,
                })
            }
        }
    }
}

/// The artifact's `config.json`: the source's, with the sizes the passes changed written
/// over it (a classifier keeps the source's labels and pooling).
pub(crate) fn config_json(
    arch: &ArchConfig,
    base: &serde_json::Value,
) -> Result<serde_json::Value, CompressError> {
    let json = |e: serde_json::Error| CompressError::Unsupported(format!("config.json: {e}"));
    let changes = match arch {
        ArchConfig::Llama(c) => serde_json::to_value(c).map_err(json)?,
        ArchConfig::Bert(c) => {
            let mut v = serde_json::to_value(c).map_err(json)?;
            if let Some(o) = v.as_object_mut() {
                o.remove("id2label");
                o.remove("label2id");
            }
            v
        }
    };
    overlay(base, changes)
}

/// `base` with every non-null key of `changes` written over it.
pub(crate) fn overlay(
    base: &serde_json::Value,
    changes: serde_json::Value,
) -> Result<serde_json::Value, CompressError> {
    let mut out = base.clone();
    let (Some(o), serde_json::Value::Object(c)) = (out.as_object_mut(), changes) else {
        return Err(CompressError::Unsupported(
            "config.json is not a JSON object".into(),
        ));
    };
    for (k, v) in c {
        if !v.is_null() {
            o.insert(k, v);
        }
    }
    Ok(out)
}

/// Writes the importance-matrix entries that chose `c`'s GGUF blocks next to the GGUF file at
/// `path` (`NAME.imatrix`, llama.cpp's legacy format under GGUF tensor names), if any did.
fn write_imatrix(c: &Candidate, path: &Path) -> Result<Option<PathBuf>, CompressError> {
    let mut chunks = 0;
    let entries: BTreeMap<String, Vec<f32>> = c
        .weights
        .stored
        .iter()
        .filter_map(|(hf, s)| match s {
            Stored::Gguf {
                importance: Some(imp),
                chunks: n,
                ..
            } => {
                chunks = chunks.max(*n);
                // A tied embedding's entry is its role as the head, which llama.cpp names
                // `output.weight`.
                let name = if hf == "model.embed_tokens.weight" {
                    "output.weight".to_string()
                } else {
                    gguf_tensor_name(hf)?
                };
                Some((name, imp.clone()))
            }
            _ => None,
        })
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let file = path.with_extension("imatrix");
    Imatrix {
        entries,
        chunks,
        dataset: "distill calibration blocks (training split)".into(),
    }
    .write(&file)?;
    Ok(Some(file))
}
