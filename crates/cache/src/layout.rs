//! One cached position as bytes. A record is fixed-size, so position `i` of a shard starts at
//! `i · record_bytes` and any block can be read without an index:
//!
//! ```text
//! ids   k × ⌈log₂ V⌉ bits   the teacher's top-k token ids, most probable first
//! logp  k × b bits          their log-probabilities at T, quantised linearly between
//!                           `hi` and `lo` (b = 32: the f32 values themselves)
//! tail  m × ⌈log₂ V⌉ bits   m tokens drawn from the teacher's distribution outside the
//!                           top-k (stratified, seeded by position), when m > 0
//! (padding to a byte)
//! hi, lo       f32          the largest and smallest of the k log-probabilities
//! rest         f32          1 − Σ top-k probabilities: the mass of the other V − k tokens
//! label_logp   f32          log p(next token) at T = 1 (the teacher's perplexity, exactly)
//! ```
//!
//! As in DistillKit's compressed format, ids are bit-packed at the vocabulary's width and
//! log-probabilities quantised; unlike it, the tail is not a fitted curve but either one exact
//! residual bucket (the loss over top-k + residual is the full KL when k = V) or that residual
//! mass spread over tokens sampled from the teacher's tail (`docs/teacher-cache.md`).

use serde::{Deserialize, Serialize};

use crate::select::TopKRow;

/// The log-probability of padding entries in decoded rows (a tail token drawn more than once
/// is one entry with the summed weight, and the repeats are padding): `exp` of it is 0.
pub const PAD_LOGP: f32 = -1e30;

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
    /// Tokens sampled from the tail per position (0: the tail is one residual bucket).
    #[serde(default)]
    pub tail_samples: usize,
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
        let mut l = Self {
            top_k,
            vocab_size,
            id_bits,
            logprob_bits,
            tail_samples: 0,
            record_bytes: 0,
        };
        l.record_bytes = l.bits().div_ceil(8) + TAIL;
        Ok(l)
    }

    /// This layout with `m` tail samples per position.
    pub fn with_tail_samples(mut self, m: usize) -> Result<Self, CacheError> {
        if m > 0 && self.top_k == self.vocab_size {
            return Err(CacheError::Invalid(format!(
                "tail_samples: {m}, but top_k keeps the whole vocabulary ({}): there is no tail",
                self.vocab_size
            )));
        }
        self.tail_samples = m;
        self.record_bytes = self.bits().div_ceil(8) + TAIL;
        Ok(self)
    }

    fn bits(&self) -> usize {
        self.top_k * (self.id_bits + self.logprob_bits) as usize
            + self.tail_samples * self.id_bits as usize
    }

    /// Entries per decoded row: the top-k, then the tail samples (merged, padded).
    pub fn row_width(&self) -> usize {
        self.top_k + self.tail_samples
    }

    /// Writes one position into `out` (`record_bytes` long): the row's top-k (most probable
    /// first) and its `tail_samples` tail tokens.
    pub fn encode(&self, row: &TopKRow, out: &mut [u8]) {
        let (ids, logp, rest, label_logp) = (&row.ids, &row.logp, row.rest, row.label_logp);
        debug_assert_eq!(ids.len(), self.top_k);
        debug_assert_eq!(row.tail.len(), self.tail_samples);
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
        for &id in &row.tail {
            w.put(id, self.id_bits);
        }
        w.finish();
        for (i, x) in [hi, lo, rest, label_logp].into_iter().enumerate() {
            tail[4 * i..4 * i + 4].copy_from_slice(&x.to_le_bytes());
        }
    }

    /// Reads one position: appends its k ids and log-probabilities (renormalised so that with
    /// `rest` they sum to one) and returns `(rest, label_logp)`. With tail samples, the row
    /// goes on with the sampled tokens, each distinct one carrying its share of `rest`
    /// (repeats as [`PAD_LOGP`] entries), and the returned rest is 0: the samples hold it. `Err(why)` for ids outside the
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
        let m = self.tail_samples;
        if m == 0 {
            return Ok((rest, label_logp));
        }
        let start = ids.len();
        for _ in 0..m {
            let id = r.get(self.id_bits);
            if id as usize >= self.vocab_size {
                return Err(format!(
                    "tail token id {id} outside the vocabulary of {}",
                    self.vocab_size
                ));
            }
            ids.push(id);
        }
        // Samples arrive in order of their draw (ascending cumulative probability), so repeats
        // are adjacent: the first of a run carries the run's weight.
        let share = rest as f64 / m as f64;
        let mut i = start;
        while i < ids.len() {
            let mut j = i + 1;
            while j < ids.len() && ids[j] == ids[i] {
                j += 1;
            }
            logp.push((share * (j - i) as f64).ln().max(PAD_LOGP as f64) as f32);
            logp.extend(std::iter::repeat_n(PAD_LOGP, j - i - 1));
            i = j;
        }
        Ok((0.0, label_logp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ids: &[u32], logp: &[f32], rest: f32, label_logp: f32) -> TopKRow {
        TopKRow {
            ids: ids.to_vec(),
            logp: logp.to_vec(),
            rest,
            label_logp,
            tail: vec![],
        }
    }

    #[test]
    fn tail_samples_carry_the_residual_mass_and_merge_repeats() {
        let l = Layout::new(2, 50, 32)
            .unwrap()
            .with_tail_samples(4)
            .unwrap();
        assert_eq!(l.record_bytes, (2 * (6 + 32) + 4 * 6usize).div_ceil(8) + 16);
        let mut r = row(&[3, 9], &[-0.5, -1.5], 0.2, -0.5);
        r.logp = vec![(0.6f32).ln(), (0.2f32).ln()];
        r.tail = vec![11, 11, 11, 40];
        let mut rec = vec![0u8; l.record_bytes];
        l.encode(&r, &mut rec);
        let (mut ids, mut logp) = (vec![], vec![]);
        let (rest, _) = l.decode(&rec, &mut ids, &mut logp).unwrap();
        assert_eq!(rest, 0.0);
        assert_eq!(ids, vec![3, 9, 11, 11, 11, 40]);
        let p: Vec<f32> = logp.iter().map(|l| l.exp()).collect();
        for (a, b) in p.iter().zip([0.6, 0.2, 0.15, 0.0, 0.0, 0.05]) {
            assert!((a - b).abs() < 1e-6, "{p:?}");
        }
        assert!(Layout::new(5, 5, 8).unwrap().with_tail_samples(1).is_err());
    }

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
            l.encode(&row(&ids, &logp, rest, -1.25), &mut rec);
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
        l.encode(&row(&[4, 1], &[-0.5, -1.5], 0.17, -0.5), &mut rec);
        rec[0] = 0xff; // id 7 in a vocabulary of 5
        let e = l.decode(&rec, &mut vec![], &mut vec![]).unwrap_err();
        assert!(e.contains("token id 7"), "{e}");
        let mut rec = vec![0u8; l.record_bytes];
        l.encode(&row(&[4, 1], &[-0.5, -1.5], 1.7, -0.5), &mut rec);
        assert!(l.decode(&rec, &mut vec![], &mut vec![]).is_err());
    }
}
