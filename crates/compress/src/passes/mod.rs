//! The compression techniques, grouped by kind: [`pruning`] (structured cuts, magnitude, 2:4,
//! Wanda, SparseGPT), [`quantization`] (int8, GGUF types by round-to-nearest, importance matrix
//! or GPTQ), [`low_rank`] factorisation, weight [`sharing`], and [`heal`]ing by distillation.

pub mod heal;
pub mod low_rank;
pub mod pruning;
pub mod quantization;
pub mod sharing;
