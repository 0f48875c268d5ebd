//! # distill-teacher
//!
//! Everything about the teacher: where it comes from (`hf://org/name[@revision]` through
//! `hf-hub`, a local Hugging Face folder, or a `.gguf` file), how its config and tokenizer are
//! found (including a tokenizer rebuilt from GGUF metadata that matches llama.cpp token for
//! token), and frozen batched inference on the chosen device and dtype.
//!
//! ```no_run
//! use distill_teacher::{LoadOptions, Teacher, TeacherSource};
//! let teacher = Teacher::load(&TeacherSource::parse("model.gguf")?, &LoadOptions::default())?;
//! let ids = teacher.tokenizer.encode("Call me Ishmael.")?;
//! let logits = teacher.logits(&[ids])?; // [1, seq, vocab]
//! # Ok::<(), distill_teacher::TeacherError>(())
//! ```

pub mod cache_config;
pub mod device;
pub mod error;
pub mod folder;
pub mod hub;
pub mod inspect;
pub mod source;
pub mod teacher;
pub mod tokenizer;

pub use cache_config::{AnswerSettings, CacheConfig};
pub use device::{parse_device, parse_dtype, DTypeSpec, DeviceSpec};
pub use error::{Result, TeacherError};
pub use hub::HubOptions;
pub use inspect::{inspect, ModelInfo};
pub use source::TeacherSource;
pub use teacher::{
    check_finite, load_tokenizer, non_finite_tensors, pad_batch, resolve, GgufCompute, LoadOptions,
    NonFinite, Resolved, Teacher, TeacherConfig, TeacherFiles, TeacherModel,
};
pub use tokenizer::{LoadedTokenizer, TokenizerInfo};
