//! Causal-LM distillation: packed blocks of token ids, per-token logits of student and teacher,
//! the objective over every next-token prediction; evaluation by validation perplexity, KL to
//! the teacher and top-1 agreement (the teacher's validation logits computed once: it is
//! frozen).

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarMap;
use distill_cache::TeacherCache as TargetCache;
use distill_models::{Input, Model};

use crate::config::DistillConfig;
use crate::data::BlockSet;
use crate::error::{Ctx, TrainError};
use crate::losses::{ForwardKl, Loss, LossInputs};
use crate::objective::{Objective, Targets};
use crate::scoring::{next_token_nll, next_token_nll_of_targets, NllSum};
use crate::task::{BatchAt, Evaluation, Losses, Task};
use crate::tasks::cross_lm::{AlignedScores, Cross, CrossSetup, TeacherRows};
use crate::tasks::targets::{counted_rows, row_index, select_rows};
use crate::tasks::{Student, TeacherSignal};
use crate::training::Training;

/// The frozen teacher's outputs on the validation blocks, computed once. Its features before a
/// dense head when it has one (`[b, s, hidden]`, a few MB), from which each evaluation multiplies
/// the logits out batch by batch; otherwise its logits (`[b, s, vocab]` per batch).
enum TeacherCache {
    Features { batches: Vec<Tensor>, head: Tensor },
    Logits(Vec<Tensor>),
}

impl TeacherCache {
    fn logits(&self, batch: usize) -> candle_core::Result<Tensor> {
        match self {
            TeacherCache::Features { batches, head } => {
                distill_models::weights::times_transposed(&batches[batch], head)
            }
            TeacherCache::Logits(batches) => Ok(batches[batch].clone()),
        }
    }
}

/// A causal-LM distillation task.
pub struct CausalLm<'a> {
    student: &'a dyn Model,
    varmap: &'a VarMap,
    teacher: Option<&'a dyn Model>,
    /// Cached teacher targets, read instead of running a teacher.
    cache: Option<&'a TargetCache>,
    objective: Objective,
    train: &'a BlockSet,
    valid: &'a BlockSet,
    training: &'a Training,
    device: Device,
    orders: HashMap<u64, Vec<usize>>,
    teacher_cache: Option<TeacherCache>,
    teacher_val_ppl: Option<f64>,
    /// Across tokenizers (`distill.vocab: cross`).
    cross: Option<Cross<'a>>,
    alpha: f64,
    temperature: f64,
}

/// The causal-LM teacher's signal: the teacher, or its top-k targets in a teacher cache.
pub type LmTeacher<'a> = TeacherSignal<'a, &'a TargetCache>;

/// What a causal-LM task trains on.
pub struct CausalLmSetup<'a> {
    pub student: Student<'a>,
    /// The teacher online — needed when the objective uses it (α > 0 or hidden-state losses),
    /// used for evaluation otherwise — or its cached targets; `None`: labels alone.
    pub teacher: Option<LmTeacher<'a>>,
    pub distill: &'a DistillConfig,
    pub training: &'a Training,
    pub train: &'a BlockSet,
    pub valid: &'a BlockSet,
    pub device: Device,
    /// The teacher's tokenisation of the blocks, when its tokenizer is not the student's.
    pub cross: Option<CrossSetup<'a>>,
}

