//! Structured cuts of Llama-family decoders, under `LlamaForCausalLM` names.

use candle_core::Tensor;
use candle_nn::Init;

use super::{
    block_rows, column_norms, index, row_norms, select, Keep, LayerKeep, SourceSizes, Tensors,
};
use crate::error::{ModelError, Result, TensorContext};
use crate::family::layer_prefix;
use crate::llama::LlamaConfig;
use crate::weights::WeightSource;

/// The model `keep` describes, cut out of `src` (a model of config `t`): its config and every
/// tensor. Query heads must come in whole groups of the kept key/value heads (the same number
/// per group), so grouped-query attention stays consistent.
pub fn cut(t: &LlamaConfig, src: &dyn WeightSource, keep: &Keep) -> Result<(LlamaConfig, Tensors)> {
    let layout = t.layout();
    if layout.fused_qkv || layout.fused_gate_up {
        return Err(ModelError::Config {
            source_name: "structured cut".into(),
            key: "model_type".into(),
            msg: format!(
                "`{}` stores q, k, v (and gate, up) as fused matrices, which cuts do not split yet",
                t.model_type
            ),
        });
    }
    let hd = t.head_dim();
    let (h, f) = (t.hidden_size, t.intermediate_size);
    let t_group = t.num_attention_heads / t.kv_heads();
    let (hidden, heads, kv, neurons) = keep.sizes(SourceSizes {
        layers: t.num_hidden_layers,
        hidden: h,
        heads: t.num_attention_heads,
        kv_heads: t.kv_heads(),
        neurons: f,
    })?;
    for (i, lk) in keep.per_layer.iter().enumerate() {
        check_groups(lk.heads.as_deref(), lk.kv_heads.as_deref(), t, t_group).map_err(|msg| {
            ModelError::Config {
                source_name: "structured cut".into(),
                key: "heads".into(),
                msg: format!("layer {i}: {msg}"),
            }
        })?;
    }
    let dev = src.device().clone();
    let res = index(keep.residual.as_ref(), &dev)?;
    let cutter = Cutter {
        t,
        src,
        res: res.as_ref(),
        dev: &dev,
    };
    let mut out = cutter.shared()?;
    for (i, (&j, lk)) in keep.layers.iter().zip(&keep.per_layer).enumerate() {
        cutter.layer(i, j, lk, &mut out)?;
    }
    let cfg = LlamaConfig {
        num_hidden_layers: keep.layers.len(),
        layer_types: t
            .layer_types
            .as_ref()
            .map(|types| keep.layers.iter().map(|&j| types[j].clone()).collect()),
        hidden_size: hidden,
        intermediate_size: neurons,
        num_attention_heads: heads,
        num_key_value_heads: if kv == t.kv_heads() {
            t.num_key_value_heads
        } else {
            Some(kv)
        },
        head_dim: if hidden == heads * hd {
            t.head_dim
        } else {
            Some(hd)
        },
        ..t.clone()
    };
    Ok((cfg, out))
}

/// Query heads must be whole-or-partial groups of the kept key/value heads, in order: the
/// query heads of every kept group, the same number for each, and no query head of a group
/// that is not kept.
fn check_groups(
    heads: Option<&[u32]>,
    kv: Option<&[u32]>,
    t: &LlamaConfig,
    group: usize,
) -> std::result::Result<(), String> {
    let all_kv: Vec<u32> = (0..t.kv_heads() as u32).collect();
    let all_q: Vec<u32> = (0..t.num_attention_heads as u32).collect();
    let kv = kv.unwrap_or(&all_kv);
    let q = heads.unwrap_or(&all_q);
    if !q.len().is_multiple_of(kv.len()) {
        return Err(format!(
            "{} query heads do not share {} key/value heads evenly",
            q.len(),
            kv.len()
        ));
    }
    let per = q.len() / kv.len();
    for (g, chunk) in kv.iter().zip(q.chunks(per)) {
        if let Some(bad) = chunk.iter().find(|&&h| h as usize / group != *g as usize) {
            return Err(format!(
                "query head {bad} does not belong to key/value head {g} (groups of {group})"
            ));
        }
    }
    Ok(())
}

