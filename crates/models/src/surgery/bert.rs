//! Structured cuts of BERT encoders and classifiers. The source may keep its encoder under
//! `bert.` or at the top level; the result is always a `BertForSequenceClassification`
//! checkpoint (`bert.*` names).
//!
//! BERT's attention maps the residual stream to heads × head size and back with square
//! matrices, so a cut keeps whole heads and a residual stream of exactly heads × head size.
//! LayerNorms keep the gains of the kept channels; their statistics are then over fewer
//! channels than in the source, so a narrowed model is an approximate start that training
//! (distillation, healing) completes.

use candle_core::Tensor;
use candle_nn::Init;

use super::{
    block_rows, column_norms, index, row_norms, select, Keep, LayerKeep, SourceSizes, Tensors,
};
use crate::bert::BertConfig;
use crate::bert_classifier::encoder_prefix;
use crate::error::{ModelError, Result, TensorContext};
use crate::weights::WeightSource;

/// The sequence-classification head a cut carries over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub num_labels: usize,
    /// Whether the model has `bert.pooler.dense` (`cls` pooling).
    pub pooler: bool,
}

/// The model `keep` describes, cut out of `src` (config `t`), with the classification `head`
/// when given. Key/value selections must be absent or equal to the heads (BERT has no
/// grouped-query attention).
pub fn cut(
    t: &BertConfig,
    src: &dyn WeightSource,
    keep: &Keep,
    head: Option<Head>,
) -> Result<(BertConfig, Tensors)> {
    let hd = t.hidden_size / t.num_attention_heads;
    let (th, tf) = (t.hidden_size, t.intermediate_size);
    let (hidden, heads, _, neurons) = keep.sizes(SourceSizes {
        layers: t.num_hidden_layers,
        hidden: th,
        heads: t.num_attention_heads,
        kv_heads: t.num_attention_heads,
        neurons: tf,
    })?;
    let bad = |msg: String| ModelError::Config {
        source_name: "structured cut".into(),
        key: "heads".into(),
        msg,
    };
    if hidden != heads * hd {
        return Err(bad(format!(
            "BERT keeps whole heads of size {hd}: {heads} heads need a residual stream of {}, not {hidden}",
            heads * hd
        )));
    }
    if let Some(l) = keep
        .per_layer
        .iter()
        .position(|l| l.kv_heads.is_some() && l.kv_heads != l.heads)
    {
        return Err(bad(format!(
            "layer {l}: BERT has no key/value heads apart from its attention heads"
        )));
    }
    let dev = src.device().clone();
    let res = index(keep.residual.as_ref(), &dev)?;
    let c = Cutter {
        t,
        src,
        tp: encoder_prefix(src),
        res: res.as_ref(),
        dev: &dev,
    };
    let mut out = Tensors::new();
    c.embeddings(&mut out)?;
    for (si, (&ti, lk)) in keep.layers.iter().zip(&keep.per_layer).enumerate() {
        c.layer(si, ti, lk, &mut out)?;
    }
    if let Some(head) = head {
        c.head(head, &mut out)?;
    }
    let cfg = BertConfig {
        num_hidden_layers: keep.layers.len(),
        hidden_size: hidden,
        num_attention_heads: heads,
        intermediate_size: neurons,
        ..t.clone()
    };
    Ok((cfg, out))
}

/// Weight-norm importance of every attention head of `layer`: the summed squared norms of its
/// query, key and value rows and its output-projection columns.
pub fn head_norms(t: &BertConfig, src: &dyn WeightSource, layer: usize) -> Result<Vec<f32>> {
    let th = t.hidden_size;
    let hd = th / t.num_attention_heads;
    let p = format!("{}encoder.layer.{layer}", encoder_prefix(src));
    let get = |n: &str| src.tensor(&format!("{p}.{n}.weight"), &[th, th], Init::Const(0.0));
    let ctx = || format!("head norms of {p}");
    let qn = row_norms(&get("attention.self.query")?).context(ctx)?;
    let kn = row_norms(&get("attention.self.key")?).context(ctx)?;
    let vn = row_norms(&get("attention.self.value")?).context(ctx)?;
    let on = column_norms(&get("attention.output.dense")?).context(ctx)?;
    Ok((0..t.num_attention_heads)
        .map(|h| {
            (h * hd..(h + 1) * hd)
                .map(|r| qn[r] * qn[r] + kn[r] * kn[r] + vn[r] * vn[r] + on[r] * on[r])
                .sum()
        })
        .collect())
}

