//! Errors of learning: each names the step, file or key it is about.

use std::path::{Path, PathBuf};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Files(#[from] distill_files::FilesError),
    #[error("{context}: {source}")]
    Tensor {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("the loss became {value} at step {step}; the weights before that step were saved in {checkpoint}")]
    NonFinite {
        step: usize,
        value: f32,
        checkpoint: PathBuf,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("data-parallel rank {rank}: {msg}")]
    Parallel { rank: usize, msg: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Model(Box<distill_models::ModelError>),
}

impl From<distill_models::ModelError> for TrainError {
    fn from(e: distill_models::ModelError) -> Self {
        TrainError::Model(Box::new(e))
    }
}

/// Adds context to a candle error where the context is known.
pub(crate) trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, TrainError>;
}

impl<T> Ctx<T> for candle_core::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, TrainError> {
        self.map_err(|source| TrainError::Tensor {
            context: what(),
            source,
        })
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}
