//! `distill auto`: the smallest artifact within a quality budget (or the best quality within a
//! byte target), found by measuring candidates rather than by hand-written variants.
//!
//! The search ([`search`]) spans structural cuts with healing (the `structure:` prefixes) and
//! GGUF types chosen per tensor. Cheap proxies prune it before anything is measured on
//! validation data:
//!
//! 1. per matrix and type, the matrix encoded as the artifact will be (GPTQ by default) and the
//!    error it adds to its layer's output on the calibration tokens, `‖(W − Q) X‖²` relative
//!    to `‖W X‖²` (one calibration walk; see [`options`]);
//! 2. the per-tensor choices that minimise the summed error at each size (a Lagrangian sweep
//!    over the multiple-choice knapsack: its solutions are the convex frontier of size
//!    against error);
//! 3. each frontier point's calibration loss (the model run on training blocks);
//!
//! and only the points whose calibration loss is within `proxy_slack` × the budget are measured
//! on validation, by bisection over their sizes, encoded with the configured method (GPTQ by
//! default). See `docs/auto.md`.

mod classifier;
mod common;
mod config;
mod frontier;
mod lm;
mod options;

pub use common::{AutoOutcome, AutoSearch, Probe};
pub use config::{AutoConfig, Budget, Target};
pub use frontier::{frontier, Choice, TensorOptions};

use crate::error::CompressError;
use crate::framework::pipeline::Quality;

/// Searches for the smallest artifact of `s.base` within `s.budget` (or the best within its
/// target) and writes it to `s.out`: GGUF types for a causal LM, encodings for a classifier.
pub fn search(s: &AutoSearch) -> Result<AutoOutcome, CompressError> {
    if s.eval.quality() == Quality::Perplexity {
        lm::search(s)
    } else {
        classifier::search(s)
    }
}

#[cfg(test)]
mod tests;
