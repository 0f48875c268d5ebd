//! Hidden-state matching between a student layer and a teacher layer, through a learned linear
//! projection when their widths differ (TinyBERT, Jiao et al. 2020; FitNets' "hint" layers).

use candle_core::{DType, Module, Result, Tensor, D};

/// How two hidden states are compared.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum HiddenLossKind {
    /// Mean squared error.
    Mse,
    /// `1 − cosine similarity`, averaged over positions.
    Cosine,
}

/// Compares `proj(h_student)` with `h_teacher`, both `[N, width]` over the positions that count.
pub struct HiddenLoss {
    pub kind: HiddenLossKind,
    /// Maps the student width to the teacher width; `None` when they are equal.
    pub projection: Option<candle_nn::Linear>,
}

impl HiddenLoss {
    pub fn forward(&self, student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
        let s = match &self.projection {
            Some(p) => p.forward(student)?,
            None => student.clone(),
        }
        .to_dtype(DType::F32)?;
        let t = teacher.to_dtype(DType::F32)?.detach();
        match self.kind {
            HiddenLossKind::Mse => candle_nn::loss::mse(&s, &t),
            HiddenLossKind::Cosine => {
                let dot = (&s * &t)?.sum(D::Minus1)?;
                let ns = s.sqr()?.sum(D::Minus1)?.sqrt()?;
                let nt = t.sqr()?.sum(D::Minus1)?.sqrt()?;
                let cos = dot.div(&(ns * nt)?.clamp(1e-8f32, f32::MAX)?)?;
                (1.0 - cos)?.mean_all()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::test_util::check_gradient;
    use candle_core::Device;

    #[test]
    fn values_and_gradients() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 0.0], [0.0, 2.0]], &dev).unwrap();
        let b = Tensor::new(&[[0f32, 1.0], [0.0, 4.0]], &dev).unwrap();
        let mse = HiddenLoss {
            kind: HiddenLossKind::Mse,
            projection: None,
        }
        .forward(&a, &b)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!((mse - (1.0 + 1.0 + 0.0 + 4.0) / 4.0).abs() < 1e-6);
        let cos = HiddenLoss {
            kind: HiddenLossKind::Cosine,
            projection: None,
        }
        .forward(&a, &b)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!((cos - 0.5).abs() < 1e-6, "{cos}");
        let t = Tensor::new(&[[0.3f32, -1.0, 2.0], [1.0, 0.5, -0.5]], &dev).unwrap();
        for kind in [HiddenLossKind::Mse, HiddenLossKind::Cosine] {
            check_gradient(&[0.1, 0.2, -0.3, 1.5, -1.0, 0.7], (2, 3), |s| {
                HiddenLoss {
                    kind,
                    projection: None,
                }
                .forward(s, &t)
                .unwrap()
            });
        }
    }
}
