//! The `heal` step: a short distillation from the uncompressed model into the pruned one
//! with the run's objective, through the [`crate::framework::pass::Trainer`] the task provides. Weights
//! that pruning set to zero are multiplied by their mask after every optimiser step, so they
//! stay exactly zero throughout and the kept weights never adapt to values that will be gone.

use serde::Deserialize;

use crate::error::CompressError;
use crate::framework::pass::{Candidate, Context, Length, Pass, PassReport};
use crate::framework::technique::{schema_of, settings, Built, Defaults, Settings, Technique};
use crate::passes::pruning::sparsity::zero_masks;

/// Settings of `heal`: one of `steps` and `epochs` (default: 100 steps for a causal LM, one
/// epoch for a classifier).
#[derive(Clone, Debug, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealSettings {
    /// Optimiser steps.
    #[serde(default)]
    pub steps: Option<usize>,
    /// Passes over the training split.
    #[serde(default)]
    pub epochs: Option<usize>,
    /// Peak learning rate (default: the run's `train.lr`).
    #[serde(default)]
    pub lr: Option<f64>,
}

pub(crate) const TECHNIQUE: Technique = Technique {
    name: "heal",
    summary:
        "distillation from the uncompressed model with the run's objective; pruned zeros stay zero",
    build,
    schema: schema_of::<HealSettings>,
};

fn build(s: &Settings, d: &Defaults) -> Result<Built, CompressError> {
    let h: HealSettings = settings("heal", s)?;
    let bad = |key: &str, msg: &str| CompressError::Config {
        key: key.into(),
        msg: msg.into(),
    };
    let length = match (h.steps, h.epochs) {
        (Some(_), Some(_)) => return Err(bad("", "heal takes one of `steps` and `epochs`")),
        (Some(0), _) | (_, Some(0)) => return Err(bad("", "heal needs at least one step / epoch")),
        (Some(n), None) => Length::Steps(n),
        (None, Some(n)) => Length::Epochs(n),
        (None, None) => d.heal,
    };
    if matches!(h.lr, Some(l) if l.is_nan() || l <= 0.0) {
        return Err(bad("lr", "must be > 0"));
    }
    Ok(Built::Pass(Box::new(Heal { length, lr: h.lr })))
}

/// The heal pass.
pub(crate) struct Heal {
    pub length: Length,
    pub lr: Option<f64>,
}

impl Pass for Heal {
    fn name(&self) -> &'static str {
        "heal"
    }
    fn label(&self) -> String {
        format!("heal {}", self.length.label())
    }
    fn encodes(&self) -> bool {
        false
    }
    fn apply(&self, c: &mut Candidate, cx: &Context) -> Result<PassReport, CompressError> {
        let trainer = cx.trainer.ok_or_else(|| {
            CompressError::Unsupported(
                "heal trains on the run's data with its objective: run it from a run config (distill run, or distill compress --config)".into(),
            )
        })?;
        let masks = zero_masks(&c.weights.tensors)?;
        let mut keep_zeros = |vars: &std::collections::BTreeMap<String, candle_core::Var>| {
            for (name, mask) in &masks {
                if let Some(v) = vars.get(name) {
                    v.set(&v.as_tensor().mul(mask)?)?;
                }
            }
            Ok(())
        };
        trainer.train(c, self.length, self.lr, &mut keep_zeros)?;
        Ok(if masks.is_empty() {
            PassReport::default()
        } else {
            PassReport::note(format!(
                "{} sparse tensors kept at their pruned zeros after every step",
                masks.len()
            ))
        })
    }
}
