//! SentencePiece-style BPE from GGUF metadata (`tokenizer.ggml.model = llama`: Gemma, Llama 2,
//! Mistral v0.1), split as llama.cpp's `llm_tokenizer_spm` splits.
//!
//! llama.cpp starts from the text's characters and repeatedly joins the adjacent pair whose
//! joined piece is in the vocabulary with the highest score (ties: the leftmost); a piece not
//! in the vocabulary falls back to its UTF-8 bytes (`<0xNN>`). A BPE model whose merges are
//! every `(left, right)` with `left`, `right` and `left + right` in the vocabulary, ranked by
//! the joined piece's score, makes the same choices (two pairs that join to one piece cannot
//! overlap, so rank ties between them never decide anything), as transformers' own
//! SentencePiece converter builds them. Spaces become `▁` first; a prefix space only where
//! `tokenizer.ggml.add_space_prefix` asks for one (Gemma does not).

use std::collections::HashMap;

use distill_models::GgufFile;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::{NormalizerWrapper, Sequence as NormalizerSequence};
use tokenizers::{DecoderWrapper, Tokenizer};

use crate::error::{Result, TeacherError};

/// SentencePiece's whitespace mark.
const SPACE: &str = "\u{2581}";

/// The tokenizer of a `llama`-model GGUF vocabulary (`tokens` with their scores).
pub(super) fn tokenizer(
    g: &GgufFile,
    tokens: &[&str],
    err: &dyn Fn(String) -> TeacherError,
) -> Result<Tokenizer> {
    let scores = g.get_floats("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(err(format!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let prefix_space = g
        .get_bool_opt("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let unk = g
        .get_usize_opt("tokenizer.ggml.unknown_token_id")?
        .and_then(|id| tokens.get(id));
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab(tokens), merges_by_score(tokens, &scores))
        .byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| err(format!("building the SentencePiece BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(normalizer(prefix_space, err)?))
        .map_err(|e| err(format!("normalizer: {e}")))?;
    tokenizer.with_decoder(Some(decoder(prefix_space, err)?));
    Ok(tokenizer)
}

/// Piece → id (the first id of a piece listed twice).
fn vocab(tokens: &[&str]) -> Vocab {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        vocab.entry(tok.to_string()).or_insert(id as u32);
    }
    vocab
}

/// Every split of every piece into two pieces of the vocabulary, highest joined score first
/// (ties by the joined piece's id, then by the split point, for a stable order).
pub(super) fn merges_by_score(tokens: &[&str], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .rev()
        .map(|(id, t)| (*t, id))
        .collect();
    let mut ranked: Vec<(f32, usize, usize)> = vec![];
    for (id, piece) in tokens.iter().enumerate() {
        if ids.get(piece) != Some(&id) {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            if ids.contains_key(&piece[..at]) && ids.contains_key(&piece[at..]) {
                ranked.push((scores[id], id, at));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, id, at)| (tokens[id][..at].to_string(), tokens[id][at..].to_string()))
        .collect()
}

/// Spaces to `▁`, and a leading `▁` where the vocabulary wants a prefix space.
fn normalizer(
    prefix_space: bool,
    err: &dyn Fn(String) -> TeacherError,
) -> Result<NormalizerWrapper> {
    let replace = Replace::new(" ", SPACE).map_err(|e| err(format!("normalizer: {e}")))?;
    let mut steps: Vec<NormalizerWrapper> = vec![];
    if prefix_space {
        steps.push(Prepend::new(SPACE.into()).into());
    }
    steps.push(replace.into());
    Ok(NormalizerSequence::new(steps).into())
}

/// `▁` back to spaces, byte pieces back to bytes, the prefix space removed.
fn decoder(prefix_space: bool, err: &dyn Fn(String) -> TeacherError) -> Result<DecoderWrapper> {
    let replace = Replace::new(SPACE, " ").map_err(|e| err(format!("decoder: {e}")))?;
    let mut steps: Vec<DecoderWrapper> = vec![
        replace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if prefix_space {
        steps.push(Strip::new(' ', 1, 0).into());
    }
    Ok(DecoderSequence::new(steps).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_are_every_split_into_known_pieces_best_joined_score_first() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc", "x"];
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -0.5, 0.0];
        let merges = merges_by_score(&tokens, &scores);
        let m: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(m, [("a", "bc"), ("ab", "c"), ("b", "c"), ("a", "b")]);
    }
}
