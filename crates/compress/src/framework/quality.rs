//! What a task's measurement means: validation perplexity (lower is better, speed in tokens/s)
//! for a causal LM, accuracy (higher is better, speed in messages/s) for a classifier — its
//! direction, the headline's budget rule and its report columns, in one place.

use serde::Serialize;

/// How a task's quality reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Quality {
    /// Validation perplexity; speed in tokens/s.
    #[serde(rename = "causal_lm")]
    Perplexity,
    /// Validation accuracy (0..1); speed in messages/s.
    #[serde(rename = "classification")]
    Accuracy,
}

impl Quality {
    /// The task's name in reports (`causal_lm`, `classification`).
    pub fn task(self) -> &'static str {
        match self {
            Quality::Perplexity => "causal_lm",
            Quality::Accuracy => "classification",
        }
    }

    /// Whether `a` is a better quality than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Quality::Perplexity => a < b,
            Quality::Accuracy => a > b,
        }
    }

    /// The headline's budget: within 3% of the uncompressed perplexity, or 1 point of its
    /// accuracy.
    pub fn within_headline_budget(self, q: f64, base: f64) -> bool {
        match self {
            Quality::Perplexity => q <= base * 1.03,
            Quality::Accuracy => q >= base - 0.01,
        }
    }

    /// The headline budget in words.
    pub fn headline_budget(self) -> &'static str {
        match self {
            Quality::Perplexity => "within 3% of the uncompressed validation perplexity",
            Quality::Accuracy => "within 1 point of the uncompressed validation accuracy",
        }
    }

    /// The row keys of quality and speed in JSON (`val_ppl`/`tokens_per_s`,
    /// `acc`/`msgs_per_s`).
    pub fn keys(self) -> (&'static str, &'static str) {
        match self {
            Quality::Perplexity => ("val_ppl", "tokens_per_s"),
            Quality::Accuracy => ("acc", "msgs_per_s"),
        }
    }

    /// The column headers of quality and speed in report tables.
    pub fn columns(self) -> (&'static str, &'static str) {
        match self {
            Quality::Perplexity => ("val perplexity", "tokens/s"),
            Quality::Accuracy => ("val accuracy", "msgs/s"),
        }
    }
}
