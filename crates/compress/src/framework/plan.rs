//! The `compress:` section of a run config: named variants of the trained model, each a list
//! of steps applied in order to the uncompressed model and measured after every step.
//!
//! ```yaml
//! compress:
//!   variants:
//!     - name: ffn-half-healed-q4k
//!       steps:
//!         - {step: prune, ffn_neurons: 768}
//!         - {step: heal, steps: 100}
//!         - {step: quantize, type: q4_k}
//! ```
//!
//! `step:` names a technique of the [`crate::framework::registry`]; the other keys are its settings.
//! [`CompressConfig::plans`] turns every variant into a [`Plan`]: passes, then the sink that
//! writes the artifact. A GGUF `quantize` becomes the GGUF sink, so it can only close a
//! variant, and nothing follows a pass that encodes weights.

use serde::{Deserialize, Serialize};

use crate::error::CompressError;
use crate::framework::pass::Pass;
use crate::framework::registry::{technique, TECHNIQUES};
use crate::framework::sink::Sink;
use crate::framework::technique::Built;
pub use crate::framework::technique::Defaults;

/// `compress:`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressConfig {
    /// Each variant starts again from the uncompressed model.
    pub variants: Vec<Variant>,
    /// Validation blocks (causal LM) used to measure every step; 0 = all.
    #[serde(default = "d_eval_blocks")]
    pub eval_blocks: usize,
    /// Training blocks (causal LM) or training examples (classification) the data-aware
    /// methods calibrate on (Wanda, SparseGPT, imatrix, GPTQ, SVD-LLM, weighted k-means,
    /// activation importance); for a decoder the first 8 of them also rank layers by
    /// calibration loss.
    #[serde(default = "d_calibration_blocks")]
    pub calibration_blocks: usize,
}

pub(crate) fn d_eval_blocks() -> usize {
    32
}

pub(crate) fn d_calibration_blocks() -> usize {
    64
}

/// One compressed model: a name (its folder or file name) and its steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub steps: Vec<StepConfig>,
}

/// One step as written: a technique's name and its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepConfig {
    pub step: String,
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

impl schemars::JsonSchema for StepConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Step".into()
    }

    /// One alternative per registered technique: its settings plus `step: <name>`.
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let alternatives: Vec<serde_json::Value> = TECHNIQUES
            .iter()
            .map(|t| {
                let mut s = (t.schema)(generator);
                if let Some(o) = s.as_object_mut() {
                    let props = o
                        .entry("properties")
                        .or_insert_with(|| serde_json::json!({}));
                    props["step"] = serde_json::json!({"const": t.name});
                    let required = o.entry("required").or_insert_with(|| serde_json::json!([]));
                    if let Some(r) = required.as_array_mut() {
                        r.push("step".into());
                    }
                    o.insert("description".into(), t.summary.into());
                }
                s.to_value()
            })
            .collect();
        schemars::json_schema!({ "oneOf": alternatives })
    }
}

/// A variant ready to run: its passes in order, then the sink that writes its artifact.
pub struct Plan {
    pub name: String,
    pub passes: Vec<Box<dyn Pass>>,
    pub sink: Sink,
}

