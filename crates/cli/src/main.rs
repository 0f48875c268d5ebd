//! `distill`: knowledge distillation from one YAML file. This binary parses arguments, turns
//! stop signals (Ctrl-C, SIGTERM, SIGHUP) into a stop request, shows progress and prints
//! results; the `distill` library does the work.

mod commands;
mod logging;
mod output;
mod progress;
mod signals;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  distill run configs/quickstart.yaml            # teacher → student → report
  distill run configs/quickstart.yaml --resume   # continue from the newest checkpoint
  distill schema > distill.schema.json           # for YAML editors (yaml-language-server)
  distill inspect ~/.cache/distill/assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
  distill inspect hf://HuggingFaceTB/SmolLM2-135M-Instruct --json
  distill tokenize model.gguf 'Call me Ishmael.' --json
  distill eval model.gguf --text moby-dick/chapter_1.txt --max-tokens 2048
  distill eval model.gguf --text moby-dick/chapter_1.txt --ggml   # llama.cpp's exact logits
  distill eval ./my-model-folder --text valid.txt --device cuda:0 --dtype bf16
  distill generate model.gguf --prompt 'What is a whale?' --chat --max-new-tokens 64
  distill generate runs/quickstart --prompts prompts.jsonl --temperature 0.7 --top-p 0.9 --json
  distill chat model.gguf --system 'You answer in one sentence.'
  distill launch --nproc-per-node 2 -- run configs/quickstart.yaml   # data-parallel, 2 ranks
  distill run configs/spam-minilm.yaml           # fine-tune a classifier teacher, distil a student
  distill eval runs/spam-minilm/student --labelled configs/spam-minilm.yaml --split test
  distill compress runs/quickstart/final --gguf student.gguf --quantize q8_0 --tokenizer-from teacher.gguf
  distill auto configs/quickstart.yaml --budget ppl:+5%     # smallest GGUF within 5% perplexity
  distill auto configs/quickstart.yaml --budget ppl:+5% --target bytes:20MB

Sources: a .gguf file, a Hugging Face model folder, or hf://org/name[@revision]
(Hub access honours HF_TOKEN, HF_ENDPOINT, HF_HUB_CACHE, HF_HOME and HF_HUB_OFFLINE).
Logging: RUST_LOG=debug for more detail.";

#[derive(Parser)]
#[command(name = "distill", version, about = "Distil, compress and export language models", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Distil a student from a teacher as one YAML config describes (train, export, report).
    Run(commands::run::Args),
    /// Start the ranks of a data-parallel group on this host (one per GPU), each running the
    /// command after `--` (`run CONFIG`), with the variables torchrun sets.
    Launch(commands::launch::Args),
    /// Run a causal-LM run's teacher once and keep its top-k targets in `teacher.cache`, so
    /// that `distill run` trains without running the teacher. Resumes when run again.
    CacheTeacher(commands::cache_teacher::Args),
    /// JSON Schema of the run config, for editors to validate and complete YAML files.
    Schema,
    /// Architecture, sizes, dtypes, bytes on disk and tokenizer of a model.
    Inspect(commands::inspect::Args),
    /// The token ids a model's tokenizer gives for a text.
    Tokenize(commands::inspect::TokenizeArgs),
    /// Perplexity and speed of a causal language model on a text file, or accuracy and
    /// confusion matrix of a classifier on labelled data.
    Eval(commands::eval::Args),
    /// A model's answers to a prompt (streamed) or a JSONL file of prompts (one batch), plain
    /// or through its chat template.
    Generate(commands::generate::Args),
    /// A conversation in the terminal with a model, through its chat template: answers stream
    /// as they are written; /reset starts again, Ctrl-C stops an answer.
    Chat(commands::chat::Args),
    /// Prune, factorise, share or quantise a model and export it (safetensors, GGUF).
    Compress(commands::compress::Args),
    /// Search the run's trained student for the smallest GGUF artifact within a quality
    /// budget (per-tensor types, structural cuts with healing), measuring every candidate.
    Auto(commands::auto::Args),
}

/// Every training step allocates and frees buffers of hundreds of megabytes (activations,
/// gradients, a group's gradient sum). glibc serves each from a fresh `mmap` and unmaps it on
/// `free`, so the next step pays a page fault per 4 KiB again, which on a VM costs seconds a
/// step (`docs/results/data-parallel.md` measures both settings side by side). Below 1 GiB,
/// blocks stay in the heap for reuse instead; the process keeps the memory it peaked at, as a
/// training run does anyway. `DISTILL_MALLOC_DEFAULTS=1` keeps glibc's defaults.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_blocks_for_reuse() {
    if std::env::var_os("DISTILL_MALLOC_DEFAULTS").is_some_and(|v| v == "1") {
        return;
    }
    // SAFETY: mallopt only changes the allocator's thresholds; it runs before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_blocks_for_reuse() {}

fn main() -> std::process::ExitCode {
    keep_large_blocks_for_reuse();
    logging::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => commands::run::run(a),
        Command::Launch(a) => commands::launch::run(a),
        Command::CacheTeacher(a) => commands::cache_teacher::run(a),
        Command::Schema => serde_json::to_string_pretty(&distill::schema())
            .map_err(anyhow::Error::from)
            .and_then(|s| Ok(out!("{s}")?)),
        Command::Inspect(a) => commands::inspect::inspect(a),
        Command::Tokenize(a) => commands::inspect::tokenize(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Compress(a) => commands::compress::run(a),
        Command::Auto(a) => commands::auto::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => exit_for(&e),
    }
}

/// The exit of a failed command: a stop on request exits with the signal's code; a reader
/// that closed stdout ends it quietly (141, as SIGPIPE would); anything else is said.
fn exit_for(e: &anyhow::Error) -> std::process::ExitCode {
    use std::io::Write;
    if e.downcast_ref::<commands::Stopped>().is_some() {
        return std::process::ExitCode::from(signals::exit_code());
    }
    if e.downcast_ref::<output::StdoutError>()
        .is_some_and(output::StdoutError::is_closed_pipe)
    {
        return std::process::ExitCode::from(141);
    }
    let _ = writeln!(std::io::stderr(), "error: {}", message(e));
    std::process::ExitCode::FAILURE
}

/// An error and its causes, each said once: a library error that quotes its cause in its own
/// message (`{path}: {source}`) is not followed by the cause again.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