/// Weight-norm importance of every FFN neuron of `layer`: ‖in row‖·‖out column‖.
pub fn neuron_norms(t: &BertConfig, src: &dyn WeightSource, layer: usize) -> Result<Vec<f32>> {
    let (th, tf) = (t.hidden_size, t.intermediate_size);
    let p = format!("{}encoder.layer.{layer}", encoder_prefix(src));
    let ctx = || format!("neuron norms of {p}");
    let a = row_norms(&src.tensor(
        &format!("{p}.intermediate.dense.weight"),
        &[tf, th],
        Init::Const(0.0),
    )?)
    .context(ctx)?;
    let b = column_norms(&src.tensor(
        &format!("{p}.output.dense.weight"),
        &[th, tf],
        Init::Const(0.0),
    )?)
    .context(ctx)?;
    Ok(a.iter().zip(&b).map(|(x, y)| x * y).collect())
}

/// Importance of every residual-stream channel: the norm of its word-embedding column.
pub fn residual_norms(t: &BertConfig, src: &dyn WeightSource) -> Result<Vec<f32>> {
    let w = src.tensor(
        &format!("{}embeddings.word_embeddings.weight", encoder_prefix(src)),
        &[t.vocab_size, t.hidden_size],
        Init::Const(0.0),
    )?;
    column_norms(&w).context(|| "word-embedding column norms".into())
}

/// The classification head `src` holds, if any: its classes (from `classifier.bias`) and
/// whether it has a pooler. Exact only for sources that hold a fixed set of tensors.
pub fn head_of(src: &dyn WeightSource, num_labels: usize) -> Option<Head> {
    src.contains("classifier.weight").then(|| Head {
        num_labels,
        pooler: src.contains(&format!("{}pooler.dense.weight", encoder_prefix(src))),
    })
}

/// Cuts the tensors of one source encoder (names under `tp`), its residual channels narrowed
/// to `res`, into `bert.*` names.
struct Cutter<'a> {
    t: &'a BertConfig,
    src: &'a dyn WeightSource,
    tp: &'static str,
    res: Option<&'a Tensor>,
    dev: &'a candle_core::Device,
}

