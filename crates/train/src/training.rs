//! The `train:` section (and a classification run's `finetune:`): optimisation, evaluation and
//! checkpoints, one spelling for both tasks. [`TrainConfig`] is the file format — every key
//! optional, so that a task's defaults fill what is unset — and [`Training`] the resolved
//! settings a [`crate::Learner`] runs with.
//!
//! Deprecated spelling: `clip_grad_norm` (the causal-LM key before both tasks shared one
//! section) is accepted with a warning and means `max_grad_norm`.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Which task a `train:` section belongs to: it decides the defaults and the keys that apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    CausalLm,
    Classification,
}

/// How long training runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Length {
    Steps(usize),
    Epochs(usize),
}

/// `batch_size` as written: a number of rows, or `auto`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum BatchSize {
    Rows(usize),
    /// `auto`: on a GPU, the largest micro-batch whose training step fits in its memory,
    /// found by trying (causal-LM runs); on a CPU, the default.
    Word(String),
}

/// How the learning rate warms up.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    Steps(usize),
    /// A share of all steps.
    Fraction(f64),
}

/// `train:` as written. Unset keys take the task's defaults: causal LM — `batch_size` 8,
/// `lr` 3e-4, `min_lr_ratio` 0.1, no warm-up, `beta2` 0.95, `eval_every` 50, `eval_blocks`
/// 32, checkpoints every 100 steps (2 kept), no early stopping; classification — `batch_size`
/// 16, `lr` required, `min_lr_ratio` 0, `warmup_fraction` 0.1, `beta2` 0.999, evaluation at
/// every epoch's end, `patience` 2 with the best weights kept, `dropout` 0.1, a checkpoint
/// at every evaluation (1 kept). Both: `grad_accum` 1, `weight_decay` 0.01, `beta1` 0.9,
/// `eps` 1e-8, `max_grad_norm` 1, `seed` 0.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimiser steps (give this or `epochs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Passes over the training data (give this or `steps`; early stopping may end sooner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Blocks (causal LM) or examples (classification) per micro-batch, or `auto` (causal
    /// LM: on a GPU the largest that fits, found by trying a training step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<BatchSize>,
    /// Micro-batches per optimiser step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_accum: Option<usize>,
    /// Peak learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Final learning rate as a share of `lr` (cosine decay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr_ratio: Option<f64>,
    /// Linear warm-up steps (or give `warmup_fraction`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<usize>,
    /// Share of all steps spent warming up (or give `warmup_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_fraction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// Global gradient-norm clip (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    /// Deprecated spelling of `max_grad_norm`.
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub clip_grad_norm: Option<f64>,
    /// Evaluate every this many steps (0 = at the end of every epoch), and always at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    /// Causal LM: validation blocks used by each evaluation (0 = all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_blocks: Option<usize>,
    /// Stop after this many evaluations without a better validation score (0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// Restore the weights of the best evaluation at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_best: Option<bool>,
    /// Checkpoint every this many steps (0 = at every evaluation), and always at the end and
    /// on a stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// Checkpoints kept on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_checkpoints: Option<usize>,
    /// Seed of the data order (and of dropout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Classification: dropout on the pooled vector before the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// Keep the embeddings as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_embeddings: Option<bool>,
    /// Layers (0-based) kept as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_layers: Option<Vec<usize>>,
}

/// Resolved training settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Training {
    #[serde(skip)]
    pub task: TaskKind,
    pub length: Length,
    /// Rows per combined micro-batch; with [`Self::batch_auto`], the default until the run
    /// has chosen its own.
    pub batch_size: usize,
    /// `batch_size: auto`: the run chooses `batch_size` for its device before training.
    #[serde(skip)]
    pub batch_auto: bool,
    pub grad_accum: usize,
    pub lr: f64,
    pub min_lr_ratio: f64,
    pub warmup: Warmup,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub max_grad_norm: f64,
    /// 0 = at the end of every epoch.
    pub eval_every: usize,
    /// 0 = all validation blocks.
    pub eval_blocks: usize,
    /// 0 = never stop early.
    pub patience: usize,
    pub keep_best: bool,
    /// 0 = at every evaluation.
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    pub seed: u64,
    pub dropout: f64,
    pub freeze_embeddings: bool,
    pub freeze_layers: Vec<usize>,
}