/// Weight-norm importance of every FFN neuron of `layer`: ‖gate row‖·‖up row‖·‖down column‖.
pub fn neuron_norms(t: &LlamaConfig, src: &dyn WeightSource, layer: usize) -> Result<Vec<f32>> {
    let (h, f) = (t.hidden_size, t.intermediate_size);
    let p = crate::family::layer_name(layer, "mlp");
    let get =
        |n: &str, shape: &[usize]| src.tensor(&format!("{p}.{n}.weight"), shape, Init::Const(0.0));
    let (gate, up, down) = (
        get("gate_proj", &[f, h])?,
        get("up_proj", &[f, h])?,
        get("down_proj", &[h, f])?,
    );
    let ctx = || format!("neuron norms of {p}");
    let g = row_norms(&gate).context(ctx)?;
    let u = row_norms(&up).context(ctx)?;
    let d = column_norms(&down).context(ctx)?;
    Ok((0..f).map(|j| g[j] * u[j] * d[j]).collect())
}

/// Weight-norm importance of every key/value group of `layer`: the summed squared norms of
/// the group's key and value rows, its query heads' rows and their output-projection columns.
pub fn kv_group_norms(t: &LlamaConfig, src: &dyn WeightSource, layer: usize) -> Result<Vec<f32>> {
    let hd = t.head_dim();
    let h = t.hidden_size;
    let (tq, tkv, kv) = (t.num_attention_heads * hd, t.kv_heads() * hd, t.kv_heads());
    let group = t.num_attention_heads / kv;
    let p = crate::family::layer_name(layer, "self_attn");
    let get =
        |n: &str, shape: &[usize]| src.tensor(&format!("{p}.{n}.weight"), shape, Init::Const(0.0));
    let ctx = || format!("head norms of {p}");
    let qn = row_norms(&get("q_proj", &[tq, h])?).context(ctx)?;
    let kn = row_norms(&get("k_proj", &[tkv, h])?).context(ctx)?;
    let vn = row_norms(&get("v_proj", &[tkv, h])?).context(ctx)?;
    let on = column_norms(&get("o_proj", &[h, tq])?).context(ctx)?;
    let sq = |x: &[f32], r: std::ops::Range<usize>| x[r].iter().map(|a| a * a).sum::<f32>();
    Ok((0..kv)
        .map(|g| {
            let kvr = g * hd..(g + 1) * hd;
            let qr = g * group * hd..(g + 1) * group * hd;
            sq(&kn, kvr.clone()) + sq(&vn, kvr) + sq(&qn, qr.clone()) + sq(&on, qr)
        })
        .collect())
}

/// Importance of every residual-stream channel: the norm of its embedding column.
pub fn residual_norms(t: &LlamaConfig, src: &dyn WeightSource) -> Result<Vec<f32>> {
    let embed = src.tensor(
        "model.embed_tokens.weight",
        &[t.vocab_size, t.hidden_size],
        Init::Const(0.0),
    )?;
    column_norms(&embed).context(|| "embedding column norms".into())
}

/// The query heads of the listed key/value groups (all of each group).
pub fn query_heads_of(t: &LlamaConfig, kv_groups: &[u32]) -> Vec<u32> {
    let group = (t.num_attention_heads / t.kv_heads()) as u32;
    kv_groups
        .iter()
        .flat_map(|&g| g * group..(g + 1) * group)
        .collect()
}

/// Cuts the tensors of one source model, its residual channels narrowed to `res`.
struct Cutter<'a> {
    t: &'a LlamaConfig,
    src: &'a dyn WeightSource,
    res: Option<&'a Tensor>,
    dev: &'a candle_core::Device,
}

