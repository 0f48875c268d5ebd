//! Sequence classification on a BERT encoder: pooling, then a linear head.
//!
//! Names follow transformers' `BertForSequenceClassification` (`bert.*`, `bert.pooler.dense`,
//! `classifier`), so a checkpoint saved from here loads there. `cls` pooling is that class's
//! computation exactly (`tanh(pooler(h[CLS]))`); `mean` pooling (the masked mean of the last
//! layer, what sentence-transformers checkpoints were trained for) is recorded in `config.json`
//! as `distill_pooling` and transformers ignores it, so pick `cls` when the artifact must score
//! the same there.

use candle_core::{Module, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::bert::{mean_pool, Bert, BertConfig};
use crate::error::{ModelError, Result, TensorContext};
use crate::model::ModelOutput;
use crate::model::{Input, Model};
use crate::weights::{Linear, WeightSource};

/// Name of the head's weight: its presence marks a checkpoint with a classification head.
pub const CLASSIFIER_WEIGHT: &str = "classifier.weight";

/// How the sequence is summarised before the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// `tanh(dense(h[CLS]))`, as `BertForSequenceClassification` does.
    Cls,
    /// Masked mean of the last layer's token vectors.
    Mean,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cls => "cls",
            Self::Mean => "mean",
        }
    }
}

/// A BERT encoder with a sequence-classification head.
pub struct BertClassifier {
    pub bert: Bert,
    pooler: Option<Linear>,
    classifier: Linear,
    pooling: Pooling,
    num_labels: usize,
}

impl BertClassifier {
    /// Whether `src` holds a classification head.
    pub fn has_head(src: &dyn WeightSource) -> bool {
        src.contains(CLASSIFIER_WEIGHT)
    }

    /// Builds the classifier from `src`: the encoder under `bert.` or no prefix (whichever the
    /// source has, see [`encoder_prefix`]), the pooler under the same prefix, the head under
    /// `classifier`. A trainable source creates missing tensors (a fresh head, `bert.` names);
    /// a frozen one must hold them all.
    pub fn load(
        cfg: &BertConfig,
        src: &dyn WeightSource,
        num_labels: usize,
        pooling: Pooling,
    ) -> Result<Self> {
        let prefix = encoder_prefix(src);
        if num_labels < 2 {
            return Err(ModelError::Config {
                source_name: src.source_name(),
                key: "num_labels".into(),
                msg: format!("a classifier needs at least 2 classes, got {num_labels}"),
            });
        }
        let bert = Bert::load_with_prefix(cfg, src, prefix)?;
        let h = cfg.hidden_size;
        let pooler = match pooling {
            Pooling::Cls => Some(Linear::load(
                src,
                &format!("{prefix}pooler.dense"),
                h,
                h,
                true,
            )?),
            Pooling::Mean => None,
        };
        let classifier = Linear::load(src, "classifier", h, num_labels, true)?;
        Ok(Self {
            bert,
            pooler,
            classifier,
            pooling,
            num_labels,
        })
    }

    pub fn config(&self) -> &BertConfig {
        self.bert.config()
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Class logits for `input_ids` (`[batch, seq]`) with `attention_mask` (1 = token).
    /// `dropout_mask` (`[batch, hidden]`, already scaled by `1/(1-p)`) is applied to the pooled
    /// vector in training; the caller draws it so runs stay reproducible.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        dropout_mask: Option<&Tensor>,
        want_hidden: bool,
    ) -> Result<ModelOutput> {
        let out = self
            .bert
            .forward(input_ids, None, Some(attention_mask), want_hidden)?;
        let logits = (|| {
            let pooled = self.pool(&out.last_hidden, attention_mask)?;
            let pooled = match dropout_mask {
                Some(m) => pooled.mul(m)?,
                None => pooled,
            };
            self.classifier.forward(&pooled)
        })()
        .context(|| "classification head".into())?;
        Ok(ModelOutput {
            logits,
            hidden_states: out.hidden_states,
        })
    }

    /// The vector the head reads (`[batch, hidden]`): transformers' `pooler_output` for `cls`.
    pub fn pool(
        &self,
        last_hidden: &Tensor,
        attention_mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        match (&self.pooler, self.pooling) {
            (Some(pooler), Pooling::Cls) => {
                let cls = last_hidden.narrow(1, 0, 1)?.squeeze(1)?;
                pooler.forward(&cls)?.tanh()
            }
            _ => mean_pool(last_hidden, attention_mask),
        }
    }

    /// Predicted class per row of `logits`.
    pub fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
        logits
            .argmax(D::Minus1)
            .and_then(|t| t.to_vec1::<u32>())
            .context(|| "argmax of class logits".into())
    }
}

