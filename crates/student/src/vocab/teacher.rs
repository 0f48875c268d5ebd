//! The teacher as a trimmed-vocabulary student sees it: inputs in kept ids, outputs over the
//! kept ids only, and its weights with the vocabulary rows of the kept ids (for initialisation).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::Init;
use distill_models::{Features, Input, Matrix, Model, ModelError, ModelOutput, WeightSource};

fn tensor_err(what: &'static str) -> impl FnOnce(candle_core::Error) -> ModelError {
    move |source| ModelError::Tensor {
        context: format!("vocabulary trimming ({what})"),
        source,
    }
}

/// A model over the full vocabulary, run on kept ids and scored over kept ids: inputs are
/// mapped back to full ids, logits (or the dense head) are restricted to the kept rows. A
/// softmax over them is the full model's distribution renormalised over the kept tokens.
pub struct RestrictedModel<'a> {
    inner: &'a dyn Model,
    /// Full ids of the kept tokens, by new id (u32, on the model's device).
    kept: Tensor,
    head: Option<Tensor>,
}

impl<'a> RestrictedModel<'a> {
    pub fn new(inner: &'a dyn Model, kept: &[u32]) -> distill_models::Result<Self> {
        let kept = Tensor::new(kept, inner.device()).map_err(tensor_err("kept ids"))?;
        let head = inner
            .dense_head()
            .map(|h| h.index_select(&kept, 0))
            .transpose()
            .map_err(tensor_err("head rows"))?;
        Ok(Self { inner, kept, head })
    }

    fn full_ids(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.kept
            .index_select(&ids.flatten_all()?, 0)?
            .reshape(ids.shape())
    }
}

impl Model for RestrictedModel<'_> {
    fn run(&self, input: &Input) -> distill_models::Result<ModelOutput> {
        let ids = self.full_ids(input.ids).map_err(tensor_err("input ids"))?;
        let out = self.inner.run(&Input {
            ids: &ids,
            ..*input
        })?;
        Ok(ModelOutput {
            logits: out
                .logits
                .index_select(&self.kept, D::Minus1)
                .map_err(tensor_err("logits"))?,
            hidden_states: out.hidden_states,
        })
    }

    fn dense_head(&self) -> Option<&Tensor> {
        self.head.as_ref()
    }

    fn run_features(&self, input: &Input) -> Option<distill_models::Result<Features>> {
        let head = self.head.clone()?;
        let ids = match self.full_ids(input.ids) {
            Ok(ids) => ids,
            Err(e) => return Some(Err(tensor_err("input ids")(e))),
        };
        let f = self.inner.run_features(&Input {
            ids: &ids,
            ..*input
        })?;
        Some(f.map(|f| Features { head, ..f }))
    }

    fn hidden_size(&self) -> usize {
        self.inner.hidden_size()
    }

    fn device(&self) -> &Device {
        self.inner.device()
    }
}

/// A weight source whose vocabulary tensors (`names`: the embedding, an untied head) hold the
/// rows of the kept ids only; every other tensor passes through.
pub struct RowSelectedWeights<'a> {
    inner: &'a dyn WeightSource,
    kept: Tensor,
    full_rows: usize,
    names: Vec<String>,
}

impl<'a> RowSelectedWeights<'a> {
    pub fn new(
        inner: &'a dyn WeightSource,
        kept: &[u32],
        full_rows: usize,
        names: &[&str],
    ) -> distill_models::Result<Self> {
        Ok(Self {
            kept: Tensor::new(kept, inner.device()).map_err(tensor_err("kept ids"))?,
            inner,
            full_rows,
            names: names.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn is_vocab(&self, name: &str, rows: usize) -> bool {
        rows == self.kept.elem_count() && self.names.iter().any(|n| n == name)
    }
}

impl WeightSource for RowSelectedWeights<'_> {
    fn source_name(&self) -> String {
        format!(
            "{} (vocabulary rows of the kept ids)",
            self.inner.source_name()
        )
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn dtype(&self) -> DType {
        self.inner.dtype()
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn tensor(&self, name: &str, shape: &[usize], init: Init) -> distill_models::Result<Tensor> {
        match shape.split_first() {
            Some((&rows, rest)) if self.is_vocab(name, rows) => {
                let full: Vec<usize> = std::iter::once(self.full_rows)
                    .chain(rest.iter().copied())
                    .collect();
                self.inner
                    .tensor(name, &full, init)?
                    .index_select(&self.kept, 0)
                    .map_err(tensor_err("vocabulary rows"))
            }
            _ => self.inner.tensor(name, shape, init),
        }
    }
    fn matrix(
        &self,
        name: &str,
        out: usize,
        inp: usize,
        init: Init,
    ) -> distill_models::Result<Matrix> {
        if self.is_vocab(name, out) {
            return Ok(Matrix::Dense(self.tensor(name, &[out, inp], init)?));
        }
        self.inner.matrix(name, out, inp, init)
    }
}