impl Cutter<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.src.tensor(name, shape, Init::Const(0.0))
    }

    /// A matrix with `rows` and `cols` kept.
    fn both(
        &self,
        name: &str,
        shape: &[usize],
        rows: Option<&Tensor>,
        cols: Option<&Tensor>,
    ) -> Result<Tensor> {
        let w = self.get(name, shape)?;
        select(&select(&w, 0, rows, name)?, 1, cols, name)
    }

    /// A vector with `idx` kept.
    fn one(&self, name: &str, len: usize, idx: Option<&Tensor>) -> Result<Tensor> {
        select(&self.get(name, &[len])?, 0, idx, name)
    }

    /// The three embedding tables and their LayerNorm.
    fn embeddings(&self, out: &mut Tensors) -> Result<()> {
        let (t, tp, res, th) = (self.t, self.tp, self.res, self.t.hidden_size);
        for (n, len) in [
            ("word_embeddings", t.vocab_size),
            ("position_embeddings", t.max_position_embeddings),
            ("token_type_embeddings", t.type_vocab_size),
        ] {
            let name = format!("{tp}embeddings.{n}.weight");
            out.insert(
                format!("bert.embeddings.{n}.weight"),
                self.both(&name, &[len, th], None, res)?,
            );
        }
        for p in ["weight", "bias"] {
            out.insert(
                format!("bert.embeddings.LayerNorm.{p}"),
                self.one(&format!("{tp}embeddings.LayerNorm.{p}"), th, res)?,
            );
        }
        Ok(())
    }

    /// Source layer `ti` as layer `si` of the cut, keeping what `lk` says.
    fn layer(&self, si: usize, ti: usize, lk: &LayerKeep, out: &mut Tensors) -> Result<()> {
        let (t, res) = (self.t, self.res);
        let (th, tf) = (t.hidden_size, t.intermediate_size);
        let hd = th / t.num_attention_heads;
        let tl = format!("{}encoder.layer.{ti}", self.tp);
        let sl = format!("bert.encoder.layer.{si}");
        let head_rows = index(
            lk.heads.as_ref().map(|s| block_rows(s, hd)).as_ref(),
            self.dev,
        )?;
        let head_rows = head_rows.as_ref();
        let n_idx = index(lk.neurons.as_ref(), self.dev)?;
        let n_idx = n_idx.as_ref();
        let mut put = |name: String, v: Tensor| {
            out.insert(name, v);
        };
        for n in ["query", "key", "value"] {
            let w = format!("attention.self.{n}.weight");
            put(
                format!("{sl}.{w}"),
                self.both(&format!("{tl}.{w}"), &[th, th], head_rows, res)?,
            );
            let b = format!("attention.self.{n}.bias");
            put(
                format!("{sl}.{b}"),
                self.one(&format!("{tl}.{b}"), th, head_rows)?,
            );
        }
        put(
            format!("{sl}.attention.output.dense.weight"),
            self.both(
                &format!("{tl}.attention.output.dense.weight"),
                &[th, th],
                res,
                head_rows,
            )?,
        );
        put(
            format!("{sl}.intermediate.dense.weight"),
            self.both(
                &format!("{tl}.intermediate.dense.weight"),
                &[tf, th],
                n_idx,
                res,
            )?,
        );
        put(
            format!("{sl}.intermediate.dense.bias"),
            self.one(&format!("{tl}.intermediate.dense.bias"), tf, n_idx)?,
        );
        put(
            format!("{sl}.output.dense.weight"),
            self.both(&format!("{tl}.output.dense.weight"), &[th, tf], res, n_idx)?,
        );
        for n in [
            "attention.output.dense.bias",
            "output.dense.bias",
            "attention.output.LayerNorm.weight",
            "attention.output.LayerNorm.bias",
            "output.LayerNorm.weight",
            "output.LayerNorm.bias",
        ] {
            put(
                format!("{sl}.{n}"),
                self.one(&format!("{tl}.{n}"), th, res)?,
            );
        }
        Ok(())
    }

    /// The pooler (when the classifier has one) and the classification head.
    fn head(&self, head: Head, out: &mut Tensors) -> Result<()> {
        let (tp, res, th) = (self.tp, self.res, self.t.hidden_size);
        if head.pooler {
            out.insert(
                "bert.pooler.dense.weight".into(),
                self.both(&format!("{tp}pooler.dense.weight"), &[th, th], res, res)?,
            );
            out.insert(
                "bert.pooler.dense.bias".into(),
                self.one(&format!("{tp}pooler.dense.bias"), th, res)?,
            );
        }
        out.insert(
            "classifier.weight".into(),
            self.both("classifier.weight", &[head.num_labels, th], None, res)?,
        );
        out.insert(
            "classifier.bias".into(),
            self.get("classifier.bias", &[head.num_labels])?,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::surgery::{tests_source, top_k, LayerKeep};
    use crate::{BertClassifier, Input, Model, Pooling, VarMapWeights};
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarMap;

    fn cfg() -> BertConfig {
        BertConfig::from_json(
            r#"{"model_type":"bert","vocab_size":40,"hidden_size":16,"num_hidden_layers":3,
                "num_attention_heads":4,"intermediate_size":32,"max_position_embeddings":20}"#,
            "tiny",
        )
        .unwrap()
    }

    #[test]
    fn a_whole_cut_is_the_same_classifier_and_a_narrow_one_keeps_whole_heads() {
        let c = cfg();
        let vm = VarMap::new();
        let src = VarMapWeights::new(&vm, DType::F32, &Device::Cpu);
        let m = BertClassifier::load(&c, &src, 3, Pooling::Cls).unwrap();
        let head = Some(Head {
            num_labels: 3,
            pooler: true,
        });
        let ids = Tensor::new(&[[2u32, 7, 9, 3]], &Device::Cpu).unwrap();
        let logits = |m: &dyn Model| m.run(&Input::new(&ids)).unwrap().logits;
        let (same_cfg, same) = cut(&c, &src, &Keep::all(3), head).unwrap();
        let again = BertClassifier::load(&same_cfg, &tests_source(same), 3, Pooling::Cls).unwrap();
        let d = (logits(&m) - logits(&again))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);

        let heads = top_k(&head_norms(&c, &src, 1).unwrap(), 2);
        let keep = Keep {
            layers: vec![1],
            residual: Some(top_k(&residual_norms(&c, &src).unwrap(), 8)),
            per_layer: vec![LayerKeep {
                heads: Some(heads),
                kv_heads: None,
                neurons: Some(top_k(&neuron_norms(&c, &src, 1).unwrap(), 5)),
            }],
        };
        let (small_cfg, small) = cut(&c, &src, &keep, head).unwrap();
        assert_eq!(
            (
                small_cfg.num_hidden_layers,
                small_cfg.hidden_size,
                small_cfg.num_attention_heads,
                small_cfg.intermediate_size
            ),
            (1, 8, 2, 5)
        );
        let m2 = BertClassifier::load(&small_cfg, &tests_source(small), 3, Pooling::Cls).unwrap();
        assert_eq!(logits(&m2).dims(), &[1, 3]);
        let mut wrong = keep;
        wrong.residual = Some((0..6).collect());
        let e = cut(&c, &src, &wrong, head).unwrap_err().to_string();
        assert!(e.contains("whole heads"), "{e}");
    }
}
