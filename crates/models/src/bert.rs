//! BERT encoders (BERT, MiniLM, all-MiniLM-L6-v2 and other sentence-transformers checkpoints).
//!
//! Names follow transformers' `BertModel` (`embeddings.word_embeddings`,
//! `encoder.layer.N.attention.self.query`), with or without the `bert.` prefix that
//! `BertForSequenceClassification` checkpoints add.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Init;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result, TensorContext};
use crate::llama::{embed, json_error_key, LinearSite};
use crate::nn::{attention, attention_bias, layer_norm};
use crate::weights::{Linear, WeightSource};

/// `config.json` of a BERT checkpoint (the keys this implementation reads).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    /// Class names of a sequence-classification checkpoint, by class index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<std::collections::BTreeMap<String, usize>>,
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_act() -> String {
    "gelu".into()
}
fn default_max_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}

/// `model_type` values this family implements.
pub const BERT_MODEL_TYPES: &[&str] = &["bert"];

impl BertConfig {
    pub fn from_json(text: &str, source_name: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| ModelError::Config {
            source_name: source_name.to_string(),
            key: json_error_key(&e),
            msg: e.to_string(),
        })?;
        cfg.validate(source_name)?;
        Ok(cfg)
    }

    pub fn validate(&self, source_name: &str) -> Result<()> {
        let err = |key: &str, msg: String| ModelError::Config {
            source_name: source_name.to_string(),
            key: key.to_string(),
            msg,
        };
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(err(key, "must be positive".into()));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(err(
                "num_attention_heads",
                format!(
                    "{} heads do not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(err(
                "position_embedding_type",
                format!(
                    "only `absolute` is supported, got `{}`",
                    self.position_embedding_type
                ),
            ));
        }
        Activation::parse(&self.hidden_act).ok_or_else(|| {
            err(
                "hidden_act",
                format!(
                    "unsupported activation `{}` (gelu, gelu_new, gelu_pytorch_tanh, relu)",
                    self.hidden_act
                ),
            )
        })?;
        Ok(())
    }

    /// Number of encoder parameters (embeddings and layers, no pooler or head).
    pub fn param_count(&self) -> usize {
        let h = self.hidden_size;
        let f = self.intermediate_size;
        let emb =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h;
        emb + self.num_hidden_layers * layer
    }
}

#[derive(Clone, Copy, Debug)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "gelu" => Some(Self::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::GeluErf => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
        }
    }
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn load(src: &dyn WeightSource, prefix: &str, h: usize) -> Result<Self> {
        Ok(Self {
            weight: src.tensor(&format!("{prefix}.weight"), &[h], Init::Const(1.0))?,
            bias: src.tensor(&format!("{prefix}.bias"), &[h], Init::Const(0.0))?,
        })
    }
    fn forward(&self, x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, eps)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    intermediate: Linear,
    output: Linear,
    out_norm: Norm,
}

/// Output of the encoder.
#[derive(Debug)]
pub struct BertOutput {
    /// `[batch, seq, hidden]`, the last layer's output.
    pub last_hidden: Tensor,
    /// Embedding output then every layer's output, when asked for.
    pub hidden_states: Option<Vec<Tensor>>,
}

/// A BERT encoder.
pub struct Bert {
    cfg: BertConfig,
    prefix: String,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    act: Activation,
    device: Device,
}

impl Bert {
    /// Builds the encoder; finds whether the checkpoint prefixes its names with `bert.`.
    pub fn load(cfg: &BertConfig, src: &dyn WeightSource) -> Result<Self> {
        cfg.validate(&src.source_name())?;
        let prefix = if src.contains("bert.embeddings.word_embeddings.weight")
            && !src.contains("embeddings.word_embeddings.weight")
        {
            "bert."
        } else {
            ""
        };
        Self::load_with_prefix(cfg, src, prefix)
    }

