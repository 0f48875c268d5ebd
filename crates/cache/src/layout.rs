//! One cached position as bytes. A record is fixed-size, so position `i` of a shard starts at
//! `i · record_bytes` and any block can be read without an index:
//!
//! ```text
//! ids   k × ⌈log₂ V⌉ bits   the teacher's top-k token ids, most probable first
//! logp  k × b bits          their log-probabilities at T, quantised linearly between
//!                           `hi` and `lo` (b = 32: the f32 values themselves)
//! (padding to a byte)
//! hi, lo       f32          the largest and smallest of the k log-probabilities
//! rest         f32          1 − Σ top-k probabilities: the mass of the other V − k tokens
//! label_logp   f32          log p(next token) at T = 1 (the teacher's perplexity, exactly)
//! ```
//!
//! As in DistillKit's compressed format, ids are bit-packed at the vocabulary's width and
//! log-probabilities quantised; unlike it, the tail is one exact residual bucket, not a fitted
//! curve, so the loss over top-k + residual is the full KL when k = V (`docs/teacher-cache.md`).

use serde::{Deserialize, Serialize};

use crate::bits::{BitReader, BitWriter};
use crate::error::CacheError;

/// Bytes after the packed bits: `hi`, `lo`, `rest`, `label_logp`.
const TAIL: usize = 16;

/// The shape of a cache's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub top_k: usize,
    pub vocab_size: usize,
    pub id_bits: u32,
    /// 2..=16 (linear quantisation) or 32 (f32 as is).
    pub logprob_bits: u32,
    pub record_bytes: usize,
}

impl Layout {
    /// The layout for `top_k` of a `vocab_size` vocabulary at `logprob_bits`.
    pub fn new(top_k: usize, vocab_size: usize, logprob_bits: u32) -> Result<Self, CacheError> {
        if vocab_size < 2 {
            return Err(CacheError::Invalid(format!(
                "vocabulary of {vocab_size}: nothing to cache"
            )));
        }
        if top_k == 0 || top_k > vocab_size {
            return Err(CacheError::Invalid(format!(
                "top_k: {top_k} must be between 1 and the teacher's vocabulary size ({vocab_size})"
            )));
        }
        if !(2..=16).contains(&logprob_bits) && logprob_bits != 32 {
            return Err(CacheError::Invalid(format!(
                "logprob_bits: {logprob_bits}; expected 2 to 16 (quantised) or 32 (exact f32)"
            )));
        }
        let id_bits = usize::BITS - (vocab_size - 1).leading_zeros();
        let bits = top_k * (id_bits + logprob_bits) as usize;
        Ok(Self {
            top_k,
            vocab_size,
            id_bits,
            logprob_bits,
            record_bytes: bits.div_ceil(8) + TAIL,
        })
    }

    /// Writes one position into `out` (`record_bytes` long). `ids` and `logp` are the top-k,
    /// most probable first.
    pub fn encode(&self, ids: &[u32], logp: &[f32], rest: f32, label_logp: f32, out: &mut [u8]) {
        debug_assert_eq!(ids.len(), self.top_k);
        debug_assert_eq!(out.len(), self.record_bytes);
        let (hi, lo) = (logp[0], logp[self.top_k - 1]);
        let split = self.record_bytes - TAIL;
        let (bits, tail) = out.split_at_mut(split);
        let mut w = BitWriter::new(bits);
        for &id in ids {
            w.put(id, self.id_bits);
        }
        if self.logprob_bits == 32 {
            for &l in logp {
                w.put(l.to_bits(), 32);
            }
        } else {
            let levels = ((1u32 << self.logprob_bits) - 1) as f32;
            let scale = if hi > lo { levels / (hi - lo) } else { 0.0 };
            for &l in logp {
                let q = ((l - lo) * scale).round().clamp(0.0, levels);
                w.put(q as u32, self.logprob_bits);
            }
        }
        w.finish();
        for (i, x) in [hi, lo, rest, label_logp].into_iter().enumerate() {
            tail[4 * i..4 * i + 4].copy_from_slice(&x.to_le_bytes());
        }
    }

