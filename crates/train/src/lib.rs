//! # distill-train
//!
//! Owns learning: data (text files, folders, JSONL and labelled sets, tokenised with the
//! teacher's tokenizer, packed into blocks with document boundaries, split and shuffled
//! deterministically from a seed), the distillation losses (forward/reverse KL at temperature T,
//! JSD, hard-label cross-entropy, hidden-state losses), the trainer loop (AdamW, warm-up and
//! cosine decay, clipping, accumulation), evaluation, checkpoints with exact resume, and metrics.
//! For classification: labelled data (class folders, JSONL, CSV; e-mail parsed by `mail-parser`),
//! stratified splits, and the classifier loop shared by fine-tuning and distillation.
//!
//! The trainer is generic over a model that returns logits (and hidden states); models know
//! nothing of checkpoints or metrics.

pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod data;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;
