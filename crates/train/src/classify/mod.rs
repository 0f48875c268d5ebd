//! Sequence classification: tokenised labelled examples, the training loop shared by
//! fine-tuning a teacher and distilling a student (cross-entropy, plus temperature-scaled KL to
//! cached teacher logits), early stopping on validation accuracy, and the metrics of a report.

mod config;
mod encode;
mod metrics;
mod trainer;

pub use config::{ClsDistillConfig, ClsTrainConfig};
pub use encode::{encode_examples, pad_batch, EncodedSet};
pub use metrics::{ClassMetrics, Confusion};
pub use trainer::{predict_logits, ClsEval, ClsOutcome, ClsTrainer, KdTargets};
