//! Decoding with a key/value cache: a batch of sequences advanced a few tokens at a time, each
//! layer's keys and values kept from one step to the next. Rows of unequal length are padded on
//! the left and their padding masked as keys; every row shares the positions of the batch, so a
//! padded row's tokens sit at shifted absolute positions but at the same distances from each
//! other — all that rotary attention (and a sliding window) sees. A finished row leaves the
//! batch ([`KvCache::keep_rows`]).

use candle_core::{Module, Tensor};

use super::Llama;
use crate::error::{ModelError, Result, TensorContext};
use crate::family::layout::LayerKind;
use crate::nn::MASK_VALUE;

/// Every layer's cached keys and values for a batch of sequences.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Whether each cached position of each row is a token (false: left padding).
    real: Vec<Vec<bool>>,
}

impl KvCache {
    /// Positions cached (the same for every row).
    pub fn len(&self) -> usize {
        self.real.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.real.len()
    }

    /// Keeps rows `keep` (indices into the current batch, in the order given): finished
    /// sequences leave the batch and cost nothing more.
    pub fn keep_rows(&mut self, keep: &[usize]) -> Result<()> {
        if let Some(&bad) = keep.iter().find(|&&r| r >= self.rows()) {
            return Err(ModelError::Config {
                source_name: "kv cache".into(),
                key: "rows".into(),
                msg: format!("row {bad} kept of a batch of {}", self.rows()),
            });
        }
        let ctx = || "kv cache: dropping finished rows".to_string();
        if let Some((k, _)) = self.layers.iter().flatten().next() {
            let idx = Tensor::new(
                keep.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                k.device(),
            )
            .context(ctx)?;
            for (k, v) in self.layers.iter_mut().flatten() {
                *k = k.index_select(&idx, 0).context(ctx)?;
                *v = v.index_select(&idx, 0).context(ctx)?;
            }
        }
        self.real = keep.iter().map(|&r| self.real[r].clone()).collect();
        Ok(())
    }
}

impl Llama {
    /// An empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: vec![None; self.blocks.len()],
            real: vec![],
        }
    }

    /// Runs `rows` — the next tokens of each sequence of the batch, shorter rows padded on the
    /// left — after the positions `cache` holds, caches their keys and values, and returns
    /// the logits at the batch's last position `[b, vocab]` (f32).
    pub fn step(&self, rows: &[&[u32]], cache: &mut KvCache) -> Result<Tensor> {
        let s = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let cached = cache.len();
        self.check_step(rows, s, cached, cache.rows())?;
        let ctx = |what: &str| format!("decoding step ({what})");
        let mut ids = Vec::with_capacity(rows.len() * s);
        if cache.real.is_empty() {
            cache.real = vec![vec![]; rows.len()];
        }
        for (r, row) in rows.iter().enumerate() {
            let pad = s - row.len();
            ids.extend(std::iter::repeat_n(0u32, pad));
            ids.extend_from_slice(row);
            let real = &mut cache.real[r];
            real.extend(std::iter::repeat_n(false, pad));
            real.extend(std::iter::repeat_n(true, row.len()));
        }
        let ids = Tensor::from_vec(ids, (rows.len(), s), &self.device).context(|| ctx("ids"))?;
        let mut x = self.embed_ids(&ids)?;
        let global = self
            .step_bias(&cache.real, cached, s, None)
            .context(|| ctx("mask"))?;
        for (i, block) in self.blocks.iter().enumerate() {
            let (rope, bias) = match block.kind {
                LayerKind::Global => (&self.rope, global.clone()),
                LayerKind::Sliding { window } => (
                    self.rope_local.as_ref().unwrap_or(&self.rope),
                    self.step_bias(&cache.real, cached, s, Some(window))
                        .context(|| ctx("mask"))?,
                ),
            };
            x = block
                .forward_cached(&x, rope, &bias, &mut cache.layers[i])
                .context(|| format!("decoding step (layer {i})"))?;
        }
        let last = x.narrow(1, s - 1, 1).context(|| ctx("last position"))?;
        let h = self.norm.forward(&last).context(|| ctx("final norm"))?;
        self.lm_head
            .forward(&h)
            .and_then(|l| l.squeeze(1))
            .and_then(|l| l.to_dtype(candle_core::DType::F32))
            .context(|| ctx("lm head"))
    }

    /// Refuses a step the cache cannot take: no tokens, another batch, past the positions.
    fn check_step(&self, rows: &[&[u32]], s: usize, cached: usize, batch: usize) -> Result<()> {
        let refuse = |key: &str, msg: String| {
            Err(ModelError::Config {
                source_name: "decoding".into(),
                key: key.into(),
                msg,
            })
        };
        if rows.is_empty() || s == 0 {
            return refuse("tokens", "a step needs at least one token per batch".into());
        }
        if batch != 0 && batch != rows.len() {
            return refuse(
                "batch",
                format!("{} rows for a cache of {batch}", rows.len()),
            );
        }
        if cached + s > self.rope.max_positions() {
            return refuse(
                "max_position_embeddings",
                format!(
                    "{} positions exceed the model's {}",
                    cached + s,
                    self.rope.max_positions()
                ),
            );
        }
        Ok(())
    }

    /// The additive bias `[b, 1, s, cached + s]` of a step: a query sees real keys at or
    /// before its position (within `window` of it, for a sliding layer), and itself.
    fn step_bias(
        &self,
        real: &[Vec<bool>],
        cached: usize,
        s: usize,
        window: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let l = cached + s;
        let mut v = Vec::with_capacity(real.len() * s * l);
        for row in real {
            for i in 0..s {
                let at = cached + i;
                v.extend((0..l).map(|j| {
                    let seen = j == at || (row[j] && j <= at && window.is_none_or(|w| at - j < w));
                    if seen {
                        0.0
                    } else {
                        MASK_VALUE
                    }
                }));
            }
        }
        Tensor::from_vec(v, (real.len(), 1, s, l), &self.device)
    }
}
