//! # distill
//!
//! The product's API: a run file becomes a typed [`Job`]; [`run`] trains the student it
//! describes (causal-LM distillation, or fine-tuning and distilling a classifier), exports
//! it, writes its report and runs its `compress:` section; [`compression`] compresses any
//! trained model; [`eval`] and [`classifier`] score models. The library never prints:
//! progress reaches the caller through an [`Observer`], and a [`StopFlag`] asks it to stop
//! with a checkpoint. Reports are data with renderers ([`report`]). The `distill` binary is
//! a thin driver over this crate.
//!
//! ```no_run
//! use distill::{parse_job, run, RunOptions, RunOutcome};
//!
//! let job = parse_job(r#"
//! teacher: {source: SmolLM2-135M-Instruct.Q4_1.gguf}
//! data:
//!   source: {kind: folder, path: moby-dick, pattern: "chapter_*.txt"}
//!   block_size: 64
//! student: {layers: 1, hidden: 192, init: {kind: from_teacher}}
//! distill: {temperature: 1.0, alpha: 0.5}
//! train: {steps: 10, batch_size: 2, eval_every: 5, eval_blocks: 4}
//! output: {dir: runs, name: tiny}
//! "#)?;
//! if let RunOutcome::CausalLm(lm) = run(&job, &RunOptions::default())? {
//!     println!("{}", lm.report.expect("not interrupted").table());
//! }
//! # Ok::<(), distill::Error>(())
//! ```
//!
//! `cargo run --release --example distil_tiny -p distill` runs this on the real SmolLM2
//! teacher and Moby Dick (`scripts/fetch-assets.sh` fetches them).

pub mod auto;
pub mod causal_lm;
pub mod chat;
pub mod chat_data;
pub mod classification;
pub mod compression;
pub mod cross;
mod data;
mod env;
mod error;
pub mod eval;
pub mod generate;
pub mod group;
pub mod job;
pub mod models;
mod options;
pub mod report;
mod run_dir;
pub mod saved_classifier;
pub mod teacher_answers;
pub mod teacher_cache;
mod text_ids;
pub mod vocab;

pub use distill_train::parallel::Launch;
pub use distill_train::{EvalRecord, Event, Observer, Silent, StepRecord, StopFlag};
pub use error::{Context, Error, Result};
pub use job::{load_job, parse_job, schema, ClassifyConfig, Job, RunConfig, Task};
pub use options::RunOptions;
pub use run_dir::RUN_ENTRIES;

/// What a run produced.
// Returned once per run: the size of the larger variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum RunOutcome {
    CausalLm(causal_lm::LmRun),
    Classification(classification::ClsRun),
}

/// Runs a job: trains, exports, reports, compresses.
pub fn run(job: &Job, opts: &RunOptions) -> Result<RunOutcome> {
    Ok(match job {
        Job::CausalLm(cfg) => RunOutcome::CausalLm(causal_lm::run(cfg, opts)?),
        Job::Classification(cfg) => RunOutcome::Classification(classification::run(cfg, opts)?),
    })
}