impl<'a> CausalLm<'a> {
    /// The task `setup` describes. From a cache, the objective must be forward KL without
    /// hidden-state terms; the caller checks the cache against the run.
    pub fn new(setup: CausalLmSetup<'a>) -> Result<Self, TrainError> {
        let mut task = match setup.teacher {
            Some(TeacherSignal::Cached(cache)) => Self::from_cache(setup.student, cache, &setup)?,
            Some(TeacherSignal::Online(t)) => Self::online(setup.student, Some(t), &setup)?,
            None => Self::online(setup.student, None, &setup)?,
        };
        let marked = setup.train.targets.is_some() || setup.valid.targets.is_some();
        if marked && (setup.cross.is_some() || task.objective.uses_hidden()) {
            return Err(TrainError::Invalid(
                "blocks with marked targets (chat data) train without hidden-state losses and across one tokenizer only".into(),
            ));
        }
        if let Some(c) = setup.cross {
            if c.train.blocks.len() != setup.train.len()
                || c.valid.blocks.len() != setup.valid.len()
            {
                return Err(TrainError::Invalid(format!(
                    "cross-tokenizer blocks ({} training, {} validation) differ from the student's ({}, {})",
                    c.train.blocks.len(),
                    c.valid.blocks.len(),
                    setup.train.len(),
                    setup.valid.len()
                )));
            }
            task.cross = Some(Cross::new(c, &setup.distill.cross, &setup.device)?);
        }
        task.alpha = setup.distill.alpha;
        task.temperature = setup.distill.temperature;
        Ok(task)
    }

    /// `student` against the online `teacher`, if any.
    fn online(
        Student {
            model: student,
            varmap,
        }: Student<'a>,
        teacher: Option<&'a dyn Model>,
        s: &CausalLmSetup<'a>,
    ) -> Result<Self, TrainError> {
        let (distill, training, train, valid, device) =
            (s.distill, s.training, s.train, s.valid, &s.device);
        if distill.needs_teacher() && teacher.is_none() {
            return Err(TrainError::Invalid(
                "the objective needs the teacher (alpha > 0 or hidden losses)".into(),
            ));
        }
        let objective = Objective::new(
            distill,
            student.hidden_size(),
            teacher
                .map(|t| t.hidden_size())
                .unwrap_or(student.hidden_size()),
            device,
        )?;
        Ok(Self::assemble(
            (student, varmap),
            (teacher, None),
            objective,
            training,
            (train, valid),
            device,
        ))
    }

    /// The task from its parts, with nothing computed yet.
    fn assemble(
        (student, varmap): (&'a dyn Model, &'a VarMap),
        (teacher, cache): (Option<&'a dyn Model>, Option<&'a TargetCache>),
        objective: Objective,
        training: &'a Training,
        (train, valid): (&'a BlockSet, &'a BlockSet),
        device: &Device,
    ) -> Self {
        Self {
            student,
            varmap,
            teacher,
            cache,
            objective,
            train,
            valid,
            training,
            device: device.clone(),
            orders: HashMap::new(),
            teacher_cache: None,
            teacher_val_ppl: None,
            cross: None,
            alpha: 0.0,
            temperature: 1.0,
        }
    }

    /// A task that reads the teacher's top-k targets from `cache` (splits `train` and `valid`)
    /// instead of running a teacher, for training and for evaluation.
    fn from_cache(
        Student {
            model: student,
            varmap,
        }: Student<'a>,
        cache: &'a TargetCache,
        s: &CausalLmSetup<'a>,
    ) -> Result<Self, TrainError> {
        let (distill, training, train, valid, device) =
            (s.distill, s.training, s.train, s.valid, &s.device);
        let objective = Objective::new(
            distill,
            student.hidden_size(),
            student.hidden_size(),
            device,
        )?;
        objective.check_cacheable()?;
        Ok(Self::assemble(
            (student, varmap),
            (None, Some(cache)),
            objective,
            training,
            (train, valid),
            device,
        ))
    }

    /// The teacher's perplexity on the validation blocks (after the first evaluation; across
    /// tokenizers, over its own tokens of the same bytes).
    pub fn teacher_val_ppl(&self) -> Option<f64> {
        match &self.cross {
            Some(c) => c.teacher_val().map(|v| v.0),
            None => self.teacher_val_ppl,
        }
    }

    /// Across tokenizers: the teacher's bits per byte over its own tokens of the evaluated
    /// blocks (after the first evaluation).
    pub fn teacher_val_bits_per_byte(&self) -> Option<f64> {
        self.cross
            .as_ref()
            .and_then(|c| c.teacher_val())
            .map(|v| v.1)
    }