impl TrainConfig {
    /// The settings for `task`, with its defaults where a key is unset; range and
    /// applicability errors name `section.key`.
    pub fn resolve(&self, task: TaskKind, section: &str) -> Result<Training, ConfigError> {
        let err = |key: &str, msg: String| ConfigError {
            key: format!("{section}.{key}"),
            msg,
        };
        let lm = task == TaskKind::CausalLm;
        let length = match (self.steps, self.epochs) {
            (Some(_), Some(_)) => {
                return Err(err("steps", "give `steps` or `epochs`, not both".into()))
            }
            (Some(0), _) => return Err(err("steps", "must be at least 1".into())),
            (_, Some(0)) => return Err(err("epochs", "must be at least 1".into())),
            (Some(n), None) => Length::Steps(n),
            (None, Some(n)) => Length::Epochs(n),
            (None, None) => {
                return Err(err(
                    if lm { "steps" } else { "epochs" },
                    "required: how long to train (`steps` or `epochs`)".into(),
                ))
            }
        };
        if lm {
            if self.dropout.is_some() {
                return Err(err(
                    "dropout",
                    "applies to classifiers (the pooled vector); a causal-LM student has no dropout".into(),
                ));
            }
        } else if self.eval_blocks.is_some() {
            return Err(err(
                "eval_blocks",
                "applies to causal-LM runs; a classifier is evaluated on the whole validation split".into(),
            ));
        }
        let max_grad_norm = match (self.max_grad_norm, self.clip_grad_norm) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "clip_grad_norm",
                    "is the old spelling of max_grad_norm; give only max_grad_norm".into(),
                ))
            }
            (None, Some(v)) => {
                tracing::warn!(
                    "{section}.clip_grad_norm is deprecated: write {section}.max_grad_norm"
                );
                Some(v)
            }
            (v, None) => v,
        };
        let warmup = match (self.warmup_steps, self.warmup_fraction) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "warmup_steps",
                    "give `warmup_steps` or `warmup_fraction`, not both".into(),
                ))
            }
            (Some(n), None) => Warmup::Steps(n),
            (None, Some(f)) => Warmup::Fraction(f),
            (None, None) if lm => Warmup::Steps(0),
            (None, None) => Warmup::Fraction(0.1),
        };
        let (batch_size, batch_auto) = match &self.batch_size {
            None => (None, false),
            Some(BatchSize::Rows(n)) => (Some(*n), false),
            Some(BatchSize::Word(w)) if w.trim() == "auto" && lm => (None, true),
            Some(BatchSize::Word(w)) if w.trim() == "auto" => {
                return Err(err(
                    "batch_size",
                    "`auto` is for causal-LM runs; give a classifier's batch size as a number"
                        .into(),
                ))
            }
            Some(BatchSize::Word(w)) => {
                return Err(err(
                    "batch_size",
                    format!("expected a number of rows or `auto`, got `{w}`"),
                ))
            }
        };
        let lr = match (self.lr, lm) {
            (Some(v), _) => v,
            (None, true) => 3e-4,
            (None, false) => {
                return Err(err(
                    "lr",
                    "required: the peak learning rate (e.g. 1e-4 to fine-tune, 5e-4 for a small student)".into(),
                ))
            }
        };
        let t = Training {
            task,
            length,
            batch_size: batch_size.unwrap_or(if lm { 8 } else { 16 }),
            batch_auto,
            grad_accum: self.grad_accum.unwrap_or(1),
            lr,
            min_lr_ratio: self.min_lr_ratio.unwrap_or(if lm { 0.1 } else { 0.0 }),
            warmup,
            weight_decay: self.weight_decay.unwrap_or(0.01),
            beta1: self.beta1.unwrap_or(0.9),
            beta2: self.beta2.unwrap_or(if lm { 0.95 } else { 0.999 }),
            eps: self.eps.unwrap_or(1e-8),
            max_grad_norm: max_grad_norm.unwrap_or(1.0),
            eval_every: self.eval_every.unwrap_or(if lm { 50 } else { 0 }),
            eval_blocks: self.eval_blocks.unwrap_or(32),
            patience: self.patience.unwrap_or(if lm { 0 } else { 2 }),
            keep_best: self.keep_best.unwrap_or(!lm),
            checkpoint_every: self.checkpoint_every.unwrap_or(if lm { 100 } else { 0 }),
            keep_checkpoints: self.keep_checkpoints.unwrap_or(if lm { 2 } else { 1 }),
            seed: self.seed.unwrap_or(0),
            dropout: self.dropout.unwrap_or(if lm { 0.0 } else { 0.1 }),
            freeze_embeddings: self.freeze_embeddings.unwrap_or(false),
            freeze_layers: self.freeze_layers.clone().unwrap_or_default(),
        };
        t.validate(section)?;
        Ok(t)
    }
}

