//! A run's trimmed vocabulary (`student.vocab`): counted on the training documents with the
//! teacher's tokenizer, checked to split them exactly as the full tokenizer does.

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
