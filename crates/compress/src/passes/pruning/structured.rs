//! Structured pruning of a candidate of either family: whole layers, attention heads and FFN
//! neurons removed through the family's cut (`distill_models::surgery`), the code that also
//! initialises students, so tensors and config really shrink and the result is a standard
//! checkpoint. Parts are ranked by weight norms unless the caller passes activation scores.

use distill_models::surgery::{self, bert::Head, top_k, Keep, LayerKeep};
use distill_models::{ArchConfig, WeightSource};

use crate::calibration::walk::{walk, CalibrationTokens, Collect};
use crate::error::CompressError;
use crate::framework::pass::{Calibration, Candidate};
use crate::model::tensors::TensorMap;
use crate::passes::pruning::importance::Importance;

/// What a structured cut removes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cut {
    /// Layers removed (0-based).
    pub drop: Vec<usize>,
    /// Llama: key/value groups kept per layer (with their query heads); BERT: heads kept per
    /// layer (and a residual stream of heads × head size).
    pub heads: Option<usize>,
    /// FFN neurons kept per layer.
    pub neurons: Option<usize>,
    /// Residual-stream (embedding) channels kept (Llama).
    pub hidden: Option<usize>,
}

fn config(key: &str, msg: String) -> CompressError {
    CompressError::Config {
        key: key.into(),
        msg,
    }
}

/// Applies `cut` to `c` in one surgery. Parts are ranked by weight norms, or by activation
/// importance `scores` measured on `c` itself (then `cut` drops no layer).
pub fn cut(
    c: &Candidate,
    cut: &Cut,
    scores: Option<&Importance>,
) -> Result<Candidate, CompressError> {
    if scores.is_some() && !cut.drop.is_empty() {
        return Err(CompressError::Unsupported(
            "activation scores rank the parts of the model they were measured on: drop layers first".into(),
        ));
    }
    if !c.weights.stored.is_empty() {
        return Err(CompressError::Unsupported(
            "structured pruning after an encoding step".into(),
        ));
    }
    let kept = kept_layers(c, cut)?;
    let ranks = Ranks {
        cut,
        scores,
        src: &c.weights,
    };
    let (arch, tensors) = match &c.arch {
        ArchConfig::Llama(t) => {
            let keep = ranks.llama(t, kept)?;
            let (cfg, tensors) = surgery::llama::cut(t, &c.weights, &keep)?;
            (ArchConfig::Llama(cfg), tensors)
        }
        ArchConfig::Bert(t) => {
            let keep = ranks.bert(t, kept)?;
            let (cfg, tensors) = surgery::bert::cut(t, &c.weights, &keep, bert_head(&c.weights))?;
            (ArchConfig::Bert(cfg), tensors)
        }
    };
    Ok(Candidate {
        arch,
        weights: TensorMap::from_tensors(tensors, c.weights.device.clone()),
    })
}

/// Drops the layers `drop`, then narrows what is left by `narrow` with every part ranked by
/// its activations on `tokens` (Minitron): importance is measured on the model the parts will
/// be part of, after the dropped layers are gone. The prune step's `importance: activations`
/// and a student's `init: {importance: activations}` both cut this way.
pub fn cut_by_activations(
    c: &Candidate,
    drop: Vec<usize>,
    narrow: &Cut,
    tokens: &CalibrationTokens,
) -> Result<Candidate, CompressError> {
    let outer = if drop.is_empty() {
        c.clone()
    } else {
        cut(
            c,
            &Cut {
                drop,
                ..Default::default()
            },
            None,
        )?
    };
    let narrows = narrow.heads.is_some() || narrow.neurons.is_some() || narrow.hidden.is_some();
    if !narrows {
        return Ok(outer);
    }
    let scores = crate::passes::pruning::importance::measure(&outer, tokens)?;
    cut(
        &outer,
        &Cut {
            drop: vec![],
            ..narrow.clone()
        },
        Some(&scores),
    )
}

