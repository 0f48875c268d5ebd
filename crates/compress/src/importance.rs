//! Activation-based importance of a decoder's structured parts, as Minitron measures it
//! (Muralidharan et al. 2024) with one forward pass over the calibration blocks:
//!
//! * an FFN neuron: its mean `|silu(gate)·up|` times the norm of its down-projection column
//!   (what it adds to the residual stream);
//! * a key/value group: the L2 norm of its query heads' attention outputs (the o projection's
//!   input), summed over the group's heads;
//! * a residual (embedding) channel: its mean `|norm output|` summed over every layer's two
//!   norms;
//! * a layer: its block influence `1 − cos(x_in, x_out)` (ShortGPT), beside the loss-based
//!   ranking of [`crate::structured::least_important_layers`].

use candle_core::Tensor;
use distill_models::{surgery, ArchConfig, LinearSite};

use crate::calibrate::{walk, Collect};
use crate::error::CompressError;
use crate::pass::Candidate;

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

/// Measures every part's importance on the calibration `blocks` (`[n, seq]`).
pub fn measure(c: &Candidate, blocks: &Tensor) -> Result<Importance, CompressError> {
    let ArchConfig::Llama(cfg) = &c.arch else {
        return Err(CompressError::Config {
            key: "importance".into(),
            msg: "activations is implemented for Llama-family decoders; a BERT classifier's parts are ranked by weights".into(),
        });
    };
    let (hd, kv) = (cfg.head_dim(), cfg.kv_heads());
    let group = cfg.num_attention_heads / kv;
    let mut imp = Importance {
        residual: vec![0.0; cfg.hidden_size],
        ..Default::default()
    };
    let mut scratch = c.clone();
    let walked = walk(&mut scratch, blocks, Collect::Norms, &mut |stage, c| {
        let Some(l) = stage
            .label
            .strip_prefix("layer ")
            .and_then(|l| l.parse::<usize>().ok())
        else {
            return Ok(());
        };
        let site = |s: LinearSite| {
            let p = s.projections()[0];
            let name = format!("model.layers.{l}.{p}.weight");
            stage
                .matrices
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, st)| *st)
                .expect("every site is observed")
        };
        let down = &c.weights.tensors[&format!("model.layers.{l}.mlp.down_proj.weight")];
        let norms = surgery::column_norms(down).map_err(|source| CompressError::Tensor {
            context: format!("down-projection norms of layer {l}"),
            source,
        })?;
        let act = site(LinearSite::MlpOutput).mean_abs();
        imp.neurons
            .push(act.iter().zip(&norms).map(|(a, n)| a * n).collect());
        let heads = site(LinearSite::AttentionOutput);
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
            for (r, a) in imp.residual.iter_mut().zip(site(s).mean_abs()) {
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
    use crate::tensors::TensorMap;
    use crate::test_util::{random_tensors, tiny_config};
    use candle_core::Device;

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
        let imp = measure(&c, &ids).unwrap();
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
}