    /// The block indices of the micro-batch at `at`: consecutive positions of the seeded
    /// block order, which wraps into the next epoch's order ([`blocks_read`] lists them all);
    /// a data-parallel rank takes its part of the combined micro-batch.
    fn batch_blocks(&mut self, at: &BatchAt) -> Vec<usize> {
        let n = self.train.len();
        at.stream_rows()
            .map(|k| {
                let epoch = (k / n) as u64;
                let order = self
                    .orders
                    .entry(epoch)
                    .or_insert_with(|| self.train.epoch_order(at.seed, epoch));
                order[k % n]
            })
            .collect()
    }
}

/// Every training block a run reads in `micro_batches` micro-batches of `batch_size` blocks
/// from `train` with `seed`: what a teacher cache must hold for it (ascending, each once).
pub fn blocks_read(
    train: &BlockSet,
    seed: u64,
    micro_batches: usize,
    batch_size: usize,
) -> Vec<usize> {
    let n = train.len();
    let total = micro_batches * batch_size;
    if total >= n {
        return (0..n).collect();
    }
    // Fewer reads than blocks: all within the first epoch.
    let mut read: Vec<usize> = train.epoch_order(seed, 0)[..total].to_vec();
    read.sort_unstable();
    read
}

/// [`Model::run_features`] of a model that has a dense head, errors named after `what`.
fn features(
    model: &dyn Model,
    input: &Input,
    what: &str,
) -> Result<distill_models::Features, TrainError> {
    model
        .run_features(input)
        .ok_or_else(|| TrainError::Invalid(format!("{what}: no features despite a dense head")))?
        .map_err(|e| TrainError::Invalid(format!("{what}: {e}")))
}

impl CausalLm<'_> {
    /// The loss through [`Objective::value_from_heads`] when the objective fuses the heads and
    /// both models expose dense ones: logits are multiplied out chunk by chunk inside the loss,
    /// never whole. `None`: take the logits path.
    fn loss_from_heads(
        &self,
        ids: &Tensor,
        (b, s): (usize, usize),
        want_hidden: bool,
        keep: Option<&Tensor>,
    ) -> Result<Option<Losses>, TrainError> {
        let Some(teacher) = self.teacher.filter(|t| {
            self.objective.fuses_heads()
                && t.dense_head().is_some_and(|h| h.dtype() == DType::F32)
                && self
                    .student
                    .dense_head()
                    .is_some_and(|h| h.dtype() == DType::F32)
        }) else {
            return Ok(None);
        };
        let input = Input::new(ids).with_hidden(want_hidden);
        let tf = features(teacher, &input, "teacher forward")?;
        let sf = features(self.student, &input, "student forward")?;
        let (sv, tv) = (
            sf.head.dim(0).ctx(|| "student head".into())?,
            tf.head.dim(0).ctx(|| "teacher head".into())?,
        );
        if sv != tv {
            return Err(TrainError::Invalid(format!(
                "teacher vocabulary ({tv}) differs from the student's ({sv})"
            )));
        }
        let rows = |t: &Tensor| -> candle_core::Result<Tensor> {
            let d = t.dim(2)?;
            t.narrow(1, 0, s - 1)?.reshape((b * (s - 1), d))
        };
        let hs = rows(&sf.features)
            .and_then(|t| select_rows(&t, keep))
            .ctx(|| "student features".into())?;
        let ht = rows(&tf.features.detach())
            .and_then(|t| select_rows(&t, keep))
            .ctx(|| "teacher features".into())?;
        let labels = ids
            .narrow(1, 1, s - 1)
            .and_then(|t| t.flatten_all())
            .and_then(|t| select_rows(&t, keep))
            .ctx(|| "labels".into())?;
        let (sh, th) = (
            sf.hidden_states.unwrap_or_default(),
            tf.hidden_states.unwrap_or_default(),
        );
        let value = self.objective.value_from_heads(
            (&hs, &sf.head),
            (&ht, &tf.head.detach()),
            &labels,
            want_hidden.then_some((&sh[..], &th[..], None)),
        )?;
        Ok(Some(Losses {
            parts: value.parts(),
            total: value.total,
            units: b * s,
        }))
    }
}