/// The layers `cut` keeps; a layer that does not exist, no layer left or an FFN width out of
/// range is an error naming the key.
fn kept_layers(c: &Candidate, cut: &Cut) -> Result<Vec<usize>, CompressError> {
    let (layers, f) = match &c.arch {
        ArchConfig::Llama(t) => (t.num_hidden_layers, t.intermediate_size),
        ArchConfig::Bert(t) => (t.num_hidden_layers, t.intermediate_size),
    };
    if let Some(bad) = cut.drop.iter().find(|&&l| l >= layers) {
        return Err(config(
            "drop_layers",
            format!("layer {bad} does not exist (the model has {layers})"),
        ));
    }
    let kept: Vec<usize> = (0..layers).filter(|l| !cut.drop.contains(l)).collect();
    if kept.is_empty() {
        return Err(config(
            "drop_layers",
            "would leave zero layers: dropping every layer leaves no model".into(),
        ));
    }
    match cut.neurons {
        Some(0) => Err(config("ffn_neurons", "would leave zero FFN neurons".into())),
        Some(n) if n > f => Err(config(
            "ffn_neurons",
            format!("{n} is more than the model's {f}"),
        )),
        _ => Ok(kept),
    }
}

/// Which parts a cut keeps: the top-ranked by activation scores when given, else by weight
/// norms.
struct Ranks<'a> {
    cut: &'a Cut,
    scores: Option<&'a Importance>,
    src: &'a dyn WeightSource,
}

impl Ranks<'_> {
    /// The `n` best of `scores` of kept layer `i` (`what` names them in an error), or of
    /// `norms` when no scores were measured.
    fn top(
        &self,
        n: usize,
        measured: Option<&Vec<Vec<f32>>>,
        i: usize,
        what: &str,
        norms: impl FnOnce() -> Result<Vec<f32>, CompressError>,
    ) -> Result<Vec<u32>, CompressError> {
        let s = match measured {
            Some(all) => all.get(i).cloned().ok_or_else(|| {
                CompressError::Unsupported(format!("no {what} scores for layer {i}"))
            })?,
            None => norms()?,
        };
        Ok(top_k(&s, n))
    }

    /// The residual channels kept: the `n` best (`None` when all stay).
    fn residual(
        &self,
        n: Option<usize>,
        norms: impl FnOnce() -> Result<Vec<f32>, CompressError>,
    ) -> Result<Option<Vec<u32>>, CompressError> {
        n.map(|n| {
            let s = match self.scores {
                Some(s) => s.residual.clone(),
                None => norms()?,
            };
            Ok(top_k(&s, n))
        })
        .transpose()
    }

    fn neuron_scores(&self) -> Option<&Vec<Vec<f32>>> {
        self.scores.map(|s| &s.neurons)
    }

    fn head_scores(&self) -> Option<&Vec<Vec<f32>>> {
        self.scores.map(|s| &s.kv_groups)
    }

    /// A Llama's kept parts: key/value groups (with their query heads), FFN neurons and
    /// residual channels.
    fn llama(
        &self,
        t: &distill_models::LlamaConfig,
        kept: Vec<usize>,
    ) -> Result<Keep, CompressError> {
        let (cut, src) = (self.cut, self.src);
        let kv = t.kv_heads();
        match cut.heads {
            Some(0) => return Err(config("heads", "would leave zero attention heads".into())),
            Some(k) if k > kv => {
                return Err(config(
                    "heads",
                    format!("{k} key/value heads is more than the model's {kv}"),
                ))
            }
            _ => {}
        }
        match cut.hidden {
            Some(0) => {
                return Err(config(
                    "hidden",
                    "would leave a residual stream of zero channels".into(),
                ))
            }
            Some(n) if n > t.hidden_size => {
                return Err(config(
                    "hidden",
                    format!("{n} is more than the model's {}", t.hidden_size),
                ))
            }
            _ => {}
        }
        let residual = self.residual(cut.hidden.filter(|&n| n != t.hidden_size), || {
            Ok(surgery::llama::residual_norms(t, src)?)
        })?;
        let mut per_layer = vec![];
        for (i, &j) in kept.iter().enumerate() {
            let groups = cut
                .heads
                .map(|k| {
                    self.top(k, self.head_scores(), i, "head", || {
                        Ok(surgery::llama::kv_group_norms(t, src, j)?)
                    })
                })
                .transpose()?;
            let neurons = cut
                .neurons
                .map(|n| {
                    self.top(n, self.neuron_scores(), i, "neuron", || {
                        Ok(surgery::llama::neuron_norms(t, src, j)?)
                    })
                })
                .transpose()?;
            per_layer.push(LayerKeep {
                heads: groups
                    .as_ref()
                    .map(|g| surgery::llama::query_heads_of(t, g)),
                kv_heads: groups,
                neurons,
            });
        }
        Ok(Keep {
            layers: kept,
            residual,
            per_layer,
        })
    }

    /// A BERT encoder's kept parts: heads (and a residual stream of heads × head size) and
    /// FFN neurons.
    fn bert(
        &self,
        t: &distill_models::BertConfig,
        kept: Vec<usize>,
    ) -> Result<Keep, CompressError> {
        let (cut, src) = (self.cut, self.src);
        if cut.hidden.is_some() {
            return Err(config(
                "hidden",
                "a BERT encoder's residual stream is its heads × head size: prune `heads`".into(),
            ));
        }
        let hd = t.hidden_size / t.num_attention_heads;
        if let Some(h) = cut.heads {
            if h == 0 {
                return Err(config("heads", "would leave zero attention heads".into()));
            }
            if h > t.num_attention_heads {
                return Err(config(
                    "heads",
                    format!("{h} is more than the model's {}", t.num_attention_heads),
                ));
            }
        }
        let pruned_heads = cut.heads.filter(|&h| h != t.num_attention_heads);
        let residual = self.residual(pruned_heads.map(|h| h * hd), || {
            Ok(surgery::bert::residual_norms(t, src)?)
        })?;
        let mut per_layer = vec![];
        for (i, &j) in kept.iter().enumerate() {
            let heads = pruned_heads
                .map(|h| {
                    self.top(h, self.head_scores(), i, "head", || {
                        Ok(surgery::bert::head_norms(t, src, j)?)
                    })
                })
                .transpose()?;
            let neurons = cut
                .neurons
                .map(|n| {
                    self.top(n, self.neuron_scores(), i, "neuron", || {
                        Ok(surgery::bert::neuron_norms(t, src, j)?)
                    })
                })
                .transpose()?;
            per_layer.push(LayerKeep {
                heads,
                kv_heads: None,
                neurons,
            });
        }
        Ok(Keep {
            layers: kept,
            residual,
            per_layer,
        })
    }
}

