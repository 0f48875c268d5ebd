//! The `prune` step: structured parts first (layers, heads, FFN neurons; see
//! [`crate::passes::pruning::structured`]), then sparsity (magnitude or 2:4; see [`crate::passes::pruning::sparsity`]).

pub mod importance;
pub mod sparsegpt;
pub mod sparsity;
pub mod structured;
pub mod wanda;

use serde::{Deserialize, Serialize};

use crate::calibration::obs::{from_mat, inverse_hessian, to_mat};
use crate::calibration::walk::{walk, CalibrationTokens, Collect};
use crate::error::CompressError;
use crate::framework::pass::{Candidate, Context, Pass, PassReport};
use crate::framework::technique::{schema_of, settings, Built, Defaults, Settings, Technique};
use crate::model::tensors::values_f32;
use crate::passes::pruning::sparsegpt::sparsegpt_prune;
use crate::passes::pruning::sparsity::{
    is_layer_matrix, magnitude_prune, two_four_prune, PruneScope, SparsityPattern,
};
use crate::passes::pruning::structured::{
    cut, least_important_layers, least_influential_layers, Cut,
};
use crate::passes::pruning::wanda::wanda_prune;

/// Where layers to drop come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub(crate) enum DropLayers {
    /// These layers (0-based).
    These(Vec<usize>),
    /// This many layers, the least important by `by`.
    LeastImportant {
        least_important: usize,
        #[serde(default)]
        by: LayerRanking,
    },
}

/// How layers are ranked for dropping.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LayerRanking {
    /// The calibration loss without the layer, each layer dropped alone (one evaluation per
    /// layer).
    #[default]
    Loss,
    /// Block influence `1 − cos(x_in, x_out)` over the calibration tokens (one forward pass).
    BlockInfluence,
}

/// How heads, FFN neurons and residual channels are ranked.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NeuronImportance {
    /// Norms of the neuron's weights: ‖gate row‖·‖up row‖·‖down column‖ (Llama),
    /// ‖in row‖·‖out column‖ (BERT).
    #[default]
    Weights,
    /// Minitron's activation importance on the calibration blocks (after any dropped layers
    /// are gone; see [`crate::passes::pruning::importance`]): for a neuron its mean |silu(gate)·up| times
    /// ‖down column‖, for a key/value group its heads' output norms, for a residual channel
    /// its mean |norm output| over every layer (Llama). Otherwise: mean |silu(gate)·up| of the
    /// neuron over calibration data (the first training blocks)
    /// times ‖down column‖: what it actually adds to the residual stream (Llama).
    Activations,
}

/// How unstructured and 2:4 sparsity choose the weights to zero.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SparsityMethod {
    /// The smallest magnitudes (the baseline; no data).
    #[default]
    Magnitude,
    /// Wanda: `|W_ij|·‖x_j‖` over the calibration tokens, compared within each output row.
    Wanda,
    /// SparseGPT: OBS saliency with the inverse Hessian of the layer's inputs, and updates of
    /// the remaining weights that compensate for the pruned ones.
    Sparsegpt,
}

/// Settings of `prune`; structured parts run first, then sparsity.
#[derive(Clone, Debug, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PruneSettings {
    #[serde(default)]
    pub drop_layers: Option<DropLayers>,
    /// Llama: key/value head groups kept per layer; BERT: attention heads kept.
    #[serde(default)]
    pub heads: Option<usize>,
    /// FFN neurons kept per layer, ranked by `importance`.
    #[serde(default)]
    pub ffn_neurons: Option<usize>,
    /// Residual-stream (embedding) channels kept, ranked by `importance` (Llama): width
    /// pruning of the hidden size, embeddings, norms and every projection with it.
    #[serde(default)]
    pub hidden: Option<usize>,
    #[serde(default)]
    pub importance: NeuronImportance,
    /// Unstructured magnitude sparsity in [0, 1).
    #[serde(default)]
    pub sparsity: Option<f64>,
    #[serde(default = "d_scope")]
    pub scope: PruneScope,
    /// 2:4 semi-structured sparsity.
    #[serde(default)]
    pub two_four: bool,
    /// How `sparsity` and `two_four` choose the weights (`wanda` and `sparsegpt` calibrate on
    /// the first training blocks, layer by layer).
    #[serde(default)]
    pub method: SparsityMethod,
    /// SparseGPT's dampening, a share of the mean Hessian diagonal added to it.
    #[serde(default = "d_damp")]
    pub damp: f64,
}

fn d_damp() -> f64 {
    crate::calibration::obs::DAMP
}

fn d_scope() -> PruneScope {
    PruneScope::PerTensor
}

