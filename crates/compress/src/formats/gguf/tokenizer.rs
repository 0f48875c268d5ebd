//! GGUF tokenizer metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`) built from a
//! Hugging Face model folder's `tokenizer.json` and `tokenizer_config.json`, as llama.cpp's
//! converter (`convert_hf_to_gguf.py`, `get_vocab_base`) writes it, so that a student of any
//! teacher exports to GGUF, not only one whose teacher was a GGUF file.
//!
//! Byte-level BPE only (`tokenizer.ggml.model = gpt2`): the tokens by id (ids no token holds
//! become `[PAD{id}]`, unused), the merges as `left right`, token types (added tokens: control
//! when special, user-defined otherwise; the rest normal), and the pre-tokenizer's llama.cpp name,
//! recognised from its structure: GPT-2's byte-level split (`gpt2`), the same after isolating
//! every digit (`smollm`), Llama 3's and Qwen2's split patterns (`llama-bpe`, `qwen2`). Any other
//! model (WordPiece, Unigram, WordLevel) or pre-tokenizer is an error naming it: llama.cpp would
//! tokenise differently, and a GGUF that silently does so is worse than none.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

use crate::error::CompressError;

use distill_models::gguf_vocab::token_type::{CONTROL, NORMAL, UNUSED, USER_DEFINED};
use distill_models::gguf_vocab::{LLAMA3_SPLIT_REGEX, QWEN2_SPLIT_REGEX};

/// The `tokenizer.*` GGUF keys of the model folder `dir`, for a vocabulary of `vocab_size`
/// (the model's embedding rows; the tokenizer may hold fewer).
pub fn tokenizer_metadata_from_folder(
    dir: &Path,
    vocab_size: usize,
) -> Result<BTreeMap<String, Value>, CompressError> {
    let path = dir.join("tokenizer.json");
    let bad = |msg: String| CompressError::Io {
        path: path.clone(),
        msg,
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| bad(format!("{e} (GGUF export needs the model's tokenizer)")))?;
    let t: Json = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let model = &t["model"];
    let kind = model["type"].as_str().unwrap_or("(none)");
    if kind != "BPE" {
        return Err(bad(format!(
            "model.type `{kind}`: the GGUF writer expresses byte-level BPE tokenizers only (llama.cpp's `gpt2` model)"
        )));
    }
    let pre = pre_tokenizer_name(&t["pre_tokenizer"]).map_err(&bad)?;

    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not a map of token to id".into()))?;
    let (tokens, types) = tokens_and_types(vocab, &t["added_tokens"], vocab_size, &bad)?;
    let merges = merges_of(&model["merges"], &bad)?;

    let mut md = BTreeMap::new();
    md.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    md.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
    md.insert("tokenizer.ggml.tokens".into(), Value::Array(tokens));
    md.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.into_iter().map(Value::I32).collect()),
    );
    md.insert("tokenizer.ggml.merges".into(), Value::Array(merges));
    md.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));

    special_keys(dir, &t, vocab, &mut md);
    Ok(md)
}

/// Whether a `TemplateProcessing` post-processor puts a special token before the text.
fn adds_bos(p: &Json) -> bool {
    p["type"] == "TemplateProcessing"
        && p["single"]
            .as_array()
            .and_then(|s| s.first())
            .is_some_and(|first| first.get("SpecialToken").is_some())
}

/// llama.cpp's name for a `tokenizer.json` pre-tokenizer, from its structure.
fn pre_tokenizer_name(p: &Json) -> Result<&'static str, String> {
    let byte_level = |j: &Json| j["type"] == "ByteLevel" && j["add_prefix_space"] != true;
    let split = |j: &Json, pattern: &str| {
        j["type"] == "Split" && j["pattern"]["Regex"].as_str() == Some(pattern)
    };
    let steps: Vec<&Json> = match p["type"].as_str() {
        Some("Sequence") => p["pretokenizers"]
            .as_array()
            .map(|v| v.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![p],
        None => vec![],
    };
    match steps.as_slice() {
        [b] if byte_level(b) && b["use_regex"] != false => Ok("gpt2"),
        [d, b] if d["type"] == "Digits" && d["individual_digits"] == true && byte_level(b) => {
            Ok("smollm")
        }
        [s, b] if split(s, LLAMA3_SPLIT_REGEX) && byte_level(b) => Ok("llama-bpe"),
        [s, b] if split(s, QWEN2_SPLIT_REGEX) && byte_level(b) => Ok("qwen2"),
        _ => Err(format!(
            "pre_tokenizer {p} is not one llama.cpp names (supported: GPT-2 byte-level, digits then byte-level as SmolLM, Llama 3's and Qwen2's split patterns)"
        )),
    }
}

/// Every id's token (ids the tokenizer lacks padded as `[PADn]`, unused) and its llama.cpp
/// type: normal, or control/user-defined for added tokens.
fn tokens_and_types(
    vocab: &serde_json::Map<String, Json>,
    added: &Json,
    vocab_size: usize,
    bad: &dyn Fn(String) -> CompressError,
) -> Result<(Vec<Value>, Vec<i32>), CompressError> {
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![NORMAL; vocab_size];
    let mut place = |id: u64, tok: &str| -> Result<(), CompressError> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            bad(format!(
                "token `{tok}` has id {id}, beyond the model's {vocab_size} embeddings"
            ))
        })?;
        *slot = Some(tok.to_string());
        Ok(())
    };
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("model.vocab[`{tok}`] is not an id")))?;
        place(id, tok)?;
    }
    for a in added.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let (Some(id), Some(tok)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(bad(format!("added token {a} has no id or content")));
        };
        place(id, tok)?;
        types[id as usize] = if a["special"].as_bool().unwrap_or(false) {
            CONTROL
        } else {
            USER_DEFINED
        };
    }
    let tokens: Vec<Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| {
            Value::String(t.unwrap_or_else(|| {
                types[id] = UNUSED;
                format!("[PAD{id}]")
            }))
        })
        .collect();
    Ok((tokens, types))
}

