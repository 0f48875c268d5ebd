//! Activation-based importance of the structured parts of a decoder or an encoder, as
//! Minitron measures it (Muralidharan et al. 2024) with one forward pass over the calibration
//! tokens:
//!
//! * an FFN neuron: its mean `|silu(gate)·up|` (BERT: `|gelu(intermediate)|`) times the norm
//!   of its down-projection column (what it adds to the residual stream);
//! * a key/value group: the L2 norm of its query heads' attention outputs (the o projection's
//!   input), summed over the group's heads (a BERT head is its own group);
//! * a residual (embedding) channel: its mean `|norm output|` summed over every layer's two
//!   norms;
//! * a layer: its block influence `1 − cos(x_in, x_out)` (ShortGPT), beside the loss-based
//!   ranking of [`crate::passes::pruning::structured::least_important_layers`].

use distill_models::{surgery, ArchConfig, LinearSite};

use crate::calibration::walk::{walk, CalibrationTokens, Collect};
use crate::error::CompressError;
use crate::framework::pass::Candidate;

/// Importance scores of every structured part of a decoder (higher: more important).
#[derive(Clone, Debug, Default)]
pub struct Importance {
    /// Per layer, per FFN neuron.
    pub neurons: Vec<Vec<f32>>,
    /// Per layer, per key/value group.
    pub kv_groups: Vec<Vec<f32>>,
    /// Per residual channel.
    pub residual: Vec<f32>,
    /// Per layer, its block influence.
    pub block_influence: Vec<f64>,
}