/// Where a checkpoint keeps its encoder: at the top level when it has `embeddings.*` and no
/// `bert.embeddings.*` (`BertModel`, e.g. a sentence-transformers encoder), else under
/// `bert.` (`BertForSequenceClassification`, and a fresh trainable source, which creates
/// these names).
pub fn encoder_prefix(src: &dyn WeightSource) -> &'static str {
    if src.contains("embeddings.word_embeddings.weight")
        && !src.contains("bert.embeddings.word_embeddings.weight")
    {
        ""
    } else {
        "bert."
    }
}

impl Model for BertClassifier {
    fn run(&self, input: &Input) -> Result<ModelOutput> {
        let ones;
        let mask = match input.mask {
            Some(m) => m,
            None => {
                ones = Tensor::ones(input.ids.dims(), candle_core::DType::U8, input.ids.device())
                    .context(|| "attention mask".into())?;
                &ones
            }
        };
        self.forward(input.ids, mask, input.pooled_dropout, input.hidden)
    }
    fn hidden_size(&self) -> usize {
        self.config().hidden_size
    }
    fn device(&self) -> &candle_core::Device {
        self.bert.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::VarMapWeights;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn tiny() -> BertConfig {
        BertConfig::from_json(
            r#"{"model_type":"bert","vocab_size":40,"hidden_size":16,"num_hidden_layers":2,
                "num_attention_heads":4,"intermediate_size":32,"max_position_embeddings":20}"#,
            "tiny",
        )
        .unwrap()
    }

    #[test]
    fn padding_does_not_change_a_prediction_with_either_pooling() {
        let dev = Device::Cpu;
        for pooling in [Pooling::Cls, Pooling::Mean] {
            let vm = VarMap::new();
            let src = VarMapWeights::new(&vm, DType::F32, &dev);
            let m = BertClassifier::load(&tiny(), &src, 3, pooling).unwrap();
            let ids = Tensor::new(&[[2u32, 7, 9, 3, 0, 0], [2, 5, 5, 6, 8, 3]], &dev).unwrap();
            let mask = Tensor::new(&[[1u8, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], &dev).unwrap();
            let batched = m.forward(&ids, &mask, None, false).unwrap().logits;
            assert_eq!(batched.dims(), &[2, 3]);
            let alone = Tensor::new(&[[2u32, 7, 9, 3]], &dev).unwrap();
            let ones = Tensor::ones((1, 4), DType::U8, &dev).unwrap();
            let single = m.forward(&alone, &ones, None, false).unwrap().logits;
            let diff = (single - batched.narrow(0, 0, 1).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff < 1e-5,
                "{pooling:?}: padding moved the logits by {diff}"
            );
            // Changing a padded token's id changes nothing either.
            let ids2 = Tensor::new(&[[2u32, 7, 9, 3, 11, 12], [2, 5, 5, 6, 8, 3]], &dev).unwrap();
            let again = m.forward(&ids2, &mask, None, false).unwrap().logits;
            let diff = (again - &batched)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff < 1e-6,
                "{pooling:?}: a padded id changed logits by {diff}"
            );
            // HF names: the encoder, the pooler for cls, the head.
            let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
            assert!(names.contains(&"classifier.weight".to_string()));
            assert!(names.contains(&"bert.embeddings.word_embeddings.weight".to_string()));
            assert_eq!(
                names.contains(&"bert.pooler.dense.weight".to_string()),
                pooling == Pooling::Cls
            );
        }
    }

    #[test]
    fn frozen_layers_get_no_gradient_and_the_rest_do() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let src = VarMapWeights::new(&vm, DType::F32, &dev)
            .with_frozen(|n: &str| n.contains("embeddings") || n.contains("encoder.layer.0."));
        let m = BertClassifier::load(&tiny(), &src, 2, Pooling::Cls).unwrap();
        let ids = Tensor::new(&[[2u32, 7, 9, 3]], &dev).unwrap();
        let mask = Tensor::ones((1, 4), DType::U8, &dev).unwrap();
        let loss = m
            .forward(&ids, &mask, None, false)
            .unwrap()
            .logits
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in vm.data().lock().unwrap().iter() {
            let frozen = name.contains("embeddings") || name.contains("encoder.layer.0.");
            assert_eq!(
                grads.get(var.as_tensor()).is_some(),
                !frozen,
                "gradient presence of {name}"
            );
        }
    }

    #[test]
    fn fewer_than_two_classes_is_refused() {
        let vm = VarMap::new();
        let src = VarMapWeights::new(&vm, DType::F32, &Device::Cpu);
        let e = BertClassifier::load(&tiny(), &src, 1, Pooling::Mean)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("num_labels"), "{e}");
    }
}
