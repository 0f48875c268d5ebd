//! Errors of teacher loading: each names the source, file, key or tensor it is about.

use std::path::PathBuf;

use distill_models::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error(transparent)]
    Files(#[from] distill_files::FilesError),
    /// The model files themselves are wrong (missing tensor, bad shape, bad config, ...).
    #[error(transparent)]
    Model(#[from] ModelError),

    /// Weight files hold NaN or infinite values.
    #[error("{source_name}: {} hold{} NaN or infinite values; the weights are damaged (fetch or export them again)", name_list(.tensors), if .tensors.len() == 1 { "s" } else { "" })]
    NonFinite {
        source_name: String,
        tensors: Vec<String>,
    },

    /// The source string could not be understood.
    #[error("teacher source `{source_spec}`: {msg}")]
    Source { source_spec: String, msg: String },

    /// A path that should exist does not.
    #[error("{path}: no such file or directory")]
    NotFound { path: PathBuf },

    /// A Hugging Face Hub request failed.
    #[error("hub `{repo}`{}: {msg}", revision_suffix(.revision))]
    Hub {
        repo: String,
        revision: String,
        msg: String,
    },

    /// The tokenizer could not be read or built.
    #[error("{source_name}: tokenizer: {msg}")]
    Tokenizer { source_name: String, msg: String },

    /// A device that cannot be used here.
    #[error("device `{spec}`: {msg}")]
    Device { spec: String, msg: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn revision_suffix(rev: &str) -> String {
    if rev == "main" {
        String::new()
    } else {
        format!(" at revision `{rev}`")
    }
}

pub type Result<T> = std::result::Result<T, TeacherError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TeacherError {
    let path = path.into();
    move |source| TeacherError::Io { path, source }
}

/// `tensor `a``, `tensors `a`, `b` and 3 more`.
pub fn name_list(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(5).map(|n| format!("`{n}`")).collect();
    let more = names.len().saturating_sub(5);
    let noun = if names.len() == 1 {
        "tensor"
    } else {
        "tensors"
    };
    if more > 0 {
        format!("{noun} {} and {more} more", shown.join(", "))
    } else {
        format!("{noun} {}", shown.join(", "))
    }
}
