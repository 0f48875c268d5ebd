//! `distill eval SOURCE --text FILE`: perplexity and speed of a causal LM on a text, in
//! non-overlapping windows.

use std::path::{Path, PathBuf};
use std::time::Instant;

use distill_teacher::{pad_batch, GgufCompute, LoadOptions, Teacher, TeacherSource};
use distill_train::scoring::{next_token_nll, NllSum};
use distill_train::{Event, Observer};
use serde::Serialize;

use crate::error::{Error, Result};

/// How the text is cut and run.
#[derive(Clone, Debug)]
pub struct TextEvalOptions {
    /// Tokens per window.
    pub block: usize,
    /// Windows per forward pass.
    pub batch: usize,
    /// Stop after this many tokens of the text.
    pub max_tokens: Option<usize>,
    /// Also write the logits of the first window to this safetensors file (`logits`, `ids`).
    pub save_logits: Option<PathBuf>,
    pub load: LoadOptions,
}

/// The result.
#[derive(Clone, Debug, Serialize)]
pub struct TextEval {
    pub source: String,
    pub text: String,
    pub tokens: usize,
    pub predicted_tokens: usize,
    pub perplexity: f64,
    pub mean_nll: f64,
    /// Bytes of text the predicted tokens stand for.
    pub predicted_bytes: u64,
    /// The predicted tokens' negative log-likelihood in bits, per byte of text: comparable
    /// across tokenizers, as perplexity is not.
    pub bits_per_byte: f64,
    pub forward_seconds: f64,
    pub tokens_per_second: f64,
    pub block: usize,
    pub batch: usize,
    pub device: String,
    pub dtype: String,
    /// Whether matrices were multiplied in their stored (quantised) format.
    pub quantized: bool,
    /// For a GGUF model: `quantized`, `dequantized` or `ggml`.
    pub gguf_weights: Option<String>,
    /// Tensors of the weight files that hold NaN or infinite values: the numbers above are
    /// what a damaged model gives.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub non_finite_tensors: Vec<String>,
}

impl TextEval {
    pub fn text(&self) -> String {
        format!(
            "perplexity {:.3} over {} predicted tokens ({} tokens in windows of {}); {:.4} bits per byte over {} bytes\nforward {:.2} s, {:.1} tokens/s on {} ({})",
            self.perplexity, self.predicted_tokens, self.tokens, self.block, self.bits_per_byte,
            self.predicted_bytes, self.forward_seconds,
            self.tokens_per_second, self.device, self.dtype
        )
    }
}

/// `tensor `a` holds` / `tensors `a`, `b` hold`, for messages about damaged weights.
pub fn damaged(tensors: &[String]) -> String {
    let verb = if tensors.len() == 1 { "holds" } else { "hold" };
    format!("{} {verb}", distill_teacher::error::name_list(tensors))
}

