//! The distillation objective both tasks train with:
//! `α · soft(z_s, z_t) + (1 − α) · CE(z_s, y) + Σ w · hidden(h_s, h_t)`, the soft loss looked
//! up by name in the loss registry, forward KL and CE fused into one pass on CPU, hidden-state
//! losses through learned projections when the widths differ. Rows are positions (causal LM)
//! or sequences (classification).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};

use crate::config::DistillConfig;
use crate::error::{Ctx, TrainError};
use crate::losses::{
    fused_forward_kl_ce, fused_head_kl_ce, fused_head_top_k_kl_ce, top_k_kl, CrossEntropy,
    HiddenLoss, Loss, LossInputs, SoftLoss, SoftLossParams, TopKTensors,
};
use distill_cache::TopK;

/// One hidden-state term: student layer, teacher layer, weight, loss.
struct HiddenTerm {
    student_layer: usize,
    teacher_layer: usize,
    weight: f64,
    loss: HiddenLoss,
}

/// The objective of a run, with the variables it owns (hidden-state projections).
pub struct Objective {
    kind: SoftLoss,
    soft: Box<dyn Loss>,
    hidden: Vec<HiddenTerm>,
    alpha: f64,
    temperature: f64,
    /// Whether the fused CPU kernels run (forward KL + CE, cached targets; same values and
    /// gradients as the composed losses).
    on_cpu: bool,
    student_width: usize,
    teacher_width: usize,
    aux: VarMap,
}

/// What the objective compares, over the rows that count.
pub struct Targets<'a> {
    /// `[N, V]` student logits.
    pub student: &'a Tensor,
    /// `[N, V]` teacher logits, when the objective uses them.
    pub teacher: Option<&'a Tensor>,
    /// `[N]` labels (next tokens or classes).
    pub labels: &'a Tensor,
    /// Hidden states of student and teacher (`[b, s, width]` each, embedding output first),
    /// and the flattened positions that count (`None`: all).
    pub hidden: Option<(&'a [Tensor], &'a [Tensor], Option<&'a Tensor>)>,
}

/// The loss and its parts.
pub struct ObjectiveValue {
    pub total: Tensor,
    pub soft: Option<f32>,
    pub hard: f32,
    pub hidden: Option<f32>,
}

impl ObjectiveValue {
    /// The named parts, as the learner logs them.
    pub fn parts(&self) -> Vec<(&'static str, f32)> {
        let mut p = vec![("hard", self.hard)];
        if let Some(s) = self.soft {
            p.push(("soft", s));
        }
        if let Some(h) = self.hidden {
            p.push(("hidden", h));
        }
        p
    }
}

impl Objective {
    /// The objective `d` describes between a student of hidden width `student_width` and a
    /// teacher of `teacher_width`.
    pub fn new(
        d: &DistillConfig,
        student_width: usize,
        teacher_width: usize,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let soft = d.loss.build(&SoftLossParams {
            temperature: d.temperature,
            jsd_beta: d.jsd_beta,
        });
        let aux = VarMap::new();
        let vb = VarBuilder::from_varmap(&aux, DType::F32, device);
        let mut hidden = vec![];
        for (i, h) in d.hidden.iter().enumerate() {
            let projection = if student_width != teacher_width {
                let w = vb
                    .get_with_hints(
                        (teacher_width, student_width),
                        &format!("hidden.{i}.projection.weight"),
                        Init::Randn {
                            mean: 0.0,
                            stdev: (1.0 / student_width as f64).sqrt(),
                        },
                    )
                    .ctx(|| "hidden-state projection".into())?;
                Some(candle_nn::Linear::new(w, None))
            } else {
                None
            };
            hidden.push(HiddenTerm {
                student_layer: h.student_layer,
                teacher_layer: h.teacher_layer,
                weight: h.weight,
                loss: HiddenLoss {
                    kind: h.loss,
                    projection,
                },
            });
        }
        Ok(Self {
            kind: d.loss,
            soft,
            hidden,
            alpha: d.alpha,
            temperature: d.temperature,
            on_cpu: device.is_cpu(),
            student_width,
            teacher_width,
            aux,
        })
    }

    /// The student's variables and the objective's own (projections, under `aux.` names):
    /// everything a run trains and checkpoints.
    pub fn variables_with(&self, student: &VarMap) -> BTreeMap<String, Var> {
        let named = |vm: &VarMap, prefix: &str| -> Vec<(String, Var)> {
            distill_models::weights::vars(vm)
                .iter()
                .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
                .collect()
        };
        let mut v: BTreeMap<String, Var> = named(student, "").into_iter().collect();
        v.extend(named(&self.aux, "aux."));
        v
    }

