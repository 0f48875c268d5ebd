//! Training stages of a classification run: each is the learner with its own checkpoints
//! (`checkpoints/<stage>/`), resumed when the run resumes and the stage has one, so an
//! interrupted run continues where it stopped; a student stage ends with its export.

use std::path::Path;

use candle_nn::VarMap;
use distill_models::BertConfig;
use distill_student::{save_bert_classifier, BertExport, BertStudent};
use distill_train::checkpoint::latest;
use distill_train::config::DistillConfig;
use distill_train::tasks::{Classification, TeacherSignal};
use distill_train::{LearnOutcome, Learner, Training};

use super::data::{Encoded, Labelled};
use super::prepare::Prepared;
use super::teacher::TeacherFolder;
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

/// What a student stage trains on and exports with.
pub(crate) struct StudentStage<'a> {
    pub(crate) run: &'a Prepared<'a>,
    pub(crate) teacher: &'a TeacherFolder,
    pub(crate) labelled: &'a Labelled,
    pub(crate) data: &'a Encoded,
    pub(crate) opts: &'a RunOptions<'a>,
}

impl StudentStage<'_> {
    /// Trains `s` as `stage` against `teacher` (or on labels alone) with `distill`, then
    /// exports it into `dir`.
    pub(crate) fn train(
        &self,
        stage: &str,
        s: &BertStudent,
        teacher: Option<TeacherSignal>,
        distill: &DistillConfig,
        dir: &Path,
    ) -> Result<LearnOutcome> {
        let cfg = self.run.cfg;
        let mut task = Classification::new(
            &s.model,
            &s.varmap,
            teacher,
            distill,
            &cfg.train,
            &self.data.train,
            &self.data.valid,
            self.teacher.pad,
            &self.run.device,
        )?;
        let out = fit_stage(stage, &cfg.train, &mut task, self.run, self.opts)?;
        self.export(dir, &s.config, &s.varmap)?;
        Ok(out)
    }

    fn export(&self, dir: &Path, config: &BertConfig, varmap: &VarMap) -> Result<u64> {
        let cfg = self.run.cfg;
        Ok(save_bert_classifier(
            dir,
            &BertExport {
                config,
                varmap,
                labels: &self.labelled.set.labels,
                pooling: cfg.pooling,
                tokenizer: &self.teacher.tokenizer,
                dtype: self.run.export_dtype,
                max_length: self.teacher.max_len,
            },
        )?)
    }
}
