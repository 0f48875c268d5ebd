//! Training stages of a classification run: each is the learner with its own checkpoints
//! (`checkpoints/<stage>/`), resumed when the run resumes and the stage has one, so an
//! interrupted run continues where it stopped.

use distill_train::checkpoint::latest;
use distill_train::config::DistillConfig;
use distill_train::tasks::Classification;
use distill_train::{LearnOutcome, Learner, Training};

use super::prepare::Prepared;
use crate::error::{Context, Result};
use crate::job::ClassifyConfig;
use crate::options::RunOptions;

/// The run's objective without the teacher: cross-entropy on the labels alone.
pub(crate) fn labels_only(cfg: &ClassifyConfig) -> DistillConfig {
    DistillConfig {
        alpha: 0.0,
        hidden: vec![],
        ..cfg.distill.clone()
    }
}

/// One training stage: the learner with the stage's own checkpoints, resumed when the run
/// resumes and the stage has a checkpoint.
pub(crate) fn fit_stage(
    stage: &str,
    training: &Training,
    task: &mut Classification,
    run: &Prepared,
    opts: &RunOptions,
) -> Result<LearnOutcome> {
    let checkpoints = run.run_dir.join("checkpoints").join(stage);
    let resume = opts.resume && latest(&checkpoints).is_some();
    Learner::new(training, stage)
        .checkpoints(checkpoints)
        .metrics(run.run_dir.join("metrics.jsonl"))
        .observer(opts.observer)
        .stop_flag(&opts.stop)
        .device(&run.device)
        .fit(task, resume)
        .with_context(|| format!("stage `{stage}`"))
}
