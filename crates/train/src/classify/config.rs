//! The `finetune:`, `train:` and `distill:` sections of a classification run.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// How a classifier is trained: used by the teacher's fine-tuning and the student's distillation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClsTrainConfig {
    /// Passes over the training split (early stopping may end sooner).
    pub epochs: usize,
    /// Examples per step.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Share of the steps spent warming the learning rate up linearly.
    #[serde(default = "d_warmup")]
    pub warmup_fraction: f64,
    /// Floor of the cosine decay, as a share of `lr`.
    #[serde(default)]
    pub min_lr_ratio: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// Dropout on the pooled vector before the head.
    #[serde(default = "d_dropout")]
    pub dropout: f64,
    /// Evaluate on validation every this many steps (0 = at the end of each epoch).
    #[serde(default)]
    pub eval_every: usize,
    /// Stop after this many evaluations without a better validation accuracy (0 = never);
    /// the best weights are kept either way.
    #[serde(default = "d_patience")]
    pub patience: usize,
    /// Seed of the example order and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Keep the embeddings as they are.
    #[serde(default)]
    pub freeze_embeddings: bool,
    /// Encoder layers (0-based) kept as they are.
    #[serde(default)]
    pub freeze_layers: Vec<usize>,
}
fn d_batch() -> usize {
    16
}
fn d_warmup() -> f64 {
    0.1
}
fn d_wd() -> f64 {
    0.01
}
fn d_clip() -> f64 {
    1.0
}
fn d_dropout() -> f64 {
    0.1
}
fn d_patience() -> usize {
    2
}

impl ClsTrainConfig {
    /// Range checks; `section` prefixes the key in errors (`finetune`, `train`).
    pub fn validate(&self, section: &str, layers: Option<usize>) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| ConfigError {
            key: format!("{section}.{key}"),
            msg,
        };
        if self.epochs == 0 {
            return Err(err("epochs", "must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(err("batch_size", "must be at least 1".into()));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(err("lr", format!("must be positive, got {}", self.lr)));
        }
        for (k, v) in [
            ("warmup_fraction", self.warmup_fraction),
            ("min_lr_ratio", self.min_lr_ratio),
            ("dropout", self.dropout),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(err(k, format!("must be in [0, 1), got {v}")));
            }
        }
        if self.weight_decay < 0.0 || self.max_grad_norm < 0.0 {
            return Err(err(
                "weight_decay",
                "weight_decay and max_grad_norm must not be negative".into(),
            ));
        }
        if let (Some(n), Some(bad)) = (
            layers,
            self.freeze_layers.iter().find(|&&l| Some(l) >= layers),
        ) {
            return Err(err(
                "freeze_layers",
                format!("layer {bad} does not exist (the model has {n} layers)"),
            ));
        }
        Ok(())
    }

    /// Whether the variable `name` (HF naming, `bert.` prefix) is frozen.
    pub fn is_frozen(&self, name: &str) -> bool {
        let n = name.strip_prefix("bert.").unwrap_or(name);
        if self.freeze_embeddings && n.starts_with("embeddings.") {
            return true;
        }
        self.freeze_layers
            .iter()
            .any(|l| n.starts_with(&format!("encoder.layer.{l}.")))
    }
}

/// `distill:` of a classification run: the objective on class logits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClsDistillConfig {
    /// Weight of `T²·KL(teacher ‖ student)` at temperature `T`; `1 − alpha` weighs the
    /// cross-entropy on labels.
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    #[serde(default = "d_temp")]
    pub temperature: f64,
    /// Also train the same student from random weights on labels alone, as the baseline.
    #[serde(default)]
    pub scratch_baseline: bool,
}
fn d_alpha() -> f64 {
    0.5
}
fn d_temp() -> f64 {
    2.0
}

impl Default for ClsDistillConfig {
    fn default() -> Self {
        Self {
            alpha: d_alpha(),
            temperature: d_temp(),
            scratch_baseline: false,
        }
    }
}

impl ClsDistillConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(ConfigError {
                key: "distill.alpha".into(),
                msg: format!("must be in [0, 1], got {}", self.alpha),
            });
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(ConfigError {
                key: "distill.temperature".into(),
                msg: format!("must be positive, got {}", self.temperature),
            });
        }
        Ok(())
    }
}
