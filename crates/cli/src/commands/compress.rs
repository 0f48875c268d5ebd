//! `distill compress MODEL`: the `compress:` section of a run config (`--config`), or pruning
//! and export from flags.

use std::path::PathBuf;

use distill::compression::quick::{quick_compress, GgufType, QuickCompress};
use distill::{load_job, RunOptions};

use crate::progress::Progress;

/// Where a magnitude threshold is taken.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Scope {
    PerTensor,
    Global,
}

#[derive(clap::Args)]
pub struct Args {
    /// A Llama-family model: a Hugging Face folder (e.g. runs/NAME/final), hf://org/name, or a
    /// GGUF file (dequantised first).
    model: String,
    /// Unstructured magnitude pruning: share of layer weights set to zero, in [0, 1).
    #[arg(long)]
    sparsity: Option<f64>,
    /// Threshold for --sparsity: per tensor, or one over all layer matrices.
    #[arg(long, value_enum, default_value_t = Scope::PerTensor)]
    scope: Scope,
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
    /// Save the result in Hugging Face layout here: a new or empty folder, or one distill
    /// wrote (a folder holding other files is refused unless --overwrite).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write into an --out folder distill did not make: its files of the names distill writes
    /// are replaced; nothing else there is touched.
    #[arg(long)]
    overwrite: bool,
    /// Write a GGUF file here.
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// GGUF matrix type: f32, f16, q8_0, q6_k, q5_k, q4_k, q5_0, q4_0 (a tensor whose rows do not
    /// fit the type's blocks falls back as llama.cpp does, and is reported).
    #[arg(long, default_value = "q8_0")]
    quantize: GgufType,
    /// GGUF file whose tokenizer metadata the GGUF export carries (the teacher's). Default: the
    /// model's own, when MODEL is a GGUF file; else built from the folder's tokenizer.json.
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

pub fn run(a: Args) -> anyhow::Result<()> {
    if let Some(path) = &a.config {
        let job = load_job(path)?;
        let progress = Progress::default();
        let opts = RunOptions {
            observer: &progress,
            stop: crate::signals::stop_flag(),
            overwrite: a.overwrite,
            ..RunOptions::default()
        };
        let c = distill::compression::for_job(&a.model, &job, a.out.as_deref(), &opts)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if a.json {
            crate::out!("{}", serde_json::to_string_pretty(&c.outcome)?)?;
        } else {
            crate::out!("{}\n{}", c.table(), c.headline())?;
            crate::out!("report: {}", c.out.join("compress.md").display())?;
        }
        return Ok(());
    }
    let o = quick_compress(
        &a.model,
        &QuickCompress {
            drop_layers: a.drop_layers.clone(),
            kv_heads: a.kv_heads,
            ffn_neurons: a.ffn_neurons,
            sparsity: a.sparsity,
            scope: Some(match a.scope {
                Scope::Global => distill::compression::quick::Scope::Global,
                Scope::PerTensor => distill::compression::quick::Scope::PerTensor,
            }),
            two_four: a.two_four,
            out: a.out.clone(),
            overwrite: a.overwrite,
            gguf: a.gguf.clone(),
            quantize: a.quantize,
            tokenizer_from: a.tokenizer_from.clone(),
            text: a.text.clone(),
            max_tokens: a.max_tokens,
        },
    )?;
    if a.json {
        crate::out!("{}", serde_json::to_string_pretty(&o)?)?;
    } else {
        crate::out_raw!("{}", o.text())?;
    }
    Ok(())
}