/// The merges as llama.cpp writes them (`left right`), from either of tokenizer.json's forms.
fn merges_of(
    merges: &Json,
    bad: &dyn Fn(String) -> CompressError,
) -> Result<Vec<Value>, CompressError> {
    merges
        .as_array()
        .ok_or_else(|| bad("model.merges is not a list".into()))?
        .iter()
        .enumerate()
        .map(|(i, m)| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => Ok(Value::String(format!("{a} {b}"))),
                _ => Err(bad(format!("model.merges[{i}] is not a pair of strings"))),
            },
            _ => Err(bad(format!(
                "model.merges[{i}] is neither `left right` nor a pair"
            ))),
        })
        .collect()
}

/// Special tokens and the chat template, as `tokenizer_config.json` and `config.json` of `dir`
/// say, into `md`.
fn special_keys(
    dir: &Path,
    t: &Json,
    vocab: &serde_json::Map<String, Json>,
    md: &mut BTreeMap<String, Value>,
) {
    let read = |name: &str| -> Json {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Json::Null)
    };
    let (tc, config) = (read("tokenizer_config.json"), read("config.json"));
    let id_of = |content: &str| -> Option<u32> {
        if let Some(i) = vocab.get(content).and_then(Json::as_u64) {
            return Some(i as u32);
        }
        let added = t["added_tokens"].as_array()?;
        let a = added
            .iter()
            .find(|a| a["content"].as_str() == Some(content))?;
        a["id"].as_u64().map(|i| i as u32)
    };
    // A token named in tokenizer_config.json (a string, or `{content: ...}`).
    let named = |key: &str| -> Option<u32> {
        let v = &tc[key];
        id_of(v.as_str().or_else(|| v["content"].as_str())?)
    };
    for (key, ggml, fallback) in [
        ("bos_token", "tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id", ""),
        (
            "pad_token",
            "tokenizer.ggml.padding_token_id",
            "pad_token_id",
        ),
    ] {
        let id = named(key).or_else(|| config[fallback].as_u64().map(|i| i as u32));
        if let Some(id) = id {
            md.insert(ggml.into(), Value::U32(id));
        }
    }
    let add_bos = tc["add_bos_token"]
        .as_bool()
        .unwrap_or_else(|| adds_bos(&t["post_processor"]));
    md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos));
    if let Some(ct) = tc["chat_template"].as_str() {
        md.insert("tokenizer.chat_template".into(), Value::String(ct.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(tokenizer: Json, tokenizer_config: Json) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
        std::fs::write(
            d.path().join("tokenizer_config.json"),
            tokenizer_config.to_string(),
        )
        .unwrap();
        d
    }

    fn bpe(pre: Json) -> Json {
        serde_json::json!({
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]},
            "added_tokens": [{"id": 3, "content": "<s>", "special": true},
                             {"id": 4, "content": "<tool>", "special": false}],
            "pre_tokenizer": pre,
            "post_processor": null
        })
    }

    #[test]
    fn a_bpe_folder_gives_llama_cpp_keys_with_types_padding_and_special_ids() {
        let pre =
            serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true});
        let d = folder(
            bpe(pre),
            serde_json::json!({"bos_token": "<s>", "eos_token": {"content": "<s>"}, "chat_template": "{{x}}"}),
        );
        let md = tokenizer_metadata_from_folder(d.path(), 6).unwrap();
        let strings = |k: &str| match &md[k] {
            Value::Array(v) => v
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(
            strings("tokenizer.ggml.tokens"),
            ["a", "b", "ab", "<s>", "<tool>", "[PAD5]"]
        );
        assert_eq!(strings("tokenizer.ggml.merges"), ["a b"]);
        let Value::Array(types) = &md["tokenizer.ggml.token_type"] else {
            panic!()
        };
        let types: Vec<i32> = types.iter().map(|t| t.to_i32().unwrap()).collect();
        assert_eq!(
            types,
            [NORMAL, NORMAL, NORMAL, CONTROL, USER_DEFINED, UNUSED]
        );
        assert_eq!(md["tokenizer.ggml.pre"].to_string().unwrap(), "gpt2");
        assert_eq!(md["tokenizer.ggml.bos_token_id"].to_u32().unwrap(), 3);
        assert_eq!(md["tokenizer.ggml.eos_token_id"].to_u32().unwrap(), 3);
        assert!(!md["tokenizer.ggml.add_bos_token"].to_bool().unwrap());
        assert_eq!(md["tokenizer.chat_template"].to_string().unwrap(), "{{x}}");
    }

    #[test]
    fn what_llama_cpp_would_tokenise_differently_is_refused_by_name() {
        let cfg = serde_json::json!({});
        let wordpiece = serde_json::json!({"model": {"type": "WordPiece", "vocab": {}}});
        let e = tokenizer_metadata_from_folder(folder(wordpiece, cfg.clone()).path(), 4)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("WordPiece") && e.contains("tokenizer.json"),
            "{e}"
        );
        let odd = bpe(serde_json::json!({"type": "Whitespace"}));
        let e = tokenizer_metadata_from_folder(folder(odd, cfg.clone()).path(), 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Whitespace"), "{e}");
        let pre = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false});
        let e = tokenizer_metadata_from_folder(folder(bpe(pre), cfg).path(), 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("beyond the model's 4"), "{e}");
        let e = tokenizer_metadata_from_folder(Path::new("/nonexistent"), 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }
}
