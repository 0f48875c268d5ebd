//! The data stage: the run's documents split by whole documents (the split written on rank 0),
//! the student's vocabulary trimmed to the corpus when asked, the blocks tokenised and packed,
//! and the teacher cache opened and checked against them when the teacher's outputs come
//! from one.

use distill_cache::TeacherCache;
use distill_models::LlamaConfig;
use distill_teacher::{LoadedTokenizer, TeacherFiles};
use distill_train::config::VocabMode;
use distill_train::data::{BlockSet, Split, Turn};

use super::prepare::Prepared;
use super::teacher::TeacherSide;
use crate::cross::student::{student_tokenizer, CrossData};
use crate::data::{build_data_from, split_run_documents, write_split};
use crate::error::{Context, Error, Result};
use crate::teacher_cache::{open_for_run, run_identity};
use crate::vocab::{
    check_same_pieces, shared_for_run, teacher_mass_outside, trim_for_run, RunVocab, SharedVocab,
};

/// Validation blocks the teacher's mass outside a shared vocabulary is measured on.
const MASS_BLOCKS: usize = 8;

/// What the run trains and validates on.
pub(crate) struct RunData {
    /// The student's trimmed vocabulary, when `student.vocab` asks for one.
    pub(crate) vocab: Option<RunVocab>,
    /// The teacher's rows the student's ids read, when `distill.vocab: shared` leaves some out.
    pub(crate) shared: Option<SharedVocab>,
    /// The teacher's config, and the teacher as the student sees it (over the trimmed
    /// vocabulary, when there is one).
    pub(crate) teacher_cfg: LlamaConfig,
    pub(crate) view_cfg: LlamaConfig,
    pub(crate) train: BlockSet,
    pub(crate) valid: BlockSet,
    /// The teacher's cached targets, when its outputs come from a cache.
    pub(crate) cache: Option<TeacherCache>,
    /// The teacher's tokenisation of the blocks, when its tokenizer is not the student's.
    pub(crate) cross: Option<CrossData>,
    /// Chat data: the validation conversations up to their last answer, the held-out prompts
    /// the student's answers are judged on.
    pub(crate) held_out: Vec<Vec<Turn>>,
}

impl RunData {
    /// The student's tokenizer: the trimmed one, its own (`student.tokenizer`), or the
    /// teacher's.
    pub(crate) fn tokenizer<'a>(&'a self, teacher: &'a TeacherSide) -> &'a LoadedTokenizer {
        let own = self
            .shared
            .as_ref()
            .and_then(|s| s.tokenizer.as_ref())
            .or(self.cross.as_ref().map(|c| &c.tokenizer));
        match (&self.vocab, own) {
            (Some(v), _) => &v.tokenizer,
            (None, Some(own)) => own,
            (None, None) => teacher.tokenizer(),
        }
    }

    /// The teacher rows the student's ids read, in the student's order, when the student's
    /// vocabulary is not the teacher's (trimmed, or shared under a wider head).
    pub(crate) fn kept(&self) -> Option<&[u32]> {
        if self.cross.is_some() {
            return None;
        }
        self.student_rows()
    }

    /// The rows of the model the student is cut from that its ids read, in the student's
    /// order, when they are not all of them.
    pub(crate) fn student_rows(&self) -> Option<&[u32]> {
        self.vocab
            .as_ref()
            .map(|v| v.trim.kept.as_slice())
            .or_else(|| self.shared.as_ref().map(|s| s.teacher_ids.as_slice()))
    }

