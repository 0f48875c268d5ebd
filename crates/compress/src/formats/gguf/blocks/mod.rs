//! GGUF block quantisation written here rather than taken from candle: llama.cpp's current
//! rounding searches (candle's Q4_K path without an importance matrix still uses an older
//! one), and one grid abstraction that round-to-nearest, importance-matrix search and GPTQ
//! share.

pub mod grid;
pub mod search;

pub use grid::{decode, fit, qtensor, quantize_rows, BlockGrid, Format};
