//! GGUF block quantisation written here rather than taken from candle: llama.cpp's current
//! rounding searches (candle's Q4_K path without an importance matrix still uses an older
//! one), one grid abstraction that round-to-nearest, importance-matrix search and GPTQ share,
//! and llama.cpp's importance-matrix file.

pub mod grid;
pub mod imatrix_file;
pub mod search;

pub use grid::{decode, fit, qtensor, quantize_rows, BlockGrid, Format};
