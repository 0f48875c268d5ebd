//! The report stage: the trained student exported in Hugging Face layout, then teacher against
//! student (and, after compression, the artifact) as data, written once at the end of the run.

use std::path::PathBuf;

use distill_models::Model;
use distill_student::{save_hf, HfExport, LlamaStudent};
use distill_teacher::{LoadOptions, Teacher, TeacherSource};
use distill_train::scoring::scoring_speed;

use super::data::RunData;
use super::teacher::TeacherSide;
use super::train::Trained;
use crate::error::{Error, Result};
use crate::eval::{
    bits_per_byte_at, bits_per_byte_of_targets, evaluate_answers, AnswerEval, AnswerEvalOptions,
};
use crate::job::RunConfig;
use crate::report::{ModelStats, RunReport};

/// The exported student.
pub(crate) struct Exported {
    pub(crate) dir: PathBuf,
    pub(crate) bytes: u64,
}

/// Saves `student` with the run's tokenizer into `dir` (Hugging Face layout).
pub(crate) fn export(
    dir: PathBuf,
    student: &LlamaStudent,
    teacher: &TeacherSide,
    data: &RunData,
) -> Result<Exported> {
    let tokenizer = data.tokenizer(teacher);
    let bytes = save_hf(
        &dir,
        &HfExport {
            config: &student.config,
            varmap: &student.varmap,
            tokenizer: &tokenizer.tokenizer,
            bos_token_id: tokenizer.info.bos_token_id,
            eos_token_id: tokenizer.info.eos_token_id,
            chat_template: tokenizer.chat_template.as_deref(),
        },
    )?;
    Ok(Exported { dir, bytes })
}

/// Held-out prompts the student's answers are judged on, at most.
const ANSWER_PROMPTS: usize = 32;

/// Chat data: the exported student's answers to held-out prompts against the teacher's
/// (`None` for text data). A teacher whose outputs came from a cache is loaded for this.
pub(crate) fn answers(
    load: &LoadOptions,
    teacher: &TeacherSide,
    exported: &Exported,
    data: &RunData,
) -> Result<Option<AnswerEval>> {
    if data.held_out.is_empty() {
        return Ok(None);
    }
    let loaded;
    let teacher = match teacher {
        TeacherSide::Online(t) => t.as_ref(),
        TeacherSide::Cached(f) => {
            tracing::info!(source = %f.source, "loading the teacher to grade the student's answers");
            loaded = Teacher::load(&f.source, load)?;
            &loaded
        }
    };
    let student = Teacher::load(
        &TeacherSource::parse(&exported.dir.to_string_lossy())?,
        load,
    )?;
    let prompts = data
        .held_out
        .iter()
        .take(ANSWER_PROMPTS)
        .map(|turns| crate::chat_data::eval_prompt(turns, &teacher.tokenizer))
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(|e| Error::Invalid(format!("held-out prompts: {e}")))?;
    let eval = evaluate_answers(teacher, &student, &prompts, &AnswerEvalOptions::default())?;
    tracing::info!(
        reverse_kl = eval.reverse_kl,
        teacher_nll = eval.teacher_nll,
        greedy_match = eval.greedy_match,
        seconds = eval.seconds,
        "answers on held-out prompts"
    );
    Ok(Some(eval))
}

/// What a report compares.
pub(crate) struct Compared<'a> {
    pub(crate) teacher: &'a TeacherSide,
    /// The teacher network as the student sees it (`None` when it came from a cache).
    pub(crate) teacher_lm: Option<&'a dyn Model>,
    pub(crate) student: &'a LlamaStudent,
    pub(crate) exported: &'a Exported,
}

