//! What the [`crate::Learner`] trains: a [`Task`] knows its data, its model and its objective;
//! the learner owns the loop, the optimiser, checkpoints, metrics and progress.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};

use crate::error::TrainError;
use crate::parallel::Shard;

/// Where in training a micro-batch sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchAt {
    /// Optimiser step (0-based) and micro-batch within it.
    pub step: usize,
    pub micro: usize,
    /// Micro-batch index over the whole run: `step · grad_accum + micro`.
    pub index: usize,
    /// Rows of the combined micro-batch: all ranks' together (`train.batch_size`, whatever
    /// the number of ranks, so a run trains the same on one device or eight).
    pub batch_size: usize,
    pub seed: u64,
    /// This rank's part of the combined micro-batch: data-parallel ranks read disjoint rows
    /// of the batch one process would read.
    pub shard: Shard,
}

impl BatchAt {
    /// This rank's positions in an endless stream of rows read a combined micro-batch at a
    /// time (a causal-LM run's blocks, which wrap into the next epoch's order).
    pub fn stream_rows(&self) -> std::ops::Range<usize> {
        let b = self.batch_size;
        let mine = self.shard.rows(b);
        self.index * b + mine.start..self.index * b + mine.end
    }

    /// For data read in whole epochs of `n` rows in combined micro-batches (the last one of an
    /// epoch shorter): the epoch, and this rank's positions within that epoch's order, and
    /// where the combined micro-batch starts (so per-row draws can be taken from it).
    pub fn epoch_rows(&self, n: usize) -> (u64, std::ops::Range<usize>, usize) {
        let b = self.batch_size;
        let per_epoch = n.div_ceil(b).max(1);
        let chunk = self.index % per_epoch;
        let start = chunk * b;
        let len = b.min(n.saturating_sub(start));
        let mine = self.shard.rows(len);
        (
            (self.index / per_epoch) as u64,
            start + mine.start..start + mine.end,
            start,
        )
    }
}

/// A micro-batch's loss.
pub struct Losses {
    /// The scalar the learner differentiates.
    pub total: Tensor,
    /// Its named parts (`soft`, `hard`, `hidden`), for metrics and the report.
    pub parts: Vec<(&'static str, f32)>,
    /// Tokens or examples in the batch, for throughput.
    pub units: usize,
}

/// One evaluation on the validation data.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Named metrics (`val_ppl`, `val_kl`, `top1_agreement`, `val_acc`, `val_loss`, ...).
    pub metrics: Vec<(&'static str, f64)>,
    /// Higher is better, compared in order (primary, tie-break): what keep-best and early
    /// stopping go by.
    pub score: (f64, f64),
    /// One line for people.
    pub summary: String,
}

/// A training task: causal-LM distillation, classification, ...
pub trait Task {
    /// Every variable the run owns (saved in checkpoints, restored on resume).
    fn variables(&self) -> BTreeMap<String, Var>;
    /// Whether the variable `name` is kept as it is.
    fn is_frozen(&self, _name: &str) -> bool {
        false
    }
    /// The variables the optimiser updates: all but the frozen ones.
    fn trainable(&self) -> BTreeMap<String, Var> {
        self.variables()
            .into_iter()
            .filter(|(k, _)| !self.is_frozen(k))
            .collect()
    }
    /// Micro-batches in one pass over the training data.
    fn batches_per_epoch(&self, batch_size: usize) -> usize;
    /// `tokens` or `examples`.
    fn unit(&self) -> &'static str;
    /// The loss of the micro-batch at `at`; the batch must be a function of `at` alone (and
    /// the data), so that a resumed run sees exactly what an uninterrupted one would.
    fn loss(&mut self, at: &BatchAt) -> Result<Losses, TrainError>;
    /// Evaluates the model as it is now.
    fn evaluate(&mut self) -> Result<Evaluation, TrainError>;
}

/// When training stops before its last step, given the evaluations so far.
pub trait EarlyStopping {
    /// Called after every evaluation with how many evaluations passed since the best one.
    fn should_stop(&mut self, since_best: usize) -> bool;
    /// A line saying why it stopped.
    fn reason(&self, since_best: usize) -> String;
}

/// Stops after `patience` evaluations without a better score (`0`: never).
pub struct Patience(pub usize);

impl EarlyStopping for Patience {
    fn should_stop(&mut self, since_best: usize) -> bool {
        self.0 > 0 && since_best >= self.0
    }
    fn reason(&self, since_best: usize) -> String {
        format!("no better validation score in {since_best} evaluations; stopping early")
    }
}
