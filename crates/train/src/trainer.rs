//! The training loop: distillation objective, AdamW with warm-up and cosine decay, gradient
//! accumulation and clipping, evaluation, checkpoints with exact resume, metrics and progress.
//!
//! The trainer is generic over [`LogitsModel`]: anything that maps token ids to logits (and
//! hidden states). Models know nothing of checkpoints or metrics.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Init, VarBuilder, VarMap};
use serde::Serialize;

use crate::checkpoint::{checkpoint_dir, latest, publish, tmp_sibling, write_atomic, TrainerState};
use crate::config::{DistillConfig, TrainConfig};
use crate::data::BlockSet;
use crate::losses::{
    fused_forward_kl_ce, soft_loss, CrossEntropy, ForwardKl, HiddenLoss, Loss, LossInputs,
    SoftLossParams,
};
use crate::metrics::NllSum;
use crate::optim::{clip_grad_norm, AdamW, AdamWParams};
use crate::schedule::lr_at;

/// A model the trainer can train or distil from.
pub trait LogitsModel {
    /// Logits `[batch, seq, vocab]` for `ids` `[batch, seq]`, and hidden states on request
    /// (embedding output first).
    fn logits(
        &self,
        ids: &Tensor,
        want_hidden: bool,
    ) -> candle_core::Result<(Tensor, Option<Vec<Tensor>>)>;
}

impl LogitsModel for distill_models::Llama {
    fn logits(
        &self,
        ids: &Tensor,
        want_hidden: bool,
    ) -> candle_core::Result<(Tensor, Option<Vec<Tensor>>)> {
        let out = self
            .forward(ids, None, want_hidden)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((out.logits, out.hidden_states))
    }
}

/// A GGUF teacher run with llama.cpp's CPU arithmetic: every sequence of the batch is run alone
/// (the batch holds equal-length blocks, so no padding is involved).
impl LogitsModel for distill_models::GgmlLlama {
    fn logits(
        &self,
        ids: &Tensor,
        want_hidden: bool,
    ) -> candle_core::Result<(Tensor, Option<Vec<Tensor>>)> {
        let batch: Vec<Vec<u32>> = ids.to_vec2::<u32>()?;
        let (logits, hidden) = self
            .forward_tensors(&batch, want_hidden)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let device = ids.device();
        let hidden = match hidden {
            Some(h) => Some(
                h.iter()
                    .map(|t| t.to_device(device))
                    .collect::<candle_core::Result<Vec<_>>>()?,
            ),
            None => None,
        };
        Ok((logits.to_device(device)?, hidden))
    }
}

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{context}: {source}")]
    Tensor {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("the loss became {value} at step {step}; the weights before that step were saved in {checkpoint}")]
    NonFinite {
        step: usize,
        value: f32,
        checkpoint: PathBuf,
    },
    #[error("{0}")]
    Invalid(String),
}

pub(crate) trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, TrainError>;
}
impl<T> Ctx<T> for candle_core::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, TrainError> {
        self.map_err(|source| TrainError::Tensor {
            context: what(),
            source,
        })
    }
}
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// One evaluation on the validation blocks.
#[derive(Clone, Debug, Serialize)]
pub struct EvalRecord {
    pub step: usize,
    pub val_ppl: f64,
    /// Forward KL(teacher ‖ student) at T = 1, per token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_kl: Option<f64>,
    /// Share of positions where student and teacher pick the same top token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    pub tokens: usize,
}

/// One logged training step.
#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    pub step: usize,
    pub loss: f32,
    pub soft: Option<f32>,
    pub hard: f32,
    pub hidden: Option<f32>,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_second: f64,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainOutcome {
    pub steps: usize,
    pub interrupted: bool,
    pub resumed_from: Option<usize>,
    pub train_tokens: u64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub evals: Vec<EvalRecord>,
    pub steps_log: Vec<StepRecord>,
    /// Teacher perplexity on the same validation blocks.
    pub teacher_val_ppl: Option<f64>,
}

