//! Reverse KL, `T² · KL(p_student^T ‖ p_teacher^T)`: mode-seeking; the student concentrates on
//! the teacher's main modes instead of spreading over its tail (MiniLLM, Gu et al. 2023).

use candle_core::{Result, Tensor};

use super::{kl_rows, log_probs_at, teacher, Loss, LossInputs};

pub struct ReverseKl {
    pub temperature: f64,
}

impl Loss for ReverseKl {
    fn name(&self) -> &'static str {
        "reverse_kl"
    }
    fn forward(&self, x: &LossInputs) -> Result<Tensor> {
        let t = self.temperature;
        let lt = log_probs_at(teacher(x, "reverse_kl")?, t)?.detach();
        let ls = log_probs_at(x.student_logits, t)?;
        kl_rows(&ls, &lt)? * (t * t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::test_util::check_gradient;
    use candle_core::Device;

    #[test]
    fn is_the_kl_the_other_way_round() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[[0f32, 3f32.ln()]], &dev).unwrap();
        let s = Tensor::new(&[[0f32, 0.0]], &dev).unwrap();
        let v = ReverseKl { temperature: 1.0 }
            .forward(&LossInputs {
                student_logits: &s,
                teacher_logits: Some(&t),
                labels: None,
            })
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let expected = 0.5 * (0.5f32 / 0.25).ln() + 0.5 * (0.5f32 / 0.75).ln();
        assert!((v - expected).abs() < 1e-6, "{v} vs {expected}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let t = Tensor::new(&[[0.3f32, -1.0, 2.0], [1.0, 0.5, -0.5]], &Device::Cpu).unwrap();
        check_gradient(&[0.1, 0.2, -0.3, 1.5, -1.0, 0.0], (2, 3), |s| {
            ReverseKl { temperature: 1.5 }
                .forward(&LossInputs {
                    student_logits: s,
                    teacher_logits: Some(&t),
                    labels: None,
                })
                .unwrap()
        });
    }
}
