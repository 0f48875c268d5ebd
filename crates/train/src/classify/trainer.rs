//! The classifier training loop: AdamW with warm-up and cosine decay, clipping, seeded order
//! and dropout, evaluation on validation, early stopping that keeps the best weights.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarMap;
use distill_models::BertClassifier;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::ClsTrainConfig;
use super::encode::{pad_batch, EncodedSet};
use crate::optim::{clip_grad_norm, AdamW, AdamWParams};
use crate::schedule::lr_at;
use crate::trainer::{io_err, say, Ctx, TrainError};

/// Soft targets: the frozen teacher's logits for every training example, computed once.
pub struct KdTargets<'a> {
    pub logits: &'a [Vec<f32>],
    pub alpha: f64,
    pub temperature: f64,
}

/// One evaluation on the validation split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClsEval {
    pub step: usize,
    pub epoch: usize,
    /// Mean training loss since the previous evaluation.
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub lr: f64,
}

/// What a training stage did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClsOutcome {
    pub stage: String,
    pub steps: usize,
    pub evals: Vec<ClsEval>,
    /// The evaluation whose weights were kept.
    pub best: Option<ClsEval>,
    pub stopped_early: bool,
    pub interrupted: bool,
    pub seconds: f64,
    pub examples_per_second: f64,
    pub trainable_parameters: usize,
}

/// Trains `model` (whose variables are in `varmap`) on `train`, keeping the weights of the best
/// validation accuracy.
pub struct ClsTrainer<'a> {
    pub cfg: &'a ClsTrainConfig,
    /// `finetune`, `distill`, `scratch`: names the metrics lines and log messages.
    pub stage: &'a str,
    pub model: &'a BertClassifier,
    pub varmap: &'a VarMap,
    pub train: &'a EncodedSet,
    pub valid: &'a EncodedSet,
    pub teacher: Option<KdTargets<'a>>,
    pub pad_id: u32,
    pub device: Device,
    /// JSON-lines file that gets one line per step and per evaluation.
    pub metrics: Option<PathBuf>,
    pub progress: bool,
    pub stop: Option<Arc<AtomicBool>>,
}

