//! Choosing the next token from a row of logits: greedy (temperature 0), or drawn at a
//! temperature from the top-k and/or top-p (nucleus) of the distribution, from a seeded
//! generator so that a run is reproducible.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How tokens are chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0: always the most probable token (greedy).
    pub temperature: f64,
    /// Draw only among the `k` most probable tokens.
    pub top_k: Option<usize>,
    /// Draw only among the most probable tokens whose probabilities sum to `p`.
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

/// A [`Sampling`] with its generator.
pub struct Sampler {
    cfg: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// The sampler of one sequence (`stream` keeps sequences of one seed apart, so a row's
    /// tokens do not depend on the others in its batch).
    pub fn new(cfg: &Sampling, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(stream);
        Self {
            cfg: cfg.clone(),
            rng,
        }
    }

    /// The next token of `logits` (one row over the vocabulary).
    pub fn next(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.cfg.temperature;
        let k = self
            .cfg
            .top_k
            .unwrap_or(logits.len())
            .clamp(1, logits.len());
        let mut order = crate::ops::rows::largest(logits, k);
        let top = f64::from(logits[order[0] as usize]);
        let mut p: Vec<f64> = order
            .iter()
            .map(|&i| ((f64::from(logits[i as usize]) - top) * inv_t).exp())
            .collect();
        let total: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= total);
        if let Some(top_p) = self.cfg.top_p {
            let mut mass = 0.0;
            let keep = p
                .iter()
                .position(|&x| {
                    mass += x;
                    mass >= top_p
                })
                .map_or(p.len(), |i| i + 1);
            p.truncate(keep);
            order.truncate(keep);
        }
        let total: f64 = p.iter().sum();
        let mut u = self.rng.random::<f64>() * total;
        for (i, &x) in p.iter().enumerate() {
            if u < x {
                return order[i];
            }
            u -= x;
        }
        *order.last().expect("at least one token")
    }
}

/// The most probable token (the lowest id among ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &z) in logits.iter().enumerate() {
        if z > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_of_the_most_probable() {
        let mut s = Sampler::new(&Sampling::default(), 0);
        assert_eq!(s.next(&[0.1, 2.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn draws_follow_the_distribution_and_the_seed() {
        let logits = [0.0f32, 1.0, 2.0, -20.0];
        let cfg = Sampling {
            temperature: 1.0,
            seed: 7,
            ..Sampling::default()
        };
        let draw = |stream| {
            let mut s = Sampler::new(&cfg, stream);
            (0..4000).map(|_| s.next(&logits)).collect::<Vec<u32>>()
        };
        let a = draw(0);
        assert_eq!(a, draw(0), "the same seed and stream draw the same tokens");
        assert_ne!(a, draw(1), "another stream draws others");
        let share = |t| a.iter().filter(|&&x| x == t).count() as f64 / a.len() as f64;
        let z: f64 = [0.0f64, 1.0, 2.0].iter().map(|x| x.exp()).sum();
        for t in 0..3 {
            let want = (t as f64).exp() / z;
            assert!(
                (share(t) - want).abs() < 0.03,
                "token {t}: {} vs {want}",
                share(t)
            );
        }
        assert_eq!(share(3), 0.0);
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [3.0f32, 2.9, 0.0, -1.0];
        let mut k = Sampler::new(
            &Sampling {
                temperature: 1.0,
                top_k: Some(2),
                ..Sampling::default()
            },
            0,
        );
        assert!((0..500).all(|_| k.next(&logits) < 2));
        // The top two hold about 0.9 of the mass: p = 0.5 keeps the first alone.
        let mut p = Sampler::new(
            &Sampling {
                temperature: 1.0,
                top_p: Some(0.5),
                ..Sampling::default()
            },
            0,
        );
        assert!((0..500).all(|_| p.next(&logits) == 0));
    }
}
