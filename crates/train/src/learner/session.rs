//! What one session of a stage holds while it trains, and the small rules of its loop: the
//! stage's plan (steps, warm-up, epoch length), when evaluations fall due, the evaluation
//! record, and the clock over all sessions of the stage.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Var;

use super::accumulation::Accumulation;
use super::checkpointing::Checkpointing;
use super::metrics_log::MetricsLog;
use super::tracking::Tracker;
use crate::checkpoint::TrainerState;
use crate::error::{Ctx, TrainError};
use crate::optim::{AdamW, AdamWParams};
use crate::records::{EvalRecord, StepRecord};
use crate::task::Task;
use crate::training::Training;

/// The shape of a stage: its steps, warm-up and the micro-batches of an epoch.
pub(super) struct Plan {
    pub(super) total: usize,
    pub(super) warmup: usize,
    pub(super) batches_per_epoch: usize,
    /// `tokens` or `examples`.
    pub(super) unit: &'static str,
}

impl Plan {
    pub(super) fn of(cfg: &Training, task: &dyn Task) -> Self {
        let batches_per_epoch = task.batches_per_epoch(cfg.batch_size).max(1);
        let total = cfg.total_steps(batches_per_epoch);
        Self {
            total,
            warmup: cfg.warmup_steps(total),
            batches_per_epoch,
            unit: task.unit(),
        }
    }
}

/// AdamW over the trainable variables, with the run's settings.
pub(super) fn optimiser(
    cfg: &Training,
    trainable: &BTreeMap<String, Var>,
) -> Result<AdamW, TrainError> {
    AdamW::new(
        &trainable
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>(),
        AdamWParams {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        },
    )
    .ctx(|| "creating the optimiser".into())
}

/// Whether an evaluation follows step `done`: every `eval_every` steps (or at each epoch's
/// end when it is 0), and after the last.
pub(super) fn eval_due(cfg: &Training, done: usize, bpe: usize, last: bool) -> bool {
    let epoch_end = ((done - 1) * cfg.grad_accum) / bpe < (done * cfg.grad_accum) / bpe;
    (cfg.eval_every > 0 && done.is_multiple_of(cfg.eval_every))
        || (cfg.eval_every == 0 && epoch_end)
        || last
}

/// Evaluates `task` after step `state.step`: its metrics, the mean training loss since the
/// last evaluation (then reset) and the learning rate.
pub(super) fn evaluation_record(
    task: &mut dyn Task,
    state: &mut TrainerState,
    stage: &str,
    lr: f64,
    epoch: usize,
) -> Result<EvalRecord, TrainError> {
    let ev = task.evaluate()?;
    let mut m: BTreeMap<String, f64> = ev
        .metrics
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let (sum, n) = state.loss_since_eval;
    m.insert("train_loss".into(), sum / n.max(1) as f64);
    m.insert("lr".into(), lr);
    state.loss_since_eval = (0.0, 0);
    Ok(EvalRecord {
        stage: stage.to_string(),
        step: state.step,
        epoch,
        metrics: m,
        score: ev.score,
        summary: ev.summary,
    })
}

/// What a session of a stage holds while it trains.
pub(super) struct Session<'a> {
    pub(super) opt: AdamW,
    /// Every variable (checkpointed) and the trainable ones (optimised).
    pub(super) all_vars: BTreeMap<String, Var>,
    pub(super) trainable: BTreeMap<String, Var>,
    pub(super) state: TrainerState,
    pub(super) resumed_from: Option<usize>,
    pub(super) tracker: Tracker<'a>,
    pub(super) log: MetricsLog,
    pub(super) checkpoints: Checkpointing<'a>,
    pub(super) clock: Clock,
    pub(super) acc: Accumulation<'a>,
    pub(super) plan: Plan,
    pub(super) evals: Vec<EvalRecord>,
    pub(super) steps_log: Vec<StepRecord>,
    /// The group agreed to stop before the next step.
    pub(super) group_stop: bool,
}

impl Session<'_> {
    /// Saves a checkpoint of the state now.
    pub(super) fn save(&self) -> Result<PathBuf, TrainError> {
        self.checkpoints.save(
            &self.clock.stamp(&self.state),
            &self.all_vars,
            &self.opt,
            &self.tracker.best_values,
        )
    }
}

/// Wall-clock time of a stage over all its sessions.
pub(super) struct Clock {
    pub(super) start: Instant,
    base_elapsed: f64,
    pub(super) base_units: u64,
}

impl Clock {
    pub(super) fn start(state: &TrainerState) -> Self {
        Self {
            start: Instant::now(),
            base_elapsed: state.elapsed_seconds,
            base_units: state.units_seen,
        }
    }

    /// `state` with the time spent so far, for a checkpoint.
    pub(super) fn stamp(&self, state: &TrainerState) -> TrainerState {
        TrainerState {
            elapsed_seconds: self.base_elapsed + self.start.elapsed().as_secs_f64(),
            ..state.clone()
        }
    }
}
