//! A run's student vocabulary when it is not the teacher's: trimmed to the corpus
//! (`student.vocab`: counted on the training documents with the teacher's tokenizer, checked to
//! split them exactly as the full tokenizer does), or the teacher's tokenizer's ids under a
//! head with more rows (`distill.vocab: shared`).

use distill_student::vocab::{VocabConfig, VocabTrim};
use distill_teacher::LoadedTokenizer;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use distill_train::data::Split;

/// What the report says of a trimmed vocabulary.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VocabStats {
    /// Rows of the teacher's vocabulary.
    pub full: usize,
    /// Ids the student keeps.
    pub kept: usize,
    /// Distinct ids the training documents use.
    pub corpus_distinct: usize,
    /// Training tokens they were counted on.
    pub corpus_tokens: u64,
    pub min_count: u64,
    pub kept_for: distill_student::vocab::KeptCounts,
    pub merges_before: usize,
    pub merges_after: usize,
    /// Whether the trimmed tokenizer was checked to split every training document exactly as
    /// the full one (always done with `min_count: 1`).
    pub corpus_tokenisation_exact: bool,
}

/// The trimmed vocabulary of a run and its tokenizer.
pub struct RunVocab {
    pub trim: VocabTrim,
    pub tokenizer: LoadedTokenizer,
    pub stats: VocabStats,
}

/// Trims `full` (over `model_vocab` model rows) to the training documents of `split`.
pub fn trim_for_run(
    split: &Split,
    config: &VocabConfig,
    full: &LoadedTokenizer,
    model_vocab: usize,
) -> Result<RunVocab> {
    let encode = |tok: &tokenizers::Tokenizer, text: &str| -> Result<Vec<u32>> {
        Ok(tok
            .encode_fast(text, false)
            .map_err(|e| Error::Invalid(format!("student.vocab: tokenising the corpus: {e}")))?
            .get_ids()
            .to_vec())
    };
    let full_ids: Vec<Vec<u32>> = split
        .train
        .par_iter()
        .map(|d| encode(&full.tokenizer, &d.text))
        .collect::<Result<_>>()?;
    let mut counts = vec![0u64; model_vocab];
    for &id in full_ids.iter().flatten() {
        if let Some(c) = counts.get_mut(id as usize) {
            *c += 1;
        }
    }
    let trim = VocabTrim::new(
        &full.tokenizer,
        model_vocab,
        config,
        &counts,
        full.chat_template.as_deref(),
    )?;
    let exact = config.min_count == 1;
    if exact {
        split
            .train
            .par_iter()
            .zip(&full_ids)
            .try_for_each(|(d, want)| -> Result<()> {
                let got = encode(&trim.tokenizer, &d.text)?;
                let same = got.len() == want.len()
                    && got.iter().zip(want).all(|(&g, &w)| trim.new_id(w) == Some(g));
                if same {
                    Ok(())
                } else {
                    Err(Error::Invalid(format!(
                        "student.vocab: the trimmed tokenizer splits training document `{}` differently \
                         from the full one ({} tokens against {}); this tokenizer's merges do not prune cleanly",
                        d.id,
                        got.len(),
                        want.len()
                    )))
                }
            })?;
    }
    let tokenizer = full.restricted(trim.tokenizer.clone(), |old| trim.new_id(old));
    let stats = VocabStats {
        full: model_vocab,
        kept: trim.len(),
        corpus_distinct: trim.corpus_distinct,
        corpus_tokens: counts.iter().sum(),
        min_count: config.min_count,
        kept_for: trim.counts.clone(),
        merges_before: trim.merges_before,
        merges_after: trim.merges_after,
        corpus_tokenisation_exact: exact,
    };
    tracing::info!(
        kept = stats.kept,
        of = stats.full,
        corpus_ids = stats.corpus_distinct,
        corpus_tokens = stats.corpus_tokens,
        merges = stats.merges_after,
        exact,
        "vocabulary trimmed to the training documents"
    );
    Ok(RunVocab {
        trim,
        tokenizer,
        stats,
    })
}

/// What the report says of a shared vocabulary (`distill.vocab: shared`).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SharedVocabStats {
    /// Rows of the teacher's head.
    pub teacher_rows: usize,
    /// Ids of the student's vocabulary.
    pub student_ids: usize,
    /// Student ids whose string the teacher's vocabulary holds (all of them: a student id the
    /// teacher lacks is refused).
    pub mapped: usize,
    /// The teacher's probability mass on rows no student id maps to, averaged over the first
    /// validation blocks' positions; `None` when the teacher's outputs come from a cache.
    pub teacher_mass_outside: Option<f64>,
    /// Validation positions that average was taken over.
    pub mass_positions: usize,
}

