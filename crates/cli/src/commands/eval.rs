use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use distill_teacher::{pad_batch, GgufCompute, Teacher, TeacherSource};
use distill_train::metrics::{next_token_nll, NllSum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model folder, or hf://org/name[@revision]
    source: String,
    /// Plain-text file to measure perplexity on (causal LMs).
    #[arg(
        long,
        required_unless_present = "labelled",
        conflicts_with = "labelled"
    )]
    text: Option<PathBuf>,
    /// Labelled examples to score a classifier on: a .jsonl (`text`, `label`) or .csv file, or
    /// a classification run config (its `data:` section, split as the run split it).
    #[arg(long)]
    labelled: Option<PathBuf>,
    /// With a run config: which part of its split to score (all, train, validation, test).
    #[arg(long, default_value = "test")]
    split: String,
    /// With --json and --labelled: also list every example's text, label and logits.
    #[arg(long, requires = "labelled")]
    predictions: bool,
    /// Tokens per window; windows do not overlap.
    #[arg(long, default_value_t = 256)]
    block: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Stop after this many tokens of the text.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Also write the logits of the first window to this safetensors file (`logits`, `[n, vocab]`,
    /// and `ids`), for comparisons with other implementations.
    #[arg(long)]
    save_logits: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    source: String,
    text: String,
    tokens: usize,
    predicted_tokens: usize,
    perplexity: f64,
    mean_nll: f64,
    forward_seconds: f64,
    tokens_per_second: f64,
    block: usize,
    batch: usize,
    device: String,
    dtype: String,
    /// Whether matrices were multiplied in their stored (quantised) format.
    quantized: bool,
    /// For a GGUF model: `quantized`, `dequantized` or `ggml`.
    gguf_weights: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let Some(text_path) = a.text.clone() else {
        let labelled = a
            .labelled
            .as_ref()
            .expect("clap requires --text or --labelled");
        let opts = a.model.load_options()?;
        return super::classify::eval_classifier(
            &a.source,
            labelled,
            &a.split,
            &opts.device,
            a.json,
            a.predictions,
        );
    };
    anyhow::ensure!(
        a.block >= 2,
        "--block must be at least 2 tokens, got {}",
        a.block
    );
    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1");
    let text = std::fs::read_to_string(&text_path)
        .with_context(|| format!("reading {}", text_path.display()))?;
    let opts = a.model.load_options()?;
    let source = TeacherSource::parse(&a.source)?;
    let teacher = Teacher::load(&source, &opts)?;
    let mut ids = teacher.tokenizer.encode(&text)?;
    if let Some(m) = a.max_tokens {
        ids.truncate(m);
    }
    let windows: Vec<Vec<u32>> = ids
        .chunks(a.block)
        .filter(|c| c.len() >= 2)
        .map(<[u32]>::to_vec)
        .collect();
    anyhow::ensure!(
        !windows.is_empty(),
        "{}: fewer than 2 tokens of text",
        text_path.display()
    );

    let bar = ProgressBar::new(windows.iter().map(Vec::len).sum::<usize>() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} eval [{bar:30}] {pos}/{len} tokens {per_sec} eta {eta}",
        )?
        .progress_chars("=> "),
    );
    let mut total = NllSum::default();
    let mut seconds = 0.0;
    for (gi, group) in windows.chunks(a.batch).enumerate() {
        let (input, _) = pad_batch(group, teacher.device())?;
        let start = Instant::now();
        let logits = teacher.logits(group)?;
        seconds += start.elapsed().as_secs_f64();
        if let (0, Some(path)) = (gi, &a.save_logits) {
            let first = logits.get(0)?.narrow(0, 0, group[0].len())?;
            let ids = candle_core::Tensor::new(group[0].as_slice(), &candle_core::Device::Cpu)?;
            let tmp = distill_train::checkpoint::tmp_sibling(path);
            candle_core::safetensors::save(
                &std::collections::HashMap::from([
                    (
                        "logits".to_string(),
                        first.to_device(&candle_core::Device::Cpu)?,
                    ),
                    ("ids".to_string(), ids),
                ]),
                &tmp,
            )?;
            std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
        }
        let lengths: Vec<usize> = group.iter().map(Vec::len).collect();
        total.add(next_token_nll(&logits, &input, &lengths)?);
        bar.inc(lengths.iter().sum::<usize>() as u64);
    }
    bar.finish_and_clear();
    let tokens: usize = windows.iter().map(Vec::len).sum();
    let report = Report {
        source: source.to_string(),
        text: text_path.display().to_string(),
        tokens,
        predicted_tokens: total.tokens,
        perplexity: total.perplexity(),
        mean_nll: total.nll / total.tokens.max(1) as f64,
        forward_seconds: seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        block: a.block,
        batch: a.batch,
        device: format!("{:?}", opts.device),
        dtype: format!("{:?}", opts.dtype).to_lowercase(),
        quantized: opts.gguf_mode != GgufCompute::Dequantized
            && matches!(source, TeacherSource::Gguf(_)),
        gguf_weights: matches!(source, TeacherSource::Gguf(_))
            .then(|| format!("{:?}", opts.gguf_mode).to_lowercase()),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "perplexity {:.3} over {} predicted tokens ({} tokens in windows of {})\nforward {:.2} s, {:.1} tokens/s on {} ({})",
            report.perplexity, report.predicted_tokens, report.tokens, report.block, report.forward_seconds,
            report.tokens_per_second, report.device, report.dtype
        );
    }
    Ok(())
}
