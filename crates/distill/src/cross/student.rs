//! The student's side of a cross-tokenizer run: its tokenizer (`student.base`'s or
//! `student.tokenizer`), its vocabulary trimmed when asked, its blocks, and their alignment
//! with the teacher's tokenisation — what a run trains on and what `cache-teacher` caches.

use distill_models::LlamaConfig;
use distill_teacher::tokenizer::load_tokenizer_json;
use distill_teacher::{
    load_tokenizer, resolve, LoadOptions, LoadedTokenizer, TeacherFiles, TeacherSource,
};
use distill_train::data::{BlockSet, Split};

use super::{check_spells_bytes, for_run, CrossRun, CrossSides};
use crate::data::{build_data_from, separator_id};
use crate::error::{Context, Result};
use crate::job::RunConfig;
use crate::vocab::{trim_for_run, RunVocab};

/// The student's side of a cross-tokenizer run.
pub struct CrossData {
    pub run: CrossRun,
    /// The student's tokenizer before any trimming.
    pub tokenizer: LoadedTokenizer,
    /// The model the student is cut from (`student.base`), when not the teacher.
    pub base: Option<TeacherFiles>,
    /// The config the student is cut from, over the student's untrimmed vocabulary.
    pub base_cfg: LlamaConfig,
}

/// The student's data of a cross-tokenizer run: its vocabulary (trimmed when asked), its
/// blocks, and their alignment with the teacher's tokenisation.
pub struct StudentData {
    pub vocab: Option<RunVocab>,
    pub cross: CrossData,
    /// The student's config before the shrink rules (its vocabulary trimmed when asked).
    pub view_cfg: LlamaConfig,
    pub train: BlockSet,
    pub valid: BlockSet,
}

/// What the student's side of a cross run is built against: the teacher's tokenizer, config
/// and name.
pub struct TeacherFacts<'a> {
    pub tokenizer: &'a LoadedTokenizer,
    pub config: &'a LlamaConfig,
    pub name: String,
}

/// The student's tokenizer, vocabulary, blocks and their alignment with `teacher`'s.
pub fn student_data(
    cfg: &RunConfig,
    load: &LoadOptions,
    teacher: &TeacherFacts,
    split: &Split,
) -> Result<StudentData> {
    let base = match &cfg.student.base {
        Some(spec) => {
            let source = TeacherSource::parse(spec).context("student.base")?;
            tracing::info!(source = %source, "student.base: the student is cut from this model");
            Some(TeacherFiles::open(&source, load).context("student.base")?)
        }
        None => None,
    };
    let own = match (&cfg.student.tokenizer, &base) {
        (Some(path), _) => student_tokenizer(path, load).context("student.tokenizer")?,
        (None, Some(b)) => b.tokenizer.clone(),
        (None, None) => unreachable!("checked with the config: cross names a student tokenizer"),
    };
    // Both tokenizers must say what bytes their pieces spell before anything is packed.
    check_spells_bytes(&own, "student")?;
    check_spells_bytes(teacher.tokenizer, "teacher")?;
    let base_cfg = match &base {
        Some(b) => b.config.clone(),
        None => LlamaConfig {
            vocab_size: own.tokenizer.get_vocab_size(true),
            bos_token_id: own.info.bos_token_id.map(Into::into),
            eos_token_id: own.info.eos_token_id.map(Into::into),
            ..teacher.config.clone()
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
    let sides = CrossSides {
        student: tokenizer,
        student_separator: separator_id(cfg.data.separator_token.as_deref(), tokenizer)?,
        student_rows: view_cfg.vocab_size,
        teacher: teacher.tokenizer,
        teacher_separator: separator_id(None, teacher.tokenizer).context("teacher")?,
        teacher_rows: teacher.config.vocab_size,
        teacher_name: &teacher.name,
    };
    let run = for_run(&sides, &train, &valid)?;
    Ok(StudentData {
        vocab,
        cross: CrossData {
            run,
            tokenizer: own,
            base,
            base_cfg,
        },
        view_cfg,
        train,
        valid,
    })
}

/// The student's own tokenizer: a `tokenizer.json` file, or the tokenizer of a model source
/// (a GGUF file, a Hugging Face folder, `hf://org/name`).
pub fn student_tokenizer(
    path: &std::path::Path,
    load: &distill_teacher::LoadOptions,
) -> Result<LoadedTokenizer> {
    if path.extension().is_some_and(|e| e == "json") {
        return Ok(load_tokenizer_json(path)?);
    }
    let spec = path.to_string_lossy();
    let source = TeacherSource::parse(&spec)?;
    Ok(load_tokenizer(&resolve(&source, &load.hub)?)?)
}