impl Cutter<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.src.tensor(name, shape, Init::Const(0.0))
    }

    /// The embeddings, the final norm and an untied head.
    fn shared(&self) -> Result<Tensors> {
        let (t, res) = (self.t, self.res);
        let h = t.hidden_size;
        let mut out = Tensors::new();
        let embed = self.get("model.embed_tokens.weight", &[t.vocab_size, h])?;
        out.insert(
            "model.embed_tokens.weight".into(),
            select(&embed, 1, res, "model.embed_tokens.weight")?,
        );
        let norm = self.get("model.norm.weight", &[h])?;
        out.insert(
            "model.norm.weight".into(),
            select(&norm, 0, res, "model.norm.weight")?,
        );
        if !t.tie_word_embeddings {
            let head = self.get("lm_head.weight", &[t.vocab_size, h])?;
            out.insert(
                "lm_head.weight".into(),
                select(&head, 1, res, "lm_head.weight")?,
            );
        }
        Ok(out)
    }

    /// Source layer `j` as layer `i` of the cut, keeping what `lk` says.
    fn layer(&self, i: usize, j: usize, lk: &LayerKeep, out: &mut Tensors) -> Result<()> {
        let (t, res, dev) = (self.t, self.res, self.dev);
        let hd = t.head_dim();
        let (h, f) = (t.hidden_size, t.intermediate_size);
        let (tq, tkv) = (t.num_attention_heads * hd, t.kv_heads() * hd);
        let (sp, tp) = (layer_prefix(i), layer_prefix(j));
        let q_rows = index(lk.heads.as_ref().map(|s| block_rows(s, hd)).as_ref(), dev)?;
        let kv_rows = index(
            lk.kv_heads.as_ref().map(|s| block_rows(s, hd)).as_ref(),
            dev,
        )?;
        let n_idx = index(lk.neurons.as_ref(), dev)?;
        let mut put = |name: &str, v: Tensor| {
            out.insert(format!("{sp}.{name}"), v);
        };
        let both = |name: &str,
                    shape: &[usize],
                    rows: Option<&Tensor>,
                    cols: Option<&Tensor>|
         -> Result<Tensor> {
            let n = format!("{tp}.{name}");
            let w = self.get(&n, shape)?;
            select(&select(&w, 0, rows, &n)?, 1, cols, &n)
        };
        let one = |name: &str, len: usize, idx: Option<&Tensor>| -> Result<Tensor> {
            let n = format!("{tp}.{name}");
            select(&self.get(&n, &[len])?, 0, idx, &n)
        };
        put(
            "self_attn.q_proj.weight",
            both("self_attn.q_proj.weight", &[tq, h], q_rows.as_ref(), res)?,
        );
        put(
            "self_attn.k_proj.weight",
            both("self_attn.k_proj.weight", &[tkv, h], kv_rows.as_ref(), res)?,
        );
        put(
            "self_attn.v_proj.weight",
            both("self_attn.v_proj.weight", &[tkv, h], kv_rows.as_ref(), res)?,
        );
        put(
            "self_attn.o_proj.weight",
            both("self_attn.o_proj.weight", &[h, tq], res, q_rows.as_ref())?,
        );
        if t.qkv_bias() {
            put(
                "self_attn.q_proj.bias",
                one("self_attn.q_proj.bias", tq, q_rows.as_ref())?,
            );
            put(
                "self_attn.k_proj.bias",
                one("self_attn.k_proj.bias", tkv, kv_rows.as_ref())?,
            );
            put(
                "self_attn.v_proj.bias",
                one("self_attn.v_proj.bias", tkv, kv_rows.as_ref())?,
            );
        }
        if t.attention_bias {
            put(
                "self_attn.o_proj.bias",
                one("self_attn.o_proj.bias", h, res)?,
            );
        }
        put(
            "mlp.gate_proj.weight",
            both("mlp.gate_proj.weight", &[f, h], n_idx.as_ref(), res)?,
        );
        put(
            "mlp.up_proj.weight",
            both("mlp.up_proj.weight", &[f, h], n_idx.as_ref(), res)?,
        );
        put(
            "mlp.down_proj.weight",
            both("mlp.down_proj.weight", &[h, f], res, n_idx.as_ref())?,
        );
        if t.mlp_bias {
            put(
                "mlp.gate_proj.bias",
                one("mlp.gate_proj.bias", f, n_idx.as_ref())?,
            );
            put(
                "mlp.up_proj.bias",
                one("mlp.up_proj.bias", f, n_idx.as_ref())?,
            );
            put("mlp.down_proj.bias", one("mlp.down_proj.bias", h, res)?);
        }
        for n in t.layout().norms.names() {
            put(&format!("{n}.weight"), one(&format!("{n}.weight"), h, res)?);
        }
        if t.layout().qk_norm {
            // One gain per position within a head, shared by every head: kept whole.
            for n in ["self_attn.q_norm.weight", "self_attn.k_norm.weight"] {
                put(n, one(n, hd, None)?);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::surgery::LayerKeep;
    use crate::{Input, Llama, Model, VarMapWeights};
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarMap;

    fn cfg() -> LlamaConfig {
        LlamaConfig::from_json(
            r#"{"model_type":"llama","vocab_size":50,"hidden_size":32,"intermediate_size":64,
                "num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,
                "max_position_embeddings":64,"tie_word_embeddings":false}"#,
            "tiny",
        )
        .unwrap()
    }

    #[test]
    fn a_cut_that_keeps_everything_is_the_same_model_and_a_narrow_one_loads() {
        let c = cfg();
        let vm = VarMap::new();
        let src = VarMapWeights::new(&vm, DType::F32, &Device::Cpu);
        let m = Llama::load(&c, &src).unwrap();
        let ids = Tensor::new(&[[1u32, 5, 9, 2]], &Device::Cpu).unwrap();
        let logits = |m: &dyn Model| m.run(&Input::new(&ids)).unwrap().logits;
        let (same_cfg, same) = cut(&c, &src, &Keep::all(3)).unwrap();
        assert_eq!(same_cfg, c);
        let again = Llama::load(&same_cfg, &crate::surgery::tests_source(same)).unwrap();
        let d = (logits(&m) - logits(&again))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);

        let keep = Keep {
            layers: vec![2, 0],
            residual: Some(vec![0, 3, 5, 8, 9, 10, 20, 31]),
            per_layer: vec![
                LayerKeep {
                    heads: Some(vec![2, 3]),
                    kv_heads: Some(vec![1]),
                    neurons: Some((0..10).collect()),
                };
                2
            ],
        };
        let (small_cfg, small) = cut(&c, &src, &keep).unwrap();
        assert_eq!(
            (
                small_cfg.num_hidden_layers,
                small_cfg.hidden_size,
                small_cfg.num_attention_heads,
                small_cfg.kv_heads(),
                small_cfg.intermediate_size,
                small_cfg.head_dim()
            ),
            (2, 8, 2, 1, 10, 8)
        );
        let m2 = Llama::load(&small_cfg, &crate::surgery::tests_source(small)).unwrap();
        assert_eq!(logits(&m2).dims(), &[1, 4, 50]);

        // Query heads of a key/value group that is not kept are refused.
        let mut bad = keep.clone();
        bad.per_layer[0].heads = Some(vec![0, 1]);
        let e = cut(&c, &src, &bad).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        // Layers must agree, or the result is no standard checkpoint.
        let mut uneven = keep;
        uneven.per_layer[1].neurons = Some((0..12).collect());
        let e = cut(&c, &src, &uneven).unwrap_err().to_string();
        assert!(e.contains("same"), "{e}");
    }
}
