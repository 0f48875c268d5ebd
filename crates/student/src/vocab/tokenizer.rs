//! The trimmed `tokenizer.json`: the full tokenizer's serialised form with its BPE vocabulary,
//! merges, added tokens and post-processor ids restricted and renumbered. Editing the JSON
//! rather than rebuilding through the builder keeps every other component (normaliser,
//! pre-tokeniser, decoder, flags such as `ignore_merges`) exactly as it was.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

use crate::error::{cfg_err, StudentError};

/// How the merges were written: `"a b"` strings (older files) or `["a", "b"]` pairs.
#[derive(Clone, Copy)]
enum MergeForm {
    Text,
    Pair,
}

/// A BPE tokenizer's JSON with its vocabulary and merges indexed.
pub(super) struct BpeJson {
    root: Value,
    pub vocab: HashMap<String, u32>,
    by_id: HashMap<u32, String>,
    pub merges: Vec<(String, String)>,
    form: MergeForm,
    prefix: String,
    /// Merge indices by the token they produce.
    producing: HashMap<String, Vec<usize>>,
    pub unk_token: Option<String>,
}

fn bad(msg: impl Into<String>) -> StudentError {
    cfg_err("vocab", msg)
}

impl BpeJson {
    pub fn of(t: &Tokenizer) -> Result<Self, StudentError> {
        let text = t
            .to_string(false)
            .map_err(|e| bad(format!("cannot serialise the tokenizer: {e}")))?;
        let root: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("tokenizer JSON: {e}")))?;
        let model = &root["model"];
        let kind = model["type"].as_str().unwrap_or("unknown");
        if kind != "BPE" {
            return Err(bad(format!(
                "vocabulary trimming rewrites BPE tokenizers; this one is {kind}"
            )));
        }
        let vocab: HashMap<String, u32> = model["vocab"]
            .as_object()
            .ok_or_else(|| bad("tokenizer JSON: model.vocab is not an object"))?
            .iter()
            .map(|(k, v)| {
                v.as_u64()
                    .map(|id| (k.clone(), id as u32))
                    .ok_or_else(|| bad(format!("tokenizer JSON: model.vocab[{k:?}] is not an id")))
            })
            .collect::<Result<_, _>>()?;
        let by_id = vocab.iter().map(|(k, &v)| (v, k.clone())).collect();
        let raw = model["merges"].as_array().cloned().unwrap_or_default();
        let mut form = MergeForm::Pair;
        let merges: Vec<(String, String)> = raw
            .iter()
            .map(|m| match m {
                Value::String(s) => {
                    form = MergeForm::Text;
                    s.split_once(' ')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .ok_or_else(|| bad(format!("tokenizer JSON: merge {s:?} is not `a b`")))
                }
                Value::Array(p) if p.len() == 2 && p.iter().all(Value::is_string) => Ok((
                    p[0].as_str().unwrap_or_default().to_string(),
                    p[1].as_str().unwrap_or_default().to_string(),
                )),
                other => Err(bad(format!("tokenizer JSON: merge {other} is not a pair"))),
            })
            .collect::<Result<_, _>>()?;
        let text_of = |k: &str| model[k].as_str().unwrap_or_default().to_string();
        let mut me = Self {
            vocab,
            by_id,
            merges,
            form,
            prefix: text_of("continuing_subword_prefix"),
            producing: HashMap::new(),
            unk_token: model["unk_token"].as_str().map(str::to_string),
            root,
        };
        for (i, (a, b)) in me.merges.iter().enumerate() {
            let out = me.output(a, b);
            me.producing.entry(out).or_default().push(i);
        }
        Ok(me)
    }

    /// The token a merge of `a` and `b` makes, as the BPE model builds it (`b` loses the
    /// continuing-subword prefix).
    fn output(&self, a: &str, b: &str) -> String {
        let b = match self.prefix.as_str() {
            "" => b,
            p => b.strip_prefix(p).unwrap_or(b),
        };
        format!("{a}{b}")
    }

    pub fn token_of(&self, id: u32) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    /// The merges whose output is `token`.
    pub fn merges_producing<'s>(&'s self, token: &str) -> impl Iterator<Item = (&'s str, &'s str)> {
        self.producing
            .get(token)
            .into_iter()
            .flatten()
            .map(|&i| (self.merges[i].0.as_str(), self.merges[i].1.as_str()))
    }

    /// The tokenizer over the kept ids (`new_of_old`), and how many merges it keeps.
    pub fn restrict(
        &self,
        new_of_old: &HashMap<u32, u32>,
    ) -> Result<(Tokenizer, usize), StudentError> {
        let kept = |t: &str| self.vocab.get(t).and_then(|id| new_of_old.get(id));
        let mut root = self.root.clone();
        let vocab: serde_json::Map<String, Value> = {
            let mut v: Vec<(&String, u32)> = self
                .vocab
                .iter()
                .filter_map(|(t, id)| new_of_old.get(id).map(|&n| (t, n)))
                .collect();
            v.sort_by_key(|&(_, n)| n);
            v.into_iter()
                .map(|(t, n)| (t.clone(), Value::from(n)))
                .collect()
        };
        let merges: Vec<Value> = self
            .merges
            .iter()
            .filter(|(a, b)| {
                kept(a).is_some() && kept(b).is_some() && kept(&self.output(a, b)).is_some()
            })
            .map(|(a, b)| match self.form {
                MergeForm::Text => Value::from(format!("{a} {b}")),
                MergeForm::Pair => Value::from(vec![a.clone(), b.clone()]),
            })
            .collect();
        let n_merges = merges.len();
        root["model"]["vocab"] = Value::Object(vocab);
        root["model"]["merges"] = Value::Array(merges);
        if let Some(added) = root["added_tokens"].as_array_mut() {
            added.retain(|t| {
                t["id"]
                    .as_u64()
                    .is_some_and(|id| new_of_old.contains_key(&(id as u32)))
            });
            for t in added.iter_mut() {
                let old = t["id"].as_u64().unwrap_or_default() as u32;
                t["id"] = Value::from(new_of_old[&old]);
            }
        }
        remap_ids(&mut root["post_processor"], new_of_old)?;
        let text = serde_json::to_string(&root).expect("JSON value");
        let t: Tokenizer = text
            .parse()
            .map_err(|e| bad(format!("the trimmed tokenizer does not load: {e}")))?;
        Ok((t, n_merges))
    }
}

