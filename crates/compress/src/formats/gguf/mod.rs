//! GGUF: the export of a Llama-family model ([`export`]), its tokenizer metadata built from a
//! `tokenizer.json` ([`tokenizer`]), llama.cpp's block formats and rounding searches
//! ([`blocks`]) and its importance-matrix file ([`imatrix`]).

pub mod blocks;
pub mod export;
pub mod imatrix;
pub mod tokenizer;
