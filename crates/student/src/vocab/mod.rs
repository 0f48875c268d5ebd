//! Vocabulary trimming: a student whose vocabulary is the tokens its corpus uses.
//!
//! For a small model the embedding table dominates (SmolLM2-135M: 49,152 × 576), and a domain
//! corpus uses a fraction of the ids. Trimming keeps the ids the training corpus uses (at least
//! `min_count` times), the byte tokens (so any text still tokenises), every added/special token,
//! the tokens the chat template names and the ones the user lists; closes that set under the BPE
//! merges that build its tokens, and prunes the merges to the kept tokens. With `min_count: 1`
//! the trimmed tokenizer then splits the corpus exactly as the full one does (the run checks it):
//! every merge that a corpus word goes through has its inputs and output kept, so, merges being
//! applied lowest rank first, the trimmed tokenizer picks the same merge at every step.
//!
//! Kept ids are renumbered in their old order, so special tokens at the start keep their ids.
//! The teacher is seen through [`teacher::RestrictedModel`]: its logits restricted to the kept
//! ids, its softmax renormalised over them (the residual mass on dropped ids is discarded, i.e.
//! the student learns the teacher's distribution conditioned on the next token being a kept
//! one, which, for text the trimmed tokenizer produced, the next token always is).

mod teacher;
mod tokenizer;

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::{cfg_err, StudentError};

pub use teacher::{RestrictedModel, RowSelectedWeights};

/// `student.vocab`: how the student's vocabulary is chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VocabConfig {
    /// Where the kept tokens come from: `corpus` (the training documents).
    pub trim: TrimSource,
    /// Keep a corpus token only when it occurs at least this often (1: every token the corpus
    /// uses, and the corpus tokenises exactly as before; more: rarer words split into pieces).
    #[serde(default = "one")]
    pub min_count: u64,
    /// Tokens kept whatever the corpus says: vocabulary strings (`Ġthe`) or text that is one
    /// token (` the`).
    #[serde(default)]
    pub keep: Vec<String>,
}

fn one() -> u64 {
    1
}

/// Where a trimmed vocabulary's tokens come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrimSource {
    /// The run's training documents, tokenised with the teacher's tokenizer.
    Corpus,
}

/// Why each kept id is kept (an id counts once, under the first reason that applies).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KeptCounts {
    /// Ids the corpus uses at least `min_count` times.
    pub corpus: usize,
    /// Added and special tokens.
    pub special: usize,
    /// Byte tokens (byte-level alphabet or `<0xNN>` fallback bytes).
    pub bytes: usize,
    /// Listed in `keep`.
    pub listed: usize,
    /// Tokens of the chat template's literal text and of the role names.
    pub template: usize,
    /// Intermediate tokens of the merges that build a kept token.
    pub merges: usize,
}

/// A trimmed vocabulary: the kept ids of the full one, and the tokenizer over them.
#[derive(Clone)]
pub struct VocabTrim {
    /// Old ids, ascending; the new id of `kept[i]` is `i`.
    pub kept: Vec<u32>,
    /// Size of the full vocabulary (the model's rows).
    pub full_size: usize,
    /// Distinct ids the corpus uses (any count).
    pub corpus_distinct: usize,
    pub counts: KeptCounts,
    /// BPE merges before and after pruning.
    pub merges_before: usize,
    pub merges_after: usize,
    /// The tokenizer over the kept ids.
    pub tokenizer: Tokenizer,
    new_of_old: HashMap<u32, u32>,
}

impl std::fmt::Debug for VocabTrim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VocabTrim")
            .field("kept", &self.kept.len())
            .field("full_size", &self.full_size)
            .field("counts", &self.counts)
            .finish()
    }
}