    /// Whether the teacher's logits are used (α > 0).
    pub fn uses_teacher_logits(&self) -> bool {
        self.alpha > 0.0
    }

    /// Whether hidden states are compared.
    pub fn uses_hidden(&self) -> bool {
        !self.hidden.is_empty()
    }

    /// The temperature of the fused forward KL + CE, when the objective runs it.
    fn fused_temperature(&self) -> Option<f64> {
        (self.on_cpu && self.kind == SoftLoss::ForwardKl).then_some(self.temperature)
    }

    pub fn value(&self, x: &Targets) -> Result<ObjectiveValue, TrainError> {
        // A teacher in another dtype (bf16 on a GPU) is compared in the student's.
        let teacher = match x.teacher.filter(|_| self.alpha > 0.0) {
            Some(t) => Some(
                t.to_dtype(x.student.dtype())
                    .ctx(|| "teacher logits".into())?,
            ),
            None => None,
        };
        let teacher = teacher.as_ref();
        let (hard, soft) = match (teacher, self.fused_temperature()) {
            (Some(t), Some(temp)) => {
                let r = fused_forward_kl_ce(x.student, t, x.labels, temp)
                    .ctx(|| "fused KL + cross-entropy".into())?;
                (
                    r.get(1).ctx(|| "loss".into())?,
                    Some(r.get(0).ctx(|| "loss".into())?),
                )
            }
            _ => {
                let hard = CrossEntropy
                    .forward(&LossInputs {
                        student_logits: x.student,
                        teacher_logits: None,
                        labels: Some(x.labels),
                    })
                    .ctx(|| "cross-entropy".into())?;
                let soft = match teacher {
                    Some(t) => Some(
                        self.soft
                            .forward(&LossInputs {
                                student_logits: x.student,
                                teacher_logits: Some(t),
                                labels: None,
                            })
                            .ctx(|| format!("{} loss", self.soft.name()))?,
                    ),
                    None => None,
                };
                (hard, soft)
            }
        };
        let mut total = (&hard * (1.0 - self.alpha)).ctx(|| "loss".into())?;
        let mut soft_value = None;
        if let Some(soft) = soft {
            soft_value = Some(soft.to_scalar::<f32>().ctx(|| "soft loss".into())?);
            total = (total + (soft * self.alpha).ctx(|| "loss".into())?).ctx(|| "loss".into())?;
        }
        let (total, hidden_value) = self.add_hidden(total, x.hidden)?;
        Ok(ObjectiveValue {
            hard: hard.to_scalar::<f32>().ctx(|| "hard loss".into())?,
            total,
            soft: soft_value,
            hidden: hidden_value,
        })
    }

    /// Whether [`Objective::value_from_heads`] applies: forward KL at T with the teacher's
    /// logits, fused on the CPU.
    pub fn fuses_heads(&self) -> bool {
        self.fused_head_temperature().is_some()
    }

    fn fused_head_temperature(&self) -> Option<f64> {
        self.fused_temperature().filter(|_| self.alpha > 0.0)
    }

    /// The objective from the student's and the teacher's features and heads
    /// ([`crate::losses::fused_head_kl_ce`]), never forming the logits; the hidden-state terms as
    /// in [`Objective::value`]. Only when [`Objective::fuses_heads`].
    pub fn value_from_heads(
        &self,
        student: (&Tensor, &Tensor),
        teacher: (&Tensor, &Tensor),
        labels: &Tensor,
        hidden: Option<(&[Tensor], &[Tensor], Option<&Tensor>)>,
    ) -> Result<ObjectiveValue, TrainError> {
        let Some(temperature) = self.fused_head_temperature() else {
            return Err(TrainError::Invalid(
                "the fused head loss needs forward KL on the CPU with alpha > 0".into(),
            ));
        };
        let r = fused_head_kl_ce(
            student.0,
            student.1,
            teacher.0,
            teacher.1,
            labels,
            temperature,
            self.alpha,
        )
        .ctx(|| "fused head, KL and cross-entropy".into())?;
        let (total, hidden_value) = self.add_hidden(r.total, hidden)?;
        Ok(ObjectiveValue {
            total,
            soft: Some(r.soft),
            hard: r.hard,
            hidden: hidden_value,
        })
    }

