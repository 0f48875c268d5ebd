//! Tokenizers: `tokenizer.json` files, and tokenizers rebuilt from GGUF metadata
//! (`tokenizer.ggml.*`) so that they split text exactly as llama.cpp does on the same file.

use std::path::Path;

use distill_models::gguf_vocab::token_type::{CONTROL, UNKNOWN, USER_DEFINED};
use distill_models::gguf_vocab::{LLAMA3_SPLIT_REGEX, QWEN2_SPLIT_REGEX};
use distill_models::GgufFile;
use serde::Serialize;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, ModelWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use crate::error::{Result, TeacherError};

mod bytes;
pub mod chat;
mod spm;

pub use bytes::Piece;
pub use chat::Message;

/// What a user needs to know about a tokenizer (shown by `distill inspect`).
#[derive(Clone, Debug, Serialize)]
pub struct TokenizerInfo {
    /// `BPE`, `WordPiece`, `Unigram` or `WordLevel`.
    pub kind: String,
    /// Tokens including added ones.
    pub vocab_size: usize,
    /// llama.cpp's pre-tokenizer name, for GGUF tokenizers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_tokenizer: Option<String>,
    pub special_tokens: Vec<SpecialToken>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub add_bos: bool,
    pub has_chat_template: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpecialToken {
    pub id: u32,
    pub content: String,
}

/// A tokenizer with the facts about it.
#[derive(Clone)]
pub struct LoadedTokenizer {
    pub tokenizer: Tokenizer,
    pub info: TokenizerInfo,
    pub chat_template: Option<String>,
}

/// The bytes `start..end` of a text that a token stands for.
pub type ByteSpan = (usize, usize);

impl LoadedTokenizer {
    /// Token ids of `text` as the model sees them (BOS added when the model's tokenizer adds it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Token ids of `text` as it continues an earlier piece of the same text: no BOS or other
    /// special tokens added.
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    /// [`Self::encode_continuation`]'s ids with the byte range of `text` each stands for.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteSpan>)> {
        self.tokenizer
            .encode(text, false)
            .map(|e| (e.get_ids().to_vec(), e.get_offsets().to_vec()))
            .map_err(|e| TeacherError::Tokenizer {
                source_name: "encode".into(),
                msg: e.to_string(),
            })
    }

    fn encode_with(&self, text: &str, special_tokens: bool) -> Result<Vec<u32>> {
        self.tokenizer
            .encode_fast(text, special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TeacherError::Tokenizer {
                source_name: "encode".into(),
                msg: e.to_string(),
            })
    }

    /// Every id's piece (`None` for an id the tokenizer does not name), by id: what two
    /// tokenizers are compared on.
    pub fn id_pieces(&self) -> Vec<Option<String>> {
        let tok = &self.tokenizer;
        (0..tok.get_vocab_size(true) as u32)
            .map(|i| tok.id_to_token(i))
            .collect()
    }

    /// How many bytes of text each id stands for (0 for special tokens), by id: the
    /// denominator of bits per byte.
    pub fn byte_lengths(&self) -> Vec<u32> {
        bytes::byte_lengths(&self.tokenizer)
    }

    /// What each id spells, by id: the units two tokenisations of one text are aligned by;
    /// `None` when the decoder does not say (neither byte-level nor SentencePiece).
    pub fn pieces(&self) -> Option<Vec<Piece>> {
        bytes::pieces(&self.tokenizer)
    }

    /// Whether [`LoadedTokenizer::pieces`] would say each id's bytes (without building them).
    pub fn spells_bytes(&self) -> bool {
        bytes::spells_bytes(&self.tokenizer)
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| TeacherError::Tokenizer {
                source_name: "decode".into(),
                msg: e.to_string(),
            })
    }
}

impl LoadedTokenizer {
    /// This tokenizer's facts carried over to `tokenizer`, a trimmed copy of it whose ids are
    /// `new_id(old)` (special tokens, BOS and EOS renumbered; the chat template is text and
    /// stays as it is).
    pub fn restricted(&self, tokenizer: Tokenizer, new_id: impl Fn(u32) -> Option<u32>) -> Self {
        let info = TokenizerInfo {
            vocab_size: tokenizer.get_vocab_size(true),
            special_tokens: special_tokens(&tokenizer),
            bos_token_id: self.info.bos_token_id.and_then(&new_id),
            eos_token_id: self.info.eos_token_id.and_then(&new_id),
            ..self.info.clone()
        };
        Self {
            tokenizer,
            info,
            chat_template: self.chat_template.clone(),
        }
    }
}

fn model_kind(t: &Tokenizer) -> &'static str {
    match t.get_model() {
        ModelWrapper::BPE(_) => "BPE",
        ModelWrapper::WordPiece(_) => "WordPiece",
        ModelWrapper::Unigram(_) => "Unigram",
        ModelWrapper::WordLevel(_) => "WordLevel",
    }
}