    /// The config of the model the student is cut from: the teacher's, or `student.base`'s
    /// (across tokenizers).
    pub(crate) fn source_cfg(&self) -> &LlamaConfig {
        self.cross
            .as_ref()
            .map_or(&self.teacher_cfg, |c| &c.base_cfg)
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
    let shared = shared_vocab(run, teacher, &teacher_cfg, vocab.is_some(), &split)?;
    let tokenizer = match (&vocab, shared.as_ref().and_then(|s| s.tokenizer.as_ref())) {
        (Some(v), _) => &v.tokenizer,
        (None, Some(own)) => own,
        (None, None) => teacher.tokenizer(),
    };
    let student_ids = vocab
        .as_ref()
        .map(|v| v.trim.len())
        .or_else(|| shared.as_ref().map(|s| s.stats.student_ids));
    let view_cfg = match student_ids {
        Some(n) => LlamaConfig {
            vocab_size: n,
            bos_token_id: tokenizer.info.bos_token_id.map(Into::into),
            eos_token_id: tokenizer.info.eos_token_id.map(Into::into),
            ..teacher_cfg.clone()
        },
        None => teacher_cfg.clone(),
    };
    let (train, valid) = build_data_from(cfg, &split, tokenizer, view_cfg.vocab_size)?;
    let held_out = split
        .validation
        .iter()
        .filter_map(|d| d.turns.as_deref().and_then(crate::chat_data::prompt_of))
        .collect();
    drop(split);
    let mass = match (&shared, teacher.model()?) {
        (Some(s), Some(model)) => {
            let blocks: Vec<Vec<u32>> = valid
                .blocks
                .iter()
                .take(MASS_BLOCKS)
                .map(|b| b.iter().map(|&id| s.teacher_ids[id as usize]).collect())
                .collect();
            let (mass, positions) = teacher_mass_outside(model, &blocks, &s.teacher_ids)?;
            tracing::info!(
                mass_outside = mass,
                positions,
                "distill.vocab: shared — the teacher's probability mass on the rows left out"
            );
            Some((mass, positions))
        }
        _ => None,
    };
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
    let mut shared = shared;
    if let (Some(s), Some((mass, positions))) = (shared.as_mut(), mass) {
        s.stats.teacher_mass_outside = Some(mass);
        s.stats.mass_positions = positions;
    }
    Ok(RunData {
        vocab,
        shared,
        teacher_cfg,
        view_cfg,
        train,
        valid,
        cache,
        cross: None,
        held_out,
    })
}

/// The student's ids under `distill.vocab: shared`, when they leave teacher rows out; a
/// padded head under `strict` is named with the mode that would drop its rows.
fn shared_vocab(
    run: &Prepared,
    teacher: &TeacherSide,
    teacher_cfg: &LlamaConfig,
    trimmed: bool,
    split: &Split,
) -> Result<Option<SharedVocab>> {
    let tokenizer_ids = teacher.tokenizer().tokenizer.get_vocab_size(true);
    let rows = teacher_cfg.vocab_size;
    let own = run.cfg.student.tokenizer.is_some();
    if own && (trimmed || run.cfg.distill.vocab.is_strict()) {
        return Err(Error::Invalid(
            "student.tokenizer: a student tokenizer of its own needs distill.vocab: shared (the teacher's pieces under other ids, mapped by string, without student.vocab trimming) or cross (another tokenizer)".into(),
        ));
    }
    match run.cfg.distill.vocab {
        VocabMode::Strict => {
            if tokenizer_ids < rows && !trimmed {
                tracing::warn!(
                    rows,
                    tokenizer_ids,
                    "the teacher's head has rows no token uses; the student copies them (distill.vocab: shared would leave them out)"
                );
            }
            Ok(None)
        }
        // A trimmed vocabulary already reads only rows its tokenizer uses.
        VocabMode::Shared if trimmed => Ok(None),
        VocabMode::Shared if run.cfg.teacher.cache.is_some() => Err(Error::Invalid(
            "distill.vocab: shared cannot train from teacher.cache yet (the cache holds the teacher's own rows); drop one of them".into(),
        )),
        VocabMode::Cross => unreachable!("built by the cross data stage"),
        VocabMode::Shared => match &run.cfg.student.tokenizer {
            None => {
                let shared = shared_for_run(teacher.tokenizer(), teacher.tokenizer(), rows)?;
                Ok((shared.stats.student_ids < rows).then_some(shared))
            }
            Some(path) => {
                let own = student_tokenizer(path, &run.load).context("student.tokenizer")?;
                let mut shared = shared_for_run(teacher.tokenizer(), &own, rows)?;
                check_same_pieces(split, teacher.tokenizer(), &own, &shared.teacher_ids)?;
                shared.tokenizer = Some(own);
                Ok(Some(shared))
            }
        },
    }
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