impl VocabTrim {
    /// Trims `full` (whose model has `model_vocab` rows) to what `config` keeps, given how often
    /// the corpus uses each id (`corpus_counts[id]`, ids past its end unused). `chat_template`
    /// names tokens that must survive.
    pub fn new(
        full: &Tokenizer,
        model_vocab: usize,
        config: &VocabConfig,
        corpus_counts: &[u64],
        chat_template: Option<&str>,
    ) -> Result<Self, StudentError> {
        if config.min_count == 0 {
            return Err(cfg_err(
                "vocab.min_count",
                "must be at least 1 (0 would keep every token: no trimming)",
            ));
        }
        let bpe = tokenizer::BpeJson::of(full)?;
        let mut why: HashMap<u32, Reason> = HashMap::new();
        let mut add = |id: u32, r: Reason| {
            if (id as usize) < model_vocab {
                why.entry(id).or_insert(r);
            }
        };
        for (id, &n) in corpus_counts.iter().enumerate() {
            if n >= config.min_count {
                add(id as u32, Reason::Corpus);
            }
        }
        for id in full.get_added_tokens_decoder().into_keys() {
            add(id, Reason::Special);
        }
        if let Some(id) = bpe.unk_token.as_deref().and_then(|u| bpe.vocab.get(u)) {
            add(*id, Reason::Special);
        }
        for (token, &id) in &bpe.vocab {
            if tokenizer::is_byte_token(token) {
                add(id, Reason::Bytes);
            }
        }
        for k in &config.keep {
            add(listed_token(full, k)?, Reason::Listed);
        }
        let corpus_distinct = corpus_counts.iter().filter(|&&n| n > 0).count();
        // What a chat turn writes besides its content (the template's literal text, the usual
        // role names) tokenises as with the teacher's vocabulary.
        if let Some(t) = chat_template {
            for piece in template_text(t) {
                for id in full
                    .encode_fast(piece.as_str(), false)
                    .map_err(|e| cfg_err("vocab", format!("tokenising the chat template: {e}")))?
                    .get_ids()
                {
                    add(*id, Reason::Template);
                }
            }
        }
        // Tokens the chat template writes literally must stay single tokens.
        if let Some(t) = chat_template {
            for name in template_tokens(t) {
                if let Some(id) = full.token_to_id(name) {
                    if !why.contains_key(&id) {
                        return Err(cfg_err(
                            "vocab",
                            format!(
                                "trimming would remove `{name}` (id {id}), a token the chat template names; \
                                 list it in student.vocab.keep"
                            ),
                        ));
                    }
                }
            }
        }
        // Close under the merges that build kept tokens.
        let mut work: Vec<u32> = why.keys().copied().collect();
        while let Some(id) = work.pop() {
            let Some(token) = bpe.token_of(id) else {
                continue;
            };
            for (a, b) in bpe.merges_producing(token) {
                for part in [a, b] {
                    if let Some(&pid) = bpe.vocab.get(part) {
                        if (pid as usize) < model_vocab && !why.contains_key(&pid) {
                            why.insert(pid, Reason::Merges);
                            work.push(pid);
                        }
                    }
                }
            }
        }
        let kept: Vec<u32> = why
            .keys()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let new_of_old: HashMap<u32, u32> = kept
            .iter()
            .enumerate()
            .map(|(n, &o)| (o, n as u32))
            .collect();
        let mut counts = KeptCounts::default();
        for r in why.values() {
            *match r {
                Reason::Corpus => &mut counts.corpus,
                Reason::Special => &mut counts.special,
                Reason::Bytes => &mut counts.bytes,
                Reason::Listed => &mut counts.listed,
                Reason::Template => &mut counts.template,
                Reason::Merges => &mut counts.merges,
            } += 1;
        }
        let (tokenizer, merges_after) = bpe.restrict(&new_of_old)?;
        Ok(Self {
            kept,
            full_size: model_vocab,
            corpus_distinct,
            counts,
            merges_before: bpe.merges.len(),
            merges_after,
            tokenizer,
            new_of_old,
        })
    }

    /// Kept ids.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The new id of full-vocabulary id `old`, if kept.
    pub fn new_id(&self, old: u32) -> Option<u32> {
        self.new_of_old.get(&old).copied()
    }
}

#[derive(Clone, Copy)]
enum Reason {
    Corpus,
    Special,
    Bytes,
    Listed,
    Template,
    Merges,
}

/// The id of a `keep` entry: a vocabulary string, or text that tokenises to one token.
fn listed_token(full: &Tokenizer, k: &str) -> Result<u32, StudentError> {
    if let Some(id) = full.token_to_id(k) {
        return Ok(id);
    }
    let ids = full
        .encode_fast(k, false)
        .map_err(|e| cfg_err("vocab.keep", format!("`{k}`: {e}")))?
        .get_ids()
        .to_vec();
    match ids[..] {
        [id] => Ok(id),
        _ => Err(cfg_err(
            "vocab.keep",
            format!(
                "`{k}` is not a token of the vocabulary (as text it is {} tokens: {:?})",
                ids.len(),
                ids.iter()
                    .map(|&i| full.id_to_token(i).unwrap_or_default())
                    .collect::<Vec<_>>()
            ),
        )),
    }
}

/// Text a chat template writes whatever the messages: the text between its tags, the string
/// literals inside them, and the usual role names.
fn template_text(template: &str) -> Vec<String> {
    let mut out: Vec<String> = ["system", "user", "assistant", "tool"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut rest = template;
    while !rest.is_empty() {
        let open = ["{{", "{%", "{#"]
            .iter()
            .filter_map(|t| rest.find(t))
            .min()
            .unwrap_or(rest.len());
        if open > 0 {
            out.push(rest[..open].to_string());
        }
        rest = &rest[open..];
        if rest.is_empty() {
            break;
        }
        let close = match &rest[..2] {
            "{{" => "}}",
            "{%" => "%}",
            _ => "#}",
        };
        let end = rest.find(close).map_or(rest.len(), |e| e + 2);
        if close != "#}" {
            out.extend(string_literals(&rest[..end]));
        }
        rest = &rest[end..];
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The quoted strings of a template tag, with `\n`-style escapes resolved.
fn string_literals(tag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = tag.chars();
    while let Some(c) = chars.next() {
        if c != '\'' && c != '"' {
            continue;
        }
        let mut lit = String::new();
        while let Some(d) = chars.next() {
            match d {
                '\\' => match chars.next() {
                    Some('n') => lit.push('\n'),
                    Some('t') => lit.push('\t'),
                    Some(e) => lit.push(e),
                    None => break,
                },
                d if d == c => break,
                d => lit.push(d),
            }
        }
        out.push(lit);
    }
    out
}

/// Literal `<…>` runs of a chat template that look like special tokens (`<|im_start|>`, `</s>`).
fn template_tokens(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('<') {
        let tail = &rest[start..];
        match tail[1..].find(['<', '>']) {
            Some(end) if tail.as_bytes()[end + 1] == b'>' => {
                let cand = &tail[..end + 2];
                if cand.len() <= 48 && !cand.chars().any(char::is_whitespace) {
                    out.push(cand);
                }
                rest = &tail[end + 2..];
            }
            Some(end) => rest = &tail[end + 1..],
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests;