    /// Builds the encoder from names under `prefix` (`""` or `"bert."`).
    pub fn load_with_prefix(
        cfg: &BertConfig,
        src: &dyn WeightSource,
        prefix: &str,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let f = cfg.intermediate_size;
        let randn = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let e = format!("{prefix}embeddings");
        let word = src.tensor(
            &format!("{e}.word_embeddings.weight"),
            &[cfg.vocab_size, h],
            randn,
        )?;
        let position = src.tensor(
            &format!("{e}.position_embeddings.weight"),
            &[cfg.max_position_embeddings, h],
            randn,
        )?;
        let token_type = src.tensor(
            &format!("{e}.token_type_embeddings.weight"),
            &[cfg.type_vocab_size, h],
            randn,
        )?;
        let emb_norm = Norm::load(src, &format!("{e}.LayerNorm"), h)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("{prefix}encoder.layer.{i}");
            layers.push(Layer {
                query: Linear::load(src, &format!("{p}.attention.self.query"), h, h, true)?,
                key: Linear::load(src, &format!("{p}.attention.self.key"), h, h, true)?,
                value: Linear::load(src, &format!("{p}.attention.self.value"), h, h, true)?,
                attn_out: Linear::load(src, &format!("{p}.attention.output.dense"), h, h, true)?,
                attn_norm: Norm::load(src, &format!("{p}.attention.output.LayerNorm"), h)?,
                intermediate: Linear::load(src, &format!("{p}.intermediate.dense"), h, f, true)?,
                output: Linear::load(src, &format!("{p}.output.dense"), f, h, true)?,
                out_norm: Norm::load(src, &format!("{p}.output.LayerNorm"), h)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            prefix: prefix.to_string(),
            word,
            position,
            token_type,
            emb_norm,
            layers,
            act: Activation::parse(&cfg.hidden_act).expect("validated"),
            device: src.device().clone(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The name prefix of the checkpoint (`""` or `"bert."`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn check_length(&self, s: usize) -> Result<()> {
        if s > self.cfg.max_position_embeddings {
            return Err(ModelError::Config {
                source_name: "input".into(),
                key: "max_position_embeddings".into(),
                msg: format!(
                    "sequence of {s} tokens exceeds the model's {} positions",
                    self.cfg.max_position_embeddings
                ),
            });
        }
        Ok(())
    }

    fn embeddings(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let s = input_ids.dim(1)?;
        let words = embed(&self.word, input_ids)?;
        let pos = self.position.narrow(0, 0, s)?.unsqueeze(0)?;
        let types = match token_type_ids {
            Some(t) => embed(&self.token_type, t)?,
            None => self.token_type.narrow(0, 0, 1)?.unsqueeze(0)?,
        };
        let x = words.broadcast_add(&pos)?.broadcast_add(&types)?;
        self.emb_norm.forward(&x, self.cfg.layer_norm_eps)
    }

    /// Encodes `input_ids` (`[batch, seq]`). `attention_mask` (1 = token, 0 = padding) keeps
    /// padding out of every token's attention; `token_type_ids` default to 0.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        want_hidden: bool,
    ) -> Result<BertOutput> {
        let (b, s) = input_ids
            .dims2()
            .context(|| "input_ids must be [batch, seq]".into())?;
        self.check_length(s)?;
        let ctx = |what: &str| format!("bert forward ({what})");
        let x = self
            .embeddings(input_ids, token_type_ids)
            .context(|| ctx("embeddings"))?;
        let bias =
            attention_bias(b, s, attention_mask, false, &self.device).context(|| ctx("mask"))?;
        let mut hidden = want_hidden.then(|| vec![x.clone()]);
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer
                .forward(&x, bias.as_ref(), &self.cfg, self.act)
                .context(|| format!("bert forward (layer {i})"))?;
            if let Some(h) = hidden.as_mut() {
                h.push(x.clone());
            }
        }
        Ok(BertOutput {
            last_hidden: x,
            hidden_states: hidden,
        })
    }
}

impl Layer {
    fn forward(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        cfg: &BertConfig,
        act: Activation,
    ) -> candle_core::Result<Tensor> {
        self.forward_observed(x, bias, cfg, act, &mut |_, _| Ok(()))
    }

    /// The layer's forward pass, handing every linear projection's input to `observe`.
    fn forward_observed(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        cfg: &BertConfig,
        act: Activation,
        observe: &mut dyn FnMut(LinearSite, &Tensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let heads = cfg.num_attention_heads;
        let d = h / heads;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous()
        };
        observe(LinearSite::AttentionInput, x)?;
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let a = attention(&q, &k, &v, bias, false)?
            .transpose(1, 2)?
            .reshape((b, s, h))?;
        observe(LinearSite::AttentionOutput, &a)?;
        let x = self
            .attn_norm
            .forward(&(self.attn_out.forward(&a)? + x)?, cfg.layer_norm_eps)?;
        observe(LinearSite::MlpInput, &x)?;
        let inner = act.apply(&self.intermediate.forward(&x)?)?;
        observe(LinearSite::MlpOutput, &inner)?;
        self.out_norm
            .forward(&(self.output.forward(&inner)? + x)?, cfg.layer_norm_eps)
    }
}

/// Running an encoder one layer at a time, for compression methods that calibrate each layer
/// on the output of the layers before it (already compressed), as GPTQ and SparseGPT do.
impl Bert {
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The embedding output (word + position + token type 0, normalised) for `input_ids`
    /// (`[batch, seq]`): the first layer's input.
    pub fn embed_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, s) = input_ids
            .dims2()
            .context(|| "input_ids must be [batch, seq]".into())?;
        self.check_length(s)?;
        self.embeddings(input_ids, None)
            .context(|| "bert forward (embeddings)".into())
    }

    /// Layer `i` on `x` (`[batch, seq, hidden]`) with `attention_mask` (1 = token, 0 =
    /// padding), handing every linear projection's input to `observe`.
    pub fn layer_forward(
        &self,
        i: usize,
        x: &Tensor,
        attention_mask: Option<&Tensor>,
        observe: &mut dyn FnMut(LinearSite, &Tensor) -> candle_core::Result<()>,
    ) -> Result<Tensor> {
        let layer = self.layers.get(i).ok_or_else(|| ModelError::Config {
            source_name: "bert".into(),
            key: "num_hidden_layers".into(),
            msg: format!(
                "layer {i} does not exist (the model has {})",
                self.layers.len()
            ),
        })?;
        let ctx = || format!("bert forward (layer {i})");
        let (b, s, _) = x.dims3().context(ctx)?;
        let bias = attention_bias(b, s, attention_mask, false, &self.device).context(ctx)?;
        layer
            .forward_observed(x, bias.as_ref(), &self.cfg, self.act, observe)
            .context(ctx)
    }
}

/// Mean of the token vectors of `hidden` (`[batch, seq, h]`) over positions where
/// `attention_mask` is 1: the sentence embedding of sentence-transformers models.
pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
    let m = attention_mask.to_dtype(hidden.dtype())?.unsqueeze(2)?; // [b, s, 1]
    let summed = hidden.broadcast_mul(&m)?.sum(1)?;
    let counts = m.sum(1)?.clamp(1e-9f64, f64::MAX)?;
    summed.broadcast_div(&counts)
}

