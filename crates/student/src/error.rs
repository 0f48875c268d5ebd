use distill_models::ModelError;

/// Errors in designing, initialising or saving a student; each names the key or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum StudentError {
    #[error(transparent)]
    Files(#[from] distill_files::FilesError),
    /// A `student:` config value is invalid.
    #[error("student.{key}: {msg}")]
    Config { key: String, msg: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{context}: {source}")]
    Tensor {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("{path}: {msg}")]
    Io {
        path: std::path::PathBuf,
        msg: String,
    },
}

pub(crate) fn cfg_err(key: &str, msg: impl Into<String>) -> StudentError {
    StudentError::Config {
        key: key.to_string(),
        msg: msg.into(),
    }
}

pub(crate) trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, StudentError>;
}

impl<T> Ctx<T> for candle_core::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, StudentError> {
        self.map_err(|source| StudentError::Tensor {
            context: what(),
            source,
        })
    }
}
