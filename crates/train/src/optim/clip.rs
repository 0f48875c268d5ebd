//! Global-norm gradient clipping. The learner computes the norm once and hands the clipping
//! factor to [`super::AdamW::step_scaled`], which folds it into its fused update, so clipping
//! costs one read of the gradients rather than a scaled copy of them.

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use distill_models::ops::with_cpu_f32;

use super::host;

/// The global L2 norm of `grads`.
pub fn global_grad_norm(grads: &HashMap<String, Tensor>) -> candle_core::Result<f64> {
    // Summed in name order: a HashMap's order differs between processes, and a float sum in a
    // different order differs in the last bits, which would make runs irreproducible.
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
    let mut total = 0f64;
    for g in names.into_iter().map(|n| &grads[n]) {
        total += if host::on_host(g) {
            with_cpu_f32(g, "gradient", |x| Ok(host::sum_squares(x)))?
        } else {
            g.to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()? as f64
        };
    }
    Ok(total.sqrt())
}

/// The factor that brings a gradient of norm `norm` to at most `max_norm` (1 when it is
/// already within, or when clipping is off: `max_norm <= 0`).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(
    grads: &mut HashMap<String, Tensor>,
    max_norm: f64,
) -> candle_core::Result<f64> {
    let norm = global_grad_norm(grads)?;
    let scale = clip_factor(norm, max_norm);
    if scale != 1.0 {
        for g in grads.values_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let dev = Device::Cpu;
        let mut g = HashMap::new();
        g.insert("a".to_string(), Tensor::new(&[3.0f32], &dev).unwrap());
        g.insert("b".to_string(), Tensor::new(&[4.0f32], &dev).unwrap());
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let a = g["a"].to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-5);
    }

    #[test]
    fn host_norm_equals_the_composed_one() {
        let dev = Device::Cpu;
        let mut g = HashMap::new();
        let a = Tensor::randn(0f32, 1.0, (300, 257), &dev).unwrap();
        // A transposed view takes the copy-to-contiguous route.
        g.insert("a".to_string(), a.t().unwrap());
        g.insert(
            "b".to_string(),
            Tensor::randn(0f32, 2.0, 1000, &dev).unwrap(),
        );
        let got = global_grad_norm(&g).unwrap();
        let mut want = 0f64;
        for t in g.values() {
            want += t
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
        }
        let want = want.sqrt();
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    }
}