/// L2-normalises rows of `x` (`[batch, h]`).
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let n = x
        .to_dtype(DType::F32)?
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .clamp(1e-12f64, f64::MAX)?;
    x.broadcast_div(&n.to_dtype(x.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::VarMapWeights;
    use candle_nn::VarMap;

    fn tiny_config() -> BertConfig {
        BertConfig::from_json(
            r#"{"model_type":"bert","vocab_size":40,"hidden_size":16,"num_hidden_layers":2,
                "num_attention_heads":4,"intermediate_size":32,"max_position_embeddings":20}"#,
            "tiny",
        )
        .unwrap()
    }

    #[test]
    fn every_trainable_variable_gets_a_gradient_and_padding_changes_nothing() {
        let cfg = tiny_config();
        let vm = VarMap::new();
        let m = Bert::load(&cfg, &VarMapWeights::new(&vm, DType::F32, &Device::Cpu)).unwrap();
        let dev = Device::Cpu;
        let ids = Tensor::new(&[[2u32, 7, 9, 3, 0, 0], [2, 5, 5, 6, 8, 3]], &dev).unwrap();
        let mask = Tensor::new(&[[1u8, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], &dev).unwrap();
        let out = m.forward(&ids, None, Some(&mask), true).unwrap();
        assert_eq!(out.hidden_states.as_ref().unwrap().len(), 3);
        let pooled = mean_pool(&out.last_hidden, &mask).unwrap();
        let loss = pooled.sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in vm.data().lock().unwrap().iter() {
            let norm = grads.get(var.as_tensor()).map(|g| {
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            });
            // Token-type row 1 is never used with default token types; every other weight learns.
            if name.contains("token_type") {
                continue;
            }
            assert!(norm.is_some_and(|n| n > 0.0), "no gradient for {name}");
        }
        // The first sequence alone, unpadded, pools to the same vector.
        let alone = Tensor::new(&[[2u32, 7, 9, 3]], &dev).unwrap();
        let out1 = m.forward(&alone, None, None, false).unwrap();
        let ones = Tensor::ones((1, 4), DType::U8, &dev).unwrap();
        let p1 = mean_pool(&out1.last_hidden, &ones).unwrap();
        let diff = (p1 - pooled.narrow(0, 0, 1).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "padding changed the embedding by {diff}");
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = BertConfig::from_json(r#"{"vocab_size":40}"#, "m/config.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/config.json") && e.contains("hidden_size"),
            "{e}"
        );
        let e = BertConfig::from_json(
            r#"{"vocab_size":40,"hidden_size":16,"num_hidden_layers":1,"num_attention_heads":4,"intermediate_size":8,"hidden_act":"swish"}"#,
            "m",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("hidden_act") && e.contains("swish"), "{e}");
    }
}
