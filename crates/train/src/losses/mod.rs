//! Distillation losses. Each loss is one file implementing [`Loss`]; soft-target losses are
//! looked up by name in [`SOFT_LOSSES`], so a new one is a new file plus one line there.
//!
//! All losses take logits over the positions that count (padding already removed), flattened
//! to `[N, V]`, and return a scalar averaged over the N positions. Soft-target losses compare
//! the teacher and student distributions at temperature T and are scaled by T², so their
//! gradients keep the same magnitude as T changes (Hinton et al., 2015).

mod cross_entropy;
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

type SoftLossCtor = fn(&SoftLossParams) -> Box<dyn Loss>;

/// Soft-target losses by name.
pub const SOFT_LOSSES: &[(&str, SoftLossCtor)] = &[
    ("forward_kl", |p| {
        Box::new(ForwardKl {
            temperature: p.temperature,
        })
    }),
    ("reverse_kl", |p| {
        Box::new(ReverseKl {
            temperature: p.temperature,
        })
    }),
    ("jsd", |p| {
        Box::new(Jsd {
            temperature: p.temperature,
            beta: p.jsd_beta,
        })
    }),
];

/// Builds the soft-target loss called `name`.
pub fn soft_loss(
    name: &str,
    params: &SoftLossParams,
) -> std::result::Result<Box<dyn Loss>, String> {
    SOFT_LOSSES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, ctor)| ctor(params))
        .ok_or_else(|| {
            format!(
                "unknown loss `{name}`; expected one of: {}",
                SOFT_LOSSES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
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
