//! The one forward interface of every model family, so that training, evaluation and
//! compression take "a model" — a student of variables, a frozen teacher on any weight path
//! (safetensors, GGUF through candle, GGUF through the ggml path) or a classifier — instead of
//! matching on families.

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result, TensorContext};

/// What a forward pass returns.
#[derive(Debug)]
pub struct ModelOutput {
    /// `[batch, seq, vocab]`: logits for every position (a language model), or
    /// `[batch, classes]` (a classifier).
    pub logits: Tensor,
    /// Embedding output then every layer's output, when asked for.
    pub hidden_states: Option<Vec<Tensor>>,
}

/// What one forward pass reads.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// `[batch, seq]` token ids (u32).
    pub ids: &'a Tensor,
    /// `[batch, seq]`, 1 = token and 0 = padding (right-padded batches); `None` when no
    /// sequence is padded.
    pub mask: Option<&'a Tensor>,
    /// Also return the hidden states (the embedding output, then every layer's output).
    pub hidden: bool,
    /// Training-time dropout on the pooled vector of a classifier (`[batch, hidden]`, already
    /// scaled by `1/(1−p)`; the caller draws it so runs stay reproducible). A model without a
    /// pooled vector refuses it rather than ignore it.
    pub pooled_dropout: Option<&'a Tensor>,
}

impl<'a> Input<'a> {
    /// Token ids alone: no padding, no hidden states, no dropout.
    pub fn new(ids: &'a Tensor) -> Self {
        Self {
            ids,
            mask: None,
            hidden: false,
            pooled_dropout: None,
        }
    }

    pub fn with_mask(self, mask: Option<&'a Tensor>) -> Self {
        Self { mask, ..self }
    }

    pub fn with_hidden(self, hidden: bool) -> Self {
        Self { hidden, ..self }
    }

    pub fn with_pooled_dropout(self, pooled_dropout: Option<&'a Tensor>) -> Self {
        Self {
            pooled_dropout,
            ..self
        }
    }

    /// The error a model without a pooled vector gives when handed a dropout mask.
    pub(crate) fn refuse_dropout(&self, model: &str) -> Result<()> {
        match self.pooled_dropout {
            Some(_) => Err(ModelError::Config {
                source_name: model.to_string(),
                key: "dropout".into(),
                msg: "this model has no pooled vector to apply dropout to".into(),
            }),
            None => Ok(()),
        }
    }
}

/// A language model's output before its head: `logits = features · headᵀ`. A loss that applies
/// the head itself, chunk by chunk, never holds the `[batch·seq, vocab]` logits.
#[derive(Debug)]
pub struct Features {
    /// `[batch, seq, hidden]`, after the final norm.
    pub features: Tensor,
    /// `[vocab, hidden]`, dense and without bias.
    pub head: Tensor,
    /// As in [`ModelOutput::hidden_states`].
    pub hidden_states: Option<Vec<Tensor>>,
}

/// A network that maps token ids to logits (every position for a language model, one row per
/// sequence for a classifier) and, on request, hidden states.
pub trait Model {
    /// One forward pass.
    fn run(&self, input: &Input) -> Result<ModelOutput>;
    /// The dense output head `[vocab, hidden]` (without bias) of a language model that has
    /// one; `None` for encoders and quantised or factorised heads. Cheap: callers ask it to
    /// choose a path before running anything.
    fn dense_head(&self) -> Option<&Tensor> {
        None
    }
    /// [`Model::run`] stopped before the head, for models with a [`Model::dense_head`]; `None`
    /// for the others.
    fn run_features(&self, _input: &Input) -> Option<Result<Features>> {
        None
    }
    /// Width of the hidden states [`Model::run`] returns.
    fn hidden_size(&self) -> usize;
    /// Device the model computes on.
    fn device(&self) -> &Device;
}

/// A right-padded batch.
#[derive(Debug)]
pub struct Padded {
    /// `[batch, longest]` ids; padding positions hold the pad id.
    pub ids: Tensor,
    /// `[batch, longest]` u8, 1 = token.
    pub mask: Tensor,
    /// Whether any row is shorter than the longest.
    pub padded: bool,
}

impl Padded {
    /// The mask when some row is padded, else `None` (what [`Input::mask`] wants).
    pub fn mask_if_padded(&self) -> Option<&Tensor> {
        self.padded.then_some(&self.mask)
    }
}

/// Right-pads `rows` with `pad_id` into one batch on `device`. An empty batch (or one whose
/// rows are all empty) is an error: there is nothing to run.
pub fn pad_batch(rows: &[&[u32]], pad_id: u32, device: &Device) -> Result<Padded> {
    let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    if longest == 0 {
        return Err(ModelError::Config {
            source_name: "input".into(),
            key: "batch".into(),
            msg: "empty batch: no tokens to run".into(),
        });
    }
    let mut ids = Vec::with_capacity(rows.len() * longest);
    let mut mask = Vec::with_capacity(rows.len() * longest);
    for r in rows {
        ids.extend_from_slice(r);
        ids.extend(std::iter::repeat_n(pad_id, longest - r.len()));
        mask.extend(std::iter::repeat_n(1u8, r.len()));
        mask.extend(std::iter::repeat_n(0u8, longest - r.len()));
    }
    let b = rows.len();
    Ok(Padded {
        ids: Tensor::from_vec(ids, (b, longest), device).context(|| "batch ids".into())?,
        mask: Tensor::from_vec(mask, (b, longest), device).context(|| "batch mask".into())?,
        padded: rows.iter().any(|r| r.len() != longest),
    })
}

/// Real (unpadded) length of every row of a `[batch, seq]` 0/1 mask.
pub fn mask_lengths(mask: &Tensor) -> Result<Vec<usize>> {
    let m: Vec<Vec<f32>> = mask
        .to_dtype(DType::F32)
        .and_then(|m| m.to_vec2())
        .context(|| "reading the attention mask".into())?;
    Ok(m.iter()
        .map(|r| r.iter().filter(|&&x| x != 0.0).count())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_fills_the_shorter_rows_and_masks_them() {
        let dev = Device::Cpu;
        let p = pad_batch(&[&[5, 6, 7], &[8]], 0, &dev).unwrap();
        assert_eq!(
            p.ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7], vec![8, 0, 0]]
        );
        assert!(p.padded && p.mask_if_padded().is_some());
        assert_eq!(mask_lengths(&p.mask).unwrap(), vec![3, 1]);
        let q = pad_batch(&[&[1, 2], &[3, 4]], 9, &dev).unwrap();
        assert!(!q.padded && q.mask_if_padded().is_none());
        let e = pad_batch(&[], 0, &dev).unwrap_err().to_string();
        assert!(e.contains("empty batch"), "{e}");
    }
}