/// Teacher against student, measured on the run's validation blocks.
pub(crate) fn build(
    cfg: &RunConfig,
    data: &RunData,
    trained: &Trained,
    m: &Compared,
) -> Result<RunReport> {
    let last = trained.outcome.evals.last();
    let batch = trained.training.batch_size;
    let teacher_cfg = &data.teacher_cfg;
    let student_cfg = &m.student.config;
    // Teacher and student are scored on the first validation blocks, in the student's ids.
    let scored = &data.valid.blocks[..trained.training.eval_block_count(data.valid.len())];
    let lengths = data.tokenizer(m.teacher).byte_lengths();
    let bpb = |ppl: Option<f64>| {
        ppl.map(|p| match &data.valid.targets {
            // Chat data: perplexity over the assistant's tokens, so bytes of those.
            Some(t) => bits_per_byte_of_targets(p, scored, t, &lengths),
            None => bits_per_byte_at(p, scored, &lengths),
        })
    };
    Ok(RunReport {
        run: cfg.output.name.clone(),
        teacher: ModelStats {
            name: m.teacher.source().to_string(),
            parameters: teacher_cfg.param_count(),
            embedding_parameters: teacher_cfg.vocab_size * teacher_cfg.hidden_size,
            bytes_on_disk: m.teacher.bytes_on_disk(),
            val_ppl: trained.teacher_val_ppl,
            // Across tokenizers the teacher was scored over its own tokens of the same bytes.
            val_bits_per_byte: match &data.cross {
                Some(_) => trained.teacher_val_bits_per_byte,
                None => bpb(trained.teacher_val_ppl),
            },
            tokens_per_second: match (m.teacher_lm, &data.cache) {
                (Some(lm), _) => match &data.cross {
                    Some(c) => scoring_speed(lm, &teacher_blocks(&c.run.valid), batch)?,
                    None => scoring_speed(lm, &data.valid, batch)?,
                },
                // Measured while the cache was made.
                (None, Some(c)) => c.manifest().teacher_tokens_per_second.unwrap_or(0.0),
                (None, None) => 0.0,
            },
        },
        student: ModelStats {
            name: m.exported.dir.display().to_string(),
            parameters: student_cfg.param_count(),
            embedding_parameters: student_cfg.vocab_size * student_cfg.hidden_size,
            bytes_on_disk: m.exported.bytes,
            val_ppl: last.and_then(|e| e.get("val_ppl")),
            val_bits_per_byte: bpb(last.and_then(|e| e.get("val_ppl"))),
            tokens_per_second: scoring_speed(&m.student.model, &data.valid, batch)?,
        },
        top1_agreement: last.and_then(|e| e.get("top1_agreement")),
        val_kl: last.and_then(|e| e.get("val_kl")),
        steps: trained.outcome.steps,
        train_tokens: trained.outcome.units,
        train_seconds: trained.outcome.seconds,
        train_tokens_per_second: trained.outcome.units_per_second,
        student_layers_from_teacher: m.student.layer_map.clone(),
        loss: cfg.distill.loss.to_string(),
        alpha: cfg.distill.alpha,
        temperature: cfg.distill.temperature,
        artifact: None,
        vocab: data.vocab.as_ref().map(|v| v.stats.clone()),
        shared_vocab: data.shared.as_ref().map(|s| s.stats.clone()),
        cross_vocab: data.cross.as_ref().map(|c| c.run.stats.clone()),
        answers: None,
        compression: None,
    })
}

/// The teacher's own sequences of the validation blocks, cut to the shortest: what its speed
/// is measured on across tokenizers.
fn teacher_blocks(cross: &distill_train::data::CrossSet) -> distill_train::data::BlockSet {
    let len = cross
        .blocks
        .iter()
        .map(|b| b.teacher_ids.len())
        .min()
        .unwrap_or(0)
        .max(2);
    let blocks: Vec<Vec<u32>> = cross
        .blocks
        .iter()
        .filter(|b| b.teacher_ids.len() >= len)
        .map(|b| b.teacher_ids[..len].to_vec())
        .collect();
    distill_train::data::BlockSet {
        block_size: len,
        stream_tokens: blocks.len() * len,
        blocks,
        targets: None,
    }
}