fn special_tokens(t: &Tokenizer) -> Vec<SpecialToken> {
    let mut v: Vec<SpecialToken> = t
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, tok)| tok.special)
        .map(|(id, tok)| SpecialToken {
            id,
            content: tok.content,
        })
        .collect();
    v.sort_by_key(|s| s.id);
    v
}

/// Loads a `tokenizer.json`. Padding and truncation stored in the file are turned off: the data
/// pipeline pads and truncates explicitly, with attention masks.
pub fn load_tokenizer_json(path: &Path) -> Result<LoadedTokenizer> {
    let name = path.display().to_string();
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| TeacherError::Tokenizer {
        source_name: name.clone(),
        msg: e.to_string(),
    })?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| TeacherError::Tokenizer {
            source_name: name.clone(),
            msg: e.to_string(),
        })?;
    let config = path.with_file_name("tokenizer_config.json");
    let cfg: serde_json::Value = std::fs::read_to_string(&config)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let token_id = |key: &str| {
        cfg.get(key)
            .and_then(|v| {
                v.as_str()
                    .or_else(|| v.get("content").and_then(|c| c.as_str()))
            })
            .and_then(|s| tokenizer.token_to_id(s))
    };
    let info = TokenizerInfo {
        kind: model_kind(&tokenizer).into(),
        vocab_size: tokenizer.get_vocab_size(true),
        pre_tokenizer: None,
        special_tokens: special_tokens(&tokenizer),
        bos_token_id: token_id("bos_token").or_else(|| token_id("cls_token")),
        eos_token_id: token_id("eos_token").or_else(|| token_id("sep_token")),
        add_bos: cfg
            .get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        has_chat_template: cfg.get("chat_template").is_some(),
    };
    let chat_template = cfg
        .get("chat_template")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Ok(LoadedTokenizer {
        tokenizer,
        info,
        chat_template,
    })
}

/// llama.cpp pre-tokenizers that split like GPT-2 after isolating every digit.
const DIGITS_THEN_GPT2: &[&str] = &[
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva",
];
/// llama.cpp pre-tokenizers that split like GPT-2.
const GPT2: &[&str] = &["gpt2", "default", "gpt-2"];

/// Every `tokenizer.ggml.pre` value this crate reproduces.
pub fn supported_gguf_pre_tokenizers() -> Vec<&'static str> {
    let mut v: Vec<&str> = DIGITS_THEN_GPT2.iter().chain(GPT2).copied().collect();
    v.extend(["llama3", "llama-bpe", "qwen2"]);
    v
}

