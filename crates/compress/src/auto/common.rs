//! What both searches share: the outcome and its probes, the counted validation meter, the
//! structural bases every encoding starts from, and the Pareto rows of what was measured.

use std::path::Path;

use serde::Serialize;

use super::config::{AutoConfig, Budget, Target};
use crate::error::CompressError;
use crate::framework::pass::{Candidate, Context, Trainer};
use crate::framework::pipeline::{row_of, Evaluator, Measured, Quality, Row};
use crate::framework::plan::{CompressConfig, Defaults};
use crate::framework::sink::{Output, Sink};

/// What a search starts from and may use.
pub struct AutoSearch<'a> {
    /// The model's name in rows and reports.
    pub name: &'a str,
    pub base: &'a Candidate,
    pub eval: &'a dyn Evaluator,
    /// Heals structural prefixes (none: prefixes that heal are refused).
    pub trainer: Option<&'a dyn Trainer>,
    pub output: &'a Output<'a>,
    pub defaults: &'a Defaults,
    pub cfg: &'a AutoConfig,
    pub budget: Budget,
    pub target: Option<Target>,
    /// Where the artifact and its reports go.
    pub out: &'a Path,
}

/// A frontier point and what the proxies said of it.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    /// The structural base it quantises (`as-is` or a `structure:` name).
    pub base: String,
    /// `N×type` counts.
    pub types: String,
    /// Tensor bytes as the proxy encodes them.
    pub bytes: u64,
    /// Summed relative reconstruction error (proxy 1).
    pub proxy_error: f64,
    /// Calibration perplexity with the proxy's rounding (proxy 2), and its ratio to the base's.
    pub calibration_ppl: f64,
    pub calibration_ratio: f64,
    /// Whether it passed the calibration screen.
    pub survived: bool,
    /// Validation quality, when measured.
    pub val_ppl: Option<f64>,
}

/// What the search found.
#[derive(Clone, Debug, Serialize)]
pub struct AutoOutcome {
    pub model: String,
    pub budget: String,
    pub target: Option<String>,
    /// How quality reads: validation perplexity (`causal_lm` in JSON) or accuracy, 0..1
    /// (`classification`).
    #[serde(rename = "task")]
    pub quality: Quality,
    /// The uncompressed model's validation quality and the budget's limit.
    pub base_quality: f64,
    pub limit: f64,
    /// Whether the best candidate meets the budget (and target); if not it is the closest.
    pub met: bool,
    /// Validation measurements made (the uncompressed model included).
    pub evaluations: usize,
    /// Calibration-loss screens run (cheap: training blocks, no file written).
    pub proxy_evaluations: usize,
    /// Every validation measurement, in order.
    pub rows: Vec<Row>,
    /// The written artifact, measured as a runtime runs it.
    pub best: Option<Row>,
    /// The `quantize` step (with its structural prefix) that reproduces `best` in a
    /// `compress:` variant.
    pub best_steps: Vec<serde_json::Value>,
    /// The measured rows no other measured row beats on both bytes and quality.
    pub pareto: Vec<Row>,
    pub probes: Vec<Probe>,
    pub seconds: f64,
}

/// Validation measurements, counted, each a row.
pub(super) struct Meter<'e> {
    pub eval: &'e dyn Evaluator,
    pub name: &'e str,
    pub rows: Vec<Row>,
    pub evaluations: usize,
}

impl Meter<'_> {
    pub fn measure(
        &mut self,
        c: &Candidate,
        variant: &str,
        steps: &[String],
        bytes: u64,
    ) -> Result<Measured, CompressError> {
        self.evaluations += 1;
        let m = self.eval.measure(c)?;
        self.rows
            .push(row_of(self.name, variant, steps, c, bytes, m)?);
        tracing::info!(
            variant,
            quality = m.quality,
            bytes,
            evaluation = self.evaluations,
            "measured"
        );
        Ok(m)
    }
}

pub(super) struct Base {
    pub name: String,
    pub candidate: Candidate,
    pub steps: Vec<String>,
    pub configs: Vec<serde_json::Value>,
}

/// The model as it is, and every `structure:` prefix (pruned and healed), each measured once;
/// those within budget (and the speed target) are the bases the encodings start from.
pub(super) fn structural_bases(
    s: &AutoSearch,
    m0: Measured,
    meter: &mut Meter,
) -> Result<Vec<Base>, CompressError> {
    let (base, cfg, budget, target, defaults) = (s.base, s.cfg, s.budget, s.target, s.defaults);
    let cx = &Context {
        calibration: s.eval.calibration(),
        trainer: s.trainer,
    };
    let mut bases = vec![Base {
        name: "as-is".into(),
        candidate: base.clone(),
        steps: vec![],
        configs: vec![],
    }];
    for (i, v) in cfg.structure.iter().enumerate() {
        if meter.evaluations >= cfg.max_evaluations {
            break;
        }
        let key = format!("auto.structure[{i}]");
        let plans = CompressConfig {
            variants: vec![v.clone()],
            eval_blocks: 0,
            calibration_blocks: 1,
        }
        .plans(defaults)
        .map_err(|e| CompressError::Context {
            context: key.clone(),
            source: Box::new(e),
        })?;
        let plan = &plans[0];
        if plan.sink != Sink::Folder || plan.passes.iter().any(|p| p.encodes()) {
            return Err(CompressError::Config {
                key,
                msg: "a structural prefix prunes and heals; it may not quantise, factorise or share (auto chooses the types)".into(),
            });
        }
        let mut c = base.clone();
        let mut steps = vec![];
        for pass in &plan.passes {
            steps.push(pass.label());
            pass.apply(&mut c, cx)?;
        }
        let bytes = c
            .weights
            .tensors
            .values()
            .map(|t| (t.elem_count() * 4) as u64)
            .sum();
        let m = meter.measure(&c, &v.name, &steps, bytes)?;
        let speed_ok = match target {
            Some(Target::TokensPerS(s)) => m.speed >= s,
            _ => true,
        };
        if budget.allows(m0.quality, m.quality) && speed_ok {
            bases.push(Base {
                name: v.name.clone(),
                candidate: c,
                steps,
                configs: v
                    .steps
                    .iter()
                    .map(|s| serde_json::to_value(s).expect("step JSON"))
                    .collect(),
            });
        } else {
            tracing::info!(prefix = %v.name, quality = m.quality, "structural prefix outside the budget: not compressed further");
        }
    }

    Ok(bases)
}

/// The measured rows no other measured row beats on both bytes and perplexity (the written
/// artifact's row stands for the candidate it was written from).
pub(super) fn pareto_rows(rows: &[Row]) -> Vec<Row> {
    // Lower is better on both axes: perplexity as it is, accuracy negated.
    let q = |r: &Row| match r.kind {
        Quality::Perplexity => r.quality,
        Quality::Accuracy => -r.quality,
    };
    let mut v: Vec<&Row> = rows.iter().collect();
    v.sort_by(|a, b| {
        a.bytes
            .cmp(&b.bytes)
            .then(q(a).partial_cmp(&q(b)).unwrap_or(std::cmp::Ordering::Equal))
    });
    let mut out: Vec<Row> = vec![];
    let mut best = f64::INFINITY;
    for r in v {
        let p = q(r);
        if p < best {
            best = p;
            out.push(r.clone());
        }
    }
    out
}
