//! `distill compress MODEL --ffn-neurons … --gguf …`: structured and unstructured pruning of a
//! Llama-family model from flags, saved in Hugging Face layout and/or as GGUF, each step
//! measured on a text — the same passes as the `compress:` section, without a run config.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use distill_compress::formats::gguf::export::Fallback;
use distill_compress::framework::pipeline::nonzero;
use distill_compress::passes::pruning::sparsity::{magnitude_prune, two_four_prune, PruneScope};
use distill_compress::passes::pruning::structured::{cut, Cut};
use distill_compress::TensorMap;
use distill_compress::{
    export_gguf, tokenizer_metadata, tokenizer_metadata_from_folder, Candidate, GgufExport,
};
use distill_models::{ArchConfig, Llama, LlamaConfig};
use distill_student::{save_hf, HfExport};
use distill_teacher::{
    load_tokenizer, resolve, GgufCompute, HubOptions, LoadOptions, Resolved, Teacher, TeacherSource,
};
use distill_train::scoring::perplexity;
use serde::Serialize;

use super::varmap_of;
use crate::error::{Error, Result};

pub use distill_compress::passes::pruning::sparsity::PruneScope as Scope;
pub use distill_compress::GgufType;

/// What to do to the model.
#[derive(Clone, Debug, Default)]
pub struct QuickCompress {
    pub drop_layers: Vec<usize>,
    /// Key/value head groups kept per layer.
    pub kv_heads: Option<usize>,
    pub ffn_neurons: Option<usize>,
    pub sparsity: Option<f64>,
    pub scope: Option<PruneScope>,
    pub two_four: bool,
    /// Save the result in Hugging Face layout here.
    pub out: Option<PathBuf>,
    /// `out` may be a folder distill did not make: its files are replaced where distill writes
    /// one of the same name, and nothing else there is touched.
    pub overwrite: bool,
    /// Write a GGUF file here, with matrices of `quantize`.
    pub gguf: Option<PathBuf>,
    pub quantize: GgufType,
    /// GGUF file whose tokenizer metadata the GGUF export carries.
    pub tokenizer_from: Option<PathBuf>,
    /// Text to measure perplexity and speed on after each step, and its token budget.
    pub text: Option<PathBuf>,
    pub max_tokens: usize,
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct QuickRow {
    pub step: String,
    pub parameters: usize,
    pub nonzero_parameters: usize,
    pub bytes: Option<u64>,
    pub val_ppl: Option<f64>,
    pub tokens_per_s: Option<f64>,
}

/// What the quick path did.
#[derive(Clone, Debug, Serialize)]
pub struct QuickOutcome {
    pub model: String,
    pub config: LlamaConfig,
    pub rows: Vec<QuickRow>,
    pub gguf_fallbacks: Vec<Fallback>,
}

impl QuickOutcome {
    /// The table and the GGUF fallbacks as text.
    pub fn text(&self) -> String {
        let mut s = "| step | parameters | non-zero | bytes | perplexity | tokens/s |\n|---|---:|---:|---:|---:|---:|\n".to_string();
        let opt = |v: Option<f64>, prec: usize| {
            v.map(|x| format!("{x:.prec$}"))
                .unwrap_or_else(|| "-".into())
        };
        for r in &self.rows {
            s += &format!(
                "| {} | {:.2} M | {:.2} M | {} | {} | {} |\n",
                r.step,
                r.parameters as f64 / 1e6,
                r.nonzero_parameters as f64 / 1e6,
                r.bytes
                    .map(|b| format!("{:.1} MB", b as f64 / 1e6))
                    .unwrap_or_else(|| "-".into()),
                opt(r.val_ppl, 2),
                opt(r.tokens_per_s, 1)
            );
        }
        for f in &self.gguf_fallbacks {
            s += &format!(
                "GGUF: {} stored as {} (rows of {} do not fit {} blocks)\n",
                f.tensor, f.used, f.row_length, f.wanted
            );
        }
        s
    }
}

/// Finds a wrong output path before any work: `out` must be a folder that is new, empty or
/// distill's (or allowed by `overwrite`), `gguf` a regular file or absent; neither may be an
/// input.
fn check_outputs(model: &str, q: &QuickCompress) -> Result<()> {
    let inputs = crate::run_dir::local_inputs(
        [Path::new(model)]
            .into_iter()
            .chain(q.tokenizer_from.as_deref())
            .chain(q.text.as_deref()),
    );
    if let Some(out) = &q.out {
        let policy = distill_files::FolderPolicy {
            overwrite: q.overwrite,
            inputs: inputs.clone(),
        };
        distill_files::check_folder_target(out, &policy)?;
    }
    if let Some(gguf) = &q.gguf {
        distill_files::check_file_target(gguf, &inputs)?;
    }
    Ok(())
}

/// Tokens per measuring window.
const BLOCK: usize = 128;

/// Runs `q` on the Llama-family model at `model` (folder, hub repo, or GGUF dequantised).
pub fn quick_compress(model: &str, q: &QuickCompress) -> Result<QuickOutcome> {
    check_outputs(model, q)?;
    let source = TeacherSource::parse(model)?;
    let resolved = resolve(&source, &HubOptions::from_env())?;
    let tokenizer = load_tokenizer(&resolved)?;
    let (mut c, bytes_on_disk) = load(model, &source)?;
    let meter = Meter::of(q, &tokenizer)?;
    let mut rows = vec![meter.row(
        "original".into(),
        &c,
        Some(bytes_on_disk),
        &Llama::load(c.llama()?, &c.weights)?,
    )?];
    let steps = apply_steps(&mut c, q)?;
    let mut bytes = None;
    if let Some(out) = &q.out {
        let vm = varmap_of(&c.weights)?;
        bytes = Some(save_hf(
            out,
            &HfExport {
                config: c.llama()?,
                varmap: &vm,
                tokenizer: &tokenizer.tokenizer,
                bos_token_id: tokenizer.info.bos_token_id,
                eos_token_id: tokenizer.info.eos_token_id,
                chat_template: tokenizer.chat_template.as_deref(),
            },
        )?);
    }
    if !steps.is_empty() {
        let m = Llama::load(c.llama()?, &c.weights)?;
        rows.push(meter.row(steps.join(" + "), &c, bytes, &m)?);
    }
    let mut fallbacks = vec![];
    if let Some(path) = &q.gguf {
        let summary = write_gguf(model, &c, q, path, &resolved)?;
        fallbacks = summary.fallbacks.clone();
        rows.push(meter.gguf_row(format!("GGUF {}", q.quantize), &c, summary.bytes, path)?);
    }
    Ok(QuickOutcome {
        model: model.to_string(),
        config: c.llama()?.clone(),
        rows,
        gguf_fallbacks: fallbacks,
    })
}

/// The options every model here loads with: dense f32 on the CPU.
fn load_options() -> LoadOptions {
    LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        gguf_mode: GgufCompute::Dequantized,
        ..Default::default()
    }
}

