//! Learning-rate schedule: linear warm-up, then cosine decay to `min_lr_ratio · lr`.

/// Learning rate at `step` (0-based) of `total` steps.
pub fn lr_at(step: usize, total: usize, lr: f64, warmup: usize, min_lr_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup.min(step)) as f64 / decay_steps as f64).min(1.0);
    let min_lr = lr * min_lr_ratio;
    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_the_floor() {
        assert!((lr_at(0, 100, 1.0, 10, 0.1) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 1.0, 10, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 1.0, 10, 0.1) - 1.0).abs() < 1e-12);
        let mid = lr_at(55, 100, 1.0, 10, 0.1);
        assert!((mid - 0.55).abs() < 1e-9, "{mid}");
        assert!((lr_at(100, 100, 1.0, 10, 0.1) - 0.1).abs() < 1e-12);
        let mut last = f64::MAX;
        for s in 10..100 {
            let v = lr_at(s, 100, 1.0, 10, 0.1);
            assert!(v <= last);
            last = v;
        }
    }
}
