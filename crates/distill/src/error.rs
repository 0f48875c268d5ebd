//! The library's error: every lower crate's error, plus what was being done when it happened
//! (`teacher.source: …`, `compress variant `x`: …`), so the message names the key or stage.

use std::path::{Path, PathBuf};

use distill_cache::CacheError;
use distill_compress::CompressError;
use distill_files::FilesError;
use distill_models::ModelError;
use distill_student::StudentError;
use distill_teacher::TeacherError;
use distill_train::config::ConfigError;
use distill_train::data::DataError;
use distill_train::TrainError;

/// Anything that can go wrong in a job. The lower crates' errors are boxed: they are large,
/// and an error is the rare path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Teacher(Box<TeacherError>),
    #[error(transparent)]
    Student(Box<StudentError>),
    #[error(transparent)]
    Train(Box<TrainError>),
    #[error(transparent)]
    Compress(Box<CompressError>),
    #[error(transparent)]
    Model(Box<ModelError>),
    #[error(transparent)]
    Data(Box<DataError>),
    #[error(transparent)]
    Config(Box<ConfigError>),
    #[error(transparent)]
    Cache(Box<CacheError>),
    #[error(transparent)]
    Files(Box<FilesError>),
    /// A run config that does not parse or validate.
    #[error("{0}")]
    Job(String),
    /// Input that cannot be used, said in words.
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("{context}: {source}")]
    Tensor {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    /// An error with what was being done.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

macro_rules! boxed_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Error::$variant(Box::new(e))
            }
        })*
    };
}

boxed_from!(
    Teacher(TeacherError),
    Student(StudentError),
    Train(TrainError),
    Compress(CompressError),
    Model(ModelError),
    Data(DataError),
    Config(ConfigError),
    Cache(CacheError),
    Files(FilesError),
);

/// Adds what was being done to any error this crate can hold.
pub trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: what.into(),
            source: Box::new(e.into()),
        })
    }
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: what(),
            source: Box::new(e.into()),
        })
    }
}

impl From<candle_core::Error> for Error {
    fn from(source: candle_core::Error) -> Self {
        Error::Tensor {
            context: "tensor operation".into(),
            source,
        }
    }
}

/// An I/O error naming its path.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Boxes a library error for a lower crate's callback (compression evaluators, trainers).
pub(crate) fn external(e: impl Into<Error>) -> CompressError {
    CompressError::External(Box::new(e.into()))
}
