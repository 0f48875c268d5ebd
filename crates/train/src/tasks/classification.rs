//! Sequence classification: labelled examples batched by the seeded order of every epoch and
//! padded to their longest member, class logits of student and teacher, the objective over
//! sequences (every soft loss of the registry, hidden-state losses over real tokens);
//! dropout on the pooled vector drawn from the seed and the batch's position; evaluation by
//! validation accuracy, ties broken by validation loss. Fine-tuning a teacher is this task
//! without a teacher.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use distill_models::{pad_batch, Input, Model};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::DistillConfig;
use crate::data::epoch_order;
use crate::data::EncodedSet;
use crate::error::{Ctx, TrainError};
use crate::objective::{Objective, Targets};
use crate::scoring::{accuracy, mean_cross_entropy, predict_logits};
use crate::task::{BatchAt, Evaluation, Losses, Task};
use crate::tasks::{Student, TeacherSignal};
use crate::training::Training;

/// Keeps dropout's random stream apart from the data order's.
const DROPOUT_STREAM: u64 = 0xD0_0D_0D_0D;

/// The classification teacher's signal: the teacher, or its logits for every training
/// example, in order, computed once.
pub type ClassTeacher<'a> = TeacherSignal<'a, &'a [Vec<f32>]>;

/// What a classification task trains on.
pub struct ClassificationSetup<'a> {
    pub student: Student<'a>,
    /// `None`: labels alone (fine-tuning a teacher, the labels-only baseline).
    pub teacher: Option<ClassTeacher<'a>>,
    pub distill: &'a DistillConfig,
    pub training: &'a Training,
    pub train: &'a EncodedSet,
    pub valid: &'a EncodedSet,
    pub pad_id: u32,
    pub device: Device,
}

/// A classification task: fine-tuning (no teacher) or distillation.
pub struct Classification<'a> {
    student: &'a dyn Model,
    varmap: &'a VarMap,
    teacher: Option<ClassTeacher<'a>>,
    objective: Objective,
    train: &'a EncodedSet,
    valid: &'a EncodedSet,
    pad_id: u32,
    training: &'a Training,
    device: Device,
    orders: HashMap<u64, Vec<usize>>,
}

impl<'a> Classification<'a> {
    pub fn new(setup: ClassificationSetup<'a>) -> Result<Self, TrainError> {
        let ClassificationSetup {
            student: Student {
                model: student,
                varmap,
            },
            teacher,
            distill,
            training,
            train,
            valid,
            pad_id,
            device,
        } = setup;
        let device = &device;
        if train.is_empty() || valid.is_empty() {
            return Err(TrainError::Invalid(format!(
                "needs training and validation examples (got {} and {})",
                train.len(),
                valid.len()
            )));
        }
        let teacher_width = match &teacher {
            Some(TeacherSignal::Online(t)) => t.hidden_size(),
            Some(TeacherSignal::Cached(logits)) => {
                if logits.len() != train.len() {
                    return Err(TrainError::Invalid(format!(
                        "{} teacher logit rows for {} training examples",
                        logits.len(),
                        train.len()
                    )));
                }
                if !distill.hidden.is_empty() {
                    return Err(TrainError::Invalid(
                        "distill.hidden compares hidden states: the teacher must run online".into(),
                    ));
                }
                student.hidden_size()
            }
            None => {
                if distill.needs_teacher() {
                    return Err(TrainError::Invalid(
                        "the objective needs the teacher (alpha > 0 or hidden losses)".into(),
                    ));
                }
                student.hidden_size()
            }
        };
        let objective = Objective::new(distill, student.hidden_size(), teacher_width, device)?;
        Ok(Self {
            student,
            varmap,
            teacher,
            objective,
            train,
            valid,
            pad_id,
            training,
            device: device.clone(),
            orders: HashMap::new(),
        })
    }

    /// The example indices of the micro-batch at `at`: chunk `index mod batches` of the
    /// epoch's seeded order (the last chunk of an epoch may be smaller).
    /// A data-parallel rank takes its part of the combined chunk.
    fn rows(&mut self, at: &BatchAt) -> Vec<usize> {
        let n = self.train.len();
        let (epoch, mine, _) = at.epoch_rows(n);
        let order = self
            .orders
            .entry(epoch)
            .or_insert_with(|| epoch_order(n, at.seed, epoch));
        order[mine].to_vec()
    }

