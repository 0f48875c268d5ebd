//! What the fused ops' tests share: comparing a fused op with its composed form in value and in
//! the gradient of every input.

use candle_core::{Tensor, Var};

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

/// Asserts that `fused` and `composed` (computed from `inputs`) agree within `tol`, and so do
/// the gradients of every input for a random linear functional of the output (scaled by the
/// gradient's magnitude where it exceeds 1).
pub fn assert_same_values_and_gradients(
    inputs: &[&Var],
    fused: &Tensor,
    composed: &Tensor,
    tol: f32,
) {
    assert_eq!(fused.dims(), composed.dims());
    let d = max_abs_diff(fused, composed);
    assert!(d < tol, "values differ by {d}");
    let w = Tensor::randn(0f32, 1.0, fused.shape(), fused.device()).unwrap();
    let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gc = (composed * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (i, v) in inputs.iter().enumerate() {
        let (a, b) = (
            gf.get(v.as_tensor()).unwrap(),
            gc.get(v.as_tensor()).unwrap(),
        );
        assert_eq!(a.dims(), b.dims());
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        let d = max_abs_diff(a, b);
        assert!(
            d < tol * scale,
            "input {i}: gradients differ by {d} (scale {scale})"
        );
    }
}