/// A classifier's head as the tensors hold it.
fn bert_head(map: &TensorMap) -> Option<Head> {
    let bias = map.tensors.get("classifier.bias")?;
    Some(Head {
        num_labels: bias.dims().first().copied().unwrap_or(0),
        pooler: map.tensors.contains_key("bert.pooler.dense.weight")
            || map.tensors.contains_key("pooler.dense.weight"),
    })
}

/// The `n` layers whose removal, each alone, hurts the calibration loss least; and a report
/// note listing every layer's loss.
pub(crate) fn least_important_layers(
    c: &Candidate,
    n: usize,
    calibration: &dyn Calibration,
) -> Result<(Vec<usize>, String), CompressError> {
    let layers = match &c.arch {
        ArchConfig::Llama(t) => t.num_hidden_layers,
        ArchConfig::Bert(t) => t.num_hidden_layers,
    };
    if n >= layers {
        return Err(config(
            "drop_layers.least_important",
            format!("{n} of {layers} layers would leave none"),
        ));
    }
    let mut scores = vec![];
    for l in 0..layers {
        let without = cut(
            c,
            &Cut {
                drop: vec![l],
                ..Default::default()
            },
            None,
        )?;
        scores.push((calibration.loss(&without)?, l));
    }
    scores.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut chosen: Vec<usize> = scores[..n].iter().map(|s| s.1).collect();
    chosen.sort();
    let note = format!(
        "{} without each layer: {}; dropped {chosen:?}",
        calibration.measure_name(),
        scores
            .iter()
            .map(|(p, l)| format!("{l}: {p:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((chosen, note))
}

/// The `n` layers of least block influence (`1 − cos(x_in, x_out)` on the calibration
/// blocks): the layers that change the residual stream least, and a report note.
pub fn least_influential_layers(
    c: &Candidate,
    n: usize,
    blocks: &CalibrationTokens,
) -> Result<(Vec<usize>, String), CompressError> {
    let mut scratch = c.clone();
    let bi = walk(&mut scratch, blocks, Collect::Norms, &mut |_, _| Ok(()))?.block_influence;
    if n >= bi.len() {
        return Err(config(
            "drop_layers.least_important",
            format!("{n} of {} layers would leave none", bi.len()),
        ));
    }
    let mut order: Vec<usize> = (0..bi.len()).collect();
    order.sort_by(|&a, &b| bi[a].total_cmp(&bi[b]).then(a.cmp(&b)));
    let mut chosen = order[..n].to_vec();
    chosen.sort();
    let note = format!(
        "block influence of each layer: {}; dropped {chosen:?}",
        bi.iter()
            .enumerate()
            .map(|(l, b)| format!("{l}: {b:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((chosen, note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{random_tensors, tiny_config as cfg};
    use candle_core::{Device, IndexOp, Tensor};
    use distill_models::{Input, Llama, LlamaConfig, Model};

    fn random(cfg: &LlamaConfig) -> Candidate {
        Candidate {
            arch: ArchConfig::Llama(cfg.clone()),
            weights: TensorMap::from_tensors(random_tensors(cfg), Device::Cpu),
        }
    }

    fn logits(c: &Candidate) -> Tensor {
        let ArchConfig::Llama(cfg) = &c.arch else {
            unreachable!()
        };
        let m = Llama::load(cfg, &c.weights).unwrap();
        let ids = Tensor::new(&[[1u32, 5, 9, 2, 7]], &Device::Cpu).unwrap();
        m.run(&Input::new(&ids)).unwrap().logits
    }

    fn llama(c: &Candidate) -> &LlamaConfig {
        c.llama().unwrap()
    }

    #[test]
    fn structured_pruning_shrinks_tensors_and_config_and_still_loads() {
        let c = cfg();
        let c0 = random(&c);
        // Keeping everything changes nothing.
        let same = cut(
            &c0,
            &Cut {
                drop: vec![],
                heads: Some(2),
                neurons: Some(64),
                hidden: Some(32),
            },
            None,
        )
        .unwrap();
        let d = (logits(&same) - logits(&c0))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");

        let c1 = cut(
            &c0,
            &Cut {
                neurons: Some(24),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        let c2 = cut(
            &c1,
            &Cut {
                heads: Some(1),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        let c3 = cut(
            &c2,
            &Cut {
                drop: vec![1],
                ..Default::default()
            },
            None,
        )
        .unwrap();
        let l3 = llama(&c3);
        assert_eq!(
            (
                l3.intermediate_size,
                l3.num_attention_heads,
                l3.kv_heads(),
                l3.num_hidden_layers
            ),
            (24, 2, 1, 2)
        );
        let t = &c3.weights.tensors;
        assert_eq!(t["model.layers.0.mlp.down_proj.weight"].dims(), &[32, 24]);
        assert_eq!(
            t["model.layers.1.self_attn.q_proj.weight"].dims(),
            &[16, 32]
        );
        assert!(!t.contains_key("model.layers.2.mlp.up_proj.weight"));
        // Layer 2 became layer 1.
        let a = t["model.layers.1.input_layernorm.weight"]
            .i(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(a, 1.0);
        assert_eq!(logits(&c3).dims(), &[1, 5, 50]);

        let err = |k: Cut| cut(&c0, &k, None).err().unwrap().to_string();
        for e in [
            err(Cut {
                neurons: Some(0),
                ..Default::default()
            }),
            err(Cut {
                heads: Some(0),
                ..Default::default()
            }),
            err(Cut {
                drop: vec![0, 1, 2],
                ..Default::default()
            }),
        ] {
            assert!(e.contains("zero"), "{e}");
        }
        let e = err(Cut {
            drop: vec![5],
            ..Default::default()
        });
        assert!(e.contains("layer 5"), "{e}");
        let e = err(Cut {
            heads: Some(3),
            ..Default::default()
        });
        assert!(e.contains("more than"), "{e}");
    }
}
