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

use serde::{Deserialize, Serialize};

use crate::error::CompressError;
use crate::prune::PruneScope;

/// `compress:`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressConfig {
    /// Each variant starts again from the uncompressed model.
    pub variants: Vec<Variant>,
    /// Validation blocks (causal LM) used to measure every step; 0 = all.
    #[serde(default = "d_eval_blocks")]
    pub eval_blocks: usize,
}

fn d_eval_blocks() -> usize {
    32
}

/// One compressed model: a name (its folder or file name) and its steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub steps: Vec<Step>,
}

/// Where layers to drop come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum DropLayers {
    /// These layers (0-based).
    These(Vec<usize>),
    /// This many layers, the ones whose removal changes the validation loss least, each
    /// measured by dropping it alone.
    LeastImportant { least_important: usize },
}

/// How FFN neurons are ranked for `ffn_neurons`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NeuronImportance {
    /// Norms of the neuron's weights: ‖gate row‖·‖up row‖·‖down column‖ (Llama),
    /// ‖in row‖·‖out column‖ (BERT).
    #[default]
    Weights,
    /// Mean |silu(gate)·up| of the neuron over calibration data (the first training blocks)
    /// times ‖down column‖: what it actually adds to the residual stream (Llama).
    Activations,
}

/// One step of a variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "step", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Pruning; structured parts (layers, heads, neurons) run first, then sparsity.
    Prune {
        #[serde(default)]
        drop_layers: Option<DropLayers>,
        /// Llama: key/value head groups kept per layer; BERT: attention heads kept.
        #[serde(default)]
        heads: Option<usize>,
        /// FFN neurons kept per layer, ranked by `importance`.
        #[serde(default)]
        ffn_neurons: Option<usize>,
        #[serde(default)]
        importance: NeuronImportance,
        /// Unstructured magnitude sparsity in [0, 1).
        #[serde(default)]
        sparsity: Option<f64>,
        #[serde(default = "d_scope")]
        scope: PruneScope,
        /// 2:4 semi-structured sparsity.
        #[serde(default)]
        two_four: bool,
    },
    /// Distillation from the uncompressed model with the run's objective.
    Heal {
        /// Optimiser steps (causal LM).
        #[serde(default = "d_heal_steps")]
        steps: usize,
        /// Epochs over the training split (classification).
        #[serde(default = "d_heal_epochs")]
        epochs: usize,
        /// Peak learning rate (default: the run's `train.lr`).
        #[serde(default)]
        lr: Option<f64>,
    },
    /// Truncated SVD of the layer matrices: a fixed `rank`, or the smallest rank keeping
    /// `energy` of the spectrum.
    LowRank {
        #[serde(default)]
        rank: Option<usize>,
        #[serde(default)]
        energy: Option<f64>,
    },
    /// k-means weight sharing with `2^bits` values per matrix.
    Share { bits: u32 },
    /// `int8` (per-channel, safetensors) or a GGUF type (`q8_0`, `q6_k`, `q5_k`, `q4_k`,
    /// `q4_0`, `f16`; Llama only, exported as GGUF and measured through QMatMul).
    Quantize {
        #[serde(rename = "type")]
        to: String,
    },
}

fn d_scope() -> PruneScope {
    PruneScope::PerTensor
}
fn d_heal_steps() -> usize {
    100
}
fn d_heal_epochs() -> usize {
    1
}

impl Step {
    /// A short label for report rows.
    pub fn label(&self) -> String {
        match self {
            Step::Prune {
                drop_layers,
                heads,
                ffn_neurons,
                importance,
                sparsity,
                scope,
                two_four,
            } => {
                let mut parts = vec![];
                match drop_layers {
                    Some(DropLayers::These(l)) => parts.push(format!("drop layers {l:?}")),
                    Some(DropLayers::LeastImportant { least_important }) => {
                        parts.push(format!("drop {least_important} least important layers"))
                    }
                    None => {}
                }
                if let Some(h) = heads {
                    parts.push(format!("{h} heads"));
                }
                if let Some(n) = ffn_neurons {
                    let by = match importance {
                        NeuronImportance::Weights => "",
                        NeuronImportance::Activations => " by activations",
                    };
                    parts.push(format!("{n} FFN neurons{by}"));
                }
                if let Some(s) = sparsity {
                    let scope = match scope {
                        PruneScope::PerTensor => "per tensor",
                        PruneScope::Global => "global",
                    };
                    parts.push(format!("{:.0}% sparse ({scope})", s * 100.0));
                }
                if *two_four {
                    parts.push("2:4".into());
                }
                format!("prune: {}", parts.join(", "))
            }
            Step::Heal { steps, epochs, .. } => format!("heal ({steps} steps / {epochs} epochs)"),
            Step::LowRank { rank, energy } => match (rank, energy) {
                (Some(r), _) => format!("low rank {r}"),
                (_, Some(e)) => format!("low rank ({:.0}% energy)", e * 100.0),
                _ => "low rank".into(),
            },
            Step::Share { bits } => format!("k-means {bits}-bit"),
            Step::Quantize { to } => format!("quantize {to}"),
        }
    }