/// The student's ids and the teacher row each one reads.
pub struct SharedVocab {
    /// Teacher row of each student id, by student id.
    pub teacher_ids: Vec<u32>,
    pub stats: SharedVocabStats,
    /// The student's own tokenizer (`student.tokenizer`); `None`: the teacher's.
    pub tokenizer: Option<LoadedTokenizer>,
}

/// Maps every id of `student` to the teacher row holding the same string, refusing a student
/// id the teacher's vocabulary lacks (and saying which mode would apply).
pub fn shared_for_run(
    teacher: &LoadedTokenizer,
    student: &LoadedTokenizer,
    teacher_rows: usize,
) -> Result<SharedVocab> {
    let n = student.tokenizer.get_vocab_size(true);
    let mut teacher_ids = Vec::with_capacity(n);
    let mut missing = vec![];
    for id in 0..n as u32 {
        let piece = student.tokenizer.id_to_token(id);
        match piece
            .as_deref()
            .and_then(|p| teacher.tokenizer.token_to_id(p))
            .filter(|&t| (t as usize) < teacher_rows)
        {
            Some(t) => teacher_ids.push(t),
            None => missing.push(piece.unwrap_or_else(|| format!("#{id}"))),
        }
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        return Err(Error::Invalid(format!(
            "distill.vocab: shared needs every student id in the teacher's vocabulary; {} of {n} are not              (first: {shown:?}); the tokenizers differ, which cross-tokenizer distillation would handle",
            missing.len()
        )));
    }
    tracing::info!(
        student_ids = n,
        teacher_rows,
        "distill.vocab: shared — every student id maps to a teacher row; the teacher's other rows are left out"
    );
    Ok(SharedVocab {
        stats: SharedVocabStats {
            teacher_rows,
            student_ids: n,
            mapped: n,
            teacher_mass_outside: None,
            mass_positions: 0,
        },
        teacher_ids,
        tokenizer: None,
    })
}

/// Checks that `student` splits every training document into the pieces `teacher` does (its
/// ids mapped through `teacher_ids`): only then is the teacher's distribution at each student
/// position the one over the same next piece.
pub fn check_same_pieces(
    split: &Split,
    teacher: &LoadedTokenizer,
    student: &LoadedTokenizer,
    teacher_ids: &[u32],
) -> Result<()> {
    let encode = |t: &LoadedTokenizer, text: &str| -> Result<Vec<u32>> {
        Ok(t.tokenizer
            .encode_fast(text, false)
            .map_err(|e| Error::Invalid(format!("student.tokenizer: tokenising: {e}")))?
            .get_ids()
            .to_vec())
    };
    split.train.par_iter().try_for_each(|d| {
        let want = encode(teacher, &d.text)?;
        let got: Vec<u32> = encode(student, &d.text)?
            .into_iter()
            .map(|id| teacher_ids[id as usize])
            .collect();
        if got == want {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "student.tokenizer splits training document `{}` differently from the teacher's tokenizer \
                 ({} pieces against {}): the tokenizers differ beyond their ids, which cross-tokenizer distillation would handle",
                d.id,
                got.len(),
                want.len()
            )))
        }
    })
}

/// The teacher's mean probability mass on rows outside `kept` over `blocks` (teacher ids, run
/// one at a time), and the positions it was averaged over: what distilling over the shared ids
/// leaves out.
pub fn teacher_mass_outside(
    model: &dyn distill_models::Model,
    blocks: &[Vec<u32>],
    kept: &[u32],
) -> Result<(f64, usize)> {
    use candle_core::{Tensor, D};
    let device = model.device();
    let kept_t = Tensor::new(kept, device)?;
    let (mut sum, mut positions) = (0f64, 0usize);
    for block in blocks {
        let ids = Tensor::new(block.as_slice(), device)?.unsqueeze(0)?;
        let out = model.run(&distill_models::Input {
            ids: &ids,
            mask: None,
            hidden: false,
            pooled_dropout: None,
        })?;
        let logp = distill_models::llama::log_probs(&out.logits.squeeze(0)?)?;
        let inside = logp
            .index_select(&kept_t, D::Minus1)?
            .exp()?
            .sum(D::Minus1)?;
        let outside: Vec<f32> = (1.0 - inside)?.to_vec1()?;
        sum += outside.iter().map(|&m| f64::from(m.max(0.0))).sum::<f64>();
        positions += outside.len();
    }
    Ok((sum / positions.max(1) as f64, positions))
}
