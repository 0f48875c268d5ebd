//! The one training loop. A [`Learner`] trains any [`Task`] with AdamW, warm-up and cosine
//! decay, gradient accumulation and clipping; evaluates on a cadence; keeps the best weights
//! and stops early on a strategy; writes metrics and checkpoints from which a resumed run
//! continues bit for bit; calls hooks after every optimiser step; and reports progress to an
//! [`Observer`]. Tasks know nothing of any of this.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde::Serialize;

use crate::checkpoint::{
    latest, load_into, publish, read_state, save_tensors, step_dir, values_of, TrainerState,
};
use crate::error::{io_err, Ctx, TrainError};
use crate::optim::{clip_factor, global_grad_norm, AdamW, AdamWParams};
use crate::parallel::{
    all_reduce_step, broadcast_from_rank0, Communicator, Shard, Single, StepStats,
};
use crate::progress::{Event, Observer, Silent, StopFlag};
pub use crate::records::{EvalRecord, StepRecord};
use crate::schedule::lr_at;
use crate::task::{BatchAt, EarlyStopping, Patience, Task};
use crate::training::Training;

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
        let cfg = self.training;
        let shard = Shard {
            rank: self.comm.rank(),
            world: self.comm.world(),
        };
        if cfg.batch_size < shard.world {
            return Err(TrainError::Invalid(format!(
                "batch_size {} is the combined micro-batch of all {} ranks: it must give each at least one row",
                cfg.batch_size, shard.world
            )));
        }
        let all_vars = task.variables();
        let trainable = task.trainable();
        let trainable_parameters = trainable.values().map(|v| v.elem_count()).sum();
        let mut opt = AdamW::new(
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
        .ctx(|| "creating the optimiser".into())?;
        let bpe = task.batches_per_epoch(cfg.batch_size).max(1);
        let total = cfg.total_steps(bpe);
        let warmup = cfg.warmup_steps(total);
        let keep_track = cfg.keep_best || cfg.patience > 0;

        let mut state = TrainerState {
            step: 0,
            units_seen: 0,
            elapsed_seconds: 0.0,
            best: None,
            since_best: 0,
            loss_since_eval: (0.0, 0),
            stopped_early: false,
        };
        let mut best_values: Option<BTreeMap<String, Tensor>> = None;
        let mut resumed_from = None;
        if resume {
            let root = self.checkpoints.clone().ok_or_else(|| {
                TrainError::Invalid("--resume: this stage writes no checkpoints".into())
            })?;
            let dir = latest(&root).ok_or_else(|| {
                TrainError::Invalid(format!("--resume: no checkpoint in {}", root.display()))
            })?;
            state = read_state(&dir)?;
            load_into(&all_vars, &dir.join("model.safetensors"), &self.device)?;
            opt.load(&dir.join("optimizer.safetensors"))
                .ctx(|| format!("{}: loading the optimiser", dir.display()))?;
            let best = dir.join("best.safetensors");
            if cfg.keep_best && best.is_file() {
                let t = candle_core::safetensors::load(&best, &self.device)
                    .ctx(|| format!("reading {}", best.display()))?;
                best_values = Some(t.into_iter().collect());
            }
            resumed_from = Some(state.step);
            tracing::info!(stage = %self.stage, step = state.step, checkpoint = %dir.display(), "resumed");
        }
        if shard.world > 1 {
            broadcast_from_rank0(self.comm, &all_vars)?;
        }
        let mut metrics = match self.metrics.as_ref().filter(|_| self.writes()) {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                }
                truncate_metrics(p, &self.stage, state.step).map_err(io_err(p))?;
                Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(io_err(p))?,
                )
            }
            None => None,
        };
        let stage = self.stage.clone();
        self.observer.event(&Event::Started {
            stage: &stage,
            unit: "steps",
            total: total as u64,
            done: state.step as u64,
        });

        let mut evals = vec![];
        let mut steps_log = vec![];
        let start = Instant::now();
        let base_elapsed = state.elapsed_seconds;
        let base_units = state.units_seen;
        let mut interrupted = false;
        let mut stopped_early = state.stopped_early;
        let unit = task.unit();
        // A group stops at the step after any rank was asked to (the flag travels with the
        // step's sum), so that no rank waits on one that has left.
        let mut group_stop = false;
        let mut part_names: Option<Vec<String>> = None;

        while state.step < total && !stopped_early {
            let asked = if shard.world > 1 {
                group_stop
            } else {
                self.stop.is_some_and(|s| s.is_set())
            };
            let stop_now = asked || self.stop_at.is_some_and(|s| state.step >= s);
            if stop_now {
                interrupted = true;
                break;
            }
            let step = state.step;
            let t0 = Instant::now();
            let mut grads: HashMap<String, Tensor> = HashMap::new();
            let mut loss_sum = 0f32;
            let mut parts: BTreeMap<String, f32> = BTreeMap::new();
            let mut units = 0usize;
            let (mut forward_total, mut backward_total) = (0f64, 0f64);
            let mut non_finite = None;
            for micro in 0..cfg.grad_accum {
                let at = BatchAt {
                    step,
                    micro,
                    index: step * cfg.grad_accum + micro,
                    batch_size: cfg.batch_size,
                    seed: cfg.seed,
                    shard,
                };
                let tf = Instant::now();
                let losses = task.loss(&at)?;
                let forward_s = tf.elapsed().as_secs_f64();
                let value = losses
                    .total
                    .to_scalar::<f32>()
                    .ctx(|| "loss value".into())?;
                if !value.is_finite() {
                    // Reported after the step's sum, so that a group's other ranks learn of it
                    // and all stop together.
                    non_finite = Some(value);
                    break;
                }
                let scaled =
                    (&losses.total / cfg.grad_accum as f64).ctx(|| "scaling the loss".into())?;
                let tb = Instant::now();
                let g = scaled
                    .backward()
                    .ctx(|| format!("backward pass at step {step}"))?;
                let backward_s = tb.elapsed().as_secs_f64();
                tracing::debug!(step, micro, forward_s, backward_s, "micro-batch");
                forward_total += forward_s;
                backward_total += backward_s;
                for (name, var) in &trainable {
                    if let Some(gr) = g.get(var.as_tensor()) {
                        match grads.entry(name.clone()) {
                            std::collections::hash_map::Entry::Occupied(mut o) => {
                                let sum = (o.get() + gr).ctx(|| "accumulating gradients".into())?;
                                o.insert(sum);
                            }
                            std::collections::hash_map::Entry::Vacant(v) => {
                                v.insert(gr.clone());
                            }
                        }
                    }
                }
                loss_sum += value;
                for (k, v) in losses.parts {
                    *parts.entry(k.to_string()).or_insert(0.0) += v;
                }
                units += losses.units;
            }
            let a = cfg.grad_accum as f32;
            let (mut loss, mut parts): (f32, BTreeMap<String, f32>) = (
                loss_sum / a,
                parts.into_iter().map(|(k, v)| (k, v / a)).collect(),
            );
            let to = Instant::now();
            let mut any_non_finite = non_finite.is_some();
            if shard.world > 1 {
                let names = part_names.get_or_insert_with(|| parts.keys().cloned().collect());
                let local = StepStats {
                    units,
                    loss,
                    parts,
                    non_finite: any_non_finite,
                    stop: self.stop.is_some_and(|s| s.is_set()),
                };
                let (combined, all) =
                    all_reduce_step(self.comm, &trainable, &grads, &local, names)?;
                grads = combined;
                (units, loss, parts, group_stop) = (all.units, all.loss, all.parts, all.stop);
                any_non_finite = all.non_finite;
            }
            if any_non_finite {
                let dir = self.save(&state, &all_vars, &opt, &best_values, start, base_elapsed)?;
                return Err(TrainError::NonFinite {
                    step,
                    value: non_finite.unwrap_or(f32::NAN),
                    checkpoint: dir,
                });
            }
            let lr = lr_at(step, total, cfg.lr, warmup, cfg.min_lr_ratio);
            let norm = global_grad_norm(&grads).ctx(|| "gradient norm".into())?;
            opt.step_scaled(&grads, lr, clip_factor(norm, cfg.max_grad_norm))
                .ctx(|| format!("optimiser step {step}"))?;
            for hook in self.after_step.iter_mut() {
                hook(&trainable)?;
            }
            let optimizer_s = to.elapsed().as_secs_f64();
            tracing::debug!(step, optimizer_s, "optimiser step");
            state.step += 1;
            state.units_seen += units as u64;
            let done = state.step;
            let epoch = (done * cfg.grad_accum - 1) / bpe;
            let record = StepRecord {
                stage: stage.clone(),
                step: done,
                epoch,
                loss,
                parts,
                lr,
                grad_norm: norm,
                throughput: BTreeMap::from([(
                    format!("{unit}_per_second"),
                    units as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                )]),
                seconds: BTreeMap::from([
                    ("forward".to_string(), forward_total),
                    ("backward".to_string(), backward_total),
                    ("optimizer".to_string(), optimizer_s),
                ]),
            };
            state.loss_since_eval.0 += record.loss as f64;
            state.loss_since_eval.1 += 1;
            if let Some(f) = metrics.as_mut() {
                write_line(f, "train", &record)
                    .map_err(io_err(self.metrics.as_ref().expect("open")))?;
            }
            self.observer.event(&Event::Step(&record));
            steps_log.push(record);

            let last = done == total;
            let epoch_end = ((done - 1) * cfg.grad_accum) / bpe < (done * cfg.grad_accum) / bpe;
            let due = (cfg.eval_every > 0 && done.is_multiple_of(cfg.eval_every))
                || (cfg.eval_every == 0 && epoch_end)
                || last;
            let mut evaluated = false;
            if due {
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
                let e = EvalRecord {
                    stage: stage.clone(),
                    step: done,
                    epoch,
                    metrics: m,
                    score: ev.score,
                    summary: ev.summary,
                };
                if let Some(f) = metrics.as_mut() {
                    write_line(f, "eval", &e)
                        .map_err(io_err(self.metrics.as_ref().expect("open")))?;
                }
                self.observer.event(&Event::Eval(&e));
                if keep_track {
                    let better = state.best.as_ref().is_none_or(|b| {
                        e.score.0 > b.score.0 || (e.score.0 == b.score.0 && e.score.1 > b.score.1)
                    });
                    if better {
                        if cfg.keep_best {
                            best_values = Some(values_of(&trainable)?);
                        }
                        state.best = Some(e.clone());
                        state.since_best = 0;
                    } else {
                        state.since_best += 1;
                        if self.early_stopping.should_stop(state.since_best) {
                            let text = format!(
                                "{stage}: {}",
                                self.early_stopping.reason(state.since_best)
                            );
                            self.observer.event(&Event::Note {
                                stage: &stage,
                                text: &text,
                            });
                            stopped_early = true;
                        }
                    }
                }
                evals.push(e);
                evaluated = true;
            }
            state.stopped_early = stopped_early;
            let checkpoint_due = match cfg.checkpoint_every {
                0 => evaluated,
                n => done.is_multiple_of(n),
            };
            if self.checkpoints.is_some()
                && self.writes()
                && (checkpoint_due || last || stopped_early)
            {
                self.save(&state, &all_vars, &opt, &best_values, start, base_elapsed)?;
            }
        }
        if interrupted && self.checkpoints.is_some() && self.writes() {
            let dir = self.save(&state, &all_vars, &opt, &best_values, start, base_elapsed)?;
            let text = format!(
                "interrupted at step {}: checkpoint saved in {}",
                state.step,
                dir.display()
            );
            self.observer.event(&Event::Note {
                stage: &stage,
                text: &text,
            });
        }
        if let Some(values) = &best_values {
            let path = PathBuf::from("(best weights)");
            crate::checkpoint::set_from(
                &trainable,
                &values.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                &path,
            )?;
        }
        self.observer.event(&Event::Finished { stage: &stage });
        let seconds = start.elapsed().as_secs_f64();
        Ok(LearnOutcome {
            stage,
            steps: state.step,
            interrupted,
            resumed_from,
            stopped_early,
            units: state.units_seen,
            unit: unit.to_string(),
            seconds,
            units_per_second: (state.units_seen - base_units) as f64 / seconds.max(1e-9),
            evals,
            steps_log,
            best: state.best,
            trainable_parameters,
        })
    }

    fn save(
        &self,
        state: &TrainerState,
        vars: &BTreeMap<String, Var>,
        opt: &AdamW,
        best: &Option<BTreeMap<String, Tensor>>,
        start: Instant,
        base_elapsed: f64,
    ) -> Result<PathBuf, TrainError> {
        let root = self
            .checkpoints
            .as_ref()
            .ok_or_else(|| TrainError::Invalid("this stage writes no checkpoints".into()))?;
        let dir = step_dir(root, state.step);
        if !self.writes() {
            // Rank 0 writes the group's checkpoint.
            return Ok(dir);
        }
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let st = TrainerState {
            elapsed_seconds: base_elapsed + start.elapsed().as_secs_f64(),
            ..state.clone()
        };
        // Written whole beside its place and renamed in; a failure (a full disk) leaves the
        // previous checkpoints as they were and no temporary folder.
        distill_files::write_folder(&dir, "checkpoint", |tmp| -> Result<(), TrainError> {
            save_tensors(&values_of(vars)?, &tmp.join("model.safetensors"))?;
            opt.save(&tmp.join("optimizer.safetensors"))
                .ctx(|| format!("{}: saving the optimiser", tmp.display()))?;
            if let Some(b) = best {
                save_tensors(b, &tmp.join("best.safetensors"))?;
            }
            let json = serde_json::to_vec_pretty(&st).expect("state serialises");
            let path = tmp.join("state.json");
            std::fs::write(&path, json).map_err(io_err(&path))
        })?;
        publish(root, &dir, self.training.keep_checkpoints).map_err(io_err(&dir))?;
        tracing::debug!(stage = %self.stage, step = state.step, dir = %dir.display(), "checkpoint");
        Ok(dir)
    }
}

fn write_line(f: &mut std::fs::File, kind: &str, record: &impl Serialize) -> std::io::Result<()> {
    let mut v = serde_json::to_value(record).expect("record serialises");
    v["kind"] = serde_json::json!(kind);
    writeln!(f, "{v}")
}

/// Drops metric lines of `stage` past `step` (they belong to steps a resume will redo).
fn truncate_metrics(path: &Path, stage: &str, step: usize) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: String = text
        .lines()
        .filter(|l| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                return false;
            };
            let ours = v
                .get("stage")
                .and_then(|s| s.as_str())
                .is_none_or(|s| s == stage);
            !ours
                || v.get("step")
                    .and_then(|s| s.as_u64())
                    .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    distill_files::write_file(path, kept.as_bytes()).map_err(std::io::Error::other)
}