pub(crate) const TECHNIQUE: Technique = Technique {
    name: "prune",
    summary: "pruning: layers, heads, FFN neurons (structured), then unstructured or 2:4 sparsity by magnitude, Wanda or SparseGPT",
    build,
    schema: schema_of::<PruneSettings>,
};

fn build(s: &Settings, _: &Defaults) -> Result<Built, CompressError> {
    let p: PruneSettings = settings("prune", s)?;
    let bad = |key: &str, msg: String| CompressError::Config {
        key: key.into(),
        msg,
    };
    if let Some(s) = p.sparsity {
        if !(0.0..1.0).contains(&s) {
            return Err(bad("sparsity", format!("{s} is outside [0, 1)")));
        }
    }
    if p.method != SparsityMethod::Magnitude {
        if p.sparsity.is_none() && !p.two_four {
            return Err(bad(
                "method",
                "chooses the weights of `sparsity` or `two_four`; set one of them".into(),
            ));
        }
        if p.scope == PruneScope::Global {
            return Err(bad(
                "scope",
                "`global` is a magnitude threshold over all matrices; wanda and sparsegpt compare weights within a row or block of one matrix".into(),
            ));
        }
        if p.sparsity.is_some() && p.two_four {
            return Err(bad(
                "two_four",
                "with wanda or sparsegpt, set `sparsity` or `two_four`, not both".into(),
            ));
        }
    }
    if !(p.damp > 0.0 && p.damp < 10.0) {
        return Err(bad("damp", format!("{} is outside (0, 10)", p.damp)));
    }
    if p.heads == Some(0) || p.ffn_neurons == Some(0) || p.hidden == Some(0) {
        return Err(bad(
            "",
            "pruning to zero heads, FFN neurons or hidden channels leaves no layer".into(),
        ));
    }
    if p.drop_layers.is_none()
        && p.heads.is_none()
        && p.ffn_neurons.is_none()
        && p.hidden.is_none()
        && p.sparsity.is_none()
        && !p.two_four
    {
        return Err(bad(
            "",
            "prunes nothing: set drop_layers, heads, ffn_neurons, hidden, sparsity or two_four"
                .into(),
        ));
    }
    Ok(Built::Pass(Box::new(Prune(p))))
}

/// The prune pass.
pub(crate) struct Prune(pub PruneSettings);

impl Pass for Prune {
    fn name(&self) -> &'static str {
        "prune"
    }
    fn label(&self) -> String {
        let p = &self.0;
        let mut parts = vec![];
        match &p.drop_layers {
            Some(DropLayers::These(l)) => parts.push(format!("drop layers {l:?}")),
            Some(DropLayers::LeastImportant {
                least_important,
                by,
            }) => {
                let by = match by {
                    LayerRanking::Loss => "",
                    LayerRanking::BlockInfluence => " by block influence",
                };
                parts.push(format!("drop {least_important} least important layers{by}"))
            }
            None => {}
        }
        if let Some(h) = p.heads {
            parts.push(format!("{h} heads"));
        }
        if let Some(n) = p.ffn_neurons {
            let by = match p.importance {
                NeuronImportance::Weights => "",
                NeuronImportance::Activations => " by activations",
            };
            parts.push(format!("{n} FFN neurons{by}"));
        }
        if let Some(n) = p.hidden {
            let by = match p.importance {
                NeuronImportance::Weights => "",
                NeuronImportance::Activations => " by activations",
            };
            parts.push(format!("hidden {n}{by}"));
        }
        let by = match p.method {
            SparsityMethod::Magnitude => "",
            SparsityMethod::Wanda => " by wanda",
            SparsityMethod::Sparsegpt => " by sparsegpt",
        };
        if let Some(s) = p.sparsity {
            let scope = match (p.method, p.scope) {
                (SparsityMethod::Magnitude, PruneScope::PerTensor) => " (per tensor)",
                (SparsityMethod::Magnitude, PruneScope::Global) => " (global)",
                _ => "",
            };
            parts.push(format!("{:.0}% sparse{scope}{by}", s * 100.0));
        }
        if p.two_four {
            parts.push(format!("2:4{by}"));
        }
        format!("prune: {}", parts.join(", "))
    }
    fn encodes(&self) -> bool {
        false
    }
    fn apply(&self, c: &mut Candidate, cx: &Context) -> Result<PassReport, CompressError> {
        let p = &self.0;
        let mut report = PassReport::default();
        let by_activations = p.importance == NeuronImportance::Activations;
        let narrows = p.heads.is_some() || p.ffn_neurons.is_some() || p.hidden.is_some();
        if p.drop_layers.is_some() || narrows {
            let blocks = || {
                cx.calibration.tokens().ok_or_else(|| {
                    CompressError::Unsupported(
                        "activation importance needs calibration tokens, which this task does not provide".into(),
                    )
                })
            };
            let drop = match &p.drop_layers {
                None => vec![],
                Some(DropLayers::These(l)) => l.clone(),
                Some(DropLayers::LeastImportant {
                    least_important,
                    by: LayerRanking::Loss,
                }) => {
                    let (l, note) = least_important_layers(c, *least_important, cx.calibration)?;
                    report.notes.push(note);
                    l
                }
                Some(DropLayers::LeastImportant {
                    least_important,
                    by: LayerRanking::BlockInfluence,
                }) => {
                    let (l, note) = least_influential_layers(c, *least_important, &blocks()?)?;
                    report.notes.push(note);
                    l
                }
            };
            let narrow = Cut {
                heads: p.heads,
                neurons: p.ffn_neurons,
                hidden: p.hidden,
                ..Default::default()
            };
            if by_activations && narrows {
                *c = structured::cut_by_activations(c, drop, &narrow, &blocks()?)?;
            } else {
                *c = cut(c, &Cut { drop, ..narrow }, None)?;
            }
        }
        match p.method {
            SparsityMethod::Magnitude => {
                if let Some(s) = p.sparsity {
                    magnitude_prune(&mut c.weights.tensors, s, p.scope)?;
                }
                if p.two_four {
                    two_four_prune(&mut c.weights.tensors)?;
                }
            }
            method => {
                let pattern = match p.sparsity {
                    Some(s) => SparsityPattern::Share(s),
                    None => SparsityPattern::TwoFour,
                };
                let blocks = cx.calibration.tokens().ok_or_else(|| {
                    CompressError::Unsupported(format!(
                        "method: {method:?} needs calibration tokens, which this task does not provide"
                    ))
                })?;
                report
                    .notes
                    .push(calibrated_prune(c, &blocks, method, pattern, p.damp)?);
            }
        }
        Ok(report)
    }
}