impl CompressConfig {
    /// Builds every variant's plan, checking names, settings and order; errors name
    /// `compress.variants[i]...`. Model-dependent checks (a rank against a matrix, heads
    /// against the config) happen when the step runs.
    pub fn plans(&self, defaults: &Defaults) -> Result<Vec<Plan>, CompressError> {
        if self.variants.is_empty() {
            return Err(bad("compress.variants".into(), "is empty"));
        }
        if self.calibration_blocks == 0 {
            return Err(bad(
                "compress.calibration_blocks".into(),
                "must be at least 1",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut plans = Vec::with_capacity(self.variants.len());
        for (vi, v) in self.variants.iter().enumerate() {
            let key = format!("compress.variants[{vi}]");
            let ok_name = !v.name.is_empty()
                && v.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !v.name.starts_with('.');
            if !ok_name {
                return Err(bad(
                    format!("{key}.name"),
                    format!("`{}`: use letters, digits, `-`, `_` and `.`", v.name),
                ));
            }
            if !names.insert(v.name.clone()) {
                return Err(bad(
                    format!("{key}.name"),
                    format!("`{}` is used twice", v.name),
                ));
            }
            if v.steps.is_empty() {
                return Err(bad(format!("{key}.steps"), "is empty"));
            }
            let mut passes: Vec<Box<dyn Pass>> = vec![];
            let mut sink = None;
            let mut encoded: Option<String> = None;
            for (si, s) in v.steps.iter().enumerate() {
                let key = format!("{key}.steps[{si}]");
                let t = technique(&s.step).ok_or_else(|| {
                    bad(
                        format!("{key}.step"),
                        format!(
                            "unknown step `{}`; expected one of: {}",
                            s.step,
                            TECHNIQUES
                                .iter()
                                .map(|t| t.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
                let built = (t.build)(&s.settings, defaults).map_err(|e| match e {
                    CompressError::Config { key: k, msg } if k.is_empty() => bad(key.clone(), msg),
                    CompressError::Config { key: k, msg } => bad(format!("{key}.{k}"), msg),
                    other => other,
                })?;
                let label = built.label();
                if let Some(prev) = &encoded {
                    return Err(bad(
                        key,
                        format!(
                            "`{label}` after `{prev}`: once weights are factorised, shared or quantised, nothing further can prune, train or re-encode them; put it earlier"
                        ),
                    ));
                }
                match built {
                    Built::Pass(p) => {
                        if p.encodes() {
                            encoded = Some(label);
                        }
                        passes.push(p);
                    }
                    Built::PassThenSink(p, s) => {
                        if si + 1 != v.steps.len() {
                            return Err(bad(
                                key,
                                format!("`{label}` writes the variant's GGUF file: it must be the last step"),
                            ));
                        }
                        passes.push(p);
                        sink = Some(s);
                    }
                    Built::Sink(s) => {
                        if si + 1 != v.steps.len() {
                            return Err(bad(
                                key,
                                format!("`{label}` writes the variant's GGUF file: it must be the last step"),
                            ));
                        }
                        sink = Some(s);
                    }
                }
            }
            plans.push(Plan {
                name: v.name.clone(),
                passes,
                sink: sink.unwrap_or(Sink::Folder),
            });
        }
        Ok(plans)
    }
}

fn bad(key: String, msg: impl Into<String>) -> CompressError {
    CompressError::Config {
        key,
        msg: msg.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<(), String> {
        let c: CompressConfig = serde_yaml::from_str(y).map_err(|e| e.to_string())?;
        c.plans(&Defaults::causal_lm())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn steps_parse_and_bad_ones_are_named() {
        parse(
            "variants:\n  - name: a\n    steps:\n      - {step: prune, ffn_neurons: 8, drop_layers: {least_important: 1}}\n      - {step: heal, steps: 5}\n      - {step: quantize, type: q4_k}\n  - name: b\n    steps: [{step: low_rank, energy: 0.9}]\n",
        )
        .unwrap();
        let cases = [
            ("[{step: prune, sparsity: 1.0}]", "sparsity"),
            ("[{step: prune, sparsity: -0.1}]", "sparsity"),
            ("[{step: prune, heads: 0}]", "zero heads"),
            ("[{step: prune}]", "prunes nothing"),
            ("[{step: low_rank, rank: 4, energy: 0.5}]", "exactly one"),
            ("[{step: low_rank, energy: 1.5}]", "energy"),
            ("[{step: share, bits: 9}]", "bits"),
            ("[{step: quantize, type: q3_x}]", "type"),
            ("[{step: share, bits: 4}, {step: heal}]", "after"),
            (
                "[{step: quantize, type: int8}, {step: quantize, type: q4_k}]",
                "after",
            ),
            ("[{step: prune, ffn_neuronz: 3}]", "unknown field"),
        ];
        for (steps, want) in cases {
            let err = parse(&format!("variants:\n  - name: v\n    steps: {steps}\n")).unwrap_err();
            assert!(err.contains(want), "{steps}: {err}");
        }
        let err = parse("variants:\n  - {name: a, steps: [{step: share, bits: 4}]}\n  - {name: a, steps: [{step: share, bits: 4}]}\n").unwrap_err();
        assert!(err.contains("used twice"), "{err}");
    }

    #[test]
    fn a_gguf_type_closes_a_variant_and_unknown_steps_are_named() {
        let err = parse("variants:\n  - {name: v, steps: [{step: quantize, type: q4_k}, {step: prune, sparsity: 0.5}]}\n")
            .unwrap_err();
        assert!(err.contains("last step"), "{err}");
        let err = parse("variants:\n  - {name: v, steps: [{step: prunez, sparsity: 0.5}]}\n")
            .unwrap_err();
        assert!(
            err.contains("prunez") && err.contains("prune, heal"),
            "{err}"
        );
        let c: CompressConfig = serde_yaml::from_str(
            "variants:\n  - {name: v, steps: [{step: prune, sparsity: 0.5}, {step: quantize, type: q8_0}]}\n",
        )
        .unwrap();
        let plans = c.plans(&Defaults::causal_lm()).unwrap();
        assert_eq!(plans[0].passes.len(), 1);
        assert!(matches!(plans[0].sink, Sink::Gguf { .. }));
    }

    #[test]
    fn the_schema_has_one_alternative_per_technique() {
        let s = serde_json::to_value(schemars::schema_for!(CompressConfig)).unwrap();
        let text = s.to_string();
        for t in TECHNIQUES {
            assert!(
                text.contains(&format!("{{\"const\":\"{}\"}}", t.name)),
                "{text}"
            );
        }
        assert!(
            text.contains("ffn_neurons") && text.contains("energy"),
            "{text}"
        );
    }
}
