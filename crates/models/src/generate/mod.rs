//! Generation: a batch of prompts prefilled together through the key/value cache, then decoded
//! a token per step, each sequence with its own sampler; a sequence that ends (its EOS, its
//! budget, or the caller's word — a stop string) leaves the batch, so the others run at the
//! batch size that is left.

mod decoder;
mod sample;

pub use decoder::{BatchCache, Decoder, GgmlBatch};
pub use sample::{argmax, Sampler, Sampling};

use crate::error::{ModelError, Result};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// New tokens at most per sequence.
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Tokens that end a sequence (not kept in its tokens).
    pub stop_ids: Vec<u32>,
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// It produced an end-of-sequence token.
    Eos,
    /// It reached `max_new_tokens`: the answer is cut short.
    Budget,
    /// The caller stopped it (a stop string).
    Stopped,
}

/// One generated sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish: Finish,
}

/// Where a generation's time went.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Timing {
    /// The prompts' forward pass (the first step).
    pub prefill_seconds: f64,
    /// Every later step, sampling included.
    pub decode_seconds: f64,
    /// Decoding steps, and the tokens they produced over all sequences (each sequence's first
    /// token comes from the prefill).
    pub decode_steps: usize,
    pub decode_tokens: usize,
}

/// Generates after each of `prompts` (token ids, BOS included where the model wants one).
/// `on_token(prompt, token)` sees every new token as it comes and returns `true` to end that
/// sequence there.
pub fn generate<D: Decoder>(
    model: &D,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(usize, u32) -> bool,
) -> Result<Vec<Generation>> {
    generate_timed(model, prompts, opts, on_token).map(|(g, _)| g)
}

/// [`generate`], with where its time went.
pub fn generate_timed<D: Decoder>(
    model: &D,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(usize, u32) -> bool,
) -> Result<(Vec<Generation>, Timing)> {
    check(model, prompts, opts)?;
    let mut timing = Timing::default();
    let mut samplers: Vec<Sampler> = (0..prompts.len())
        .map(|i| Sampler::new(&opts.sampling, i as u64))
        .collect();
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            tokens: vec![],
            finish: Finish::Budget,
        })
        .collect();
    let mut cache = model.new_cache();
    // Rows of the batch, by prompt index.
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let started = std::time::Instant::now();
    let mut rows = model.step(&rows, &mut cache)?;
    timing.prefill_seconds = started.elapsed().as_secs_f64();
    let decode_started = std::time::Instant::now();
    loop {
        let mut next = Vec::with_capacity(active.len());
        let mut keep = Vec::with_capacity(active.len());
        for (r, &p) in active.iter().enumerate() {
            let token = samplers[p].next(&rows[r]);
            let g = &mut out[p];
            if opts.stop_ids.contains(&token) {
                g.finish = Finish::Eos;
                continue;
            }
            g.tokens.push(token);
            if on_token(p, token) {
                g.finish = Finish::Stopped;
            } else if g.tokens.len() < opts.max_new_tokens {
                keep.push(r);
                next.push(token);
            }
        }
        if keep.is_empty() {
            timing.decode_seconds = decode_started.elapsed().as_secs_f64();
            // Each sequence's first token comes from the prefill's logits.
            timing.decode_tokens = out.iter().map(|g| g.tokens.len().saturating_sub(1)).sum();
            return Ok((out, timing));
        }
        if keep.len() < active.len() {
            cache.keep_rows(&keep)?;
            active = keep.iter().map(|&r| active[r]).collect();
        }
        let next: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let next: Vec<&[u32]> = next.iter().map(|r| r.as_slice()).collect();
        rows = model.step(&next, &mut cache)?;
        timing.decode_steps += 1;
    }
}

/// Refuses what cannot be generated: no prompt, an empty one, no room for the answer.
fn check<D: Decoder>(model: &D, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Result<()> {
    let refuse = |key: &str, msg: String| {
        Err(ModelError::Config {
            source_name: "generate".into(),
            key: key.into(),
            msg,
        })
    };
    if opts.max_new_tokens == 0 {
        return refuse("max_new_tokens", "must be at least 1".into());
    }
    let sampling = &opts.sampling;
    if !(sampling.temperature.is_finite() && sampling.temperature >= 0.0) {
        return refuse(
            "temperature",
            format!(
                "must be 0 (greedy) or positive, got {}",
                sampling.temperature
            ),
        );
    }
    if let Some(p) = sampling.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return refuse("top_p", format!("must be in (0, 1], got {p}"));
    }
    if sampling.top_k == Some(0) {
        return refuse("top_k", "must be at least 1".into());
    }
    if prompts.is_empty() {
        return refuse("prompts", "no prompt to answer".into());
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return refuse("prompts", format!("prompt {i} has no tokens"));
    }
    let context = model.config().max_position_embeddings;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + opts.max_new_tokens > context {
        return refuse(
            "max_new_tokens",
            format!(
                "the longest prompt ({longest} tokens) and {} new tokens exceed the model's context of {context}",
                opts.max_new_tokens
            ),
        );
    }
    Ok(())
}
