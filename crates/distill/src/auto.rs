//! `distill auto RUN.yaml --budget ppl:+5%`: the run's trained student searched for the
//! smallest GGUF artifact within a quality budget (see `distill_compress::auto`), with the
//! run's data measuring and healing, and its report.

use std::path::{Path, PathBuf};

use distill_compress::auto::search;
pub use distill_compress::auto::{AutoConfig, AutoOutcome, Budget, Probe, Target};
use distill_compress::Output;

use crate::compression::for_causal_lm;
use crate::error::{Error, Result};
use crate::job::RunConfig;
use crate::options::RunOptions;
use crate::report::auto::write;

/// What `distill auto` produced.
#[derive(Debug)]
pub struct AutoRun {
    /// Where `auto.gguf`, `auto.md`, `auto.json` and `auto.svg` are.
    pub out: PathBuf,
    pub outcome: AutoOutcome,
}

/// Searches `model` (default: the run's `final/` student) with `cfg`'s data, writing into
/// `out` (default: `RUN/auto`).
pub fn run_auto(
    cfg: &RunConfig,
    model: Option<&str>,
    budget: Budget,
    target: Option<Target>,
    out: Option<&Path>,
    opts: &RunOptions,
) -> Result<AutoRun> {
    let run_dir = cfg.run_dir();
    let model = match model {
        Some(m) => m.to_string(),
        None => {
            let f = run_dir.join("final");
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
    let auto = cfg.auto.clone().unwrap_or_default();
    let prepared = for_causal_lm(&model, cfg, auto.eval_blocks, auto.calibration_blocks, opts)?;
    let output = Output {
        template: &prepared.template,
        base_config: &prepared.base_config,
        dense_dtype: prepared.dense_dtype,
        gguf_tokenizer: prepared.gguf_tokenizer.as_deref(),
    };
    let outcome = search(
        &prepared.name,
        &prepared.base,
        prepared.evaluator.as_ref(),
        Some(prepared.trainer.as_ref()),
        &output,
        &prepared.defaults,
        &auto,
        budget,
        target,
        &out,
    )?;
    write(&outcome, &out, None)?;
    Ok(AutoRun { out, outcome })
}