impl CausalLm<'_> {
    /// The student on validation blocks `blocks`: their ids `[c, s]`, its logits (detached)
    /// and its next-token NLL — what every evaluation begins with.
    fn student_on_valid(&self, blocks: &[usize]) -> Result<(Tensor, Tensor, NllSum), TrainError> {
        let s = self.valid.block_size;
        let ids: Vec<u32> = blocks
            .iter()
            .flat_map(|&i| self.valid.blocks[i].iter().copied())
            .collect();
        let ids = Tensor::from_vec(ids, (blocks.len(), s), &self.device)
            .ctx(|| "validation batch".into())?;
        let logits = self
            .student
            .run(&Input::new(&ids))
            .map_err(|e| TrainError::Invalid(format!("student forward (eval): {e}")))?
            .logits
            .detach();
        let nll = self
            .valid_nll(&logits, &ids, blocks)
            .ctx(|| "validation NLL".into())?;
        Ok((ids, logits, nll))
    }

    /// Next-token NLL of `logits` on validation blocks `blocks` (`ids`): every position, or
    /// those whose next token is a target when the blocks mark them.
    fn valid_nll(
        &self,
        logits: &Tensor,
        ids: &Tensor,
        blocks: &[usize],
    ) -> candle_core::Result<NllSum> {
        match &self.valid.targets {
            Some(t) => {
                let rows: Vec<&[bool]> = blocks.iter().map(|&i| t[i].as_slice()).collect();
                next_token_nll_of_targets(logits, ids, &rows)
            }
            None => next_token_nll(logits, ids, &vec![self.valid.block_size; blocks.len()]),
        }
    }

    /// The loss against the cached targets of `blocks` (whose tokens are `ids`).
    fn loss_from_cache(
        &self,
        cache: &TargetCache,
        blocks: &[usize],
        ids: &Tensor,
        (b, s): (usize, usize),
        counted: Option<(&[usize], &Tensor)>,
    ) -> Result<Losses, TrainError> {
        let mut targets = cache
            .rows("train", blocks)
            .map_err(|e| TrainError::Invalid(format!("teacher cache: {e}")))?;
        if let Some((rows, _)) = counted {
            targets = targets.select(rows);
        }
        let keep = counted.map(|(_, t)| t);
        let labels = ids
            .narrow(1, 1, s - 1)
            .and_then(|t| t.flatten_all())
            .and_then(|t| select_rows(&t, keep))
            .ctx(|| "labels".into())?;
        let rows = |t: &Tensor| -> candle_core::Result<Tensor> {
            let d = t.dim(2)?;
            select_rows(&t.narrow(1, 0, s - 1)?.reshape((b * (s - 1), d))?, keep)
        };
        let input = Input::new(ids);
        let value = if self.student.dense_head().is_some() {
            let sf = features(self.student, &input, "student forward")?;
            let hs = rows(&sf.features).ctx(|| "student features".into())?;
            self.objective
                .value_from_cached((&hs, &sf.head), &targets, &labels)?
        } else {
            let out = self
                .student
                .run(&input)
                .map_err(|e| TrainError::Invalid(format!("student forward: {e}")))?;
            let logits = rows(&out.logits).ctx(|| "student logits".into())?;
            self.objective
                .value_cached_logits(&logits, &targets, &labels)?
        };
        Ok(Losses {
            parts: value.parts(),
            total: value.total,
            units: b * s,
        })
    }

    /// Evaluation against the cached validation targets: the student's perplexity as online;
    /// KL (over the top-k + residual buckets, at the cache's temperature) and top-1 agreement
    /// over the positions that have a next token; the teacher's perplexity from the cached
    /// log-probabilities of the next tokens.
    fn evaluate_from_cache(
        &mut self,
        cache: &TargetCache,
        n: usize,
    ) -> Result<Evaluation, TrainError> {
        let bs = self.training.batch_size;
        let s = self.valid.block_size;
        let t = cache.manifest().identity.temperature;
        let mut nll = NllSum::default();
        let (mut kl_sum, mut agree, mut count, mut teacher_nll) = (0f64, 0usize, 0usize, 0f64);
        let indices: Vec<usize> = (0..n).collect();
        for blocks in indices.chunks(bs) {
            let c = blocks.len();
            let (_, logits, batch_nll) = self.student_on_valid(blocks)?;
            nll.add(batch_nll);
            let mut targets = cache
                .rows("valid", blocks)
                .map_err(|e| TrainError::Invalid(format!("teacher cache: {e}")))?;
            let v = logits.dim(2).ctx(|| "logits".into())?;
            let counted = counted_rows(self.valid, blocks, s - 1);
            let keep = counted
                .as_deref()
                .map(|r| row_index(r, &self.device))
                .transpose()
                .ctx(|| "counted rows".into())?;
            if let Some(r) = &counted {
                targets = targets.select(r);
            }
            let rows = counted.as_ref().map_or(c * (s - 1), Vec::len);
            let sl = logits
                .narrow(1, 0, s - 1)
                .and_then(|l| l.reshape((c * (s - 1), v)))
                .and_then(|l| select_rows(&l, keep.as_ref()))
                .ctx(|| "eval".into())?;
            let kl = crate::losses::TopKTensors::new(&targets, &self.device)
                .and_then(|tt| crate::losses::top_k_kl(&sl, &tt, t))
                .and_then(|k| k.to_scalar::<f32>())
                .ctx(|| "validation KL".into())?;
            kl_sum += kl as f64 / (t * t) * rows as f64;
            let a: Vec<u32> = sl
                .argmax(D::Minus1)
                .and_then(|x| x.to_vec1())
                .ctx(|| "argmax".into())?;
            agree += a
                .iter()
                .enumerate()
                .filter(|(r, &x)| x == targets.ids[r * targets.k])
                .count();
            count += rows;
            teacher_nll -= targets.label_logp.iter().map(|&l| l as f64).sum::<f64>();
        }
        if self.teacher_val_ppl.is_none() && count > 0 {
            self.teacher_val_ppl = Some((teacher_nll / count as f64).exp());
        }
        let ppl = nll.perplexity();
        let (kl, a) = (
            kl_sum / count.max(1) as f64,
            agree as f64 / count.max(1) as f64,
        );
        Ok(Evaluation {
            metrics: vec![
                ("val_ppl", ppl),
                ("tokens", nll.tokens as f64),
                ("val_kl", kl),
                ("top1_agreement", a),
            ],
            score: (-ppl, 0.0),
            summary: format!(
                "val ppl {ppl:.2}  KL {kl:.3} (cached top-{})  top-1 agreement {:.1}%",
                cache.manifest().layout.top_k,
                100.0 * a
            ),
        })
    }
}