/// Everything a training run needs.
pub struct Trainer<'a> {
    pub train_cfg: &'a TrainConfig,
    pub distill: &'a DistillConfig,
    pub student: &'a dyn LogitsModel,
    /// The student's variables (saved in checkpoints and optimised).
    pub varmap: &'a VarMap,
    pub student_hidden_size: usize,
    pub teacher: Option<&'a dyn LogitsModel>,
    pub teacher_hidden_size: usize,
    pub train: &'a BlockSet,
    pub valid: &'a BlockSet,
    pub run_dir: PathBuf,
    pub device: Device,
    /// Set (e.g. by Ctrl-C) to checkpoint and stop after the current step.
    pub stop: Arc<AtomicBool>,
    /// Stop (with a checkpoint) once this step is reached, as if interrupted.
    pub stop_at: Option<usize>,
    pub progress: bool,
}

struct Objective {
    soft: Box<dyn Loss>,
    /// Forward KL + CE in one fused CPU pass (same values and gradients as the composed losses).
    fused_temperature: Option<f64>,
    hidden: Vec<(usize, usize, f64, HiddenLoss)>,
    alpha: f64,
}

impl<'a> Trainer<'a> {
    fn blocks_for(
        &self,
        step: usize,
        micro: usize,
        orders: &mut HashMap<u64, Vec<usize>>,
    ) -> Vec<u32> {
        let b = self.train_cfg.batch_size;
        let n = self.train.len();
        let first = (step * self.train_cfg.grad_accum + micro) * b;
        let mut ids = Vec::with_capacity(b * self.train.block_size);
        for k in first..first + b {
            let epoch = (k / n) as u64;
            let order = orders
                .entry(epoch)
                .or_insert_with(|| self.train.epoch_order(self.train_cfg.seed, epoch));
            ids.extend_from_slice(&self.train.blocks[order[k % n]]);
        }
        ids
    }