/// Measures every part's importance on the calibration `tokens`, for a Llama decoder or a
/// BERT encoder (whose heads are its own key/value groups).
pub(crate) fn measure(
    c: &Candidate,
    tokens: &CalibrationTokens,
) -> Result<Importance, CompressError> {
    let (hidden, hd, kv, group) = match &c.arch {
        ArchConfig::Llama(cfg) => {
            let kv = cfg.kv_heads();
            (
                cfg.hidden_size,
                cfg.head_dim(),
                kv,
                cfg.num_attention_heads / kv,
            )
        }
        ArchConfig::Bert(cfg) => {
            let h = cfg.num_attention_heads;
            (cfg.hidden_size, cfg.hidden_size / h, h, 1)
        }
    };
    let mut imp = Importance {
        residual: vec![0.0; hidden],
        ..Default::default()
    };
    let mut scratch = c.clone();
    let walked = walk(&mut scratch, tokens, Collect::Norms, &mut |stage, c| {
        let Some(l) = stage.layer() else {
            return Ok(());
        };
        let site = |s: LinearSite| stage.site(s).expect("a layer stage observes every site");
        let (down, act) = site(LinearSite::MlpOutput);
        let w = &c.weights.tensors[&down[0]];
        let norms = surgery::column_norms(w).map_err(|source| CompressError::Tensor {
            context: format!("down-projection norms of layer {l}"),
            source,
        })?;
        imp.neurons.push(
            act.mean_abs()
                .iter()
                .zip(&norms)
                .map(|(a, n)| a * n)
                .collect(),
        );
        let (_, heads) = site(LinearSite::AttentionOutput);
        imp.kv_groups.push(
            (0..kv)
                .map(|g| {
                    (g * group..(g + 1) * group)
                        .map(|h| {
                            heads.sq_norms[h * hd..(h + 1) * hd]
                                .iter()
                                .sum::<f64>()
                                .sqrt() as f32
                        })
                        .sum()
                })
                .collect(),
        );
        for s in [LinearSite::AttentionInput, LinearSite::MlpInput] {
            for (r, a) in imp.residual.iter_mut().zip(site(s).1.mean_abs()) {
                *r += a;
            }
        }
        Ok(())
    })?;
    imp.block_influence = walked.block_influence;
    Ok(imp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tensors::TensorMap;
    use crate::test_util::{random_tensors, tiny_config};
    use candle_core::{Device, Tensor};

    #[test]
    fn a_silenced_neuron_and_head_group_score_zero() {
        let cfg = tiny_config();
        let mut t = random_tensors(&cfg);
        // Neuron 3 of layer 0: a zero gate row makes silu(gate) = 0, so it never fires.
        let gate = "model.layers.0.mlp.gate_proj.weight";
        let mut w = t[gate].to_vec2::<f32>().unwrap();
        w[3].iter_mut().for_each(|x| *x = 0.0);
        t.insert(gate.into(), Tensor::new(w, &Device::Cpu).unwrap());
        // Key/value group 1 of layer 1: zero value rows make its heads' outputs zero.
        let v = "model.layers.1.self_attn.v_proj.weight";
        let mut w = t[v].to_vec2::<f32>().unwrap();
        let hd = cfg.head_dim();
        w[hd..2 * hd]
            .iter_mut()
            .for_each(|r| r.iter_mut().for_each(|x| *x = 0.0));
        t.insert(v.into(), Tensor::new(w, &Device::Cpu).unwrap());
        let c = Candidate {
            arch: ArchConfig::Llama(cfg.clone()),
            weights: TensorMap::from_tensors(t, Device::Cpu),
        };
        let ids = Tensor::new(&[[1u32, 5, 9, 2, 7], [3, 3, 8, 1, 0]], &Device::Cpu).unwrap();
        let imp = measure(&c, &CalibrationTokens::Blocks(ids)).unwrap();
        assert_eq!(imp.neurons.len(), cfg.num_hidden_layers);
        assert!(imp.neurons.iter().all(|m| m.len() == cfg.intermediate_size));
        assert_eq!(imp.neurons[0][3], 0.0);
        assert!(imp.neurons[0][4] > 0.0 && imp.neurons.iter().flatten().all(|&m| m >= 0.0));
        assert_eq!(imp.kv_groups[1][1], 0.0);
        assert!(imp.kv_groups[1][0] > 0.0 && imp.kv_groups[0][1] > 0.0);
        assert_eq!(imp.residual.len(), cfg.hidden_size);
        assert!(imp.residual.iter().all(|&r| r > 0.0));
        assert_eq!(imp.block_influence.len(), cfg.num_hidden_layers);
    }

    #[test]
    fn an_encoder_neuron_and_head_silenced_score_zero() {
        let cfg = crate::test_util::tiny_bert_config();
        let mut t = crate::test_util::random_bert(&cfg);
        let zero_rows = |t: &mut crate::passes::pruning::sparsity::Tensors,
                         name: &str,
                         rows: std::ops::Range<usize>| {
            let w = format!("{name}.weight");
            let mut m = t[&w].to_vec2::<f32>().unwrap();
            m[rows.clone()]
                .iter_mut()
                .for_each(|r| r.iter_mut().for_each(|x| *x = 0.0));
            t.insert(w, Tensor::new(m, &Device::Cpu).unwrap());
            let b = format!("{name}.bias");
            let mut v = t[&b].to_vec1::<f32>().unwrap();
            v[rows].iter_mut().for_each(|x| *x = 0.0);
            t.insert(b, Tensor::new(v, &Device::Cpu).unwrap());
        };
        // Neuron 3 of layer 0 never fires: gelu(0) = 0.
        zero_rows(&mut t, "bert.encoder.layer.0.intermediate.dense", 3..4);
        // Head 1 of layer 1 outputs zeros: its value rows are zero.
        zero_rows(&mut t, "bert.encoder.layer.1.attention.self.value", 4..8);
        let c = Candidate {
            arch: ArchConfig::Bert(cfg.clone()),
            weights: TensorMap::from_tensors(t, Device::Cpu),
        };
        let tokens = CalibrationTokens::Examples(vec![vec![1, 5, 9, 2, 7], vec![3, 8]]);
        let imp = measure(&c, &tokens).unwrap();
        assert_eq!(imp.neurons.len(), 2);
        assert_eq!(imp.neurons[0].len(), cfg.intermediate_size);
        assert_eq!(imp.neurons[0][3], 0.0);
        assert!(imp.neurons[0][4] > 0.0);
        assert_eq!(
            imp.kv_groups[1].len(),
            cfg.num_attention_heads,
            "a head is its own group"
        );
        assert_eq!(imp.kv_groups[1][1], 0.0);
        assert!(imp.kv_groups[1][0] > 0.0 && imp.kv_groups[0][1] > 0.0);
        assert_eq!(imp.residual.len(), cfg.hidden_size);
        assert_eq!(imp.block_influence.len(), 2);
    }
}
