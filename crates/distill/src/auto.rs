//! `distill auto RUN.yaml --budget ppl:+5% | acc:-1pt`: the run's trained student searched for
//! the smallest artifact within a quality budget (see `distill_compress::auto`; a GGUF file
//! for a causal LM, a compressed safetensors folder for a classifier), with the run's data
//! measuring and healing, and its report.

use std::path::{Path, PathBuf};

use distill_compress::auto::{search, AutoSearch};
pub use distill_compress::auto::{AutoConfig, AutoOutcome, Budget, Probe, Target};
use distill_compress::Output;

use crate::compression::{for_causal_lm, for_classification, Prepared};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::options::RunOptions;
use crate::report::auto::write;

/// What `distill auto` produced.
#[derive(Debug)]
pub struct AutoRun {
    /// Where `auto.gguf`, `auto.md`, `auto.json` and `auto.svg` are.
    pub out: PathBuf,
    pub outcome: AutoOutcome,
}

/// Searches `model` (default: the run's trained student, `final/` or `student/`) with the
/// run's data, writing into `out` (default: `RUN/auto`).
pub fn run_auto(
    job: &Job,
    model: Option<&str>,
    budget: Budget,
    target: Option<Target>,
    out: Option<&Path>,
    opts: &RunOptions,
) -> Result<AutoRun> {
    let run_dir = job.run_dir();
    let trained = match job {
        Job::CausalLm(_) => "final",
        Job::Classification(_) => "student",
    };
    let model = match model {
        Some(m) => m.to_string(),
        None => {
            let f = run_dir.join(trained);
            if !f.join("config.json").exists() {
                return Err(Error::Invalid(format!(
                    "{}: no trained student; run `distill run` on this config first, or give --model",
                    f.display()
                )));
            }
            f.display().to_string()
        }
    };
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| run_dir.join("auto"));
    crate::compression::check_output_folder(&out, &model, opts.overwrite)?;
    let (auto, prepared): (_, Prepared) = match job {
        Job::CausalLm(cfg) => {
            let auto = cfg.auto.clone().unwrap_or_default();
            let p = for_causal_lm(&model, cfg, auto.eval_blocks, auto.calibration_blocks, opts)?;
            (auto, p)
        }
        Job::Classification(cfg) => {
            let auto = cfg.auto.clone().unwrap_or_default();
            let p = for_classification(&model, cfg, auto.calibration_blocks, opts)?;
            (auto, p)
        }
    };
    let output = Output {
        template: &prepared.template,
        base_config: &prepared.base_config,
        dense_dtype: prepared.dense_dtype,
        gguf_tokenizer: prepared.gguf_tokenizer.as_deref(),
    };
    let outcome = search(&AutoSearch {
        name: &prepared.name,
        base: &prepared.base,
        eval: prepared.evaluator.as_ref(),
        trainer: Some(prepared.trainer.as_ref()),
        output: &output,
        defaults: &prepared.defaults,
        cfg: &auto,
        budget,
        target,
        out: &out,
    })?;
    write(&outcome, &out, None)?;
    Ok(AutoRun { out, outcome })
}
