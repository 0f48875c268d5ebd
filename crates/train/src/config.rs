//! The `data`, `distill` and `train` sections of a run config. Every struct refuses unknown
//! keys; `validate` checks ranges and names the offending key.

use serde::{Deserialize, Serialize};

use crate::data::DocumentSource;
use crate::losses::{HiddenLossKind, SOFT_LOSSES};

/// An invalid config value.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {msg}")]
pub struct ConfigError {
    pub key: String,
    pub msg: String,
}

fn err(key: &str, msg: impl Into<String>) -> ConfigError {
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
    #[serde(default = "d_loss")]
    pub loss: String,
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
}
fn d_loss() -> String {
    "forward_kl".into()
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
            loss: d_loss(),
            temperature: d_temp(),
            alpha: d_alpha(),
            jsd_beta: d_beta(),
            hidden: vec![],
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

/// `train:` — optimisation, evaluation and checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Blocks per micro-batch.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    #[serde(default = "d_one")]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Final learning rate as a share of `lr` (cosine decay).
    #[serde(default = "d_min_lr")]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_b1")]
    pub beta1: f64,
    #[serde(default = "d_b2")]
    pub beta2: f64,
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Global gradient-norm clip (0 = off).
    #[serde(default = "d_clip")]
    pub clip_grad_norm: f64,
    /// Evaluate every this many steps (0 = only at the end).
    #[serde(default = "d_eval_every")]
    pub eval_every: usize,
    /// Validation blocks used by each evaluation (0 = all).
    #[serde(default = "d_eval_blocks")]
    pub eval_blocks: usize,
    /// Checkpoint every this many steps (0 = only at the end).
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk.
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
    /// Seed of the block order.
    #[serde(default)]
    pub seed: u64,
}
fn d_batch() -> usize {
    8
}
fn d_one() -> usize {
    1
}
fn d_lr() -> f64 {
    3e-4
}
fn d_min_lr() -> f64 {
    0.1
}
fn d_wd() -> f64 {
    0.01
}
fn d_b1() -> f64 {
    0.9
}
fn d_b2() -> f64 {
    0.95
}
fn d_eps() -> f64 {
    1e-8
}
fn d_clip() -> f64 {
    1.0
}
fn d_eval_every() -> usize {
    50
}
fn d_eval_blocks() -> usize {
    32
}
fn d_ckpt() -> usize {
    100
}
fn d_keep() -> usize {
    2
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
        if !SOFT_LOSSES.iter().any(|(n, _)| *n == self.loss) {
            let names: Vec<&str> = SOFT_LOSSES.iter().map(|(n, _)| *n).collect();
            return Err(err(
                "distill.loss",
                format!(
                    "unknown loss `{}`; expected one of: {}",
                    self.loss,
                    names.join(", ")
                ),
            ));
        }
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

impl TrainConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
        ] {
            if v == 0 {
                return Err(err(&format!("train.{key}"), "must be at least 1"));
            }
        }
        for (key, v) in [("lr", self.lr), ("eps", self.eps)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(err(
                    &format!("train.{key}"),
                    format!("must be positive, got {v}"),
                ));
            }
        }
        for (key, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(err(
                    &format!("train.{key}"),
                    format!("must be in [0, 1), got {v}"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(err(
                "train.min_lr_ratio",
                format!("must be in [0, 1], got {}", self.min_lr_ratio),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(err(
                "train.weight_decay",
                format!("must be non-negative, got {}", self.weight_decay),
            ));
        }
        if !(self.clip_grad_norm.is_finite() && self.clip_grad_norm >= 0.0) {
            return Err(err(
                "train.clip_grad_norm",
                format!("must be non-negative, got {}", self.clip_grad_norm),
            ));
        }
        if self.keep_checkpoints == 0 {
            return Err(err("train.keep_checkpoints", "must be at least 1"));
        }
        Ok(())
    }
}