/// Wanda or SparseGPT over every layer matrix, layer by layer on the calibration `blocks`;
/// returns a report note.
fn calibrated_prune(
    c: &mut Candidate,
    blocks: &CalibrationTokens,
    method: SparsityMethod,
    pattern: SparsityPattern,
    damp: f64,
) -> Result<String, CompressError> {
    let collect = match method {
        SparsityMethod::Sparsegpt => Collect::Hessians,
        _ => Collect::Norms,
    };
    let mut loss = 0f64;
    let mut matrices = 0usize;
    walk(c, blocks, collect, &mut |stage, c| {
        for (name, stats) in &stage.matrices {
            if !is_layer_matrix(name) {
                continue;
            }
            let t = &c.weights.tensors[name];
            let (rows, cols) = t.dims2().map_err(|source| CompressError::Tensor {
                context: format!("pruning `{name}`"),
                source,
            })?;
            if pattern == SparsityPattern::TwoFour && cols % 4 != 0 {
                return Err(CompressError::Config {
                    key: "two_four".into(),
                    msg: format!("{name}: rows of {cols} values do not split into groups of 4"),
                });
            }
            let mut w = values_f32(name, t)?;
            match method {
                SparsityMethod::Sparsegpt => {
                    let hinv = inverse_hessian(name, stats, damp)?;
                    let mut m = to_mat(&w, rows, cols);
                    loss += sparsegpt_prune(&mut m, &hinv, pattern);
                    w = from_mat(&m);
                }
                _ => wanda_prune(&mut w, rows, cols, &stats.norms(), pattern),
            }
            let pruned = candle_core::Tensor::from_vec(w, (rows, cols), t.device())
                .and_then(|p| p.to_dtype(t.dtype()))
                .map_err(|source| CompressError::Tensor {
                    context: format!("pruning `{name}`"),
                    source,
                })?;
            c.weights.tensors.insert(name.clone(), pruned);
            matrices += 1;
        }
        Ok(())
    })?;
    let what = match pattern {
        SparsityPattern::Share(s) => format!("{:.0}% unstructured", s * 100.0),
        SparsityPattern::TwoFour => "2:4".into(),
    };
    Ok(match method {
        SparsityMethod::Sparsegpt => format!(
            "sparsegpt {what} over {matrices} matrices, layer by layer on {}; OBS loss estimate {loss:.4e}",
            blocks.describe()
        ),
        _ => format!(
            "wanda {what} over {matrices} matrices, layer by layer on {}",
            blocks.describe()
        ),
    })
}
