//! The data stage across tokenizers (`distill.vocab: cross`): the student's own tokenizer
//! (`student.base`'s, or `student.tokenizer`), trimmed to the corpus when asked, packs the
//! blocks; every block is then aligned with the teacher's tokenisation of its bytes.

use distill_models::LlamaConfig;
use distill_teacher::{LoadedTokenizer, TeacherFiles, TeacherSource};
use distill_train::data::Split;

use super::data::{student_tokenizer, RunData};
use super::prepare::Prepared;
use super::teacher::TeacherSide;
use crate::cross::{for_run, CrossRun, CrossSides};
use crate::data::{build_data_from, separator_id};
use crate::error::{Context, Result};
use crate::vocab::trim_for_run;

/// The student's side of a cross-tokenizer run.
pub(crate) struct CrossData {
    pub(crate) run: CrossRun,
    /// The student's tokenizer before any trimming.
    pub(crate) tokenizer: LoadedTokenizer,
    /// The model the student is cut from (`student.base`), when not the teacher.
    pub(crate) base: Option<TeacherFiles>,
    /// The config the student is cut from, over the student's untrimmed vocabulary.
    pub(crate) base_cfg: LlamaConfig,
}

/// Builds a cross-tokenizer run's data.
pub(crate) fn build(
    run: &Prepared,
    teacher: &TeacherSide,
    teacher_cfg: LlamaConfig,
    split: &Split,
) -> Result<RunData> {
    let cfg = &run.cfg;
    let base = match &cfg.student.base {
        Some(spec) => {
            let source = TeacherSource::parse(spec).context("student.base")?;
            tracing::info!(source = %source, "student.base: the student is cut from this model");
            Some(TeacherFiles::open(&source, &run.load).context("student.base")?)
        }
        None => None,
    };
    let own = match (&cfg.student.tokenizer, &base) {
        (Some(path), _) => student_tokenizer(path, run).context("student.tokenizer")?,
        (None, Some(b)) => b.tokenizer.clone(),
        (None, None) => unreachable!("checked with the config: cross names a student tokenizer"),
    };
    let base_cfg = match &base {
        Some(b) => b.config.clone(),
        None => LlamaConfig {
            vocab_size: own.tokenizer.get_vocab_size(true),
            bos_token_id: own.info.bos_token_id.map(Into::into),
            eos_token_id: own.info.eos_token_id.map(Into::into),
            ..teacher_cfg.clone()
        },
    };
    let vocab = match &cfg.student.vocab {
        Some(v) => Some(trim_for_run(split, v, &own, base_cfg.vocab_size)?),
        None => None,
    };
    let tokenizer = vocab.as_ref().map_or(&own, |v| &v.tokenizer);
    let view_cfg = LlamaConfig {
        vocab_size: vocab.as_ref().map_or(base_cfg.vocab_size, |v| v.trim.len()),
        bos_token_id: tokenizer.info.bos_token_id.map(Into::into),
        eos_token_id: tokenizer.info.eos_token_id.map(Into::into),
        ..base_cfg.clone()
    };
    let (train, valid) = build_data_from(cfg, split, tokenizer, view_cfg.vocab_size)?;
    let teacher_name = teacher.source().to_string();
    let sides = CrossSides {
        student: tokenizer,
        student_separator: separator_id(cfg.data.separator_token.as_deref(), tokenizer)?,
        student_rows: view_cfg.vocab_size,
        teacher: teacher.tokenizer(),
        teacher_separator: separator_id(None, teacher.tokenizer()).context("teacher")?,
        teacher_rows: teacher_cfg.vocab_size,
        teacher_name: &teacher_name,
    };
    let cross = for_run(&sides, &train, &valid)?;
    tracing::info!(
        train_blocks = train.len(),
        validation_blocks = valid.len(),
        block = train.block_size,
        "data"
    );
    Ok(RunData {
        vocab,
        shared: None,
        cross: Some(CrossData {
            run: cross,
            tokenizer: own,
            base,
            base_cfg,
        }),
        teacher_cfg,
        view_cfg,
        train,
        valid,
        cache: None,
    })
}
