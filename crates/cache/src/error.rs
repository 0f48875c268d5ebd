//! Errors: each names the cache file and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Files(#[from] distill_files::FilesError),
    #[error("{0}")]
    Invalid(String),
    #[error("{}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a teacher cache: {why}", dir.display())]
    NotACache { dir: PathBuf, why: String },
    #[error("{}: the cache is incomplete ({done} of {total} shards); run `distill cache-teacher` on the run file again to finish it", dir.display())]
    Incomplete {
        dir: PathBuf,
        done: usize,
        total: usize,
    },
    #[error("{}: corrupt shard: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("{}: the cache was made for {what} {cached}, this run has {expected}; build a cache for this run with `distill cache-teacher`", path.display())]
    Mismatch {
        path: PathBuf,
        what: String,
        cached: String,
        expected: String,
    },
    #[error("{}: the cache is shorter than the data: it holds {cached} of the {needed} {split} blocks this run reads (block {first_missing} is missing); build it for this run with `distill cache-teacher`", path.display())]
    Shorter {
        path: PathBuf,
        split: String,
        cached: usize,
        needed: usize,
        first_missing: usize,
    },
}

impl CacheError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let (path, what) = (path.into(), what.into());
        move |source| CacheError::Io { path, what, source }
    }
}
