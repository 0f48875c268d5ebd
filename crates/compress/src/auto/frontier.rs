//! Per-tensor type choices on the size/error frontier: the multiple-choice knapsack "minimise
//! the summed proxy error at a given size", solved by its Lagrangian relaxation. Each tensor
//! independently takes the type minimising `error + λ · bytes`; sweeping λ over every slope at
//! which some tensor changes its choice yields exactly the convex frontier of the problem
//! (HAWQ-V2 and ModelOpt's AutoQuantize solve the same problem with other search procedures).

use std::collections::BTreeMap;

use candle_core::quantized::GgmlDType;

/// One tensor's options.
#[derive(Clone, Debug)]
pub struct TensorOptions {
    pub name: String,
    /// `(type, bytes, proxy error)` per type, at least one.
    pub options: Vec<(GgmlDType, u64, f64)>,
}

/// A per-tensor choice of types, its bytes and summed proxy error.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub types: BTreeMap<String, GgmlDType>,
    pub bytes: u64,
    pub error: f64,
}

impl Choice {
    /// `N×type` counts, largest count first, e.g. `31×q4_k 12×q8_0`.
    pub fn summary(&self) -> String {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for t in self.types.values() {
            *n.entry(format!("{t:?}").to_lowercase()).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = n.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.iter()
            .map(|(t, k)| format!("{k}×{t}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn pick(t: &TensorOptions, lambda: f64) -> (GgmlDType, u64, f64) {
    *t.options
        .iter()
        .min_by(|a, b| {
            (a.2 + lambda * a.1 as f64)
                .total_cmp(&(b.2 + lambda * b.1 as f64))
                .then(a.1.cmp(&b.1))
        })
        .expect("a tensor has options")
}

/// The frontier's distinct choices, smallest first, thinned to at most `max_points` (evenly
/// by rank, always keeping the smallest and the largest).
pub fn frontier(tensors: &[TensorOptions], max_points: usize) -> Vec<Choice> {
    // Every λ at which some tensor is indifferent between two of its options.
    let mut lambdas = vec![0.0];
    for t in tensors {
        for a in &t.options {
            for b in &t.options {
                if b.1 > a.1 && b.2 < a.2 {
                    lambdas.push((a.2 - b.2) / (b.1 - a.1) as f64);
                }
            }
        }
    }
    lambdas.sort_by(f64::total_cmp);
    lambdas.dedup();
    // Between breakpoints the choice is constant; probe each breakpoint and just past it.
    let mut probes: Vec<f64> = lambdas
        .iter()
        .flat_map(|&l| [l, l * 1.000_001 + 1e-30])
        .collect();
    probes.push(lambdas.last().copied().unwrap_or(0.0) * 2.0 + 1.0);
    let mut out: Vec<Choice> = vec![];
    for lambda in probes {
        let mut c = Choice {
            types: BTreeMap::new(),
            bytes: 0,
            error: 0.0,
        };
        for t in tensors {
            let (ty, bytes, err) = pick(t, lambda);
            c.types.insert(t.name.clone(), ty);
            c.bytes += bytes;
            c.error += err;
        }
        if !out.iter().any(|o| o.types == c.types) {
            out.push(c);
        }
    }
    out.sort_by(|a, b| a.bytes.cmp(&b.bytes).then(a.error.total_cmp(&b.error)));
    // Keep only points that improve the error as bytes grow.
    let mut pareto: Vec<Choice> = vec![];
    for c in out.into_iter().rev() {
        if pareto.last().is_none_or(|p| c.error > p.error) {
            pareto.push(c);
        }
    }
    pareto.reverse();
    if pareto.len() > max_points.max(2) {
        let n = pareto.len();
        let k = max_points.max(2);
        let keep: std::collections::BTreeSet<usize> =
            (0..k).map(|i| i * (n - 1) / (k - 1)).collect();
        pareto = pareto
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep.contains(i))
            .map(|(_, c)| c)
            .collect();
    }
    pareto
}
