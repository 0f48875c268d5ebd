//! Hard-label cross-entropy of the student against the true next token or class.

use candle_core::{DType, Result, Tensor};

use super::{Loss, LossInputs};

pub struct CrossEntropy;

impl Loss for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn forward(&self, x: &LossInputs) -> Result<Tensor> {
        let labels = x
            .labels
            .ok_or_else(|| candle_core::Error::Msg("cross_entropy needs labels".into()))?;
        candle_nn::loss::cross_entropy(
            &x.student_logits.to_dtype(DType::F32)?,
            &labels.to_dtype(DType::U32)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::test_util::check_gradient;
    use candle_core::Device;

    #[test]
    fn matches_a_hand_computed_value() {
        let dev = Device::Cpu;
        let s = Tensor::new(&[[0f32, 3f32.ln()], [0.0, 0.0]], &dev).unwrap();
        let y = Tensor::new(&[1u32, 0], &dev).unwrap();
        let v = CrossEntropy
            .forward(&LossInputs {
                student_logits: &s,
                teacher_logits: None,
                labels: Some(&y),
            })
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let expected = (-(0.75f32.ln()) - 0.5f32.ln()) / 2.0;
        assert!((v - expected).abs() < 1e-6, "{v} vs {expected}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let y = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
        check_gradient(&[0.1, 0.2, -0.3, 1.5, -1.0, 0.0], (2, 3), |s| {
            CrossEntropy
                .forward(&LossInputs {
                    student_logits: s,
                    teacher_logits: None,
                    labels: Some(&y),
                })
                .unwrap()
        });
    }
}