    /// Trains from scratch or, with `resume`, from the newest checkpoint in the run folder.
    pub fn run(&self, resume: bool) -> Result<TrainOutcome, TrainError> {
        let cfg = self.train_cfg;
        if self.distill.needs_teacher() && self.teacher.is_none() {
            return Err(TrainError::Invalid(
                "the objective needs the teacher (alpha > 0 or hidden losses)".into(),
            ));
        }
        std::fs::create_dir_all(self.run_dir.join("checkpoints")).map_err(io_err(&self.run_dir))?;
        // Projections for hidden-state losses between different widths, trained with the student.
        let aux = VarMap::new();
        let objective = self.objective(&aux)?;
        let mut vars: HashMap<String, Var> = self
            .varmap
            .data()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (k, v) in aux.data().lock().unwrap_or_else(|p| p.into_inner()).iter() {
            vars.insert(format!("aux.{k}"), v.clone());
        }
        let mut opt = AdamW::new(
            &vars,
            AdamWParams {
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
                weight_decay: cfg.weight_decay,
            },
        )
        .ctx(|| "creating the optimiser".into())?;

        let mut state = TrainerState {
            step: 0,
            tokens_seen: 0,
            elapsed_seconds: 0.0,
        };
        let mut resumed_from = None;
        if resume {
            let dir = latest(&self.run_dir).ok_or_else(|| {
                TrainError::Invalid(format!(
                    "--resume: no checkpoint in {}",
                    self.run_dir.join("checkpoints").display()
                ))
            })?;
            state = self.load_checkpoint(&dir, &aux, &mut opt)?;
            resumed_from = Some(state.step);
            tracing::info!(step = state.step, checkpoint = %dir.display(), "resumed");
        }
        let metrics_path = self.run_dir.join("metrics.jsonl");
        truncate_metrics(&metrics_path, state.step).map_err(io_err(&metrics_path))?;
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(io_err(&metrics_path))?;

        let bar = if self.progress {
            let b = indicatif::ProgressBar::new(cfg.steps as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} train [{bar:30}] {pos}/{len} steps {msg} eta {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b.set_position(state.step as u64);
            b
        } else {
            indicatif::ProgressBar::hidden()
        };

        let mut teacher_val: Option<Vec<Tensor>> = None;
        let mut teacher_val_ppl = None;
        let mut evals = vec![];
        let mut steps_log = vec![];
        let mut orders = HashMap::new();
        let start = Instant::now();
        let base_elapsed = state.elapsed_seconds;
        let mut interrupted = false;
        let tokens_per_step = (cfg.batch_size * cfg.grad_accum * self.train.block_size) as u64;
        let log_every = (cfg.steps / 20).max(1);

        while state.step < cfg.steps {
            if self.stop.load(Ordering::SeqCst) || self.stop_at.is_some_and(|s| state.step >= s) {
                interrupted = true;
                break;
            }
            let step = state.step;
            let t0 = Instant::now();
            let mut grads: HashMap<String, Tensor> = HashMap::new();
            let (mut loss_sum, mut soft_sum, mut hard_sum, mut hidden_sum) =
                (0f32, 0f32, 0f32, 0f32);
            for micro in 0..cfg.grad_accum {
                let ids = self.blocks_for(step, micro, &mut orders);
                let ids =
                    Tensor::from_vec(ids, (cfg.batch_size, self.train.block_size), &self.device)
                        .ctx(|| "batch".into())?;
                let tf = Instant::now();
                let parts = self.loss(&objective, &ids)?;
                let forward_s = tf.elapsed().as_secs_f64();
                let value = parts.total.to_scalar::<f32>().ctx(|| "loss value".into())?;
                if !value.is_finite() {
                    let dir = self.save_checkpoint(&state, &aux, &opt, start, base_elapsed)?;
                    return Err(TrainError::NonFinite {
                        step,
                        value,
                        checkpoint: dir,
                    });
                }
                let scaled =
                    (&parts.total / cfg.grad_accum as f64).ctx(|| "scaling the loss".into())?;
                let tb = Instant::now();
                let g = scaled
                    .backward()
                    .ctx(|| format!("backward pass at step {step}"))?;
                let backward_s = tb.elapsed().as_secs_f64();
                tracing::debug!(step, micro, forward_s, backward_s, "micro-batch");
                for (name, var) in &vars {
                    if let Some(gr) = g.get(var.as_tensor()) {
                        let e = grads.entry(name.clone());
                        match e {
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
                soft_sum += parts.soft.unwrap_or(0.0);
                hard_sum += parts.hard;
                hidden_sum += parts.hidden.unwrap_or(0.0);
            }
            let norm = clip_grad_norm(&mut grads, cfg.clip_grad_norm)
                .ctx(|| "clipping gradients".into())?;
            let lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio);
            let to = Instant::now();
            opt.step(&grads, lr)
                .ctx(|| format!("optimiser step {step}"))?;
            tracing::debug!(
                step,
                optimizer_s = to.elapsed().as_secs_f64(),
                "optimiser step"
            );
            state.step += 1;
            state.tokens_seen += tokens_per_step;
            let a = cfg.grad_accum as f32;
            let record = StepRecord {
                step: state.step,
                loss: loss_sum / a,
                soft: (objective.alpha > 0.0).then_some(soft_sum / a),
                hard: hard_sum / a,
                hidden: (!objective.hidden.is_empty()).then_some(hidden_sum / a),
                lr,
                grad_norm: norm,
                tokens_per_second: tokens_per_step as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            };
            write_line(&mut metrics, "train", &record).map_err(io_err(&metrics_path))?;
            let msg = format!(
                "loss {:.3} · {:.0} tok/s",
                record.loss, record.tokens_per_second
            );
            if bar.is_hidden() && (state.step % log_every == 0 || state.step == 1) {
                // Not a terminal (CI, a log file): a line now and then instead of a bar.
                tracing::info!(step = state.step, of = cfg.steps, "{msg}");
            }
            bar.set_message(msg);
            bar.inc(1);
            steps_log.push(record);

            let last = state.step == cfg.steps;
            if (cfg.eval_every > 0 && state.step % cfg.eval_every == 0) || last {
                let e = self.evaluate(state.step, &mut teacher_val, &mut teacher_val_ppl)?;
                write_line(&mut metrics, "eval", &e).map_err(io_err(&metrics_path))?;
                say(
                    &bar,
                    format!(
                        "step {:>5}  val ppl {:.2}{}{}",
                        e.step,
                        e.val_ppl,
                        e.val_kl.map(|k| format!("  KL {k:.3}")).unwrap_or_default(),
                        e.top1_agreement
                            .map(|a| format!("  top-1 agreement {:.1}%", 100.0 * a))
                            .unwrap_or_default()
                    ),
                );
                evals.push(e);
            }
            if (cfg.checkpoint_every > 0 && state.step % cfg.checkpoint_every == 0) || last {
                self.save_checkpoint(&state, &aux, &opt, start, base_elapsed)?;
            }
        }
        if interrupted {
            let dir = self.save_checkpoint(&state, &aux, &opt, start, base_elapsed)?;
            say(
                &bar,
                format!(
                    "interrupted at step {}: checkpoint saved in {}",
                    state.step,
                    dir.display()
                ),
            );
        }
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        let trained = state.tokens_seen
            - resumed_from
                .map(|s| s as u64 * tokens_per_step)
                .unwrap_or(0);
        Ok(TrainOutcome {
            steps: state.step,
            interrupted,
            resumed_from,
            train_tokens: state.tokens_seen,
            seconds,
            tokens_per_second: trained as f64 / seconds.max(1e-9),
            evals,
            steps_log,
            teacher_val_ppl,
        })
    }

    fn objective(&self, aux: &VarMap) -> Result<Objective, TrainError> {
        let d = self.distill;
        let soft = soft_loss(
            &d.loss,
            &SoftLossParams {
                temperature: d.temperature,
                jsd_beta: d.jsd_beta,
            },
        )
        .map_err(TrainError::Invalid)?;
        let vb = VarBuilder::from_varmap(aux, DType::F32, &self.device);
        let mut hidden = vec![];
        for (i, h) in d.hidden.iter().enumerate() {
            let projection = if self.student_hidden_size != self.teacher_hidden_size {
                let w = vb
                    .get_with_hints(
                        (self.teacher_hidden_size, self.student_hidden_size),
                        &format!("hidden.{i}.projection.weight"),
                        Init::Randn {
                            mean: 0.0,
                            stdev: (1.0 / self.student_hidden_size as f64).sqrt(),
                        },
                    )
                    .ctx(|| "hidden-state projection".into())?;
                Some(candle_nn::Linear::new(w, None))
            } else {
                None
            };
            hidden.push((
                h.student_layer,
                h.teacher_layer,
                h.weight,
                HiddenLoss {
                    kind: h.loss,
                    projection,
                },
            ));
        }
        // Forward KL + CE in one fused CPU pass (same values and gradients as the composed losses).
        let fused_temperature =
            (d.loss == "forward_kl" && self.device.is_cpu()).then_some(d.temperature);
        Ok(Objective {
            soft,
            fused_temperature,
            hidden,
            alpha: d.alpha,
        })
    }

    fn loss(&self, obj: &Objective, ids: &Tensor) -> Result<LossParts, TrainError> {
        let want_hidden = !obj.hidden.is_empty();
        let (b, s) = ids.dims2().ctx(|| "batch shape".into())?;
        let (logits, s_hidden) = self
            .student
            .logits(ids, want_hidden)
            .ctx(|| "student forward".into())?;
        let v = logits.dim(2).ctx(|| "logits".into())?;
        let flat = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.narrow(1, 0, s - 1)?.reshape((b * (s - 1), v))
        };
        let student = flat(&logits).ctx(|| "student logits".into())?;
        let labels = ids
            .narrow(1, 1, s - 1)
            .and_then(|t| t.flatten_all())
            .ctx(|| "labels".into())?;

        let teacher_out = match self.teacher.filter(|_| obj.alpha > 0.0 || want_hidden) {
            Some(teacher) => {
                let (t_logits, t_hidden) = teacher
                    .logits(ids, want_hidden)
                    .ctx(|| "teacher forward".into())?;
                let tv = t_logits.dim(2).ctx(|| "teacher logits".into())?;
                if tv != v {
                    return Err(TrainError::Invalid(format!(
                        "teacher vocabulary ({tv}) differs from the student's ({v})"
                    )));
                }
                Some((
                    flat(&t_logits.detach()).ctx(|| "teacher logits".into())?,
                    t_hidden,
                ))
            }
            None => None,
        };

        let (hard, soft) = match (&teacher_out, obj.fused_temperature) {
            (Some((t, _)), Some(temp)) if obj.alpha > 0.0 => {
                let r = fused_forward_kl_ce(&student, t, &labels, temp)
                    .ctx(|| "fused KL + cross-entropy".into())?;
                (
                    r.get(1).ctx(|| "loss".into())?,
                    Some(r.get(0).ctx(|| "loss".into())?),
                )
            }
            _ => {
                let hard = CrossEntropy
                    .forward(&LossInputs {
                        student_logits: &student,
                        teacher_logits: None,
                        labels: Some(&labels),
                    })
                    .ctx(|| "cross-entropy".into())?;
                let soft = match &teacher_out {
                    Some((t, _)) if obj.alpha > 0.0 => Some(
                        obj.soft
                            .forward(&LossInputs {
                                student_logits: &student,
                                teacher_logits: Some(t),
                                labels: None,
                            })
                            .ctx(|| format!("{} loss", obj.soft.name()))?,
                    ),
                    _ => None,
                };
                (hard, soft)
            }
        };
        let mut total = (&hard * (1.0 - obj.alpha)).ctx(|| "loss".into())?;
        let mut soft_value = None;
        if let Some(soft) = soft {
            soft_value = Some(soft.to_scalar::<f32>().ctx(|| "soft loss".into())?);
            total = (total + (soft * obj.alpha).ctx(|| "loss".into())?).ctx(|| "loss".into())?;
        }
        let mut hidden_value = None;
        if let (true, Some((_, t_hidden))) = (want_hidden, &teacher_out) {
            let (sh, th) = (
                s_hidden.unwrap_or_default(),
                t_hidden.clone().unwrap_or_default(),
            );
            let mut sum = 0f32;
            for (sl, tl, w, loss) in &obj.hidden {
                let (Some(a), Some(c)) = (sh.get(*sl), th.get(*tl)) else {
                    return Err(TrainError::Invalid(format!(
                        "distill.hidden: student layer {sl} or teacher layer {tl} does not exist ({} and {} hidden states)",
                        sh.len(),
                        th.len()
                    )));
                };
                let a = a
                    .reshape((b * s, self.student_hidden_size))
                    .ctx(|| "student hidden".into())?;
                let c = c
                    .reshape((b * s, self.teacher_hidden_size))
                    .ctx(|| "teacher hidden".into())?;
                let l = loss
                    .forward(&a, &c.detach())
                    .ctx(|| "hidden-state loss".into())?;
                sum += l.to_scalar::<f32>().ctx(|| "hidden loss".into())?;
                total = (total + (l * *w).ctx(|| "loss".into())?).ctx(|| "loss".into())?;
            }
            hidden_value = Some(sum);
        }
        Ok(LossParts {
            hard: hard.to_scalar::<f32>().ctx(|| "hard loss".into())?,
            total,
            soft: soft_value,
            hidden: hidden_value,
        })
    }

    fn evaluate(
        &self,
        step: usize,
        teacher_cache: &mut Option<Vec<Tensor>>,
        teacher_ppl: &mut Option<f64>,
    ) -> Result<EvalRecord, TrainError> {
        let n = if self.train_cfg.eval_blocks == 0 {
            self.valid.len()
        } else {
            self.train_cfg.eval_blocks.min(self.valid.len())
        };
        let bs = self.train_cfg.batch_size;
        let s = self.valid.block_size;
        let mut nll = NllSum::default();
        let mut teacher_nll = NllSum::default();
        let (mut kl_sum, mut agree, mut count) = (0f64, 0usize, 0usize);
        let fill_cache = teacher_cache.is_none() && self.teacher.is_some();
        let mut cache = teacher_cache.take().unwrap_or_default();
        for (bi, chunk) in self.valid.blocks[..n].chunks(bs).enumerate() {
            let ids: Vec<u32> = chunk.iter().flatten().copied().collect();
            let ids = Tensor::from_vec(ids, (chunk.len(), s), &self.device)
                .ctx(|| "validation batch".into())?;
            let (logits, _) = self
                .student
                .logits(&ids, false)
                .ctx(|| "student forward (eval)".into())?;
            let logits = logits.detach();
            let lengths = vec![s; chunk.len()];
            nll.add(
                crate::metrics::next_token_nll(&logits, &ids, &lengths)
                    .ctx(|| "validation NLL".into())?,
            );
            if let Some(teacher) = self.teacher {
                if fill_cache {
                    let (t, _) = teacher
                        .logits(&ids, false)
                        .ctx(|| "teacher forward (eval)".into())?;
                    teacher_nll.add(
                        crate::metrics::next_token_nll(&t, &ids, &lengths)
                            .ctx(|| "teacher NLL".into())?,
                    );
                    cache.push(t.detach());
                }
                let t = &cache[bi];
                let v = logits.dim(2).ctx(|| "logits".into())?;
                let sl = logits.reshape((chunk.len() * s, v)).ctx(|| "eval".into())?;
                let tl = t.reshape((chunk.len() * s, v)).ctx(|| "eval".into())?;
                let kl = ForwardKl { temperature: 1.0 }
                    .forward(&LossInputs {
                        student_logits: &sl,
                        teacher_logits: Some(&tl),
                        labels: None,
                    })
                    .and_then(|k| k.to_scalar::<f32>())
                    .ctx(|| "validation KL".into())?;
                kl_sum += kl as f64 * (chunk.len() * s) as f64;
                let a: Vec<u32> = sl
                    .argmax(D::Minus1)
                    .and_then(|x| x.to_vec1())
                    .ctx(|| "argmax".into())?;
                let b: Vec<u32> = tl
                    .argmax(D::Minus1)
                    .and_then(|x| x.to_vec1())
                    .ctx(|| "argmax".into())?;
                agree += a.iter().zip(&b).filter(|(x, y)| x == y).count();
                count += a.len();
            }
        }
        if fill_cache {
            *teacher_ppl = Some(teacher_nll.perplexity());
        }
        if self.teacher.is_some() {
            *teacher_cache = Some(cache);
        }
        Ok(EvalRecord {
            step,
            val_ppl: nll.perplexity(),
            val_kl: (count > 0).then(|| kl_sum / count as f64),
            top1_agreement: (count > 0).then(|| agree as f64 / count as f64),
            tokens: nll.tokens,
        })
    }

    fn save_checkpoint(
        &self,
        state: &TrainerState,
        aux: &VarMap,
        opt: &AdamW,
        start: Instant,
        base_elapsed: f64,
    ) -> Result<PathBuf, TrainError> {
        let dir = checkpoint_dir(&self.run_dir, state.step);
        let tmp = tmp_sibling(&dir);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        self.varmap
            .save(tmp.join("model.safetensors"))
            .ctx(|| format!("{}: saving weights", tmp.display()))?;
        aux.save(tmp.join("aux.safetensors"))
            .ctx(|| format!("{}: saving projections", tmp.display()))?;
        opt.save(&tmp.join("optimizer.safetensors"))
            .ctx(|| format!("{}: saving the optimiser", tmp.display()))?;
        let st = TrainerState {
            elapsed_seconds: base_elapsed + start.elapsed().as_secs_f64(),
            ..state.clone()
        };
        let json = serde_json::to_vec_pretty(&st).expect("state serialises");
        std::fs::write(tmp.join("state.json"), json).map_err(io_err(&tmp))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        publish(&self.run_dir, &dir, self.train_cfg.keep_checkpoints).map_err(io_err(&dir))?;
        tracing::debug!(step = state.step, dir = %dir.display(), "checkpoint");
        Ok(dir)
    }

    fn load_checkpoint(
        &self,
        dir: &Path,
        aux: &VarMap,
        opt: &mut AdamW,
    ) -> Result<TrainerState, TrainError> {
        let mut vm = self.varmap.clone();
        vm.load(dir.join("model.safetensors"))
            .ctx(|| format!("{}: loading weights", dir.display()))?;
        let mut aux = aux.clone();
        aux.load(dir.join("aux.safetensors"))
            .ctx(|| format!("{}: loading projections", dir.display()))?;
        opt.load(&dir.join("optimizer.safetensors"))
            .ctx(|| format!("{}: loading the optimiser", dir.display()))?;
        let p = dir.join("state.json");
        let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Io {
            path: p,
            msg: e.to_string(),
        })
    }
}

struct LossParts {
    total: Tensor,
    soft: Option<f32>,
    hard: f32,
    hidden: Option<f32>,
}

/// A message above the progress bar, or a log line when there is no terminal to draw on.
pub(crate) fn say(bar: &indicatif::ProgressBar, msg: String) {
    if bar.is_hidden() {
        tracing::info!("{msg}");
    } else {
        bar.println(msg);
    }
}

pub(crate) fn write_line(
    f: &mut std::fs::File,
    kind: &str,
    record: &impl Serialize,
) -> std::io::Result<()> {
    let mut v = serde_json::to_value(record).expect("record serialises");
    v["kind"] = serde_json::json!(kind);
    writeln!(f, "{v}")
}

/// Drops metric lines past `step` (they belong to steps that a resume will redo).
fn truncate_metrics(path: &Path, step: usize) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}
