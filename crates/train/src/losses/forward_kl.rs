//! Forward KL, `T² · KL(p_teacher^T ‖ p_student^T)`: the classic distillation loss. Mass-covering:
//! the student is pushed to put probability wherever the teacher does.

use candle_core::{Result, Tensor};

use super::{kl_rows, log_probs_at, teacher, Loss, LossInputs};

pub struct ForwardKl {
    pub temperature: f64,
}

impl Loss for ForwardKl {
    fn name(&self) -> &'static str {
        "forward_kl"
    }
    fn forward(&self, x: &LossInputs) -> Result<Tensor> {
        let t = self.temperature;
        let lt = log_probs_at(teacher(x, "forward_kl")?, t)?.detach();
        let ls = log_probs_at(x.student_logits, t)?;
        kl_rows(&lt, &ls)? * (t * t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::test_util::check_gradient;
    use candle_core::Device;

    #[test]
    fn matches_a_hand_computed_value_and_is_zero_on_equal_inputs() {
        let dev = Device::Cpu;
        // p = softmax([0, ln 3]) = [1/4, 3/4]; q = softmax([0, 0]) = [1/2, 1/2].
        let t = Tensor::new(&[[0f32, 3f32.ln()]], &dev).unwrap();
        let s = Tensor::new(&[[0f32, 0.0]], &dev).unwrap();
        let kl = ForwardKl { temperature: 1.0 }
            .forward(&LossInputs {
                student_logits: &s,
                teacher_logits: Some(&t),
                labels: None,
            })
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let expected = 0.25 * (0.25f32 / 0.5).ln() + 0.75 * (0.75f32 / 0.5).ln();
        assert!((kl - expected).abs() < 1e-6, "{kl} vs {expected}");
        // At T = 2 the logits are halved and the result scaled by 4.
        let kl2 = ForwardKl { temperature: 2.0 }
            .forward(&LossInputs {
                student_logits: &s,
                teacher_logits: Some(&t),
                labels: None,
            })
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let p = [1.0 / (1.0 + 3f32.sqrt()), 3f32.sqrt() / (1.0 + 3f32.sqrt())];
        let expected2 = 4.0 * (p[0] * (p[0] / 0.5).ln() + p[1] * (p[1] / 0.5).ln());
        assert!((kl2 - expected2).abs() < 1e-5, "{kl2} vs {expected2}");
        let same = ForwardKl { temperature: 3.0 }
            .forward(&LossInputs {
                student_logits: &t,
                teacher_logits: Some(&t),
                labels: None,
            })
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(same.abs() < 1e-7);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let t = Tensor::new(&[[0.3f32, -1.0, 2.0], [1.0, 0.5, -0.5]], &Device::Cpu).unwrap();
        check_gradient(&[0.1, 0.2, -0.3, 1.5, -1.0, 0.0], (2, 3), |s| {
            ForwardKl { temperature: 2.0 }
                .forward(&LossInputs {
                    student_logits: s,
                    teacher_logits: Some(&t),
                    labels: None,
                })
                .unwrap()
        });
    }
}
