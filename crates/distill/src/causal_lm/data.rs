//! The data stage: the run's documents split by whole documents (the split written on rank 0),
//! the student's vocabulary trimmed to the corpus when asked, the blocks tokenised and packed,
//! and the teacher cache opened and checked against them when the teacher's outputs come
//! from one.

use distill_cache::TeacherCache;
use distill_models::LlamaConfig;
use distill_teacher::{LoadedTokenizer, TeacherFiles};
use distill_train::data::BlockSet;

use super::prepare::Prepared;
use super::teacher::TeacherSide;
use crate::data::{build_data_from, split_run_documents, write_split};
use crate::error::{Error, Result};
use crate::teacher_cache::{open_for_run, run_identity};
use crate::vocab::{trim_for_run, RunVocab};

/// What the run trains and validates on.
pub(crate) struct RunData {
    /// The student's trimmed vocabulary, when `student.vocab` asks for one.
    pub(crate) vocab: Option<RunVocab>,
    /// The teacher's config, and the teacher as the student sees it (over the trimmed
    /// vocabulary, when there is one).
    pub(crate) teacher_cfg: LlamaConfig,
    pub(crate) view_cfg: LlamaConfig,
    pub(crate) train: BlockSet,
    pub(crate) valid: BlockSet,
    /// The teacher's cached targets, when its outputs come from a cache.
    pub(crate) cache: Option<TeacherCache>,
}

impl RunData {
    /// The student's tokenizer: the trimmed one, or the teacher's.
    pub(crate) fn tokenizer<'a>(&'a self, teacher: &'a TeacherSide) -> &'a LoadedTokenizer {
        self.vocab
            .as_ref()
            .map_or(teacher.tokenizer(), |v| &v.tokenizer)
    }

    /// The ids the trimmed vocabulary keeps, in the student's order.
    pub(crate) fn kept(&self) -> Option<&[u32]> {
        self.vocab.as_ref().map(|v| v.trim.kept.as_slice())
    }
}

/// Builds the run's data for `teacher`.
pub(crate) fn build(run: &Prepared, teacher: &TeacherSide) -> Result<RunData> {
    let cfg = &run.cfg;
    let teacher_cfg = teacher.config()?.clone();
    let split = split_run_documents(cfg)?;
    if run.rank == 0 {
        write_split(cfg, &split, &run.run_dir.join("split.json"))?;
    }
    let vocab = match &cfg.student.vocab {
        Some(_) if cfg.teacher.cache.is_some() => {
            return Err(Error::Invalid(
                "student.vocab: a trimmed vocabulary cannot train from teacher.cache (the cache holds the full vocabulary's top-k); drop one of them".into(),
            ))
        }
        Some(v) => Some(trim_for_run(&split, v, teacher.tokenizer(), teacher_cfg.vocab_size)?),
        None => None,
    };
    let tokenizer = vocab.as_ref().map_or(teacher.tokenizer(), |v| &v.tokenizer);
    let view_cfg = match &vocab {
        Some(v) => LlamaConfig {
            vocab_size: v.trim.len(),
            bos_token_id: tokenizer.info.bos_token_id.map(Into::into),
            eos_token_id: tokenizer.info.eos_token_id.map(Into::into),
            ..teacher_cfg.clone()
        },
        None => teacher_cfg.clone(),
    };
    let (train, valid) = build_data_from(cfg, &split, tokenizer, view_cfg.vocab_size)?;
    drop(split);
    tracing::info!(
        train_blocks = train.len(),
        validation_blocks = valid.len(),
        block = train.block_size,
        "data"
    );
    let cache = match teacher {
        TeacherSide::Cached(files) => Some(open_cache(
            run,
            files,
            tokenizer,
            &teacher_cfg,
            &train,
            &valid,
        )?),
        TeacherSide::Online(_) => None,
    };
    Ok(RunData {
        vocab,
        teacher_cfg,
        view_cfg,
        train,
        valid,
        cache,
    })
}

/// The run's teacher cache, checked against the teacher, tokenizer and blocks.
fn open_cache(
    run: &Prepared,
    files: &TeacherFiles,
    tokenizer: &LoadedTokenizer,
    teacher_cfg: &LlamaConfig,
    train: &BlockSet,
    valid: &BlockSet,
) -> Result<TeacherCache> {
    let identity = run_identity(&run.cfg, &files.files, tokenizer, &run.load)?;
    let cache = open_for_run(&run.cfg, &identity, teacher_cfg.vocab_size, train, valid)?;
    tracing::info!(
        dir = %cache.dir().display(),
        top_k = cache.manifest().layout.top_k,
        bytes_per_position = cache.bytes_per_token(),
        "training from the teacher cache"
    );
    Ok(cache)
}