impl ClsTrainer<'_> {
    pub fn run(&self) -> Result<ClsOutcome, TrainError> {
        let cfg = self.cfg;
        let n = self.train.len();
        if n == 0 || self.valid.is_empty() {
            return Err(TrainError::Invalid(format!(
                "{}: needs training and validation examples (got {n} and {})",
                self.stage,
                self.valid.len()
            )));
        }
        if let Some(t) = &self.teacher {
            if t.logits.len() != n {
                return Err(TrainError::Invalid(format!(
                    "{}: {} teacher logit rows for {n} training examples",
                    self.stage,
                    t.logits.len()
                )));
            }
        }
        let vars: HashMap<String, Var> = self
            .varmap
            .data()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(name, _)| !cfg.is_frozen(name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let trainable_parameters = vars.values().map(|v| v.elem_count()).sum();
        let mut opt = AdamW::new(
            &vars,
            AdamWParams {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: cfg.weight_decay,
            },
        )
        .ctx(|| "optimiser".into())?;
        let steps_per_epoch = n.div_ceil(cfg.batch_size);
        let total = steps_per_epoch * cfg.epochs;
        let warmup = (total as f64 * cfg.warmup_fraction).round() as usize;
        let hidden = self.model.config().hidden_size;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut log = match &self.metrics {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(io_err(p))?,
            ),
            None => None,
        };
        let bar = if self.progress {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{{spinner}} {} [{{bar:30}}] {{pos}}/{{len}} steps {{msg}} eta {{eta}}",
                    self.stage
                ))
                .expect("static template")
                .progress_chars("=> "),
            );
            b
        } else {
            indicatif::ProgressBar::hidden()
        };

        let start = Instant::now();
        let mut step = 0;
        let mut evals: Vec<ClsEval> = vec![];
        let mut best: Option<(ClsEval, HashMap<String, Tensor>)> = None;
        let mut since_best = 0;
        let (mut loss_sum, mut loss_n) = (0f64, 0usize);
        let mut seen = 0usize;
        let (mut stopped_early, mut interrupted) = (false, false);
        'epochs: for epoch in 0..cfg.epochs {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            for (bi, chunk) in order.chunks(cfg.batch_size).enumerate() {
                let rows: Vec<&[u32]> = chunk
                    .iter()
                    .map(|&i| self.train.ids[i].as_slice())
                    .collect();
                let (ids, mask) = pad_batch(&rows, self.pad_id, &self.device)?;
                let dropout = if cfg.dropout > 0.0 {
                    let keep = 1.0 / (1.0 - cfg.dropout) as f32;
                    let m: Vec<f32> = (0..chunk.len() * hidden)
                        .map(|_| {
                            if rng.random::<f64>() < cfg.dropout {
                                0.0
                            } else {
                                keep
                            }
                        })
                        .collect();
                    Some(
                        Tensor::from_vec(m, (chunk.len(), hidden), &self.device)
                            .ctx(|| "dropout".into())?,
                    )
                } else {
                    None
                };
                let logits = self
                    .model
                    .forward(&ids, &mask, dropout.as_ref(), false)
                    .map_err(|e| TrainError::Invalid(format!("{}: forward: {e}", self.stage)))?
                    .logits;
                let labels: Vec<u32> = chunk.iter().map(|&i| self.train.labels[i]).collect();
                let loss = self.loss(&logits, &labels, chunk)?;
                let value = loss.to_scalar::<f32>().ctx(|| "loss".into())?;
                if !value.is_finite() {
                    return Err(TrainError::Invalid(format!(
                        "{}: the loss became {value} at step {step}; lower the learning rate",
                        self.stage
                    )));
                }
                let grad_store = loss.backward().ctx(|| "backward".into())?;
                let mut grads: HashMap<String, Tensor> = vars
                    .iter()
                    .filter_map(|(k, v)| {
                        grad_store
                            .get(v.as_tensor())
                            .map(|g| (k.clone(), g.clone()))
                    })
                    .collect();
                clip_grad_norm(&mut grads, cfg.max_grad_norm).ctx(|| "clipping".into())?;
                let lr = lr_at(step, total, cfg.lr, warmup, cfg.min_lr_ratio);
                opt.step(&grads, lr).ctx(|| "optimiser step".into())?;
                step += 1;
                seen += chunk.len();
                loss_sum += value as f64;
                loss_n += 1;
                bar.inc(1);
                if let Some(f) = log.as_mut() {
                    let line = serde_json::json!({"kind": "step", "stage": self.stage, "step": step, "epoch": epoch, "loss": value, "lr": lr});
                    writeln!(f, "{line}").map_err(io_err(self.metrics.as_ref().expect("open")))?;
                }

                let end_of_epoch = bi + 1 == steps_per_epoch;
                let due = if cfg.eval_every > 0 {
                    step % cfg.eval_every == 0 || step == total
                } else {
                    end_of_epoch
                };
                if due {
                    let (val_loss, val_acc) = self.evaluate()?;
                    let e = ClsEval {
                        step,
                        epoch,
                        train_loss: loss_sum / loss_n.max(1) as f64,
                        val_loss,
                        val_acc,
                        lr,
                    };
                    (loss_sum, loss_n) = (0.0, 0);
                    bar.set_message(format!("val acc {:.4} loss {:.4}", val_acc, val_loss));
                    say(
                        &bar,
                        format!(
                            "{} step {step} (epoch {}): train loss {:.4}, validation loss {:.4}, accuracy {:.4}",
                            self.stage,
                            epoch + 1,
                            e.train_loss,
                            val_loss,
                            val_acc
                        ),
                    );
                    if let Some(f) = log.as_mut() {
                        let mut v = serde_json::to_value(&e).expect("serialises");
                        v["kind"] = "eval".into();
                        v["stage"] = self.stage.into();
                        writeln!(f, "{v}").map_err(io_err(self.metrics.as_ref().expect("open")))?;
                    }
                    let better = best.as_ref().is_none_or(|(b, _)| {
                        val_acc > b.val_acc || (val_acc == b.val_acc && val_loss < b.val_loss)
                    });
                    evals.push(e.clone());
                    if better {
                        let snapshot = vars
                            .iter()
                            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
                            .collect::<candle_core::Result<_>>()
                            .ctx(|| "keeping the best weights".into())?;
                        best = Some((e, snapshot));
                        since_best = 0;
                    } else {
                        since_best += 1;
                        if cfg.patience > 0 && since_best >= cfg.patience {
                            say(
                                &bar,
                                format!(
                                    "{}: no better validation accuracy in {since_best} evaluations; stopping early",
                                    self.stage
                                ),
                            );
                            stopped_early = true;
                            break 'epochs;
                        }
                    }
                }
                if self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                    interrupted = true;
                    break 'epochs;
                }
            }
        }
        bar.finish_and_clear();
        if let Some((_, snapshot)) = &best {
            for (k, v) in &vars {
                v.set(&snapshot[k]).ctx(|| format!("restoring {k}"))?;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        Ok(ClsOutcome {
            stage: self.stage.to_string(),
            steps: step,
            evals,
            best: best.map(|(e, _)| e),
            stopped_early,
            interrupted,
            seconds,
            examples_per_second: seen as f64 / seconds.max(1e-9),
            trainable_parameters,
        })
    }

    /// Cross-entropy on labels, mixed with `alpha · T² · KL(teacher ‖ student)` at `T`.
    fn loss(&self, logits: &Tensor, labels: &[u32], chunk: &[usize]) -> Result<Tensor, TrainError> {
        let c = || "loss".to_string();
        let target = Tensor::new(labels, &self.device).ctx(c)?;
        let ce = candle_nn::loss::cross_entropy(logits, &target).ctx(c)?;
        let Some(kd) = &self.teacher else {
            return Ok(ce);
        };
        if kd.alpha == 0.0 {
            return Ok(ce);
        }
        let classes = logits.dim(1).ctx(c)?;
        let t: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| kd.logits[i].iter().copied())
            .collect();
        let t = Tensor::from_vec(t, (chunk.len(), classes), &self.device).ctx(c)?;
        let temp = kd.temperature;
        let t_log = candle_nn::ops::log_softmax(&(t / temp).ctx(c)?, D::Minus1).ctx(c)?;
        let s_log = candle_nn::ops::log_softmax(&(logits / temp).ctx(c)?, D::Minus1).ctx(c)?;
        let kl = (t_log.exp().ctx(c)? * (t_log - s_log).ctx(c)?)
            .ctx(c)?
            .sum_all()
            .ctx(c)?
            .affine(temp * temp / chunk.len() as f64, 0.0)
            .ctx(c)?;
        ((kl * kd.alpha).ctx(c)? + (ce * (1.0 - kd.alpha)).ctx(c)?).ctx(c)
    }

    /// Mean cross-entropy and accuracy on the validation split.
    fn evaluate(&self) -> Result<(f64, f64), TrainError> {
        let logits = predict_logits(
            self.model,
            self.valid,
            self.cfg.batch_size.max(32),
            self.pad_id,
            &self.device,
        )?;
        let (mut loss, mut right) = (0f64, 0usize);
        for (row, &label) in logits.iter().zip(&self.valid.labels) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            loss += lse - row[label as usize] as f64;
            let pred = argmax(row);
            right += (pred == label as usize) as usize;
        }
        let n = logits.len().max(1) as f64;
        Ok((loss / n, right as f64 / n))
    }
}

