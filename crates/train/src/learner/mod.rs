//! The one training loop. A [`Learner`] trains any [`Task`] with AdamW, warm-up and cosine
//! decay, gradient accumulation and clipping; evaluates on a cadence; keeps the best weights
//! and stops early on a strategy; writes metrics and checkpoints from which a resumed run
//! continues bit for bit; calls hooks after every optimiser step; and reports progress to an
//! [`Observer`]. Tasks know nothing of any of this.
//!
//! [`Learner::fit`] is a short loop over parts with one job each: [`accumulation`] (a step's
//! micro-batches → one set of gradients, summed over a group), [`checkpointing`] (save,
//! restore), [`tracking`] (the best evaluation, keep-best, early stopping) and [`metrics_log`]
//! (`metrics.jsonl`). A new per-step behaviour is one more part the loop calls, or a hook
//! ([`Learner::after_step`]).

mod accumulation;
mod checkpointing;
mod metrics_log;
mod session;
mod tracking;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Var};
use serde::Serialize;

use crate::checkpoint::TrainerState;
use crate::error::{Ctx, TrainError};
use crate::optim::{clip_factor, global_grad_norm, AdamW};
use crate::parallel::{broadcast_from_rank0, Communicator, Shard, Single};
use crate::progress::{Event, Observer, Silent, StopFlag};
pub use crate::records::{EvalRecord, StepRecord};
use crate::schedule::lr_at;
use crate::task::{EarlyStopping, Patience, Task};
use crate::training::Training;

use accumulation::{Accumulation, StepGradients};
use checkpointing::Checkpointing;
use metrics_log::MetricsLog;
use session::{eval_due, evaluation_record, optimiser, Clock, Plan, Session};
use tracking::Tracker;

/// What a stage did.
#[derive(Clone, Debug, Serialize)]
pub struct LearnOutcome {
    pub stage: String,
    pub steps: usize,
    pub interrupted: bool,
    pub resumed_from: Option<usize>,
    pub stopped_early: bool,
    /// Tokens or examples trained on, in all sessions of the stage.
    pub units: u64,
    pub unit: String,
    pub seconds: f64,
    /// Of this session.
    pub units_per_second: f64,
    pub evals: Vec<EvalRecord>,
    pub steps_log: Vec<StepRecord>,
    /// The evaluation whose weights were kept (or the best one, without keep-best).
    pub best: Option<EvalRecord>,
    pub trainable_parameters: usize,
}

/// Called after every optimiser step with the trainable variables.
pub type AfterStep<'a> = Box<dyn FnMut(&BTreeMap<String, Var>) -> Result<(), TrainError> + 'a>;

/// A training loop for one stage.
pub struct Learner<'a> {
    training: &'a Training,
    stage: String,
    checkpoints: Option<PathBuf>,
    metrics: Option<PathBuf>,
    observer: &'a dyn Observer,
    stop: Option<&'a StopFlag>,
    stop_at: Option<usize>,
    after_step: Vec<AfterStep<'a>>,
    early_stopping: Box<dyn EarlyStopping + 'a>,
    device: Device,
    comm: &'a dyn Communicator,
}

impl<'a> Learner<'a> {
    /// A learner for `stage` (it names metrics lines, checkpoints and progress).
    pub fn new(training: &'a Training, stage: &str) -> Self {
        Self {
            training,
            stage: stage.to_string(),
            checkpoints: None,
            metrics: None,
            observer: &Silent,
            stop: None,
            stop_at: None,
            after_step: vec![],
            early_stopping: Box::new(Patience(training.patience)),
            device: Device::Cpu,
            comm: &Single,
        }
    }

    /// Writes checkpoints into `dir` (`dir/step-N/`, `dir/latest`).
    pub fn checkpoints(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoints = Some(dir.into());
        self
    }

    /// Appends one JSON line per step and evaluation to `path`.
    pub fn metrics(mut self, path: impl Into<PathBuf>) -> Self {
        self.metrics = Some(path.into());
        self
    }

    pub fn observer(mut self, observer: &'a dyn Observer) -> Self {
        self.observer = observer;
        self
    }

    /// Stops with a checkpoint once `flag` is set.
    pub fn stop_flag(mut self, flag: &'a StopFlag) -> Self {
        self.stop = Some(flag);
        self
    }

    /// Stops (with a checkpoint, as if interrupted) once this step is reached.
    pub fn stop_at(mut self, step: Option<usize>) -> Self {
        self.stop_at = step;
        self
    }

    /// Runs `hook` after every optimiser step (e.g. to keep pruned weights at zero).
    pub fn after_step(mut self, hook: AfterStep<'a>) -> Self {
        self.after_step.push(hook);
        self
    }