/// Scores the model at `source` on the text file `text`.
pub fn evaluate_text(
    source: &str,
    text: &Path,
    o: &TextEvalOptions,
    observer: &dyn Observer,
) -> Result<TextEval> {
    if o.block < 2 {
        return Err(Error::Invalid(format!(
            "--block must be at least 2 tokens, got {}",
            o.block
        )));
    }
    if o.batch < 1 {
        return Err(Error::Invalid("--batch must be at least 1".into()));
    }
    if let Some(path) = &o.save_logits {
        let inputs = crate::run_dir::local_inputs([Path::new(source), text]);
        distill_files::check_file_target(path, &inputs)?;
    }
    let src = TeacherSource::parse(source)?;
    // A damaged model is still measured (what it gives is worth seeing), and named.
    let load = distill_teacher::LoadOptions {
        non_finite: distill_teacher::NonFinite::Report,
        ..o.load.clone()
    };
    let teacher = Teacher::load(&src, &load)?;
    let ids = crate::text_ids::text_ids(text, &teacher.tokenizer, o.max_tokens)?;
    let windows = crate::text_ids::windows(&ids, o.block, &teacher.tokenizer);
    if windows.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: fewer than 2 tokens of text",
            text.display()
        )));
    }
    let tokens: usize = windows.iter().map(Vec::len).sum();
    let predicted_bytes = predicted_bytes(&windows, &teacher.tokenizer.byte_lengths());
    let stage = "eval";
    observer.event(&Event::Started {
        stage,
        unit: "tokens",
        total: tokens as u64,
        done: 0,
    });
    let mut total = NllSum::default();
    let mut seconds = 0.0;
    let mut done = 0u64;
    for (gi, group) in windows.chunks(o.batch).enumerate() {
        let (input, _) = pad_batch(group, teacher.device())?;
        let start = Instant::now();
        let logits = teacher.logits(group)?;
        seconds += start.elapsed().as_secs_f64();
        if let (0, Some(path)) = (gi, &o.save_logits) {
            let first = logits.get(0)?.narrow(0, 0, group[0].len())?;
            let ids = candle_core::Tensor::new(group[0].as_slice(), &candle_core::Device::Cpu)?;
            distill_files::write_file_with(path, |tmp| -> Result<()> {
                let tensors = std::collections::HashMap::from([
                    (
                        "logits".to_string(),
                        first.to_device(&candle_core::Device::Cpu)?,
                    ),
                    ("ids".to_string(), ids),
                ]);
                Ok(candle_core::safetensors::save(&tensors, tmp)?)
            })?;
        }
        let lengths: Vec<usize> = group.iter().map(Vec::len).collect();
        total.add(next_token_nll(&logits, &input, &lengths)?);
        done += lengths.iter().sum::<usize>() as u64;
        observer.event(&Event::Progress { stage, done });
    }
    observer.event(&Event::Finished { stage });
    let gguf = matches!(src, TeacherSource::Gguf(_));
    Ok(TextEval {
        source: src.to_string(),
        text: text.display().to_string(),
        tokens,
        predicted_tokens: total.tokens,
        perplexity: total.perplexity(),
        mean_nll: total.nll / total.tokens.max(1) as f64,
        predicted_bytes,
        bits_per_byte: bits_per_byte(total.nll, predicted_bytes),
        forward_seconds: seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        block: o.block,
        batch: o.batch,
        device: format!("{:?}", o.load.device),
        dtype: format!("{:?}", o.load.dtype).to_lowercase(),
        quantized: o.load.gguf_mode != GgufCompute::Dequantized && gguf,
        gguf_weights: gguf.then(|| format!("{:?}", o.load.gguf_mode).to_lowercase()),
        non_finite_tensors: teacher.non_finite.clone(),
    })
}

/// Bytes of text the predicted tokens of `windows` stand for (every token but each window's
/// first, which nothing predicts).
pub fn predicted_bytes(windows: &[Vec<u32>], byte_lengths: &[u32]) -> u64 {
    windows
        .iter()
        .flat_map(|w| w.iter().skip(1))
        .map(|&id| byte_lengths.get(id as usize).copied().map_or(0, u64::from))
        .sum()
}

/// Bits per byte of a perplexity `ppl` measured on `windows` (every token but each window's
/// first predicted), for a tokenizer whose ids stand for `byte_lengths` bytes.
pub fn bits_per_byte_at(ppl: f64, windows: &[Vec<u32>], byte_lengths: &[u32]) -> f64 {
    let predicted: usize = windows.iter().map(|w| w.len().saturating_sub(1)).sum();
    bits_per_byte(
        ppl.ln() * predicted as f64,
        predicted_bytes(windows, byte_lengths),
    )
}

/// [`bits_per_byte_at`] for a perplexity measured on the marked tokens of `blocks` only
/// (`targets[i][p]`: token `p` of block `i` is predicted and counted — chat data).
pub fn bits_per_byte_of_targets(
    ppl: f64,
    blocks: &[Vec<u32>],
    targets: &[Vec<bool>],
    byte_lengths: &[u32],
) -> f64 {
    let (mut predicted, mut bytes) = (0usize, 0u64);
    for (block, marks) in blocks.iter().zip(targets) {
        for (&id, _) in block.iter().zip(marks).skip(1).filter(|(_, &m)| m) {
            predicted += 1;
            bytes += u64::from(byte_lengths.get(id as usize).copied().unwrap_or(0));
        }
    }
    bits_per_byte(ppl.ln() * predicted as f64, bytes)
}

/// `nll` nats over `bytes` bytes, in bits per byte.
pub fn bits_per_byte(nll: f64, bytes: u64) -> f64 {
    nll / std::f64::consts::LN_2 / bytes.max(1) as f64
}