/// The Llama-family model at `source` as a candidate, and the bytes of its weight files.
fn load(model: &str, source: &TeacherSource) -> Result<(Candidate, u64)> {
    let teacher = Teacher::load(source, &load_options())?;
    let (_, cfg) = teacher.language_model().map_err(|_| {
        Error::Invalid(format!(
            "{model}: compression knows Llama-family decoders; this is an encoder"
        ))
    })?;
    let cfg = cfg.clone();
    let dense = teacher.dense_weights(DType::F32)?;
    let c = Candidate {
        arch: ArchConfig::Llama(cfg.clone()),
        weights: TensorMap::read(dense.as_ref(), cfg.tensor_shapes())?,
    };
    Ok((c, teacher.bytes_on_disk()))
}

/// Applies the structural cuts and the pruning `q` asks for, in order; their labels.
fn apply_steps(c: &mut Candidate, q: &QuickCompress) -> Result<Vec<String>> {
    let mut steps = vec![];
    let cut_by = |c: &mut Candidate, spec: Cut| -> Result<()> {
        *c = cut(c, &spec, None)?;
        Ok(())
    };
    if !q.drop_layers.is_empty() {
        let drop = q.drop_layers.clone();
        cut_by(
            c,
            Cut {
                drop,
                ..Default::default()
            },
        )?;
        steps.push(format!("drop layers {:?}", q.drop_layers));
    }
    if let Some(k) = q.kv_heads {
        cut_by(
            c,
            Cut {
                heads: Some(k),
                ..Default::default()
            },
        )?;
        steps.push(format!("{k} kv heads"));
    }
    if let Some(n) = q.ffn_neurons {
        cut_by(
            c,
            Cut {
                neurons: Some(n),
                ..Default::default()
            },
        )?;
        steps.push(format!("{n} FFN neurons"));
    }
    if let Some(s) = q.sparsity {
        let scope = q.scope.unwrap_or(PruneScope::PerTensor);
        magnitude_prune(&mut c.weights.tensors, s, scope)?;
        let name = match scope {
            PruneScope::PerTensor => "per-tensor",
            PruneScope::Global => "global",
        };
        steps.push(format!("{:.0}% magnitude ({name})", s * 100.0));
    }
    if q.two_four {
        two_four_prune(&mut c.weights.tensors)?;
        steps.push("2:4".into());
    }
    Ok(steps)
}