    /// Replaces the early-stopping strategy (default: `patience` of the settings).
    pub fn early_stopping(mut self, s: Box<dyn EarlyStopping + 'a>) -> Self {
        self.early_stopping = s;
        self
    }

    /// The device checkpoints are loaded onto (the variables').
    pub fn device(mut self, device: &Device) -> Self {
        self.device = device.clone();
        self
    }

    /// Trains as one rank of a data-parallel group: each rank reads its part of every combined
    /// micro-batch (`batch_size` rows over all ranks), and the gradients are summed after
    /// every step ([`crate::parallel`]), so the group trains as one process would on the
    /// combined batch. Only rank 0 writes metrics and checkpoints; every rank evaluates.
    pub fn data_parallel(mut self, comm: &'a dyn Communicator) -> Self {
        self.comm = comm;
        self
    }

    fn writes(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Trains `task` from scratch or, with `resume`, from the newest checkpoint.
    pub fn fit(mut self, task: &mut dyn Task, resume: bool) -> Result<LearnOutcome, TrainError> {
        let mut s = self.start(task, resume)?;
        let interrupted = loop {
            if s.state.step >= s.plan.total || s.state.stopped_early {
                break false;
            }
            if self.stop_requested(s.group_stop, s.state.step, s.acc.shard) {
                break true;
            }
            self.step(&mut s, task)?;
        };
        self.finish(s, interrupted)
    }

    /// A session of the stage: the optimiser, and the state restored from the newest
    /// checkpoint on `resume`; the metrics log opened, the group's weights made equal.
    fn start(&mut self, task: &mut dyn Task, resume: bool) -> Result<Session<'a>, TrainError> {
        let cfg = self.training;
        let shard = self.shard()?;
        let all_vars = task.variables();
        let trainable = task.trainable();
        let mut opt = optimiser(cfg, &trainable)?;
        let plan = Plan::of(cfg, task);
        let checkpoints = Checkpointing {
            root: self.checkpoints.clone(),
            writes: self.writes(),
            device: self.device.clone(),
            training: cfg,
            stage: self.stage.clone(),
        };
        let (state, best) = if resume {
            let r = checkpoints.restore(&all_vars, &mut opt)?;
            (r.state, r.best)
        } else {
            (TrainerState::default(), None)
        };
        let early = std::mem::replace(&mut self.early_stopping, Box::new(Patience(0)));
        if shard.world > 1 {
            broadcast_from_rank0(self.comm, &all_vars)?;
        }
        let log_path = self.metrics.as_deref().filter(|_| self.writes());
        let log = MetricsLog::open(log_path, &self.stage, state.step)?;
        self.observer.event(&Event::Started {
            stage: &self.stage,
            unit: "steps",
            total: plan.total as u64,
            done: state.step as u64,
        });
        Ok(Session {
            opt,
            all_vars,
            trainable,
            resumed_from: resume.then_some(state.step),
            clock: Clock::start(&state),
            state,
            tracker: Tracker::new(cfg.keep_best, cfg.patience, early, best),
            log,
            checkpoints,
            acc: Accumulation::new(cfg, shard, self.comm),
            plan,
            evals: vec![],
            steps_log: vec![],
            group_stop: false,
        })
    }

    /// One optimiser step, with the evaluation and checkpoint that fall due after it.
    fn step(&mut self, s: &mut Session<'a>, task: &mut dyn Task) -> Result<(), TrainError> {
        let step = s.state.step;
        let t0 = Instant::now();
        let g = s.acc.step(task, &s.trainable, step, self.stop)?;
        s.group_stop = g.group_stop;
        if g.any_non_finite {
            let dir = s.save()?;
            return Err(TrainError::NonFinite {
                step,
                value: g.non_finite.unwrap_or(f32::NAN),
                checkpoint: dir,
            });
        }
        let record = self.optimiser_step(&mut s.opt, &s.trainable, &g, step, &s.plan, t0)?;
        let (lr, epoch) = (record.lr, record.epoch);
        s.state.step += 1;
        s.state.units_seen += g.units as u64;
        s.state.loss_since_eval.0 += record.loss as f64;
        s.state.loss_since_eval.1 += 1;
        s.log.step(&record)?;
        self.observer.event(&Event::Step(&record));
        s.steps_log.push(record);

        let done = s.state.step;
        let last = done == s.plan.total;
        let evaluated = eval_due(self.training, done, s.plan.batches_per_epoch, last);
        if evaluated {
            self.evaluate(s, task, lr, epoch)?;
        }
        if s.checkpoints
            .due(done, evaluated, last, s.state.stopped_early)
        {
            s.save()?;
        }
        Ok(())
    }

