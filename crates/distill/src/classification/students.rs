//! Student stages: a student trained against the teacher's signal (or on labels alone) with
//! the run's settings, then exported in Hugging Face layout.

use std::path::Path;

use candle_nn::VarMap;
use distill_models::BertConfig;
use distill_student::{save_bert_classifier, BertExport, BertStudent};
use distill_train::config::DistillConfig;
use distill_train::tasks::{ClassTeacher, Classification, ClassificationSetup, Student};
use distill_train::LearnOutcome;

use super::data::{Encoded, Labelled};
use super::prepare::Prepared;
use super::stages::fit_stage;
use super::teacher::TeacherFolder;
use crate::error::Result;
use crate::options::RunOptions;

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
        teacher: Option<ClassTeacher>,
        distill: &DistillConfig,
        dir: &Path,
    ) -> Result<LearnOutcome> {
        let cfg = self.run.cfg;
        let mut task = Classification::new(ClassificationSetup {
            student: Student {
                model: &s.model,
                varmap: &s.varmap,
            },
            teacher,
            distill,
            training: &cfg.train,
            train: &self.data.train,
            valid: &self.data.valid,
            pad_id: self.teacher.pad,
            device: self.run.device.clone(),
        })?;
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
