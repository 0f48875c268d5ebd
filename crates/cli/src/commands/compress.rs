//! `distill compress`: prune a Llama-family model (unstructured, 2:4, structured), save it in
//! Hugging Face layout and/or quantise it into GGUF for llama.cpp, measuring each step by running
//! it on a text.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use distill_compress::prune::{
    drop_layers, magnitude_prune, prune_ffn_neurons, prune_heads, two_four_prune, PruneScope,
};
use distill_compress::{export_gguf, parse_qtype, tokenizer_metadata, GgufExport, TensorMap};
use distill_models::{Llama, LlamaConfig};
use distill_student::{save_hf, HfExport};
use distill_teacher::GgufCompute;
use distill_teacher::{
    load_tokenizer, resolve, HubOptions, LoadOptions, Resolved, Teacher, TeacherModel,
    TeacherSource,
};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// A Llama-family model: a Hugging Face folder (e.g. runs/NAME/final), hf://org/name, or a
    /// GGUF file (dequantised first).
    model: String,
    /// Unstructured magnitude pruning: share of layer weights set to zero, in [0, 1).
    #[arg(long)]
    sparsity: Option<f64>,
    /// per_tensor or global threshold for --sparsity.
    #[arg(long, default_value = "per-tensor", value_parser = ["per-tensor", "global"])]
    scope: String,
    /// 2:4 semi-structured pruning of every layer matrix.
    #[arg(long)]
    two_four: bool,
    /// Structured: keep this many FFN neurons per layer (weight-norm importance).
    #[arg(long)]
    ffn_neurons: Option<usize>,
    /// Structured: keep this many key/value head groups per layer (with their query heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Structured: remove these layers (comma-separated, 0-based).
    #[arg(long, value_delimiter = ',')]
    drop_layers: Vec<usize>,
    /// Save the result in Hugging Face layout here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write a GGUF file here.
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// GGUF matrix type: f32, f16, q8_0, q6_k, q5_k, q4_k, q5_0, q4_0 (a tensor whose rows do not
    /// fit the type's blocks falls back as llama.cpp does, and is reported).
    #[arg(long, default_value = "q8_0")]
    quantize: String,
    /// GGUF file whose tokenizer metadata the GGUF export carries (the teacher's). Default: the
    /// model's own, when MODEL is a GGUF file.
    #[arg(long)]
    tokenizer_from: Option<PathBuf>,
    /// Text to measure perplexity and speed on after each step.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Tokens of --text to use, in windows of 128.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Run the `compress:` section of this run config on MODEL (its data measures each step
    /// and heals), instead of the flags above. Output: --out, or RUN/compressed.
    #[arg(long, conflicts_with_all = ["sparsity", "two_four", "ffn_neurons", "kv_heads", "drop_layers", "gguf"])]
    config: Option<PathBuf>,
}

/// One row of the size/quality table.
#[derive(Serialize)]
struct Row {
    step: String,
    parameters: usize,
    nonzero_parameters: usize,
    bytes: Option<u64>,
    val_ppl: Option<f64>,
    tokens_per_s: Option<f64>,
}

const BLOCK: usize = 128;

