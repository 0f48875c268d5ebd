//! What the learner logs: a record per training step and per evaluation (metrics lines,
//! progress events, reports).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One logged training step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub stage: String,
    pub step: usize,
    pub epoch: usize,
    pub loss: f32,
    /// The loss's named parts (`soft`, `hard`, `hidden`).
    #[serde(flatten)]
    pub parts: BTreeMap<String, f32>,
    pub lr: f64,
    pub grad_norm: f64,
    /// `tokens_per_second` or `examples_per_second`.
    #[serde(flatten)]
    pub throughput: BTreeMap<String, f64>,
    /// Where the step's time went: `forward` (teacher, student and loss), `backward`,
    /// `optimizer` (gradient norm, update and after-step hooks), in seconds.
    #[serde(default)]
    pub seconds: BTreeMap<String, f64>,
}

impl StepRecord {
    pub fn part(&self, name: &str) -> Option<f32> {
        self.parts.get(name).copied()
    }
    /// Units (tokens or examples) per second of this step.
    pub fn units_per_second(&self) -> f64 {
        self.throughput.values().next().copied().unwrap_or(0.0)
    }
}

/// One evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub stage: String,
    pub step: usize,
    pub epoch: usize,
    /// The task's metrics, plus `train_loss` (mean since the previous evaluation) and `lr`.
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
    /// The task's score: higher is better, compared in order.
    #[serde(skip)]
    pub score: (f64, f64),
    #[serde(skip)]
    pub summary: String,
}

impl EvalRecord {
    pub fn get(&self, metric: &str) -> Option<f64> {
        self.metrics.get(metric).copied()
    }
}
