//! The teacher cache of a cross-tokenizer run: per student position with a next token, the
//! teacher's top-k (in its own ids) at the teacher position aligned with it, read from the
//! teacher run on its own tokens of the block; a position that is not aligned holds a filler
//! record that training never reads. The mapping onto the student's ids is applied when
//! training, so the cache is the teacher's, checked against both vocabularies.

use std::time::Instant;

use candle_core::{DType, Tensor};
use distill_cache::{sample_tail, top_k_row, Layout, TopKRow};
use distill_models::{Input, Model};
use distill_train::data::{BlockSet, CrossSet, CrossVocab};
use rayon::prelude::*;

use super::Encoding;
use crate::error::{Context, Error, Result};

/// Teacher rows multiplied through its head at a time.
const HEAD_CHUNK: usize = 64;

/// A cross run's side of making shards.
pub(super) struct CrossRecords<'a> {
    pub(super) lm: &'a dyn Model,
    pub(super) enc: &'a Encoding,
    pub(super) vocab: &'a CrossVocab,
}

/// Teacher work done, for its speed.
#[derive(Default)]
pub(super) struct TeacherWork {
    pub(super) seconds: f64,
    pub(super) tokens: usize,
}

impl CrossRecords<'_> {
    /// Writes the records of `blocks` (a chunk, run together) of `data` into `out`.
    pub(super) fn chunk(
        &self,
        data: &BlockSet,
        set: &CrossSet,
        blocks: &[usize],
        split: u64,
        out: &mut [u8],
    ) -> Result<TeacherWork> {
        let layout = &self.enc.layout;
        let s = data.block_size;
        let rb = layout.record_bytes;
        let filler = filler(layout, self.enc.vocab);
        for rec in out.chunks_mut(rb) {
            layout.encode(&filler, rec);
        }
        let padded = set.padded(blocks, self.vocab.teacher_pad);
        let len = padded.len;
        let (mut at, mut slots, mut labels) = (vec![], vec![], vec![]);
        for &(bi, sp, tp) in &padded.pairs {
            let b = blocks[bi];
            at.push((bi * len) as u32 + tp);
            slots.push((bi * (s - 1) + sp as usize, b, sp));
            labels.push(set.blocks[b].teacher_ids.get(tp as usize + 1).copied());
        }
        let ids = padded.ids;
        let started = Instant::now();
        let ids = Tensor::from_vec(ids, (blocks.len(), len), self.lm.device())?;
        let (x, head) = teacher_features(self.lm, &ids, &at)?;
        for start in (0..at.len()).step_by(HEAD_CHUNK) {
            let n = HEAD_CHUNK.min(at.len() - start);
            let chunk = x.narrow(0, start, n)?;
            let logits = match &head {
                Some(h) => distill_models::weights::times_transposed(&chunk, h)?,
                None => chunk,
            }
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
            let rows: Vec<(usize, Vec<u8>)> = logits
                .par_iter()
                .enumerate()
                .map(|(r, z)| {
                    let (slot, block, sp) = slots[start + r];
                    let row = aligned_row(self.enc, z, labels[start + r], split, block, sp)?;
                    let mut rec = vec![0u8; rb];
                    layout.encode(&row, &mut rec);
                    Ok((slot, rec))
                })
                .collect::<Result<_>>()?;
            for (slot, rec) in rows {
                out[slot * rb..(slot + 1) * rb].copy_from_slice(&rec);
            }
        }
        Ok(TeacherWork {
            seconds: started.elapsed().as_secs_f64(),
            tokens: blocks.len() * len,
        })
    }
}

/// The record of one aligned position: the teacher's top-k of logits `z`, with the
/// log-probability of its own next token, and its tail samples (seeded by split, block and
/// student position, so a cache made again is the same).
fn aligned_row(
    enc: &Encoding,
    z: &[f32],
    label: Option<u32>,
    split: u64,
    block: usize,
    sp: u32,
) -> Result<TopKRow> {
    let (layout, temperature) = (&enc.layout, enc.temperature);
    let mut t = top_k_row(z, layout.top_k, temperature, label).ok_or_else(|| {
        Error::Invalid(format!(
            "teacher forward: non-finite logits at block {block}, student position {sp}"
        ))
    })?;
    if layout.tail_samples > 0 {
        let seed = (split << 56) ^ ((block as u64) << 20) ^ u64::from(sp);
        t.tail = sample_tail(z, &t, temperature, layout.tail_samples, seed);
        t.tail.resize(layout.tail_samples, t.ids[0]);
    }
    Ok(t)
}

/// The teacher's features (or logits, without a dense head) `[N, ·]` at flat positions `at`
/// of `ids`, and its head.
fn teacher_features(lm: &dyn Model, ids: &Tensor, at: &[u32]) -> Result<(Tensor, Option<Tensor>)> {
    let input = Input::new(ids);
    let idx = Tensor::new(at, ids.device())?;
    let pick = |t: &Tensor| -> candle_core::Result<Tensor> {
        let (b, l, d) = t.dims3()?;
        t.reshape((b * l, d))?.index_select(&idx, 0)
    };
    Ok(match lm.run_features(&input) {
        Some(f) => {
            let f = f.context("teacher forward")?;
            (pick(&f.features)?, Some(f.head))
        }
        None => (
            pick(&lm.run(&input).context("teacher forward")?.logits)?,
            None,
        ),
    })
}

/// A valid record for a position that is not aligned (never read): the first k ids at the
/// uniform probability.
fn filler(layout: &Layout, vocab: usize) -> TopKRow {
    let k = layout.top_k;
    TopKRow {
        ids: (0..k as u32).collect(),
        logp: vec![-(vocab as f32).ln(); k],
        rest: (1.0 - k as f64 / vocab as f64).max(0.0) as f32,
        label_logp: 0.0,
        tail: vec![0; layout.tail_samples],
    }
}