    /// Evaluates after a step: the record logged and reported, the best tracked, early
    /// stopping decided.
    fn evaluate(
        &self,
        s: &mut Session<'a>,
        task: &mut dyn Task,
        lr: f64,
        epoch: usize,
    ) -> Result<(), TrainError> {
        let e = evaluation_record(task, &mut s.state, &self.stage, lr, epoch)?;
        s.log.eval(&e)?;
        self.observer.event(&Event::Eval(&e));
        if let Some(reason) = s.tracker.observe(&e, &mut s.state, &s.trainable)? {
            let text = format!("{}: {reason}", self.stage);
            self.observer.event(&Event::Note {
                stage: &self.stage,
                text: &text,
            });
            s.state.stopped_early = true;
        }
        s.evals.push(e);
        Ok(())
    }

    /// Ends the session: a checkpoint when interrupted, the best weights put back, the outcome.
    fn finish(&self, s: Session<'a>, interrupted: bool) -> Result<LearnOutcome, TrainError> {
        if interrupted && s.checkpoints.enabled() {
            let dir = s.save()?;
            let text = format!(
                "interrupted at step {}: checkpoint saved in {}",
                s.state.step,
                dir.display()
            );
            self.observer.event(&Event::Note {
                stage: &self.stage,
                text: &text,
            });
        }
        s.tracker.restore_best(&s.trainable)?;
        self.observer.event(&Event::Finished { stage: &self.stage });
        let seconds = s.clock.start.elapsed().as_secs_f64();
        Ok(LearnOutcome {
            stage: self.stage.clone(),
            steps: s.state.step,
            interrupted,
            resumed_from: s.resumed_from,
            stopped_early: s.state.stopped_early,
            units: s.state.units_seen,
            unit: s.plan.unit.to_string(),
            seconds,
            units_per_second: (s.state.units_seen - s.clock.base_units) as f64 / seconds.max(1e-9),
            evals: s.evals,
            steps_log: s.steps_log,
            best: s.state.best,
            trainable_parameters: s.trainable.values().map(|v| v.elem_count()).sum(),
        })
    }

    /// This process's place in its group; a combined batch too small for the group is an
    /// error.
    fn shard(&self) -> Result<Shard, TrainError> {
        let shard = Shard {
            rank: self.comm.rank(),
            world: self.comm.world(),
        };
        if self.training.batch_size < shard.world {
            return Err(TrainError::Invalid(format!(
                "batch_size {} is the combined micro-batch of all {} ranks: it must give each at least one row",
                self.training.batch_size, shard.world
            )));
        }
        Ok(shard)
    }

    /// Whether to stop before step `step`: asked to (in a group, as the group agreed after
    /// the last step), or at the `stop_at` step.
    fn stop_requested(&self, group_stop: bool, step: usize, shard: Shard) -> bool {
        let asked = if shard.world > 1 {
            group_stop
        } else {
            self.stop.is_some_and(|s| s.is_set())
        };
        asked || self.stop_at.is_some_and(|s| step >= s)
    }

    /// Applies step `step`'s gradients (clipped, at the schedule's rate), runs the hooks, and
    /// returns the step's record.
    fn optimiser_step(
        &mut self,
        opt: &mut AdamW,
        trainable: &BTreeMap<String, Var>,
        g: &StepGradients,
        step: usize,
        plan: &Plan,
        started: Instant,
    ) -> Result<StepRecord, TrainError> {
        let cfg = self.training;
        let to = Instant::now();
        let lr = lr_at(step, plan.total, cfg.lr, plan.warmup, cfg.min_lr_ratio);
        let norm = global_grad_norm(&g.grads).ctx(|| "gradient norm".into())?;
        opt.step_scaled(&g.grads, lr, clip_factor(norm, cfg.max_grad_norm))
            .ctx(|| format!("optimiser step {step}"))?;
        for hook in self.after_step.iter_mut() {
            hook(trainable)?;
        }
        let optimizer_s = to.elapsed().as_secs_f64();
        tracing::debug!(step, optimizer_s, "optimiser step");
        let done = step + 1;
        Ok(StepRecord {
            stage: self.stage.clone(),
            step: done,
            epoch: (done * cfg.grad_accum - 1) / plan.batches_per_epoch,
            loss: g.loss,
            parts: g.parts.clone(),
            lr,
            grad_norm: norm,
            throughput: BTreeMap::from([(
                format!("{}_per_second", plan.unit),
                g.units as f64 / started.elapsed().as_secs_f64().max(1e-9),
            )]),
            seconds: BTreeMap::from([
                ("forward".to_string(), g.forward_seconds),
                ("backward".to_string(), g.backward_seconds),
                ("optimizer".to_string(), optimizer_s),
            ]),
        })
    }
}
