//! A causal-LM run's data: documents → split by whole documents → tokenised and packed
//! blocks, for training and for compressing what it trained.

use distill_teacher::LoadedTokenizer;
use distill_train::data::{load_documents, pack_blocks, split_documents, BlockSet};

use crate::error::{Context, Error, Result};
use crate::job::RunConfig;

/// Documents → split by whole documents → tokenised and packed blocks.
pub fn build_data(
    cfg: &RunConfig,
    tokenizer: &LoadedTokenizer,
    vocab: usize,
) -> Result<(BlockSet, BlockSet)> {
    let docs = load_documents(&cfg.data.source).context("data.source")?;
    let split =
        split_documents(docs, cfg.data.validation_fraction, cfg.data.seed).context("data")?;
    let tok = &tokenizer.tokenizer;
    let sep = match &cfg.data.separator_token {
        Some(t) => tok.token_to_id(t).ok_or_else(|| {
            Error::Job(format!(
                "data.separator_token: `{t}` is not in the vocabulary"
            ))
        })?,
        None => tok
            .token_to_id("<|endoftext|>")
            .or(tokenizer.info.eos_token_id)
            .ok_or_else(|| {
                Error::Job("data.separator_token: the tokenizer has neither <|endoftext|> nor an EOS token; name one".into())
            })?,
    };
    let encode = |text: &str| -> std::result::Result<Vec<u32>, String> {
        let ids = tok
            .encode_fast(text, false)
            .map_err(|e| e.to_string())?
            .get_ids()
            .to_vec();
        match ids.iter().find(|&&i| i as usize >= vocab) {
            Some(bad) => Err(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
            )),
            None => Ok(ids),
        }
    };
    let train = pack_blocks(&split.train, cfg.data.block_size, sep, encode)
        .context("data (training documents)")?;
    if split.validation.is_empty() {
        return Err(Error::Job(
            "data.validation_fraction: no validation documents; evaluation needs some".into(),
        ));
    }
    let valid = pack_blocks(&split.validation, cfg.data.block_size, sep, encode)
        .context("data (validation documents)")?;
    Ok((train, valid))
}
