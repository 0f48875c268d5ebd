//! Distillation losses. Each loss is one file implementing [`Loss`]; a config names a
//! soft-target loss with [`SoftLoss`], whose `build` is the table of them, so a new one is a
//! new file plus a variant and its line there.
//!
//! All losses take logits over the positions that count (padding already removed), flattened
//! to `[N, V]`, and return a scalar averaged over the N positions. Soft-target losses compare
//! the teacher and student distributions at temperature T and are scaled by T², so their
//! gradients keep the same magnitude as T changes (Hinton et al., 2015).

mod cross_entropy;
mod cross_vocab;
mod forward_kl;
mod fused_head;
mod fused_kd;
mod hidden;
mod jsd;
mod reverse_kl;
mod top_k;

#[cfg(test)]
pub(crate) mod testing {
    use candle_core::Tensor;

    /// Largest absolute element-wise difference of two tensors of the same shape.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }
}

pub use cross_entropy::CrossEntropy;
pub use cross_vocab::{cross_targets, cross_vocab_loss, CrossTargets, CrossValue};
pub use forward_kl::ForwardKl;
pub use fused_head::{fused_head_kl_ce, fused_head_top_k_kl_ce, HeadLoss};
pub use fused_kd::fused_forward_kl_ce;
pub use hidden::{HiddenLoss, HiddenLossKind};
pub use jsd::Jsd;
pub use reverse_kl::ReverseKl;
pub use top_k::{top_k_kl, TopKTensors};

use candle_core::{DType, Result, Tensor, D};

/// What a loss sees.
pub struct LossInputs<'a> {
    /// `[N, V]` student logits.
    pub student_logits: &'a Tensor,
    /// `[N, V]` teacher logits (soft-target losses).
    pub teacher_logits: Option<&'a Tensor>,
    /// `[N]` target token ids or class labels (hard-label losses).
    pub labels: Option<&'a Tensor>,
}

/// A differentiable objective term.
pub trait Loss: Send + Sync {
    /// Name used in configs and metrics.
    fn name(&self) -> &'static str;
    /// Scalar loss, averaged over positions.
    fn forward(&self, x: &LossInputs) -> Result<Tensor>;
}

/// Settings shared by the soft-target losses.
#[derive(Clone, Debug)]
pub struct SoftLossParams {
    pub temperature: f64,
    /// Mixture weight of the teacher distribution in JSD.
    pub jsd_beta: f64,
}

/// The soft-target loss of a run (`distill.loss`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SoftLoss {
    /// KL(teacher ‖ student): mass-covering; the one a teacher cache and the fused CPU path
    /// compute.
    #[default]
    ForwardKl,
    /// KL(student ‖ teacher): mode-seeking.
    ReverseKl,
    /// Generalised Jensen–Shannon divergence with the teacher weighted by `jsd_beta`.
    Jsd,
}

impl SoftLoss {
    /// The name configs and metrics use.
    pub fn name(self) -> &'static str {
        match self {
            SoftLoss::ForwardKl => "forward_kl",
            SoftLoss::ReverseKl => "reverse_kl",
            SoftLoss::Jsd => "jsd",
        }
    }

    /// The loss with `p`'s settings.
    pub fn build(self, p: &SoftLossParams) -> Box<dyn Loss> {
        match self {
            SoftLoss::ForwardKl => Box::new(ForwardKl {
                temperature: p.temperature,
            }),
            SoftLoss::ReverseKl => Box::new(ReverseKl {
                temperature: p.temperature,
            }),
            SoftLoss::Jsd => Box::new(Jsd {
                temperature: p.temperature,
                beta: p.jsd_beta,
            }),
        }
    }
}

impl std::fmt::Display for SoftLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub(crate) fn teacher<'a>(x: &'a LossInputs, who: &str) -> Result<&'a Tensor> {
    x.teacher_logits
        .ok_or_else(|| candle_core::Error::Msg(format!("{who} needs teacher logits")))
}

/// Log-probabilities at temperature `t`, in f32.
pub(crate) fn log_probs_at(logits: &Tensor, t: f64) -> Result<Tensor> {
    candle_nn::ops::log_softmax(&(logits.to_dtype(DType::F32)? / t)?, D::Minus1)
}

/// Mean over rows of `Σ_v p (log p − log q)`, given log-probabilities.
pub(crate) fn kl_rows(logp: &Tensor, logq: &Tensor) -> Result<Tensor> {
    let p = logp.exp()?;
    (p * (logp - logq)?)?.sum(D::Minus1)?.mean_all()
}

#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::{Device, Tensor, Var};

    /// Checks the analytic gradient of `f` at `x` against central finite differences.
    pub fn check_gradient(x: &[f32], shape: (usize, usize), f: impl Fn(&Tensor) -> Tensor) {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::from_slice(x, shape, &dev).unwrap()).unwrap();
        let loss = f(var.as_tensor());
        let grad: Vec<f32> = loss
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let eps = 1e-2f32;
        for i in 0..x.len() {
            let eval = |d: f32| {
                let mut y = x.to_vec();
                y[i] += d;
                f(&Tensor::from_slice(&y, shape, &dev).unwrap())
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            assert!(
                (numeric - grad[i]).abs() < 2e-3 + 2e-2 * numeric.abs(),
                "d/dx[{i}]: analytic {} numeric {numeric}",
                grad[i]
            );
        }
    }
}