impl CausalLm<'_> {
    /// The teacher's logits on a validation batch `ids` (f32), kept in `cache` for the next
    /// evaluations: its features before a dense head (the head multiplied out on use), else
    /// its logits.
    fn teacher_on_valid(
        teacher: &dyn Model,
        cache: &mut Option<TeacherCache>,
        ids: &Tensor,
    ) -> Result<Tensor, TrainError> {
        let input = Input::new(ids);
        let cache = cache.get_or_insert_with(|| match teacher.dense_head() {
            Some(head) => TeacherCache::Features {
                batches: vec![],
                head: head.detach(),
            },
            None => TeacherCache::Logits(vec![]),
        });
        Ok(match cache {
            TeacherCache::Features { batches, head } => {
                let f = features(teacher, &input, "teacher forward (eval)")?;
                let features = f.features.detach();
                let t = distill_models::weights::times_transposed(&features, head)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .ctx(|| "teacher head (eval)".into())?;
                batches.push(features);
                t
            }
            TeacherCache::Logits(batches) => {
                let t = teacher
                    .run(&input)
                    .map_err(|e| TrainError::Invalid(format!("teacher forward (eval): {e}")))?
                    .logits
                    .detach()
                    .to_dtype(DType::F32)
                    .ctx(|| "teacher logits (eval)".into())?;
                batches.push(t.clone());
                t
            }
        })
    }
}

