//! A causal-LM run's data: documents → split by whole documents → tokenised and packed
//! blocks, for training and for compressing what it trained.

use distill_teacher::LoadedTokenizer;
use distill_train::data::{
    load_documents, pack_blocks, pack_conversations, split_documents, BlockSet, Document, Packing,
    Split,
};

use crate::error::{Context, Error, Result};
use crate::job::RunConfig;

/// The run's documents, split by whole documents into training and validation; prompts
/// (`data.source.kind: prompts`) completed by the teacher's answers in its cache.
pub fn split_run_documents(cfg: &RunConfig) -> Result<Split> {
    let split = split_source_documents(cfg)?;
    match cfg.teacher.cache.as_ref() {
        Some(c) if cfg.data.source.is_prompts() => {
            let settings = c.generate().ok_or_else(|| {
                Error::Job("teacher.cache.generate: prompts need the teacher's answers".into())
            })?;
            let dir = std::path::Path::new(c.dir());
            Ok(crate::teacher_answers::attach_answers(split, dir, settings)?.0)
        }
        _ => Ok(split),
    }
}

/// The documents of `data.source` as they are, split by whole documents.
pub fn split_source_documents(cfg: &RunConfig) -> Result<Split> {
    let docs = load_documents(&cfg.data.source).context("data.source")?;
    split_documents(docs, cfg.data.validation_fraction, cfg.data.seed).context("data")
}

/// Documents → split by whole documents → tokenised and packed blocks.
pub fn build_data(
    cfg: &RunConfig,
    tokenizer: &LoadedTokenizer,
    vocab: usize,
) -> Result<(BlockSet, BlockSet)> {
    build_data_from(cfg, &split_run_documents(cfg)?, tokenizer, vocab)
}

/// Writes which documents trained and which validated (`split.json`, by document id).
pub fn write_split(cfg: &RunConfig, split: &Split, path: &std::path::Path) -> Result<()> {
    let ids =
        |d: &[distill_train::data::Document]| d.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
    let json = serde_json::json!({
        "seed": cfg.data.seed,
        "train": ids(&split.train),
        "validation": ids(&split.validation),
    });
    distill_files::write_file(
        path,
        serde_json::to_string_pretty(&json)
            .expect("JSON")
            .as_bytes(),
    )
    .map_err(crate::error::Error::from)
}

/// The token between documents: `named` (`data.separator_token`), else `<|endoftext|>`, else
/// EOS.
pub fn separator_id(named: Option<&str>, tokenizer: &LoadedTokenizer) -> Result<u32> {
    let tok = &tokenizer.tokenizer;
    match named {
        Some(t) => tok.token_to_id(t).ok_or_else(|| {
            Error::Job(format!(
                "data.separator_token: `{t}` is not in the vocabulary"
            ))
        }),
        None => tok
            .token_to_id("<|endoftext|>")
            .or(tokenizer.info.eos_token_id)
            .ok_or_else(|| {
                Error::Job("data.separator_token: the tokenizer has neither <|endoftext|> nor an EOS token; name one".into())
            }),
    }
}

/// The token every block begins with (`data.block_bos`; unset: BOS when the tokenizer adds it).
fn block_lead(cfg: &RunConfig, tokenizer: &LoadedTokenizer) -> Result<Option<u32>> {
    let wanted = cfg.data.block_bos.unwrap_or(tokenizer.info.add_bos);
    match (wanted, tokenizer.info.bos_token_id) {
        (false, _) => Ok(None),
        (true, Some(bos)) => Ok(Some(bos)),
        (true, None) => Err(Error::Job(
            "data.block_bos: the tokenizer has no BOS token to begin blocks with".into(),
        )),
    }
}

/// A split's documents → tokenised and packed blocks (conversations: a block each).
pub fn build_data_from(
    cfg: &RunConfig,
    split: &Split,
    tokenizer: &LoadedTokenizer,
    vocab: usize,
) -> Result<(BlockSet, BlockSet)> {
    if cfg.data.source.is_chat() {
        return build_chat_data(cfg, split, tokenizer, vocab);
    }
    let tok = &tokenizer.tokenizer;
    let sep = separator_id(cfg.data.separator_token.as_deref(), tokenizer)?;
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
    let packing = Packing {
        block_size: cfg.data.block_size,
        separator: sep,
        lead: block_lead(cfg, tokenizer)?,
    };
    let train = pack_blocks(&split.train, packing, encode).context("data (training documents)")?;
    if split.validation.is_empty() {
        return Err(Error::Job(
            "data.validation_fraction: no validation documents; evaluation needs some".into(),
        ));
    }
    let valid =
        pack_blocks(&split.validation, packing, encode).context("data (validation documents)")?;
    Ok((train, valid))
}

/// Conversations → a block each, rendered through the chat template, the assistant's tokens
/// marked as the loss's targets; what is cut or left out is logged.
fn build_chat_data(
    cfg: &RunConfig,
    split: &Split,
    tokenizer: &LoadedTokenizer,
    vocab: usize,
) -> Result<(BlockSet, BlockSet)> {
    let pad = separator_id(cfg.data.separator_token.as_deref(), tokenizer)?;
    let render = |d: &Document| -> std::result::Result<_, String> {
        let turns = d.turns.as_deref().unwrap_or_default();
        let r = crate::chat_data::render_conversation(turns, tokenizer)?;
        match r.ids.iter().find(|&&i| i as usize >= vocab) {
            Some(bad) => Err(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
            )),
            None => Ok(r),
        }
    };
    let block = cfg.data.block_size;
    if split.validation.is_empty() {
        return Err(Error::Job(
            "data.validation_fraction: no validation conversations; evaluation needs some".into(),
        ));
    }
    let (train, t) = pack_conversations(&split.train, block, pad, render)
        .context("data (training conversations)")?;
    let (valid, v) = pack_conversations(&split.validation, block, pad, render)
        .context("data (validation conversations)")?;
    for (which, s) in [("training", t), ("validation", v)] {
        tracing::info!(
            split = which,
            conversations = s.conversations,
            truncated = s.truncated,
            dropped = s.dropped,
            block,
            "chat data: one conversation per block; longer ones cut at the block's end, those left without an assistant token dropped"
        );
    }
    Ok((train, valid))
}
