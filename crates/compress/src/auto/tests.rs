use super::*;
use candle_core::quantized::GgmlDType;

#[test]
fn budgets_and_targets_parse_and_bad_ones_are_named() {
    assert_eq!(Budget::parse("ppl:+5%").unwrap(), Budget::PplRelative(0.05));
    assert_eq!(Budget::parse("acc:-1pt").unwrap(), Budget::AccPoints(0.01));
    let b = Budget::parse("ppl:+5%").unwrap();
    assert!((b.limit(100.0) - 105.0).abs() < 1e-9);
    assert!(b.allows(100.0, 104.9) && !b.allows(100.0, 105.1));
    let a = Budget::parse("acc:-1pt").unwrap();
    assert!(a.allows(0.98, 0.975) && !a.allows(0.98, 0.965));
    for bad in ["ppl", "ppl:5", "ppl:+x%", "loss:+5%"] {
        let e = Budget::parse(bad).unwrap_err().to_string();
        assert!(e.contains("--budget") && e.contains(bad), "{e}");
    }
    assert!(Budget::parse("bleu:+1%")
        .unwrap_err()
        .to_string()
        .contains("unknown metric `bleu`"));

    assert_eq!(
        Target::parse("bytes:30MB").unwrap(),
        Target::Bytes(30_000_000)
    );
    assert_eq!(
        Target::parse("bytes:1.5G").unwrap(),
        Target::Bytes(1_500_000_000)
    );
    assert_eq!(Target::parse("bytes:4096").unwrap(), Target::Bytes(4096));
    assert_eq!(
        Target::parse("tokens_per_s:500").unwrap(),
        Target::TokensPerS(500.0)
    );
    let e = Target::parse("latency:3ms").unwrap_err().to_string();
    assert!(
        e.contains("unknown target unit `latency`") && e.contains("bytes or tokens_per_s"),
        "{e}"
    );
    assert!(Target::parse("bytes:lots").is_err() && Target::parse("tokens_per_s:-1").is_err());
}

fn options() -> Vec<TensorOptions> {
    use GgmlDType::*;
    // Three tensors, three types each; the second is sensitive, the third barely.
    let t = |name: &str, scale: f64, rows: u64| TensorOptions {
        name: name.into(),
        options: vec![
            (Q8_0, 34 * rows, 0.001 * scale),
            (Q5_0, 22 * rows, 0.02 * scale),
            (Q4_0, 18 * rows, 0.05 * scale),
        ],
    };
    vec![t("a", 1.0, 10), t("b", 10.0, 10), t("c", 0.1, 40)]
}

#[test]
fn the_frontier_is_the_non_dominated_set_of_every_combination() {
    let opts = options();
    let f = frontier(&opts, 100);
    assert!(f
        .windows(2)
        .all(|w| w[0].bytes < w[1].bytes && w[0].error > w[1].error));
    // Ends: everything smallest, everything largest.
    assert!(f[0].types.values().all(|t| *t == GgmlDType::Q4_0));
    assert!(f
        .last()
        .unwrap()
        .types
        .values()
        .all(|t| *t == GgmlDType::Q8_0));
    // Brute force: no combination beats a frontier point on both bytes and error.
    let mut all = vec![];
    for a in &opts[0].options {
        for b in &opts[1].options {
            for c in &opts[2].options {
                all.push((a.1 + b.1 + c.1, a.2 + b.2 + c.2));
            }
        }
    }
    for p in &f {
        assert!(
            !all.iter()
                .any(|&(by, e)| by <= p.bytes && e < p.error - 1e-12),
            "{p:?} is dominated"
        );
        let sum_b: u64 = opts
            .iter()
            .map(|t| {
                t.options
                    .iter()
                    .find(|o| o.0 == p.types[&t.name])
                    .unwrap()
                    .1
            })
            .sum();
        assert_eq!(sum_b, p.bytes);
    }
    // The sensitive tensor is the first to get more bits.
    let second = &f[1];
    assert_eq!(second.types["b"], GgmlDType::Q5_0, "{second:?}");
    // Thinning keeps both ends.
    let thin = frontier(&opts, 3);
    assert_eq!(thin.len(), 3);
    assert_eq!(
        (thin[0].bytes, thin[2].bytes),
        (f[0].bytes, f.last().unwrap().bytes)
    );
    assert_eq!(f[0].summary(), "3×q4_0");
}
