//! `distill eval SOURCE --text FILE` (a causal LM's perplexity and speed), `--labelled` (a
//! classifier's accuracy and confusion matrix) or `--prompts FILE --teacher TEACHER` (a
//! student's answers judged by its teacher).

use std::path::PathBuf;

use distill::eval::evaluate_labelled;
use distill::eval::{
    evaluate_prompt_file, evaluate_text, AnswerEvalOptions, PromptFile, TextEvalOptions,
};

use super::ModelArgs;
use crate::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model folder, or hf://org/name[@revision]
    source: String,
    /// Plain-text file to measure perplexity on (causal LMs).
    #[arg(
        long,
        required_unless_present_any = ["labelled", "prompts"],
        conflicts_with_all = ["labelled", "prompts"]
    )]
    text: Option<PathBuf>,
    /// Prompts to judge SOURCE's answers on against --teacher's: JSONL of `{"prompt": TEXT}` or
    /// `{"messages": [...]}` per line.
    #[arg(long, requires = "teacher", conflicts_with = "labelled")]
    prompts: Option<PathBuf>,
    /// With --prompts: the model that writes the reference answers and grades SOURCE's.
    #[arg(long)]
    teacher: Option<String>,
    /// With --prompts: render text prompts as a user turn through the chat template.
    #[arg(long)]
    chat: bool,
    /// With --prompts: new tokens at most per answer.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// With --prompts: prompts shown in the samples table.
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// With --prompts: seed of SOURCE's sampled answers.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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

pub fn run(a: Args) -> anyhow::Result<()> {
    let load = a.model.load_options()?;
    if let (Some(prompts), Some(teacher)) = (&a.prompts, &a.teacher) {
        let opts = AnswerEvalOptions {
            max_new_tokens: a.max_new_tokens,
            samples: a.samples,
            seed: a.seed,
            ..AnswerEvalOptions::default()
        };
        let file = PromptFile {
            path: prompts.clone(),
            chat: a.chat,
        };
        let e = evaluate_prompt_file(&a.source, teacher, &file, &load, &opts)?;
        if a.json {
            crate::out!("{}", serde_json::to_string_pretty(&e)?)?;
        } else {
            crate::out_raw!("{}", e.markdown())?;
        }
        return Ok(());
    }
    let Some(text) = &a.text else {
        let labelled = a
            .labelled
            .as_ref()
            .expect("clap requires --text or --labelled");
        let e = evaluate_labelled(&a.source, labelled, &a.split, &load.device, a.predictions)?;
        if a.json {
            crate::out!("{}", serde_json::to_string_pretty(&e)?)?;
        } else {
            crate::out_raw!("{}", e.text())?;
        }
        return Ok(());
    };
    let opts = TextEvalOptions {
        block: a.block,
        batch: a.batch,
        max_tokens: a.max_tokens,
        save_logits: a.save_logits.clone(),
        load,
    };
    let e = evaluate_text(&a.source, text, &opts, &Progress::default())?;
    if a.json {
        crate::out!("{}", serde_json::to_string_pretty(&e)?)?;
    } else {
        crate::out!("{}", e.text())?;
    }
    if !e.non_finite_tensors.is_empty() {
        anyhow::bail!(
            "{}: {} NaN or infinite values; the numbers above are what the damaged weights give",
            a.source,
            distill::eval::damaged(&e.non_finite_tensors)
        );
    }
    Ok(())
}
