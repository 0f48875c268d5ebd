//! Labelled examples to token ids: the tokenizer's own special tokens ([CLS] … [SEP]), the
//! head of a long text kept up to `max_length` with the closing special tokens.

use super::Example;
use crate::error::TrainError;

/// Token ids and labels of a set of examples.
#[derive(Clone, Debug, Default)]
pub struct EncodedSet {
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<u32>,
    /// How many examples were longer than `max_length` and cut.
    pub truncated: usize,
}

impl EncodedSet {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Encodes `examples[i]` for each `i` of `indices`.
pub fn encode_examples(
    tokenizer: &tokenizers::Tokenizer,
    examples: &[Example],
    indices: &[usize],
    max_length: usize,
    vocab_size: usize,
) -> Result<EncodedSet, TrainError> {
    let texts: Vec<&str> = indices.iter().map(|&i| examples[i].text.as_str()).collect();
    let encodings = tokenizer
        .encode_batch_fast(texts, true)
        .map_err(|e| TrainError::Invalid(format!("tokenising the examples: {e}")))?;
    let mut set = EncodedSet::default();
    for (enc, &i) in encodings.iter().zip(indices) {
        let ids = enc.get_ids();
        let special = enc.get_special_tokens_mask();
        let ids = if ids.len() > max_length {
            set.truncated += 1;
            let tail = special
                .iter()
                .rev()
                .take_while(|&&s| s == 1)
                .count()
                .min(max_length - 1);
            let mut cut = ids[..max_length - tail].to_vec();
            cut.extend_from_slice(&ids[ids.len() - tail..]);
            cut
        } else {
            ids.to_vec()
        };
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(TrainError::Invalid(format!(
                "{}: token id {bad} is outside the model's vocabulary of {vocab_size}",
                examples[i].id
            )));
        }
        set.ids.push(ids);
        set.labels.push(examples[i].label as u32);
    }
    Ok(set)
}
