//! # distill-cache
//!
//! The offline teacher cache. `distill cache-teacher` runs the teacher once over the blocks a
//! run will read and keeps, per position, the top-k token ids and log-probabilities at the
//! run's temperature, the residual mass of the other tokens, and the next token's
//! log-probability ([`layout`]: 112 bytes per position at k = 16 with 24 tail samples for a 49k vocabulary,
//! against 196 KB for the f32 logits). Training then reads those targets from memory-mapped
//! shards instead of running the teacher.
//!
//! A cache records what its distributions depend on ([`Identity`]: teacher weights, how the
//! teacher computed, tokenizer, block size, temperature; per split a digest of the data and of
//! each shard's tokens), and [`TeacherCache::check`] refuses a run that differs, naming what.
//! [`CacheBuilder`] makes a cache shard by shard and resumes after a kill.

mod bits;
pub mod builder;
pub mod error;
pub mod layout;
pub mod manifest;
pub mod reader;
pub mod select;
mod shard;

pub use builder::{holds_other_files, CacheBuilder, ShardJob, SplitRequest, ANSWERS_DIR};
pub use error::CacheError;
pub use layout::{Layout, PAD_LOGP};
pub use manifest::{blocks_digest, file_digest, vocabulary_digest, Identity, Manifest};
pub use reader::{ExpectedSplit, TeacherCache, TopK};
pub use select::{sample_tail, top_k_row, TopKRow};
