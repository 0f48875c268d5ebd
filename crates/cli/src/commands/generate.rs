//! `distill generate SOURCE --prompt TEXT | --prompts FILE.jsonl`: a model's answers, streamed
//! as they come (one prompt) or printed together (several, generated as one batch).

use std::path::PathBuf;

use anyhow::Context;
use distill::generate::{generate_answers, read_prompts, GenerateRequest, Prompt, Sampling};

use super::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model folder, hf://org/name[@revision], or a run folder
    /// (its exported student).
    source: String,
    /// The prompt.
    #[arg(long, required_unless_present = "prompts", conflicts_with = "prompts")]
    prompt: Option<String>,
    /// A JSONL file of prompts: `{"prompt": TEXT}` or `{"messages": [{"role", "content"}]}`
    /// per line, answered as one batch.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Give text prompts to the model as a user turn through its chat template.
    #[arg(long)]
    chat: bool,
    /// A Jinja chat template file to use instead of the model's own.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// New tokens at most per answer.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0: greedy (always the most probable token).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Text that ends an answer (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let prompts = match (&a.prompt, &a.prompts) {
        (Some(p), _) => vec![Prompt::Text { prompt: p.clone() }],
        (None, Some(file)) => read_prompts(file)?,
        (None, None) => unreachable!("clap requires --prompt or --prompts"),
    };
    let chat_template = match &a.chat_template {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| p.display().to_string())?),
        None => None,
    };
    let req = GenerateRequest {
        prompts,
        chat: a.chat || a.chat_template.is_some(),
        chat_template,
        max_new_tokens: a.max_new_tokens,
        sampling: Sampling {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        stop: a.stop.clone(),
        load: a.model.load_options()?,
    };
    // One prompt streams to the terminal as it is written.
    let stream = req.prompts.len() == 1 && !a.json;
    let g = generate_answers(&a.source, &req, &mut |_, piece| {
        if stream {
            let _ = crate::out_raw!("{piece}");
        }
    })?;
    if a.json {
        crate::out!("{}", serde_json::to_string_pretty(&g)?)?;
    } else if stream {
        crate::out!()?;
        tracing::info!(
            tokens = g.new_tokens,
            seconds = format!("{:.2}", g.seconds),
            tokens_per_second = format!("{:.1}", g.tokens_per_second),
            finish = ?g.answers[0].finish,
            "generated"
        );
    } else {
        crate::out!("{}", g.text())?;
    }
    Ok(())
}
