//! Errors: each names the path and what was expected of it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The file system refused an operation.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A path distill will not write to or read from, and why.
    #[error("{}: {why}", path.display())]
    Refused { path: PathBuf, why: String },
    /// Another process writes there.
    #[error("{} is in use by {holder}; wait for it to finish or stop it (a lock left by a process that has ended is taken over)", path.display())]
    Locked { path: PathBuf, holder: String },
}

impl FilesError {
    pub(crate) fn io(
        path: &std::path::Path,
        what: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| FilesError::Io { path, what, source }
    }

    pub(crate) fn refused(path: &std::path::Path, why: impl Into<String>) -> Self {
        FilesError::Refused {
            path: path.to_path_buf(),
            why: why.into(),
        }
    }
}
