use std::path::PathBuf;

use distill_models::ModelError;

/// Errors of compression passes and exports; each names the key, file or tensor concerned.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error(transparent)]
    Files(#[from] distill_files::FilesError),
    /// A compression setting is invalid.
    #[error("{key}: {msg}")]
    Config { key: String, msg: String },
    /// The model or format is not one this pass handles.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Model(Box<ModelError>),
    #[error("{context}: {source}")]
    Tensor {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    /// An error with what was being done when it happened.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<CompressError>,
    },
    /// An error of the task layer (evaluation, training) passes call into.
    #[error(transparent)]
    External(Box<dyn std::error::Error + Send + Sync>),
}

impl From<ModelError> for CompressError {
    fn from(e: ModelError) -> Self {
        CompressError::Model(Box::new(e))
    }
}