impl Training {
    /// How many of `available` validation blocks each evaluation scores (`eval_blocks`, 0 =
    /// all): the first ones, so a report and a cache can score the same blocks.
    pub fn eval_block_count(&self, available: usize) -> usize {
        match self.eval_blocks {
            0 => available,
            n => n.min(available),
        }
    }

    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| ConfigError {
            key: format!("{section}.{key}"),
            msg,
        };
        for (key, v) in [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("keep_checkpoints", self.keep_checkpoints),
        ] {
            if v == 0 {
                return Err(err(key, "must be at least 1".into()));
            }
        }
        for (key, v) in [("lr", self.lr), ("eps", self.eps)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(err(key, format!("must be positive, got {v}")));
            }
        }
        for (key, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(err(key, format!("must be in [0, 1), got {v}")));
            }
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(err(
                "min_lr_ratio",
                format!("must be in [0, 1], got {}", self.min_lr_ratio),
            ));
        }
        if let Warmup::Fraction(f) = self.warmup {
            if !(0.0..1.0).contains(&f) {
                return Err(err(
                    "warmup_fraction",
                    format!("must be in [0, 1), got {f}"),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(err(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        for (key, v) in [
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(err(key, format!("must be non-negative, got {v}")));
            }
        }
        Ok(())
    }

    /// Checks `freeze_layers` against a model of `layers` layers.
    pub fn check_layers(&self, section: &str, layers: usize) -> Result<(), ConfigError> {
        match self.freeze_layers.iter().find(|&&l| l >= layers) {
            Some(bad) => Err(ConfigError {
                key: format!("{section}.freeze_layers"),
                msg: format!("layer {bad} does not exist (the model has {layers} layers)"),
            }),
            None => Ok(()),
        }
    }

    /// Whether the variable `name` (checkpoint naming) is frozen.
    pub fn is_frozen(&self, name: &str) -> bool {
        let n = name.strip_prefix("bert.").unwrap_or(name);
        if self.freeze_embeddings
            && (n.starts_with("embeddings.") || n.starts_with("model.embed_tokens."))
        {
            return true;
        }
        let decoder_layer = distill_models::family::layer_of(n);
        self.freeze_layers
            .iter()
            .any(|&l| n.starts_with(&format!("encoder.layer.{l}.")) || decoder_layer == Some(l))
    }

    /// Optimiser steps for a task of `batches_per_epoch` micro-batches.
    pub fn total_steps(&self, batches_per_epoch: usize) -> usize {
        match self.length {
            Length::Steps(n) => n,
            Length::Epochs(e) => (e * batches_per_epoch).div_ceil(self.grad_accum).max(1),
        }
    }

    /// Warm-up steps out of `total`.
    pub fn warmup_steps(&self, total: usize) -> usize {
        match self.warmup {
            Warmup::Steps(n) => n,
            Warmup::Fraction(f) => (total as f64 * f).round() as usize,
        }
    }

    /// The config that resolves to these settings, every key written (for the run folder's
    /// `config.yaml`: what the run did, not only what was asked).
    pub fn to_config(&self) -> TrainConfig {
        let lm = self.task == TaskKind::CausalLm;
        let (steps, epochs) = match self.length {
            Length::Steps(n) => (Some(n), None),
            Length::Epochs(n) => (None, Some(n)),
        };
        let (warmup_steps, warmup_fraction) = match self.warmup {
            Warmup::Steps(n) => (Some(n), None),
            Warmup::Fraction(f) => (None, Some(f)),
        };
        TrainConfig {
            steps,
            epochs,
            batch_size: Some(if self.batch_auto {
                BatchSize::Word("auto".into())
            } else {
                BatchSize::Rows(self.batch_size)
            }),
            grad_accum: Some(self.grad_accum),
            lr: Some(self.lr),
            min_lr_ratio: Some(self.min_lr_ratio),
            warmup_steps,
            warmup_fraction,
            weight_decay: Some(self.weight_decay),
            beta1: Some(self.beta1),
            beta2: Some(self.beta2),
            eps: Some(self.eps),
            max_grad_norm: Some(self.max_grad_norm),
            clip_grad_norm: None,
            eval_every: Some(self.eval_every),
            eval_blocks: lm.then_some(self.eval_blocks),
            patience: Some(self.patience),
            keep_best: Some(self.keep_best),
            checkpoint_every: Some(self.checkpoint_every),
            keep_checkpoints: Some(self.keep_checkpoints),
            seed: Some(self.seed),
            dropout: (!lm).then_some(self.dropout),
            freeze_embeddings: Some(self.freeze_embeddings),
            freeze_layers: Some(self.freeze_layers.clone()),
        }
    }
}

/// serde adapters so a run config holds resolved [`Training`] under the `train:` key while
/// reading and writing the [`TrainConfig`] file format.
pub mod serde_as {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{TaskKind, TrainConfig, Training};

    fn resolve<'de, D: Deserializer<'de>>(
        d: D,
        task: TaskKind,
        section: &str,
    ) -> Result<Training, D::Error> {
        TrainConfig::deserialize(d)?
            .resolve(task, section)
            .map_err(serde::de::Error::custom)
    }

    /// `train:` of a causal-LM run.
    pub fn causal_lm<'de, D: Deserializer<'de>>(d: D) -> Result<Training, D::Error> {
        resolve(d, TaskKind::CausalLm, "train")
    }

    /// `train:` of a classification run.
    pub fn classification<'de, D: Deserializer<'de>>(d: D) -> Result<Training, D::Error> {
        resolve(d, TaskKind::Classification, "train")
    }

    /// `finetune:` of a classification run.
    pub fn finetune<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Training>, D::Error> {
        Option::<TrainConfig>::deserialize(d)?
            .map(|c| c.resolve(TaskKind::Classification, "finetune"))
            .transpose()
            .map_err(serde::de::Error::custom)
    }

    pub fn write<S: Serializer>(t: &Training, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&t.to_config(), s)
    }

    pub fn write_option<S: Serializer>(t: &Option<Training>, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&t.as_ref().map(Training::to_config), s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> TrainConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn batch_size_auto_is_for_causal_lm_runs_and_round_trips() {
        let lm = parse(r#"{"steps": 10, "batch_size": "auto"}"#)
            .resolve(TaskKind::CausalLm, "train")
            .unwrap();
        assert!(lm.batch_auto);
        assert_eq!(lm.batch_size, 8, "the default until the run chooses");
        assert_eq!(
            lm.to_config().batch_size,
            Some(BatchSize::Word("auto".into()))
        );
        let fixed = parse(r#"{"steps": 10, "batch_size": 4}"#)
            .resolve(TaskKind::CausalLm, "train")
            .unwrap();
        assert_eq!((fixed.batch_size, fixed.batch_auto), (4, false));
        let e = parse(r#"{"steps": 10, "batch_size": "big"}"#)
            .resolve(TaskKind::CausalLm, "train")
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.batch_size") && e.contains("`big`"), "{e}");
        let e = parse(r#"{"epochs": 1, "lr": 1e-4, "batch_size": "auto"}"#)
            .resolve(TaskKind::Classification, "train")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train.batch_size") && e.contains("causal-LM"),
            "{e}"
        );
    }

    #[test]
    fn defaults_follow_the_task_and_one_spelling_serves_both() {
        let lm = parse(r#"{"steps": 10}"#)
            .resolve(TaskKind::CausalLm, "train")
            .unwrap();
        assert_eq!(
            (
                lm.batch_size,
                lm.beta2,
                lm.eval_every,
                lm.keep_best,
                lm.patience
            ),
            (8, 0.95, 50, false, 0)
        );
        let cls = parse(r#"{"epochs": 2, "lr": 0.001}"#)
            .resolve(TaskKind::Classification, "train")
            .unwrap();
        assert_eq!(
            (
                cls.batch_size,
                cls.beta2,
                cls.warmup,
                cls.keep_best,
                cls.patience
            ),
            (16, 0.999, Warmup::Fraction(0.1), true, 2)
        );
        // The old causal-LM spelling still works and means the same.
        let old = parse(r#"{"steps": 10, "clip_grad_norm": 0.5}"#)
            .resolve(TaskKind::CausalLm, "train")
            .unwrap();
        assert_eq!(old.max_grad_norm, 0.5);
        // A resolved config round-trips to the same settings.
        let again = lm.to_config().resolve(TaskKind::CausalLm, "train").unwrap();
        assert_eq!(again, lm);
        assert_eq!(lm.total_steps(7), 10);
        assert_eq!(cls.total_steps(7), 14);
    }

    #[test]
    fn keys_of_the_other_task_and_bad_ranges_are_named() {
        let e = |json: &str, task| {
            parse(json)
                .resolve(task, "finetune")
                .unwrap_err()
                .to_string()
        };
        assert!(
            e(r#"{"steps": 1, "dropout": 0.1}"#, TaskKind::CausalLm).contains("finetune.dropout")
        );
        assert!(e(
            r#"{"epochs": 1, "lr": 1, "eval_blocks": 3}"#,
            TaskKind::Classification
        )
        .contains("finetune.eval_blocks"));
        assert!(e(r#"{"epochs": 1}"#, TaskKind::Classification).contains("finetune.lr"));
        assert!(e(r#"{"lr": 1}"#, TaskKind::Classification).contains("finetune.epochs"));
        assert!(e(r#"{"steps": 1, "epochs": 1}"#, TaskKind::CausalLm).contains("not both"));
        assert!(e(r#"{"steps": 1, "beta2": 1.0}"#, TaskKind::CausalLm).contains("finetune.beta2"));
        assert!(e(
            r#"{"steps": 1, "max_grad_norm": 1, "clip_grad_norm": 1}"#,
            TaskKind::CausalLm
        )
        .contains("old spelling"));
    }

    #[test]
    fn freezing_names_the_same_parts_in_both_families() {
        let t = parse(r#"{"steps": 1, "freeze_embeddings": true, "freeze_layers": [1]}"#)
            .resolve(TaskKind::CausalLm, "train")
            .unwrap();
        for frozen in [
            "model.embed_tokens.weight",
            "model.layers.1.mlp.up_proj.weight",
            "bert.embeddings.word_embeddings.weight",
            "encoder.layer.1.output.dense.weight",
        ] {
            assert!(t.is_frozen(frozen), "{frozen}");
        }
        for trained in ["model.layers.10.mlp.up_proj.weight", "classifier.weight"] {
            assert!(!t.is_frozen(trained), "{trained}");
        }
        assert!(t.check_layers("train", 1).is_err() && t.check_layers("train", 2).is_ok());
    }
}