impl CausalLm<'_> {
    /// Where a cross task's teacher rows come from: the teacher online, or its cache.
    fn teacher_rows(&self) -> Option<TeacherRows<'_>> {
        match (self.teacher, self.cache) {
            (Some(t), _) => Some(TeacherRows::Online(t)),
            (None, Some(c)) => Some(TeacherRows::Cached(c)),
            (None, None) => None,
        }
    }

    /// The loss across tokenizers: `(1 − α)·CE` over every student position, `α·cross` over the
    /// aligned ones.
    fn loss_across(&self, blocks: &[usize], ids: &Tensor) -> Result<Losses, TrainError> {
        let (b, s) = ids.dims2().ctx(|| "batch".into())?;
        let logits = self
            .student
            .run(&Input::new(ids))
            .map_err(|e| TrainError::Invalid(format!("student forward: {e}")))?
            .logits;
        let hard = next_token_ce(&logits, ids)?;
        let mut total = (&hard * (1.0 - self.alpha)).ctx(|| "loss".into())?;
        let mut parts = vec![("hard", hard.to_scalar::<f32>().ctx(|| "loss".into())?)];
        let cross = self.cross.as_ref().expect("a cross task");
        if let Some(teacher) = self.teacher_rows().filter(|_| self.alpha > 0.0) {
            if let Some(v) = cross.train_loss(teacher, &logits, blocks, self.temperature)? {
                total = (total + (&v.total * self.alpha).ctx(|| "loss".into())?)
                    .ctx(|| "loss".into())?;
                parts.push(("soft", v.total.to_scalar::<f32>().ctx(|| "loss".into())?));
                parts.push(("kl_shared", v.matched));
                parts.push(("uld", v.unmatched));
            }
        }
        Ok(Losses {
            parts,
            total,
            units: b * s,
        })
    }

    /// Evaluation across tokenizers: the student's perplexity over its own tokens, and at the
    /// aligned positions the KL over the shared ids and the ULD term (at T = 1) and top-1
    /// agreement (where the teacher's top-1 is a shared id).
    fn evaluate_across(&mut self, n: usize) -> Result<Evaluation, TrainError> {
        let bs = self.training.batch_size;
        let s = self.valid.block_size;
        let batches: Vec<Vec<usize>> = (0..n)
            .collect::<Vec<_>>()
            .chunks(bs)
            .map(<[usize]>::to_vec)
            .collect();
        let device = self.device.clone();
        let has_teacher = self.teacher_rows().is_some();
        let cross = self.cross.as_mut().expect("a cross task");
        match (self.teacher, self.cache) {
            (Some(teacher), _) => cross.fill_valid(teacher, &batches, s, &device)?,
            (None, Some(cache)) => cross.fill_valid_cached(cache, &batches, s, &device)?,
            (None, None) => {}
        }
        let mut nll = NllSum::default();
        let mut scores = AlignedScores::default();
        for (bi, blocks) in batches.iter().enumerate() {
            let (_, logits, batch_nll) = self.student_on_valid(blocks)?;
            nll.add(batch_nll);
            if has_teacher {
                scores.add(
                    self.cross
                        .as_ref()
                        .expect("a cross task")
                        .valid_scores(bi, &logits)?,
                );
            }
        }
        let ppl = nll.perplexity();
        let mut metrics = vec![("val_ppl", ppl), ("tokens", nll.tokens as f64)];
        let mut summary = format!("val ppl {ppl:.2}");
        if scores.positions > 0 {
            let p = scores.positions as f64;
            let (kl, uld) = (scores.kl / p, scores.uld / p);
            let a = scores.agree as f64 / scores.comparable.max(1) as f64;
            let share = p / (n * (s - 1)).max(1) as f64;
            metrics.extend([
                ("val_kl", kl),
                ("val_uld", uld),
                ("top1_agreement", a),
                ("aligned_share", share),
                ("teacher_shared_mass", scores.shared_mass / p),
                ("teacher_unmatched_mass", scores.unmatched_mass / p),
                ("teacher_top1_shared", scores.comparable as f64 / p),
            ]);
            summary += &format!(
                "  KL(shared ids) {kl:.3}  ULD {uld:.3}  top-1 agreement {:.1}%  aligned {:.1}%",
                100.0 * a,
                100.0 * share
            );
        }
        Ok(Evaluation {
            metrics,
            score: (-ppl, 0.0),
            summary,
        })
    }
}

