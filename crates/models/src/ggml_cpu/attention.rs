//! Causal self-attention as llama.cpp's CPU backend computes it without flash attention (f32 KV
//! cache): `K·q` with `ggml_vec_dot_f32`, the masked softmax, and `V·p` over V stored
//! transposed, as its V cache is — with `tinyBLAS`'s 8-lane order when the batch has two query
//! rows or more, `ggml_vec_dot_f32`'s over the cache padded to 32 positions when it has one.

use rayon::prelude::*;

use super::vec::{dot_f32, dot_lanes8, softmax_row};

/// The shape of one attention call.
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies the scores before the softmax (`kq_scale`).
    pub score_scale: f32,
    /// Keys at least this many positions back are masked (a sliding-window layer).
    pub window: Option<usize>,
}

/// Queries `q` (`n × heads·hd`, the positions after the first `past`) against every cached key
/// and value (`past + n` rows of `kv_heads·hd` each) → `n × heads·hd`.
pub fn attend(shape: &Heads, q: &[f32], k: &[f32], v: &[f32], past: usize) -> Vec<f32> {
    let Heads {
        heads,
        kv_heads,
        head_dim: hd,
        score_scale,
        window,
    } = *shape;
    let group = heads / kv_heads;
    let n = q.len() / (heads * hd);
    let total = past + n;
    // llama.cpp's cache holds a multiple of 256 positions, zero past the last; for one query
    // row, whose value product sums them all in `ggml_vec_dot_f32`'s order, padding to 32 keeps
    // every value in the same lane (longer zero runs add nothing).
    let padded = if n == 1 {
        total.next_multiple_of(32)
    } else {
        total
    };
    // V transposed per KV head: `[kv_head][dim][position]`, as llama.cpp's V cache.
    let mut vt = vec![0f32; kv_heads * hd * padded];
    for t in 0..total {
        for c in 0..kv_heads * hd {
            vt[c * padded + t] = v[t * kv_heads * hd + c];
        }
    }
    let mut out = vec![0f32; n * heads * hd];
    let one_query = |(i, out_t): (usize, &mut [f32])| {
        let t = past + i;
        // Masked keys stay in the row as −∞: their probability is exactly zero, and the
        // 8-wide blocks of the softmax sum keep llama.cpp's alignment from position 0.
        let first = window.map_or(0, |w| (t + 1).saturating_sub(w));
        let mut scores = vec![f32::NEG_INFINITY; t + 1];
        let mut probs = vec![0f32; padded.max(t + 1)];
        for h in 0..heads {
            let kvh = h / group;
            let qh = &q[(i * heads + h) * hd..(i * heads + h + 1) * hd];
            for (j, s) in scores.iter_mut().enumerate().skip(first) {
                let kj = &k[(j * kv_heads + kvh) * hd..(j * kv_heads + kvh + 1) * hd];
                *s = dot_f32(kj, qh) * score_scale;
            }
            softmax_row(&scores, &mut probs[..t + 1]);
            for (d, o) in out_t[h * hd..(h + 1) * hd].iter_mut().enumerate() {
                let row = &vt[(kvh * hd + d) * padded..(kvh * hd + d + 1) * padded];
                *o = if n == 1 {
                    dot_f32(row, &probs)
                } else {
                    dot_lanes8(&row[..t + 1], &probs[..t + 1])
                };
            }
        }
    };
    // One query row (a decoding step) is too little work to wake the pool for.
    if n == 1 {
        out.chunks_exact_mut(heads * hd)
            .enumerate()
            .for_each(one_query);
    } else {
        out.par_chunks_exact_mut(heads * hd)
            .enumerate()
            .for_each(one_query);
    }
    out
}
