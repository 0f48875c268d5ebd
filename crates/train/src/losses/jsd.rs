//! Generalised Jensen–Shannon divergence with mixture weight β:
//! `T² · [β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m)]`, `m = β·p_t + (1−β)·p_s`. Bounded, symmetric at
//! β = 0.5; interpolates between forward-KL-like and reverse-KL-like behaviour (GKD, Agarwal et al.).

use candle_core::{Result, Tensor};

use super::{kl_rows, log_probs_at, teacher, Loss, LossInputs};

pub struct Jsd {
    pub temperature: f64,
    pub beta: f64,
}

impl Loss for Jsd {
    fn name(&self) -> &'static str {
        "jsd"
    }
    fn forward(&self, x: &LossInputs) -> Result<Tensor> {
        let (t, b) = (self.temperature, self.beta);
        let lt = log_probs_at(teacher(x, "jsd")?, t)?.detach();
        let ls = log_probs_at(x.student_logits, t)?;
        let m = ((lt.exp()? * b)? + (ls.exp()? * (1.0 - b))?)?;
        let logm = m.clamp(1e-30f32, 1f32)?.log()?;
        let v = ((kl_rows(&lt, &logm)? * b)? + (kl_rows(&ls, &logm)? * (1.0 - b))?)?;
        v * (t * t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::test_util::check_gradient;
    use candle_core::Device;

    #[test]
    fn matches_a_hand_computed_value_and_is_bounded() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[[0f32, 3f32.ln()]], &dev).unwrap();
        let s = Tensor::new(&[[0f32, 0.0]], &dev).unwrap();
        let v = Jsd {
            temperature: 1.0,
            beta: 0.5,
        }
        .forward(&LossInputs {
            student_logits: &s,
            teacher_logits: Some(&t),
            labels: None,
        })
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        let (p, q) = ([0.25f32, 0.75], [0.5f32, 0.5]);
        let m = [0.375f32, 0.625];
        let kl = |a: [f32; 2], b: [f32; 2]| a[0] * (a[0] / b[0]).ln() + a[1] * (a[1] / b[1]).ln();
        let expected = 0.5 * kl(p, m) + 0.5 * kl(q, m);
        assert!((v - expected).abs() < 1e-6, "{v} vs {expected}");
        // Disjoint supports: JSD is at most ln 2.
        let a = Tensor::new(&[[50f32, -50.0]], &dev).unwrap();
        let b = Tensor::new(&[[-50f32, 50.0]], &dev).unwrap();
        let v = Jsd {
            temperature: 1.0,
            beta: 0.5,
        }
        .forward(&LossInputs {
            student_logits: &a,
            teacher_logits: Some(&b),
            labels: None,
        })
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!(v <= 2f32.ln() + 1e-5 && v > 0.6, "{v}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let t = Tensor::new(&[[0.3f32, -1.0, 2.0], [1.0, 0.5, -0.5]], &Device::Cpu).unwrap();
        check_gradient(&[0.1, 0.2, -0.3, 1.5, -1.0, 0.0], (2, 3), |s| {
            Jsd {
                temperature: 1.0,
                beta: 0.3,
            }
            .forward(&LossInputs {
                student_logits: s,
                teacher_logits: Some(&t),
                labels: None,
            })
            .unwrap()
        });
    }
}