    /// Dropout mask `[rows, hidden]` of the micro-batch at `at`, scaled by `1/(1−p)`: drawn
    /// for the combined micro-batch, and this rank's rows of it, so that data-parallel ranks
    /// drop what one process would.
    fn dropout(&self, at: &BatchAt, rows: usize) -> Result<Option<Tensor>, TrainError> {
        let p = self.training.dropout;
        if p <= 0.0 {
            return Ok(None);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(at.seed ^ DROPOUT_STREAM);
        rng.set_stream(at.index as u64);
        let keep = 1.0 / (1.0 - p) as f32;
        let hidden = self.student.hidden_size();
        let (_, mine, start) = at.epoch_rows(self.train.len());
        let skip = (mine.start - start) * hidden;
        let m: Vec<f32> = (0..skip + rows * hidden)
            .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
            .skip(skip)
            .collect();
        Tensor::from_vec(m, (rows, hidden), &self.device)
            .map(Some)
            .ctx(|| "dropout".into())
    }
}

impl Task for Classification<'_> {
    fn variables(&self) -> BTreeMap<String, Var> {
        self.objective.variables_with(self.varmap)
    }

    fn is_frozen(&self, name: &str) -> bool {
        self.training.is_frozen(name)
    }

    fn batches_per_epoch(&self, batch_size: usize) -> usize {
        self.train.len().div_ceil(batch_size.max(1))
    }

    fn unit(&self) -> &'static str {
        "examples"
    }

    fn loss(&mut self, at: &BatchAt) -> Result<Losses, TrainError> {
        let rows = self.rows(at);
        if rows.is_empty() {
            // A data-parallel rank past the end of an epoch's short last batch: it adds
            // nothing (the learner weighs each rank by its examples).
            return Ok(Losses {
                total: Tensor::zeros((), DType::F32, &self.device).ctx(|| "loss".into())?,
                parts: vec![],
                units: 0,
            });
        }
        let seqs: Vec<&[u32]> = rows.iter().map(|&i| self.train.ids[i].as_slice()).collect();
        let batch = pad_batch(&seqs, self.pad_id, &self.device)?;
        let dropout = self.dropout(at, rows.len())?;
        let want_hidden = self.objective.uses_hidden();
        let input = Input::new(&batch.ids)
            .with_mask(Some(&batch.mask))
            .with_hidden(want_hidden);
        let out = self
            .student
            .run(&input.with_pooled_dropout(dropout.as_ref()))
            .map_err(|e| TrainError::Invalid(format!("student forward: {e}")))?;
        let labels: Vec<u32> = rows.iter().map(|&i| self.train.labels[i]).collect();
        let labels = Tensor::new(labels, &self.device).ctx(|| "labels".into())?;
        let classes = out.logits.dim(1).ctx(|| "logits".into())?;
        let (teacher_logits, teacher_hidden) = match &self.teacher {
            None => (None, None),
            Some(TeacherSignal::Cached(logits)) => {
                let t: Vec<f32> = rows
                    .iter()
                    .flat_map(|&i| logits[i].iter().copied())
                    .collect();
                let t = Tensor::from_vec(t, (rows.len(), classes), &self.device)
                    .ctx(|| "teacher logits".into())?;
                (Some(t), None)
            }
            Some(TeacherSignal::Online(teacher)) => {
                let t = teacher
                    .run(&input)
                    .map_err(|e| TrainError::Invalid(format!("teacher forward: {e}")))?;
                (Some(t.logits.detach()), t.hidden_states)
            }
        };
        let positions = if want_hidden {
            let flat: Vec<u8> = batch
                .mask
                .flatten_all()
                .and_then(|m| m.to_vec1())
                .ctx(|| "mask".into())?;
            let idx: Vec<u32> = flat
                .iter()
                .enumerate()
                .filter(|(_, &m)| m != 0)
                .map(|(i, _)| i as u32)
                .collect();
            Some(Tensor::new(idx, &self.device).ctx(|| "positions".into())?)
        } else {
            None
        };
        let sh = out.hidden_states.unwrap_or_default();
        let th = teacher_hidden.unwrap_or_default();
        let value = self.objective.value(&Targets {
            student: &out.logits.to_dtype(DType::F32).ctx(|| "logits".into())?,
            teacher: teacher_logits.as_ref(),
            labels: &labels,
            hidden: want_hidden.then_some((&sh[..], &th[..], positions.as_ref())),
        })?;
        Ok(Losses {
            parts: value.parts(),
            total: value.total,
            units: rows.len(),
        })
    }

    fn evaluate(&mut self) -> Result<Evaluation, TrainError> {
        let logits = predict_logits(
            self.student,
            self.valid,
            self.training.batch_size.max(32),
            self.pad_id,
            &self.device,
        )?;
        let loss = mean_cross_entropy(&logits, &self.valid.labels);
        let acc = accuracy(&logits, &self.valid.labels);
        Ok(Evaluation {
            metrics: vec![("val_loss", loss), ("val_acc", acc)],
            score: (acc, -loss),
            summary: format!("validation loss {loss:.4}, accuracy {acc:.4}"),
        })
    }
}