    /// Whether the objective can train from cached top-k targets: forward KL (over the k + 1
    /// buckets) and no hidden-state terms, which need the teacher's hidden states.
    pub fn check_cacheable(&self) -> Result<(), TrainError> {
        if self.kind != SoftLoss::ForwardKl {
            return Err(TrainError::Invalid(format!(
                "distill.loss `{}` with teacher.cache: a cache holds the teacher's top-k probabilities and residual mass, over which only forward_kl is defined",
                self.kind
            )));
        }
        if !self.hidden.is_empty() {
            return Err(TrainError::Invalid(
                "distill.hidden with teacher.cache: a cache holds no hidden states; drop the hidden-state terms or train online".into(),
            ));
        }
        Ok(())
    }

    /// The objective against cached targets, from the student's features and dense head
    /// (`[N, d]`, `[V, d]`): the fused chunked pass on the CPU, the head applied whole and the
    /// composed loss elsewhere.
    pub fn value_from_cached(
        &self,
        student: (&Tensor, &Tensor),
        targets: &TopK,
        labels: &Tensor,
    ) -> Result<ObjectiveValue, TrainError> {
        if self.on_cpu && self.alpha > 0.0 {
            let r = fused_head_top_k_kl_ce(
                student.0,
                student.1,
                targets,
                labels,
                self.temperature,
                self.alpha,
            )
            .ctx(|| "fused head, top-k KL and cross-entropy".into())?;
            return Ok(ObjectiveValue {
                total: r.total,
                soft: Some(r.soft),
                hard: r.hard,
                hidden: None,
            });
        }
        let logits = distill_models::weights::times_transposed(student.0, student.1)
            .ctx(|| "student head".into())?;
        self.value_cached_logits(&logits, targets, labels)
    }

    /// The objective against cached targets from the student's logits `[N, V]` (composed ops).
    pub fn value_cached_logits(
        &self,
        logits: &Tensor,
        targets: &TopK,
        labels: &Tensor,
    ) -> Result<ObjectiveValue, TrainError> {
        let hard = CrossEntropy
            .forward(&LossInputs {
                student_logits: logits,
                teacher_logits: None,
                labels: Some(labels),
            })
            .ctx(|| "cross-entropy".into())?;
        let mut total = (&hard * (1.0 - self.alpha)).ctx(|| "loss".into())?;
        let mut soft_value = None;
        if self.alpha > 0.0 {
            let t = TopKTensors::new(targets, logits.device()).ctx(|| "cached targets".into())?;
            let soft = top_k_kl(logits, &t, self.temperature).ctx(|| "top-k KL".into())?;
            soft_value = Some(soft.to_scalar::<f32>().ctx(|| "soft loss".into())?);
            total = (total + (soft * self.alpha).ctx(|| "loss".into())?).ctx(|| "loss".into())?;
        }
        Ok(ObjectiveValue {
            hard: hard.to_scalar::<f32>().ctx(|| "hard loss".into())?,
            total,
            soft: soft_value,
            hidden: None,
        })
    }

    /// `total` plus the weighted hidden-state terms, and their unweighted sum.
    fn add_hidden(
        &self,
        mut total: Tensor,
        hidden: Option<(&[Tensor], &[Tensor], Option<&Tensor>)>,
    ) -> Result<(Tensor, Option<f32>), TrainError> {
        if let (false, Some((sh, th, positions))) = (self.hidden.is_empty(), hidden) {
            let mut sum = 0f32;
            for term in &self.hidden {
                let (sl, tl) = (term.student_layer, term.teacher_layer);
                let (Some(a), Some(c)) = (sh.get(sl), th.get(tl)) else {
                    return Err(TrainError::Invalid(format!(
                        "distill.hidden: student layer {sl} or teacher layer {tl} does not exist ({} and {} hidden states)",
                        sh.len(),
                        th.len()
                    )));
                };
                let rows = |t: &Tensor, width: usize, who: &str| -> Result<Tensor, TrainError> {
                    let n = t.elem_count() / width;
                    let flat = t.reshape((n, width)).ctx(|| format!("{who} hidden"))?;
                    match positions {
                        Some(p) => flat.index_select(p, 0).ctx(|| format!("{who} hidden")),
                        None => Ok(flat),
                    }
                };
                let a = rows(a, self.student_width, "student")?;
                let c = rows(c, self.teacher_width, "teacher")?;
                let l = term
                    .loss
                    .forward(
                        &a,
                        &c.detach()
                            .to_dtype(a.dtype())
                            .ctx(|| "teacher hidden".into())?,
                    )
                    .ctx(|| "hidden-state loss".into())?;
                sum += l.to_scalar::<f32>().ctx(|| "hidden loss".into())?;
                total = (total + (l * term.weight).ctx(|| "loss".into())?).ctx(|| "loss".into())?;
            }
            return Ok((total, Some(sum)));
        }
        Ok((total, None))
    }
}