/// Rebuilds the tokenizer stored in a GGUF file's metadata.
///
/// Byte-level BPE (`tokenizer.ggml.model = gpt2`) with the pre-tokenizer that
/// `tokenizer.ggml.pre` names, or SentencePiece-style BPE (`llama`: merges ranked by the
/// merged piece's score, byte fallback; [`spm`]); control and user-defined tokens matched as
/// whole tokens in text (as llama.cpp does with `parse_special`), and BOS added only when
/// `tokenizer.ggml.add_bos_token` says so.
pub fn tokenizer_from_gguf(g: &GgufFile) -> Result<LoadedTokenizer> {
    let name = g.path().display().to_string();
    let err = |msg: String| TeacherError::Tokenizer {
        source_name: name.clone(),
        msg,
    };
    let model = match g.get("tokenizer.ggml.model") {
        Some(_) => g.get_str("tokenizer.ggml.model")?.to_string(),
        None => {
            return Err(err(
                "the file has no tokenizer metadata (no `tokenizer.ggml.model` key)".into(),
            ))
        }
    };
    let tokens = g.get_strings("tokenizer.ggml.tokens")?;
    let types = match g.get("tokenizer.ggml.token_type") {
        Some(_) => g.get_ints("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(err(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let (mut tokenizer, pre) = match model.as_str() {
        "gpt2" => {
            let pre = match g.get("tokenizer.ggml.pre") {
                Some(_) => g.get_str("tokenizer.ggml.pre")?.to_string(),
                None => "default".to_string(),
            };
            (byte_level_bpe(g, &tokens, &pre, &err)?, Some(pre))
        }
        "llama" => (spm::tokenizer(g, &tokens, &err)?, None),
        other => {
            return Err(err(format!(
                "tokenizer.ggml.model `{other}` is not supported; supported: gpt2 (byte-level BPE), llama (SentencePiece-style BPE)"
            )))
        }
    };
    // SentencePiece text is normalised (spaces to `▁`) before its pieces are looked up;
    // llama.cpp matches special and user-defined tokens in the raw text.
    let normalized_specials = model != "llama";
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| [CONTROL, USER_DEFINED, UNKNOWN].map(i64::from).contains(&t))
        .map(|(tok, &t)| {
            let special = t != i64::from(USER_DEFINED);
            AddedToken::from(tok.to_string(), special).normalized(!special && normalized_specials)
        })
        .collect();
    tokenizer
        .add_special_tokens(added)
        .map_err(|e| err(format!("adding special tokens: {e}")))?;

    let bos = g
        .get_usize_opt("tokenizer.ggml.bos_token_id")?
        .map(|v| v as u32);
    let eos = g
        .get_usize_opt("tokenizer.ggml.eos_token_id")?
        .map(|v| v as u32);
    let add_bos = g
        .get_bool_opt("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);
    if add_bos {
        tokenizer.with_post_processor(Some(bos_template(&tokens, bos, &err)?));
    }
    for (key, id) in [("bos_token_id", bos), ("eos_token_id", eos)] {
        if let Some(id) = id {
            if id as usize >= tokens.len() {
                return Err(err(format!(
                    "tokenizer.ggml.{key} {id} is out of range for {} tokens",
                    tokens.len()
                )));
            }
        }
    }
    let chat_template = match g.get("tokenizer.chat_template") {
        Some(_) => Some(g.get_str("tokenizer.chat_template")?.to_string()),
        None => None,
    };
    let info = TokenizerInfo {
        kind: "BPE".into(),
        vocab_size: tokenizer.get_vocab_size(true),
        pre_tokenizer: pre,
        special_tokens: special_tokens(&tokenizer),
        bos_token_id: bos,
        eos_token_id: eos,
        add_bos,
        has_chat_template: chat_template.is_some(),
    };
    Ok(LoadedTokenizer {
        tokenizer,
        info,
        chat_template,
    })
}
/// A byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`) with the pre-tokenizer `pre`.
fn byte_level_bpe(
    g: &GgufFile,
    tokens: &[&str],
    pre: &str,
    err: &dyn Fn(String) -> TeacherError,
) -> Result<Tokenizer> {
    let merges = g.get_strings("tokenizer.ggml.merges")?;
    let llama3_like = matches!(pre, "llama3" | "llama-bpe");
    let bpe = bpe_model(tokens, &merges, llama3_like, err)?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(gguf_pre_tokenizer(pre, err)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// The byte-level BPE model of `tokens` and `merges` (`left right` each); Llama 3's
/// pre-tokenizer family takes whole words before merges.
fn bpe_model(
    tokens: &[&str],
    merges: &[&str],
    ignore_merges: bool,
    err: &dyn Fn(String) -> TeacherError,
) -> Result<BPE> {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        vocab.entry(tok.to_string()).or_insert(id as u32);
    }
    let merges: Vec<(String, String)> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    err(format!(
                        "tokenizer.ggml.merges[{i}] = `{m}` is not `left right`"
                    ))
                })
        })
        .collect::<Result<_>>()?;
    BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| err(format!("building BPE model: {e}")))
}

/// The pre-tokenizer llama.cpp's `tokenizer.ggml.pre` names.
fn gguf_pre_tokenizer(
    pre: &str,
    err: &dyn Fn(String) -> TeacherError,
) -> Result<PreTokenizerWrapper> {
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(
            SplitPattern::Regex(regex.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| err(format!("pre-tokenizer regex: {e}")))?
        .into())
    };
    Ok(if DIGITS_THEN_GPT2.contains(&pre) {
        Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into()
    } else if GPT2.contains(&pre) {
        ByteLevel::new(false, true, true).into()
    } else if matches!(pre, "llama3" | "llama-bpe") {
        Sequence::new(vec![
            split(LLAMA3_SPLIT_REGEX)?,
            ByteLevel::new(false, true, false).into(),
        ])
        .into()
    } else if pre == "qwen2" {
        Sequence::new(vec![
            split(QWEN2_SPLIT_REGEX)?,
            ByteLevel::new(false, true, false).into(),
        ])
        .into()
    } else {
        return Err(err(format!(
            "tokenizer.ggml.pre `{pre}` is not supported; supported: {}",
            supported_gguf_pre_tokenizers().join(", ")
        )));
    })
}

/// The post-processor that puts BOS (`tokens[bos]`) before every text.
fn bos_template(
    tokens: &[&str],
    bos: Option<u32>,
    err: &dyn Fn(String) -> TeacherError,
) -> Result<TemplateProcessing> {
    let bos = bos.ok_or_else(|| err("add_bos_token is set but bos_token_id is missing".into()))?;
    let bos_text = tokens
        .get(bos as usize)
        .ok_or_else(|| err(format!("bos_token_id {bos} is out of range")))?;
    TemplateProcessing::builder()
        .try_single(format!("{bos_text} $A"))
        .and_then(|b| b.try_pair(format!("{bos_text} $A {bos_text} $B")))
        .map_err(|e| err(format!("BOS template: {e}")))?
        .special_tokens(vec![(bos_text.to_string(), bos)])
        .build()
        .map_err(|e| err(format!("BOS template: {e}")))
}
