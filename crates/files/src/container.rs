//! Folders distill adds entries to over time (a run folder, a compression output): marked as
//! distill's when made, and cleared of exactly the entries distill writes there.

use std::path::Path;

use crate::atomic::{remove_owned, write_marker};
use crate::error::FilesError;
use crate::marker::Marker;

/// Marks `dir` as a folder of `kind` whose entries distill adds over time, creating it if
/// needed. An existing marker is kept.
pub fn mark_container(dir: &Path, kind: &str) -> Result<(), FilesError> {
    std::fs::create_dir_all(dir).map_err(FilesError::io(dir, "creating the folder"))?;
    if Marker::is_marked(dir) {
        return Ok(());
    }
    write_marker(dir, &Marker::new(kind, vec![]))
}

/// Removes the entries of `dir` named in `names` (those distill writes there), leaving
/// everything else — the marker, a lock, the user's files — where it is.
pub fn remove_entries(dir: &Path, names: &[&str]) -> Result<Vec<String>, FilesError> {
    let mut removed = vec![];
    for name in names {
        let p = dir.join(name);
        if std::fs::symlink_metadata(&p).is_ok() {
            remove_owned(&p)?;
            removed.push(name.to_string());
        }
    }
    Ok(removed)
}