    /// Whether the step changes how weights are stored (after which nothing may train or
    /// prune them).
    pub fn encodes(&self) -> bool {
        matches!(
            self,
            Step::LowRank { .. } | Step::Share { .. } | Step::Quantize { .. }
        )
    }
}

fn bad(key: String, msg: impl Into<String>) -> CompressError {
    CompressError::Config {
        key,
        msg: msg.into(),
    }
}

impl CompressConfig {
    /// Range and order checks of every step; the model-dependent ones (rank against a
    /// matrix, heads against the config) run when the step does.
    pub fn validate(&self) -> Result<(), CompressError> {
        if self.variants.is_empty() {
            return Err(bad("compress.variants".into(), "is empty"));
        }
        let mut names = std::collections::BTreeSet::new();
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
            let mut encoded: Option<String> = None;
            for (si, s) in v.steps.iter().enumerate() {
                let key = format!("{key}.steps[{si}]");
                if let Some(prev) = &encoded {
                    return Err(bad(
                        key,
                        format!(
                            "`{}` after `{prev}`: once weights are factorised, shared or quantised, nothing further can prune, train or re-encode them; put it earlier",
                            s.label()
                        ),
                    ));
                }
                match s {
                    Step::Prune {
                        drop_layers,
                        heads,
                        ffn_neurons,
                        sparsity,
                        two_four,
                        ..
                    } => {
                        if let Some(s) = sparsity {
                            if !(0.0..1.0).contains(s) {
                                return Err(bad(
                                    format!("{key}.sparsity"),
                                    format!("{s} is outside [0, 1)"),
                                ));
                            }
                        }
                        if *heads == Some(0) || *ffn_neurons == Some(0) {
                            return Err(bad(
                                key,
                                "pruning to zero heads or zero FFN neurons leaves no layer",
                            ));
                        }
                        let nothing = drop_layers.is_none()
                            && heads.is_none()
                            && ffn_neurons.is_none()
                            && sparsity.is_none()
                            && !two_four;
                        if nothing {
                            return Err(bad(key, "prunes nothing: set drop_layers, heads, ffn_neurons, sparsity or two_four"));
                        }
                    }
                    Step::Heal { steps, epochs, lr } => {
                        if *steps == 0 || *epochs == 0 {
                            return Err(bad(key, "heal needs at least one step / epoch"));
                        }
                        if matches!(lr, Some(l) if l.is_nan() || *l <= 0.0) {
                            return Err(bad(format!("{key}.lr"), "must be > 0"));
                        }
                    }
                    Step::LowRank { rank, energy } => match (rank, energy) {
                        (Some(_), Some(_)) | (None, None) => {
                            return Err(bad(
                                key,
                                "low_rank takes exactly one of `rank` and `energy`",
                            ))
                        }
                        (Some(0), _) => return Err(bad(format!("{key}.rank"), "must be >= 1")),
                        (_, Some(e)) if !(*e > 0.0 && *e <= 1.0) => {
                            return Err(bad(
                                format!("{key}.energy"),
                                format!("{e} is outside (0, 1]"),
                            ))
                        }
                        _ => {}
                    },
                    Step::Share { bits } => {
                        if !(1..=8).contains(bits) {
                            return Err(bad(
                                format!("{key}.bits"),
                                format!("{bits}: expected 1 to 8"),
                            ));
                        }
                    }
                    Step::Quantize { to } => {
                        if to != "int8" {
                            crate::parse_qtype(to).map_err(|_| {
                                bad(
                                    format!("{key}.type"),
                                    format!("`{to}`: expected int8, f16, q8_0, q6_k, q5_k, q5_0, q4_k or q4_0"),
                                )
                            })?;
                        }
                    }
                }
                if s.encodes() {
                    encoded = Some(s.label());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<(), String> {
        let c: CompressConfig = serde_yaml::from_str(y).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())
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
}