/// Perplexity of `model` over non-overlapping windows of `ids`, and its tokens/s.
fn measure(model: &Llama, ids: &[u32]) -> anyhow::Result<(f64, f64)> {
    let windows: Vec<Vec<u32>> = ids
        .chunks(BLOCK)
        .filter(|w| w.len() >= 2)
        .map(<[u32]>::to_vec)
        .collect();
    let m = super::pipeline::lm::score(model, &windows)?;
    Ok((m.quality, m.speed))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if let Some(path) = &a.config {
        return run_config(&a, path);
    }
    let source = TeacherSource::parse(&a.model)?;
    let resolved = resolve(&source, &HubOptions::from_env())?;
    let tokenizer = load_tokenizer(&resolved)?;
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        gguf_mode: GgufCompute::Dequantized,
        ..Default::default()
    };
    let teacher = Teacher::load(&source, &opts)?;
    let TeacherModel::Llama(model) = &teacher.model else {
        bail!(
            "{}: compression knows Llama-family decoders; this is an encoder",
            a.model
        );
    };
    let mut cfg: LlamaConfig = model.config().clone();
    let dense = teacher.dense_weights(DType::F32)?;
    let mut map = TensorMap::read(dense.as_ref(), cfg.tensor_shapes())?;
    drop(dense);

    let ids: Option<Vec<u32>> = match &a.text {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            let mut ids = tokenizer.encode(&text)?;
            ids.truncate(a.max_tokens);
            anyhow::ensure!(ids.len() >= 2, "{}: fewer than 2 tokens", p.display());
            Some(ids)
        }
        None => None,
    };
    let quality =
        |cfg: &LlamaConfig, map: &TensorMap| -> anyhow::Result<(Option<f64>, Option<f64>)> {
            let Some(ids) = &ids else {
                return Ok((None, None));
            };
            let m = Llama::load(cfg, map)?;
            let (ppl, tps) = measure(&m, ids)?;
            Ok((Some(ppl), Some(tps)))
        };
    let nonzero = super::pipeline::nonzero;
    let mut rows = vec![];
    let (ppl, tps) = quality(&cfg, &map)?;
    rows.push(Row {
        step: "original".into(),
        parameters: map.parameters(),
        nonzero_parameters: nonzero(&map)?,
        bytes: Some(teacher.bytes_on_disk()),
        val_ppl: ppl,
        tokens_per_s: tps,
    });
    drop(teacher);

    let mut steps = vec![];
    if !a.drop_layers.is_empty() {
        cfg = drop_layers(&cfg, &mut map.tensors, &a.drop_layers)?;
        steps.push(format!("drop layers {:?}", a.drop_layers));
    }
    if let Some(k) = a.kv_heads {
        cfg = prune_heads(&cfg, &mut map.tensors, k)?;
        steps.push(format!("{k} kv heads"));
    }
    if let Some(n) = a.ffn_neurons {
        cfg = prune_ffn_neurons(&cfg, &mut map.tensors, n, None)?;
        steps.push(format!("{n} FFN neurons"));
    }
    if let Some(s) = a.sparsity {
        let scope = if a.scope == "global" {
            PruneScope::Global
        } else {
            PruneScope::PerTensor
        };
        magnitude_prune(&mut map.tensors, s, scope)?;
        steps.push(format!("{:.0}% magnitude ({})", s * 100.0, a.scope));
    }
    if a.two_four {
        two_four_prune(&mut map.tensors)?;
        steps.push("2:4".into());
    }
    let mut bytes = None;
    if let Some(out) = &a.out {
        let vm = super::pipeline::varmap_of(&map)?;
        bytes = Some(save_hf(
            out,
            &HfExport {
                config: &cfg,
                varmap: &vm,
                tokenizer: &tokenizer.tokenizer,
                bos_token_id: tokenizer.info.bos_token_id,
                eos_token_id: tokenizer.info.eos_token_id,
                chat_template: tokenizer.chat_template.as_deref(),
            },
        )?);
    }
    if !steps.is_empty() {
        let (ppl, tps) = quality(&cfg, &map)?;
        rows.push(Row {
            step: steps.join(" + "),
            parameters: map.parameters(),
            nonzero_parameters: nonzero(&map)?,
            bytes,
            val_ppl: ppl,
            tokens_per_s: tps,
        });
    }

    let mut fallbacks = vec![];
    if let Some(path) = &a.gguf {
        let qtype = parse_qtype(&a.quantize)?;
        let tok_path = a
            .tokenizer_from
            .clone()
            .or(match &resolved {
                Resolved::Gguf(p) => Some(p.clone()),
                Resolved::Folder(_) => None,
            })
            .context("--tokenizer-from: a Hugging Face folder carries no GGUF tokenizer metadata; name the teacher's GGUF file")?;
        let summary = export_gguf(
            path,
            &GgufExport {
                config: &cfg,
                weights: &map,
                tokenizer: tokenizer_metadata(&tok_path)?,
                qtype,
                name: std::path::Path::new(&a.model)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into()),
            },
        )?;
        fallbacks = summary.fallbacks.clone();
        // Quality of the file as llama.cpp would run it: quantised matrices through QMatMul.
        let (ppl, tps) = match &ids {
            Some(ids) => {
                let q = Teacher::load(
                    &TeacherSource::Gguf(path.clone()),
                    &LoadOptions {
                        gguf_mode: GgufCompute::Quantized,
                        ..opts.clone()
                    },
                )?;
                let TeacherModel::Llama(m) = &q.model else {
                    unreachable!("GGUF is a decoder")
                };
                let (p, t) = measure(m, ids)?;
                (Some(p), Some(t))
            }
            None => (None, None),
        };
        rows.push(Row {
            step: format!("GGUF {}", a.quantize.to_lowercase()),
            parameters: map.parameters(),
            nonzero_parameters: nonzero(&map)?,
            bytes: Some(summary.bytes),
            val_ppl: ppl,
            tokens_per_s: tps,
        });
    }

    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": a.model,
                "config": cfg,
                "rows": rows,
                "gguf_fallbacks": fallbacks,
            }))?
        );
        return Ok(());
    }
    println!("| step | parameters | non-zero | bytes | perplexity | tokens/s |\n|---|---:|---:|---:|---:|---:|");
    let opt = |v: Option<f64>, prec: usize| {
        v.map(|x| format!("{x:.prec$}"))
            .unwrap_or_else(|| "-".into())
    };
    for r in &rows {
        println!(
            "| {} | {:.2} M | {:.2} M | {} | {} | {} |",
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
    for f in &fallbacks {
        println!(
            "GGUF: {} stored as {} (rows of {} do not fit {} blocks)",
            f.tensor, f.used, f.row_length, f.wanted
        );
    }
    Ok(())
}

/// `distill compress MODEL --config RUN.yaml`: the run's `compress:` section on MODEL.
fn run_config(a: &Args, path: &std::path::Path) -> anyhow::Result<()> {
    use super::pipeline;
    let job = crate::config::load_job(path)?;
    let (section, default_out, subject): (_, PathBuf, Box<dyn pipeline::Subject>) = match &job {
        crate::config::Job::CausalLm(cfg) => {
            let c = cfg
                .compress
                .clone()
                .with_context(|| format!("{}: no `compress:` section", path.display()))?;
            let s = pipeline::lm::LmSubject::new(&a.model, cfg, c.eval_blocks)?;
            (c, cfg.run_dir().join("compressed"), Box::new(s))
        }
        crate::config::Job::Classification(cfg) => {
            let c = cfg
                .compress
                .clone()
                .with_context(|| format!("{}: no `compress:` section", path.display()))?;
            let s = pipeline::cls::ClsSubject::new(&a.model, cfg)?;
            (c, cfg.run_dir().join("compressed"), Box::new(s))
        }
    };
    let out = a.out.clone().unwrap_or(default_out);
    let o = pipeline::run(subject.as_ref(), &section, &out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&o)?);
    } else {
        println!("{}\n{}", pipeline::table(&o), pipeline::headline_text(&o));
        println!("report: {}", out.join("compress.md").display());
    }
    Ok(())
}
