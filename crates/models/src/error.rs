//! Errors of the model crate: each one names the file, tensor or key it is about.

use std::path::PathBuf;

/// Everything that can go wrong while building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Files(#[from] distill_files::FilesError),
    /// A tensor the architecture needs is absent from the weights.
    #[error("{source_name}: missing tensor `{name}`")]
    MissingTensor { source_name: String, name: String },

    /// A tensor exists but its shape is not the one the config implies.
    #[error("{source_name}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        source_name: String,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    /// A config value is missing, of the wrong type or out of range.
    #[error("{source_name}: config key `{key}`: {msg}")]
    Config {
        source_name: String,
        key: String,
        msg: String,
    },

    /// A file is not what its extension claims (truncated, corrupted, wrong format).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    /// The architecture is not one this crate implements.
    #[error("{source_name}: unsupported architecture `{found}`; supported: {supported}")]
    UnsupportedArchitecture {
        source_name: String,
        found: String,
        supported: String,
    },

    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A tensor operation failed; `context` says which one.
    #[error("{context}: {source}")]
    Tensor {
        context: String,
        #[source]
        source: candle_core::Error,
    },
}

impl From<candle_core::Error> for ModelError {
    fn from(source: candle_core::Error) -> Self {
        ModelError::Tensor {
            context: "tensor operation".into(),
            source,
        }
    }
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

/// Adds context to a candle error at the point where the context is known.
pub(crate) trait TensorContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> TensorContext<T> for candle_core::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ModelError::Tensor {
            context: what(),
            source,
        })
    }
}
