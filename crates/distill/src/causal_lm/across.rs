//! The data stage across tokenizers (`distill.vocab: cross`): the run's documents split (the
//! split written on rank 0), the student's side built ([`student_data`]), and the teacher
//! cache opened and checked against both tokenizers when the teacher's outputs come from one.

use distill_models::LlamaConfig;

use super::data::RunData;
use super::prepare::Prepared;
use super::teacher::TeacherSide;
use crate::cross::student::{student_data, TeacherFacts};
use crate::data::{split_run_documents, write_split};
use crate::error::Result;
use crate::teacher_cache::{open_for_run, run_identity_across};

/// Builds a cross-tokenizer run's data.
pub(crate) fn build(run: &Prepared, teacher: &TeacherSide) -> Result<RunData> {
    let teacher_cfg: LlamaConfig = teacher.config()?.clone();
    let split = split_run_documents(&run.cfg)?;
    if run.rank == 0 {
        write_split(&run.cfg, &split, &run.run_dir.join("split.json"))?;
    }
    let facts = TeacherFacts {
        tokenizer: teacher.tokenizer(),
        config: &teacher_cfg,
        name: teacher.source().to_string(),
    };
    let d = student_data(&run.cfg, &run.load, &facts, &split)?;
    drop(split);
    let cache = match teacher {
        TeacherSide::Cached(files) => {
            let identity = run_identity_across(
                &run.cfg,
                &files.files,
                teacher.tokenizer(),
                d.vocab
                    .as_ref()
                    .map_or(&d.cross.tokenizer, |v| &v.tokenizer),
                &run.load,
            )?;
            let cache = open_for_run(
                &run.cfg,
                &identity,
                teacher_cfg.vocab_size,
                &d.train,
                &d.valid,
            )?;
            tracing::info!(
                dir = %cache.dir().display(),
                top_k = cache.manifest().layout.top_k,
                "training from the teacher cache (the teacher's top-k at the aligned positions)"
            );
            Some(cache)
        }
        TeacherSide::Online(_) => None,
    };
    tracing::info!(
        train_blocks = d.train.len(),
        validation_blocks = d.valid.len(),
        block = d.train.block_size,
        "data"
    );
    Ok(RunData {
        vocab: d.vocab,
        shared: None,
        cross: Some(d.cross),
        teacher_cfg,
        view_cfg: d.view_cfg,
        train: d.train,
        valid: d.valid,
        cache,
        held_out: vec![],
    })
}
