//! `auto:` in a run config, and the budget and target of a search.

use serde::{Deserialize, Serialize};

use crate::error::CompressError;
use crate::formats::gguf::export::GgufType;
use crate::framework::plan::Variant;
use crate::passes::quantization::QuantMethod;

/// `auto:` in a run config: the search space and its evaluation budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoConfig {
    /// Validation measurements the search may make (the uncompressed model, every structural
    /// prefix, every probed candidate and the written artifact each count one).
    #[serde(default = "d_max_evaluations")]
    pub max_evaluations: usize,
    /// GGUF types a layer matrix may take.
    #[serde(default = "d_types")]
    pub types: Vec<GgufType>,
    /// GGUF types the token embeddings (and head) may take.
    #[serde(default = "d_types")]
    pub embeddings: Vec<GgufType>,
    /// How the chosen types are encoded: `gptq` (default) or `imatrix`.
    #[serde(default = "d_method")]
    pub method: QuantMethod,
    /// Structural prefixes tried besides the model as it is: named step lists (prune, heal,
    /// ...), each measured once and quantised like the unchanged model when within budget.
    #[serde(default)]
    pub structure: Vec<Variant>,
    /// A classifier's encodings (it has no GGUF export): named step lists tried on every
    /// structural base, measured smallest first.
    #[serde(default = "d_encodings")]
    pub encodings: Vec<Variant>,
    /// A frontier point is measured on validation only if its calibration-loss increase is at
    /// most this many times the budget's (the proxy rounds to nearest; GPTQ does better).
    #[serde(default = "d_slack")]
    pub proxy_slack: f64,
    /// Points of the Lagrangian sweep (the frontier has at most this many distinct points).
    #[serde(default = "d_sweep")]
    pub sweep: usize,
    /// Validation blocks every measurement runs on (0 = all).
    #[serde(default = "crate::framework::plan::d_eval_blocks")]
    pub eval_blocks: usize,
    /// Training blocks the proxies and GPTQ calibrate on (the first 8 also give the
    /// calibration loss).
    #[serde(default = "crate::framework::plan::d_calibration_blocks")]
    pub calibration_blocks: usize,
}

fn d_max_evaluations() -> usize {
    16
}
fn d_types() -> Vec<GgufType> {
    vec![
        GgufType::Q8_0,
        GgufType::Q5_0,
        GgufType::Q4K,
        GgufType::Q4_0,
    ]
}
fn d_encodings() -> Vec<Variant> {
    serde_json::from_value(serde_json::json!([
        {"name": "int8", "steps": [{"step": "quantize", "type": "int8"}]},
        {"name": "kmeans-6bit", "steps": [{"step": "share", "bits": 6, "weights": "activations"}]},
        {"name": "kmeans-4bit-per-row", "steps": [{"step": "share", "bits": 4, "codebook": "per_row", "weights": "activations"}]}
    ]))
    .expect("default encodings")
}
fn d_method() -> QuantMethod {
    QuantMethod::Gptq
}
fn d_slack() -> f64 {
    2.0
}
fn d_sweep() -> usize {
    48
}

impl Default for AutoConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }
}

/// How much quality the artifact may give up, against the uncompressed model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Budget {
    /// `ppl:+5%`: perplexity at most (1 + this) × the uncompressed one.
    PplRelative(f64),
    /// `acc:-1pt`: accuracy at most this many points below.
    AccPoints(f64),
}

impl Budget {
    /// Parses `ppl:+5%` or `acc:-1pt`.
    pub fn parse(s: &str) -> Result<Self, CompressError> {
        let bad = |msg: String| CompressError::Config {
            key: "--budget".into(),
            msg,
        };
        let (metric, value) = s.split_once(':').ok_or_else(|| {
            bad(format!(
                "`{s}`: expected METRIC:VALUE, e.g. ppl:+5% or acc:-1pt"
            ))
        })?;
        let number = |v: &str, suffix: &str| -> Result<f64, CompressError> {
            v.strip_suffix(suffix)
                .and_then(|n| n.parse::<f64>().ok())
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| {
                    bad(format!(
                        "`{s}`: expected {metric}:{}N{suffix}",
                        if metric == "ppl" { "+" } else { "-" }
                    ))
                })
        };
        match metric {
            "ppl" => Ok(Budget::PplRelative(
                number(value.trim_start_matches('+'), "%")? / 100.0,
            )),
            "acc" => Ok(Budget::AccPoints(
                number(value.trim_start_matches('-'), "pt")? / 100.0,
            )),
            other => Err(bad(format!(
                "`{s}`: unknown metric `{other}`; expected ppl (causal LM) or acc (classification)"
            ))),
        }
    }

    /// The worst quality within budget, given the uncompressed model's.
    pub fn limit(&self, base: f64) -> f64 {
        match *self {
            Budget::PplRelative(r) => base * (1.0 + r),
            Budget::AccPoints(p) => base - p,
        }
    }

    /// Whether `quality` is within the budget of `base`.
    pub fn allows(&self, base: f64, quality: f64) -> bool {
        match self {
            Budget::PplRelative(_) => quality <= self.limit(base),
            Budget::AccPoints(_) => quality >= self.limit(base),
        }
    }

    pub fn label(&self) -> String {
        match *self {
            Budget::PplRelative(r) => format!("ppl:+{}%", r * 100.0),
            Budget::AccPoints(p) => format!("acc:-{}pt", p * 100.0),
        }
    }
}

/// What the artifact must reach besides the budget.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Target {
    /// `bytes:30MB`: at most this many bytes; the search then returns the best quality that
    /// fits (within the budget when one is given).
    Bytes(u64),
    /// `tokens_per_s:N`: the model's measured scoring speed at least this.
    TokensPerS(f64),
}

impl Target {
    /// The target as given on the command line (`bytes:N`, `tokens_per_s:N`).
    pub fn label(&self) -> String {
        match self {
            Target::Bytes(b) => format!("bytes:{b}"),
            Target::TokensPerS(s) => format!("tokens_per_s:{s}"),
        }
    }

    /// Parses `bytes:N[K|M|G|KB|MB|GB]` or `tokens_per_s:N`.
    pub fn parse(s: &str) -> Result<Self, CompressError> {
        let bad = |msg: String| CompressError::Config {
            key: "--target".into(),
            msg,
        };
        let (unit, value) = s.split_once(':').ok_or_else(|| {
            bad(format!(
                "`{s}`: expected UNIT:VALUE, e.g. bytes:30MB or tokens_per_s:500"
            ))
        })?;
        match unit {
            "bytes" => {
                let v = value.trim().to_ascii_uppercase();
                let v = v.strip_suffix('B').unwrap_or(&v);
                let (num, mult) = match v.chars().last() {
                    Some('K') => (&v[..v.len() - 1], 1e3),
                    Some('M') => (&v[..v.len() - 1], 1e6),
                    Some('G') => (&v[..v.len() - 1], 1e9),
                    _ => (v, 1.0),
                };
                num.parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n > 0.0)
                    .map(|n| Target::Bytes((n * mult) as u64))
                    .ok_or_else(|| {
                        bad(format!(
                            "`{s}`: expected bytes:N with an optional K, M or G (e.g. bytes:30MB)"
                        ))
                    })
            }
            "tokens_per_s" => value
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n > 0.0)
                .map(Target::TokensPerS)
                .ok_or_else(|| bad(format!("`{s}`: expected tokens_per_s:N with N > 0"))),
            other => Err(bad(format!(
                "unknown target unit `{other}`; expected bytes or tokens_per_s"
            ))),
        }
    }
}