pub(crate) fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Class logits of every example of `set`, in order. Examples are batched by length so that
/// little padding is computed; the mask keeps padding from changing any result.
pub fn predict_logits(
    model: &BertClassifier,
    set: &EncodedSet,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let mut order: Vec<usize> = (0..set.len()).collect();
    order.sort_by_key(|&i| set.ids[i].len());
    let mut out = vec![vec![]; set.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let rows: Vec<&[u32]> = chunk.iter().map(|&i| set.ids[i].as_slice()).collect();
        let (ids, mask) = pad_batch(&rows, pad_id, device)?;
        let logits = model
            .forward(&ids, &mask, None, false)
            .map_err(|e| TrainError::Invalid(format!("classifier forward: {e}")))?
            .logits
            .detach()
            .to_dtype(DType::F32)
            .and_then(|l| l.to_vec2::<f32>())
            .ctx(|| "reading logits".into())?;
        for (&i, row) in chunk.iter().zip(logits) {
            out[i] = row;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::config::ClsTrainConfig;
    use candle_nn::VarMap;
    use distill_models::{BertConfig, Pooling, VarMapWeights};

    fn tiny_cfg() -> BertConfig {
        BertConfig::from_json(
            r#"{"model_type":"bert","vocab_size":30,"hidden_size":16,"num_hidden_layers":2,
                "num_attention_heads":2,"intermediate_size":32,"max_position_embeddings":16}"#,
            "tiny",
        )
        .unwrap()
    }

    /// Class 1 iff token 7 occurs: learnable by a tiny model in a few epochs.
    fn task(n: usize, seed: u64) -> EncodedSet {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut set = EncodedSet::default();
        for i in 0..n {
            let len = rng.random_range(3..9);
            let mut ids: Vec<u32> = (0..len).map(|_| rng.random_range(3..7)).collect();
            let label = (i % 2) as u32;
            if label == 1 {
                let at = rng.random_range(0..len);
                ids[at] = 7;
            }
            ids.insert(0, 1);
            ids.push(2);
            set.ids.push(ids);
            set.labels.push(label);
        }
        set
    }

    /// A tiny classifier with seeded weights (candle's own init is not seeded).
    fn seeded_model(vm: &VarMap, seed: u64, frozen: Option<ClsTrainConfig>) -> BertClassifier {
        let dev = Device::Cpu;
        let mut src = VarMapWeights::new(vm, DType::F32, &dev);
        if let Some(f) = frozen {
            src = src.with_frozen(move |n| f.is_frozen(n));
        }
        let m = BertClassifier::load(&tiny_cfg(), &src, 2, Pooling::Mean, "bert.").unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let data = vm.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let t = var.as_tensor();
            let v: Vec<f32> = if name.contains("LayerNorm.weight") {
                vec![1.0; t.elem_count()]
            } else if name.ends_with("bias") {
                vec![0.0; t.elem_count()]
            } else {
                (0..t.elem_count())
                    .map(|_| rng.random_range(-0.05f32..0.05))
                    .collect()
            };
            var.set(&Tensor::from_vec(v, t.dims(), &dev).unwrap())
                .unwrap();
        }
        m
    }

    fn train_cfg() -> ClsTrainConfig {
        serde_json::from_str(r#"{"epochs": 20, "batch_size": 8, "lr": 0.005, "patience": 0}"#)
            .unwrap()
    }

    #[test]
    fn learns_a_separable_task_keeps_the_best_weights_and_is_reproducible() {
        let dev = Device::Cpu;
        let (train, valid) = (task(64, 1), task(32, 2));
        let run = || {
            let vm = VarMap::new();
            let m = seeded_model(&vm, 11, None);
            let cfg = train_cfg();
            let out = ClsTrainer {
                cfg: &cfg,
                stage: "test",
                model: &m,
                varmap: &vm,
                train: &train,
                valid: &valid,
                teacher: None,
                pad_id: 0,
                device: dev.clone(),
                metrics: None,
                progress: false,
                stop: None,
            }
            .run()
            .unwrap();
            let logits = predict_logits(&m, &valid, 7, 0, &dev).unwrap();
            let acc = logits
                .iter()
                .zip(&valid.labels)
                .filter(|(r, &l)| argmax(r) == l as usize)
                .count() as f64
                / valid.len() as f64;
            (out, acc, logits)
        };
        let (out, acc, logits) = run();
        let best = out.best.clone().unwrap();
        assert_eq!(out.evals.len(), 20);
        assert!(best.val_acc >= 0.9, "validation accuracy {}", best.val_acc);
        // The weights in place are the best evaluation's.
        assert!(
            (acc - best.val_acc).abs() < 1e-12,
            "{acc} vs {}",
            best.val_acc
        );
        assert!(out.evals.iter().all(|e| e.val_acc <= best.val_acc));
        let (_, acc2, logits2) = run();
        assert_eq!(acc, acc2);
        assert_eq!(logits, logits2, "same seed, same result");
    }

    #[test]
    fn distillation_pulls_the_student_towards_the_teacher_logits() {
        let dev = Device::Cpu;
        let (train, mut valid) = (task(48, 3), task(16, 4));
        // A teacher that is confidently wrong on every example: with alpha = 1 the student
        // learns to disagree with the labels. (Validation is labelled the teacher's way, since
        // the best weights are chosen on it.)
        for l in valid.labels.iter_mut() {
            *l = 1 - *l;
        }
        let wrong: Vec<Vec<f32>> = train
            .labels
            .iter()
            .map(|&l| {
                if l == 1 {
                    vec![4.0, -4.0]
                } else {
                    vec![-4.0, 4.0]
                }
            })
            .collect();
        let vm = VarMap::new();
        let m = seeded_model(&vm, 12, None);
        let cfg = ClsTrainConfig {
            patience: 0,
            ..train_cfg()
        };
        ClsTrainer {
            cfg: &cfg,
            stage: "kd",
            model: &m,
            varmap: &vm,
            train: &train,
            valid: &valid,
            teacher: Some(KdTargets {
                logits: &wrong,
                alpha: 1.0,
                temperature: 2.0,
            }),
            pad_id: 0,
            device: dev.clone(),
            metrics: None,
            progress: false,
            stop: None,
        }
        .run()
        .unwrap();
        let logits = predict_logits(&m, &train, 16, 0, &dev).unwrap();
        let agree_with_teacher = logits
            .iter()
            .zip(&train.labels)
            .filter(|(r, &l)| argmax(r) != l as usize)
            .count();
        assert!(
            agree_with_teacher * 10 >= train.len() * 7,
            "{agree_with_teacher}/{}",
            train.len()
        );
    }

    #[test]
    fn frozen_variables_do_not_move() {
        let dev = Device::Cpu;
        let (train, valid) = (task(16, 5), task(8, 6));
        let vm = VarMap::new();
        let cfg = ClsTrainConfig {
            epochs: 1,
            freeze_embeddings: true,
            freeze_layers: vec![0],
            ..train_cfg()
        };
        let m = seeded_model(&vm, 13, Some(cfg.clone()));
        let before: HashMap<String, Vec<f32>> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
                )
            })
            .collect();
        let out = ClsTrainer {
            cfg: &cfg,
            stage: "ft",
            model: &m,
            varmap: &vm,
            train: &train,
            valid: &valid,
            teacher: None,
            pad_id: 0,
            device: dev.clone(),
            metrics: None,
            progress: false,
            stop: None,
        }
        .run()
        .unwrap();
        assert!(out.trainable_parameters > 0);
        for (k, v) in vm.data().lock().unwrap().iter() {
            let now: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let moved = now != before[k];
            assert_eq!(moved, !cfg.is_frozen(k), "{k}");
        }
    }
}