    /// Reads one position: appends its k ids and log-probabilities (renormalised so that with
    /// `rest` they sum to one) and returns `(rest, label_logp)`. `Err(why)` for ids outside the
    /// vocabulary or values that are not probabilities (a corrupt record).
    pub fn decode(
        &self,
        record: &[u8],
        ids: &mut Vec<u32>,
        logp: &mut Vec<f32>,
    ) -> Result<(f32, f32), String> {
        let split = self.record_bytes - TAIL;
        let f = |i: usize| {
            let b = &record[split + 4 * i..split + 4 * i + 4];
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        let (hi, lo, rest, label_logp) = (f(0), f(1), f(2), f(3));
        if !(hi <= 0.0 && lo <= hi && (0.0..=1.0).contains(&rest) && label_logp <= 0.0) {
            return Err(format!(
                "log-probabilities [{lo}, {hi}], residual mass {rest}, label log-probability {label_logp}"
            ));
        }
        let mut r = BitReader::new(&record[..split]);
        let first = ids.len();
        for _ in 0..self.top_k {
            let id = r.get(self.id_bits);
            if id as usize >= self.vocab_size {
                return Err(format!(
                    "token id {id} outside the vocabulary of {}",
                    self.vocab_size
                ));
            }
            ids.push(id);
        }
        if self.logprob_bits == 32 {
            for _ in 0..self.top_k {
                logp.push(f32::from_bits(r.get(32)));
            }
        } else {
            let step = (hi - lo) / ((1u32 << self.logprob_bits) - 1) as f32;
            for _ in 0..self.top_k {
                logp.push(lo + r.get(self.logprob_bits) as f32 * step);
            }
        }
        let row = &mut logp[first..];
        if row.iter().any(|l| !l.is_finite()) {
            return Err("non-finite log-probability".into());
        }
        // Quantisation moves the top-k mass a little; restore Σ p = 1 − rest exactly.
        let mass: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
        if mass > 0.0 && rest < 1.0 {
            let shift = (((1.0 - rest as f64) / mass).ln()) as f32;
            for l in row.iter_mut() {
                *l += shift;
            }
        }
        Ok((rest, label_logp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_size_follows_the_vocabulary_width() {
        let l = Layout::new(32, 49_152, 8).unwrap();
        assert_eq!(l.id_bits, 16);
        assert_eq!(l.record_bytes, 32 * 2 + 32 + 16);
        assert_eq!(Layout::new(3, 5, 4).unwrap().id_bits, 3);
        assert_eq!(Layout::new(1, 2, 2).unwrap().id_bits, 1);
    }

    #[test]
    fn k_larger_than_the_vocabulary_and_odd_bit_widths_are_errors() {
        let e = Layout::new(50_000, 49_152, 8).unwrap_err().to_string();
        assert!(e.contains("top_k: 50000") && e.contains("49152"), "{e}");
        assert!(Layout::new(0, 10, 8).is_err());
        let e = Layout::new(4, 10, 20).unwrap_err().to_string();
        assert!(e.contains("logprob_bits: 20"), "{e}");
    }

    #[test]
    fn exact_records_round_trip_and_quantised_ones_stay_close() {
        let ids = [7u32, 0, 99, 3];
        let logp = [-0.3f32, -1.9, -2.5, -4.0];
        let mass: f32 = logp.iter().map(|l| l.exp()).sum();
        let rest = 1.0 - mass;
        for bits in [32, 8, 4] {
            let l = Layout::new(4, 100, bits).unwrap();
            let mut rec = vec![0u8; l.record_bytes];
            l.encode(&ids, &logp, rest, -1.25, &mut rec);
            let (mut i, mut p) = (vec![], vec![]);
            let (r, label) = l.decode(&rec, &mut i, &mut p).unwrap();
            assert_eq!(i, ids);
            assert_eq!((r, label), (rest, -1.25));
            let tol = if bits == 32 {
                1e-6
            } else {
                3.7 / ((1 << bits) - 1) as f32
            };
            for (a, b) in p.iter().zip(&logp) {
                assert!((a - b).abs() <= tol, "{bits} bits: {a} vs {b}");
            }
            let total: f32 = p.iter().map(|l| l.exp()).sum::<f32>() + r;
            assert!((total - 1.0).abs() < 1e-5, "{bits} bits: mass {total}");
        }
    }

    #[test]
    fn corrupt_records_are_errors_not_values() {
        let l = Layout::new(2, 5, 8).unwrap();
        let mut rec = vec![0u8; l.record_bytes];
        l.encode(&[4, 1], &[-0.5, -1.5], 0.17, -0.5, &mut rec);
        rec[0] = 0xff; // id 7 in a vocabulary of 5
        let e = l.decode(&rec, &mut vec![], &mut vec![]).unwrap_err();
        assert!(e.contains("token id 7"), "{e}");
        let mut rec = vec![0u8; l.record_bytes];
        l.encode(&[4, 1], &[-0.5, -1.5], 1.7, -0.5, &mut rec);
        assert!(l.decode(&rec, &mut vec![], &mut vec![]).is_err());
    }
}
