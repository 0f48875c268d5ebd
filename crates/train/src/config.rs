//! The `data` and `distill` sections of a causal-LM run config (the `train:` section is
//! [`crate::training`]). Every struct refuses unknown keys; `validate` checks ranges and
//! names the offending key.

use serde::{Deserialize, Serialize};

use crate::data::DocumentSource;
use crate::losses::{HiddenLossKind, SoftLoss};

/// An invalid config value.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {msg}")]
pub struct ConfigError {
    pub key: String,
    pub msg: String,
}

pub(crate) fn err(key: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// `data:` — where the text comes from and how it is cut.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub source: DocumentSource,
    /// Tokens per training block.
    #[serde(default = "d_block")]
    pub block_size: usize,
    /// Share of documents held out for validation (whole documents).
    #[serde(default = "d_val")]
    pub validation_fraction: f64,
    /// Seed of the document split.
    #[serde(default)]
    pub seed: u64,
    /// Token placed between documents (default: `<|endoftext|>` when the vocabulary has it,
    /// else the tokenizer's EOS).
    #[serde(default)]
    pub separator_token: Option<String>,
    /// Begin every block with BOS. Unset: when the tokenizer adds BOS to a text (Gemma's
    /// predictions fall apart without one), as llama.cpp's perplexity begins every chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_bos: Option<bool>,
}
fn d_block() -> usize {
    128
}
fn d_val() -> f64 {
    0.1
}

/// `distill:` — the objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Soft-target loss: forward_kl, reverse_kl or jsd.
    #[serde(default)]
    pub loss: SoftLoss,
    /// Softmax temperature T of the soft targets (the loss is scaled by T²).
    #[serde(default = "d_temp")]
    pub temperature: f64,
    /// Weight of the soft-target loss; `1 − alpha` weighs the hard-label cross-entropy.
    /// `alpha: 0` trains on labels alone (no teacher).
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    /// Teacher weight in the JSD mixture.
    #[serde(default = "d_beta")]
    pub jsd_beta: f64,
    /// Hidden-state losses between layer pairs.
    #[serde(default)]
    pub hidden: Vec<HiddenPairConfig>,
    /// Classification: also train the same student from random weights on labels alone, as
    /// the baseline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scratch_baseline: bool,
    /// How the teacher's vocabulary meets the student's (causal-LM runs).
    #[serde(default, skip_serializing_if = "VocabMode::is_strict")]
    pub vocab: VocabMode,
    /// The cross-tokenizer loss (`vocab: cross`).
    #[serde(default, skip_serializing_if = "CrossConfig::is_default")]
    pub cross: CrossConfig,
}

/// `distill.cross:` — the loss at the positions where both tokenizations end a token at the
/// same byte: `matched_weight · KL` over the teacher's top-k ids whose strings the student's
/// vocabulary holds (the rest of the teacher's mass one bucket), plus
/// `unmatched_weight · ULD`, the L1 distance between the two sides' sorted top-k probabilities
/// of the other ids (Universal Logit Distillation). Together: GOLD's hybrid loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrossConfig {
    /// The teacher's most probable ids each aligned position keeps (and the student's sorted
    /// probabilities the ULD term compares).
    #[serde(default = "d_cross_k")]
    pub top_k: usize,
    /// Weight of the KL over the shared ids (scaled by T² like every KL).
    #[serde(default = "d_one")]
    pub matched_weight: f64,
    /// Weight of the sorted-probability (ULD) term over the ids only one side has.
    #[serde(default = "d_one")]
    pub unmatched_weight: f64,
}

fn d_cross_k() -> usize {
    64
}
fn d_one() -> f64 {
    1.0
}

impl Default for CrossConfig {
    fn default() -> Self {
        Self {
            top_k: d_cross_k(),
            matched_weight: d_one(),
            unmatched_weight: d_one(),
        }
    }
}

impl CrossConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `distill.vocab`: how the teacher's vocabulary meets the student's.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum VocabMode {
    /// The student has exactly the teacher's ids, head rows included.
    #[default]
    Strict,
    /// The student has its tokenizer's ids; the teacher's logits are taken at the ids whose
    /// strings the student's vocabulary holds (a head padded beyond its tokenizer, or the same
    /// strings under other ids), renormalised over them.
    Shared,
    /// Different tokenizers: the two tokenisations of each block aligned by byte offsets, and
    /// the next-token distributions compared where both end a token at the same byte
    /// (`distill.cross`).
    Cross,
}

impl VocabMode {
    pub fn is_strict(&self) -> bool {
        *self == VocabMode::Strict
    }
}
fn d_temp() -> f64 {
    2.0
}
fn d_alpha() -> f64 {
    0.5
}
fn d_beta() -> f64 {
    0.5
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            loss: SoftLoss::default(),
            temperature: d_temp(),
            alpha: d_alpha(),
            jsd_beta: d_beta(),
            hidden: vec![],
            scratch_baseline: false,
            vocab: VocabMode::Strict,
            cross: CrossConfig::default(),
        }
    }
}

/// One hidden-state loss: student layer output vs teacher layer output (0 = embeddings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HiddenPairConfig {
    pub student_layer: usize,
    pub teacher_layer: usize,
    #[serde(default = "d_hidden_kind")]
    pub loss: HiddenLossKind,
    #[serde(default = "d_hidden_weight")]
    pub weight: f64,
}
fn d_hidden_kind() -> HiddenLossKind {
    HiddenLossKind::Mse
}
fn d_hidden_weight() -> f64 {
    1.0
}

impl DataConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.block_size < 2 {
            return Err(err(
                "data.block_size",
                format!("must be at least 2, got {}", self.block_size),
            ));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return Err(err(
                "data.validation_fraction",
                format!("must be in [0, 1), got {}", self.validation_fraction),
            ));
        }
        Ok(())
    }
}

impl DistillConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(err(
                "distill.temperature",
                format!("must be positive, got {}", self.temperature),
            ));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(err(
                "distill.alpha",
                format!("must be in [0, 1], got {}", self.alpha),
            ));
        }
        if !(0.0..=1.0).contains(&self.jsd_beta) {
            return Err(err(
                "distill.jsd_beta",
                format!("must be in [0, 1], got {}", self.jsd_beta),
            ));
        }
        let c = &self.cross;
        if c.top_k == 0 {
            return Err(err("distill.cross.top_k", "must be at least 1"));
        }
        for (key, w) in [
            ("distill.cross.matched_weight", c.matched_weight),
            ("distill.cross.unmatched_weight", c.unmatched_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(err(key, format!("must be non-negative, got {w}")));
            }
        }
        if self.vocab == VocabMode::Cross && !self.hidden.is_empty() {
            return Err(err(
                "distill.hidden",
                "hidden-state losses compare positions one to one, which two tokenizations do not share; drop them under vocab: cross",
            ));
        }
        for (i, h) in self.hidden.iter().enumerate() {
            if !(h.weight.is_finite() && h.weight >= 0.0) {
                return Err(err(
                    &format!("distill.hidden[{i}].weight"),
                    format!("must be non-negative, got {}", h.weight),
                ));
            }
        }
        Ok(())
    }

    /// Whether the objective needs the teacher at all.
    pub fn needs_teacher(&self) -> bool {
        self.alpha > 0.0 || self.hidden.iter().any(|h| h.weight > 0.0)
    }
}
