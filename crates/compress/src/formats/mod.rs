//! What artifacts are written as: Hugging Face folders of (compressed) safetensors
//! ([`folder`]) and GGUF files that llama.cpp loads ([`gguf`]).

pub mod folder;
pub mod gguf;