/// Writes `c` as a GGUF file at `path` with `q`'s type and tokenizer: `--tokenizer-from` or a
/// GGUF model's own tokenizer keys, else built from the folder's tokenizer.json.
fn write_gguf(
    model: &str,
    c: &Candidate,
    q: &QuickCompress,
    path: &Path,
    resolved: &Resolved,
) -> Result<distill_compress::GgufSummary> {
    let tokenizer = match (&q.tokenizer_from, resolved) {
        (Some(p), _) | (None, Resolved::Gguf(p)) => tokenizer_metadata(p)?,
        (None, Resolved::Folder(f)) => {
            tokenizer_metadata_from_folder(&f.dir, c.llama()?.vocab_size)?
        }
    };
    Ok(export_gguf(
        path,
        &GgufExport {
            config: c.llama()?,
            weights: &c.weights,
            tokenizer,
            qtype: q.quantize.ggml(),
            name: Path::new(model)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
            embeddings: None,
            encoded: None,
            search: Default::default(),
        },
    )?)
}

/// Perplexity and speed on `--text`, in windows of [`BLOCK`] tokens (nothing without it).
struct Meter {
    windows: Option<Vec<Vec<u32>>>,
}

impl Meter {
    fn of(q: &QuickCompress, tokenizer: &distill_teacher::LoadedTokenizer) -> Result<Self> {
        let Some(p) = &q.text else {
            return Ok(Self { windows: None });
        };
        let ids = crate::text_ids::text_ids(p, tokenizer, Some(q.max_tokens))?;
        if ids.len() < 2 {
            return Err(Error::Invalid(format!(
                "{}: fewer than 2 tokens",
                p.display()
            )));
        }
        let windows = crate::text_ids::windows(&ids, BLOCK, tokenizer);
        Ok(Self {
            windows: Some(windows),
        })
    }

    fn quality(&self, m: &dyn distill_models::Model) -> Result<(Option<f64>, Option<f64>)> {
        let Some(w) = &self.windows else {
            return Ok((None, None));
        };
        let (ppl, tps) = perplexity(m, w.iter().map(Vec::as_slice))?;
        Ok((Some(ppl), Some(tps)))
    }

    /// The row of `c` after `step`, measured as `m` runs.
    fn row(
        &self,
        step: String,
        c: &Candidate,
        bytes: Option<u64>,
        m: &dyn distill_models::Model,
    ) -> Result<QuickRow> {
        let (ppl, tps) = self.quality(m)?;
        Ok(QuickRow {
            step,
            parameters: c.weights.parameters(),
            nonzero_parameters: nonzero(&c.weights)?,
            bytes,
            val_ppl: ppl,
            tokens_per_s: tps,
        })
    }

    /// The row of the GGUF file at `path`, measured as llama.cpp would run it: quantised
    /// matrices through QMatMul.
    fn gguf_row(&self, step: String, c: &Candidate, bytes: u64, path: &Path) -> Result<QuickRow> {
        let (ppl, tps) = match &self.windows {
            Some(_) => {
                let g = Teacher::load(
                    &TeacherSource::Gguf(path.to_path_buf()),
                    &LoadOptions {
                        gguf_mode: GgufCompute::Quantized,
                        ..load_options()
                    },
                )?;
                self.quality(g.language_model()?.0)?
            }
            None => (None, None),
        };
        Ok(QuickRow {
            step,
            parameters: c.weights.parameters(),
            nonzero_parameters: nonzero(&c.weights)?,
            bytes: Some(bytes),
            val_ppl: ppl,
            tokens_per_s: tps,
        })
    }
}
