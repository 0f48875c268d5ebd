//! The GGUF tokenizer vocabulary's shared facts: llama.cpp's token types and the split
//! patterns its pre-tokenizers name. Reading a GGUF tokenizer (the teacher) and writing one (the
//! GGUF exporter) both speak them, so they live here once.

/// llama.cpp's `llama_token_type` values, as `tokenizer.ggml.token_type` stores them.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
}

/// The split pattern of llama.cpp's `llama-bpe` (`llama3`) pre-tokenizer, as Llama 3's
/// `tokenizer.json` writes it.
pub const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split pattern of llama.cpp's `qwen2` pre-tokenizer, as Qwen2's `tokenizer.json` writes
/// it.
pub const QWEN2_SPLIT_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
