//! Sequence classification data: labelled examples tokenised with the tokenizer's own special
//! tokens and cut to a length, and the accuracy, per-class F1 and confusion matrix of a report.
//! The training itself is [`crate::tasks::Classification`].

mod encode;
mod metrics;

pub use encode::{encode_examples, EncodedSet};
pub use metrics::{ClassMetrics, Confusion};