/// Mean cross-entropy of logits `[b, s, V]` against the next tokens of `ids` `[b, s]`.
fn next_token_ce(logits: &Tensor, ids: &Tensor) -> Result<Tensor, TrainError> {
    let (b, s, v) = logits.dims3().ctx(|| "student logits".into())?;
    let rows = logits
        .narrow(1, 0, s - 1)
        .and_then(|l| l.reshape((b * (s - 1), v)))
        .ctx(|| "student logits".into())?;
    let labels = ids
        .narrow(1, 1, s - 1)
        .and_then(|t| t.flatten_all())
        .ctx(|| "labels".into())?;
    crate::losses::CrossEntropy
        .forward(&LossInputs {
            student_logits: &rows,
            teacher_logits: None,
            labels: Some(&labels),
        })
        .ctx(|| "cross-entropy".into())
}

impl Task for CausalLm<'_> {
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
        "tokens"
    }

    fn loss(&mut self, at: &BatchAt) -> Result<Losses, TrainError> {
        let blocks = self.batch_blocks(at);
        let ids: Vec<u32> = blocks
            .iter()
            .flat_map(|&i| self.train.blocks[i].iter().copied())
            .collect();
        let s = self.train.block_size;
        let b = blocks.len();
        let ids = Tensor::from_vec(ids, (b, s), &self.device).ctx(|| "batch".into())?;
        if self.cross.is_some() {
            return self.loss_across(&blocks, &ids);
        }
        let counted = counted_rows(self.train, &blocks, s - 1);
        let keep = counted
            .as_deref()
            .map(|r| row_index(r, &self.device))
            .transpose()
            .ctx(|| "counted rows".into())?;
        if let Some(cache) = self.cache {
            let counted = counted.as_deref().zip(keep.as_ref());
            return self.loss_from_cache(cache, &blocks, &ids, (b, s), counted);
        }
        let want_hidden = self.objective.uses_hidden();
        if let Some(losses) = self.loss_from_heads(&ids, (b, s), want_hidden, keep.as_ref())? {
            return Ok(losses);
        }
        let out = self
            .student
            .run(&Input::new(&ids).with_hidden(want_hidden))
            .map_err(|e| TrainError::Invalid(format!("student forward: {e}")))?;
        let v = out.logits.dim(2).ctx(|| "logits".into())?;
        let flat = |t: &Tensor| -> candle_core::Result<Tensor> {
            select_rows(
                &t.narrow(1, 0, s - 1)?.reshape((b * (s - 1), v))?,
                keep.as_ref(),
            )
        };
        let student = flat(&out.logits).ctx(|| "student logits".into())?;
        let labels = ids
            .narrow(1, 1, s - 1)
            .and_then(|t| t.flatten_all())
            .and_then(|t| select_rows(&t, keep.as_ref()))
            .ctx(|| "labels".into())?;
        let teacher_out = match self
            .teacher
            .filter(|_| self.objective.uses_teacher_logits() || want_hidden)
        {
            Some(teacher) => {
                let t = teacher
                    .run(&Input::new(&ids).with_hidden(want_hidden))
                    .map_err(|e| TrainError::Invalid(format!("teacher forward: {e}")))?;
                let tv = t.logits.dim(2).ctx(|| "teacher logits".into())?;
                if tv != v {
                    return Err(TrainError::Invalid(format!(
                        "teacher vocabulary ({tv}) differs from the student's ({v})"
                    )));
                }
                Some((
                    flat(&t.logits.detach()).ctx(|| "teacher logits".into())?,
                    t.hidden_states,
                ))
            }
            None => None,
        };
        let (sh, th) = (
            out.hidden_states.unwrap_or_default(),
            teacher_out
                .as_ref()
                .and_then(|t| t.1.clone())
                .unwrap_or_default(),
        );
        let value = self.objective.value(&Targets {
            student: &student,
            teacher: teacher_out.as_ref().map(|t| &t.0),
            labels: &labels,
            hidden: (want_hidden && teacher_out.is_some()).then_some((&sh[..], &th[..], None)),
        })?;
        Ok(Losses {
            parts: value.parts(),
            total: value.total,
            units: b * s,
        })
    }

    fn evaluate(&mut self) -> Result<Evaluation, TrainError> {
        let n = self.training.eval_block_count(self.valid.len());
        if self.cross.is_some() {
            return self.evaluate_across(n);
        }
        if let Some(cache) = self.cache {
            return self.evaluate_from_cache(cache, n);
        }
        let bs = self.training.batch_size;
        let s = self.valid.block_size;
        let mut nll = NllSum::default();
        let mut teacher_nll = NllSum::default();
        let (mut kl_sum, mut agree, mut count) = (0f64, 0usize, 0usize);
        let fill_cache = self.teacher_cache.is_none() && self.teacher.is_some();
        let mut cache = self.teacher_cache.take();
        let indices: Vec<usize> = (0..n).collect();
        for (bi, chunk) in indices.chunks(bs).enumerate() {
            let (ids, logits, batch_nll) = self.student_on_valid(chunk)?;
            nll.add(batch_nll);
            if let Some(teacher) = self.teacher {
                if fill_cache {
                    let t = Self::teacher_on_valid(teacher, &mut cache, &ids)?;
                    teacher_nll.add(
                        self.valid_nll(&t, &ids, chunk)
                            .ctx(|| "teacher NLL".into())?,
                    );
                }
                let t = &cache
                    .as_ref()
                    .expect("filled on the first evaluation")
                    .logits(bi)
                    .and_then(|t| t.to_dtype(logits.dtype()))
                    .ctx(|| "teacher logits (eval)".into())?;
                let v = logits.dim(2).ctx(|| "logits".into())?;
                let keep = counted_rows(self.valid, chunk, s)
                    .map(|r| row_index(&r, &self.device))
                    .transpose()
                    .ctx(|| "counted rows".into())?;
                let sl = logits
                    .reshape((chunk.len() * s, v))
                    .and_then(|l| select_rows(&l, keep.as_ref()))
                    .ctx(|| "eval".into())?;
                let tl = t
                    .reshape((chunk.len() * s, v))
                    .and_then(|l| select_rows(&l, keep.as_ref()))
                    .ctx(|| "eval".into())?;
                let rows = sl.dim(0).ctx(|| "eval".into())?;
                let kl = ForwardKl { temperature: 1.0 }
                    .forward(&LossInputs {
                        student_logits: &sl,
                        teacher_logits: Some(&tl),
                        labels: None,
                    })
                    .and_then(|k| k.to_scalar::<f32>())
                    .ctx(|| "validation KL".into())?;
                kl_sum += kl as f64 * rows as f64;
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
            self.teacher_val_ppl = Some(teacher_nll.perplexity());
        }
        if self.teacher.is_some() {
            self.teacher_cache = cache;
        }
        let ppl = nll.perplexity();
        let mut metrics = vec![("val_ppl", ppl), ("tokens", nll.tokens as f64)];
        let mut summary = format!("val ppl {ppl:.2}");
        if count > 0 {
            let kl = kl_sum / count as f64;
            let a = agree as f64 / count as f64;
            metrics.push(("val_kl", kl));
            metrics.push(("top1_agreement", a));
            summary += &format!("  KL {kl:.3}  top-1 agreement {:.1}%", 100.0 * a);
        }
        Ok(Evaluation {
            metrics,
            score: (-ppl, 0.0),
            summary,
        })
    }
}