/// Renumbers the token ids a post-processor stores: `ids` lists (template processing) and
/// `[token, id]` pairs (`cls`, `sep` of BERT/RoBERTa processing).
fn remap_ids(v: &mut Value, new_of_old: &HashMap<u32, u32>) -> Result<(), StudentError> {
    let map = |id: &Value| -> Result<Value, StudentError> {
        let old = id.as_u64().ok_or_else(|| {
            bad(format!(
                "tokenizer JSON: post-processor id {id} is not a number"
            ))
        })? as u32;
        new_of_old
            .get(&old)
            .map(|&n| Value::from(n))
            .ok_or_else(|| {
                bad(format!(
                    "the post-processor adds id {old}, which trimming removes"
                ))
            })
    };
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                match (k.as_str(), &mut *x) {
                    ("ids", Value::Array(ids)) => {
                        for id in ids.iter_mut() {
                            *id = map(id)?;
                        }
                    }
                    ("cls" | "sep", Value::Array(pair)) if pair.len() == 2 => {
                        pair[1] = map(&pair[1])?;
                    }
                    _ => remap_ids(x, new_of_old)?,
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                remap_ids(x, new_of_old)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A token for one byte: a character of the byte-level alphabet, or a `<0xNN>` fallback byte.
pub(super) fn is_byte_token(token: &str) -> bool {
    static ALPHABET: OnceLock<std::collections::HashSet<char>> = OnceLock::new();
    let alphabet = ALPHABET.get_or_init(|| ByteLevel::alphabet().into_iter().collect());
    let mut chars = token.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => alphabet.contains(&c),
        _ => {
            token.len() == 6
                && token.starts_with("<0x")
                && token.ends_with('>')
                && token[3..5].chars().all(|c| c.is_ascii_hexdigit())
        }
    }
}
