//! The `.distill` marker: a small JSON file in every folder distill writes, saying that distill
//! wrote it and (for a model folder) which entries are its own. A folder without one that holds
//! anything is the user's, and distill refuses to write into it unless told to.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::FilesError;

/// The marker's file name.
pub const MARKER: &str = ".distill";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// `distill <version>`.
    pub written_by: String,
    /// What the folder is: `model`, `run`, `compressed`, `auto`, `cache`.
    pub kind: String,
    /// The entries distill wrote (empty for a folder whose entries distill adds over time).
    #[serde(default)]
    pub entries: Vec<String>,
}

impl Marker {
    pub fn new(kind: &str, entries: Vec<String>) -> Self {
        Self {
            written_by: format!("distill {}", env!("CARGO_PKG_VERSION")),
            kind: kind.into(),
            entries: entries.into_iter().filter(|e| e != MARKER).collect(),
        }
    }

    /// The marker of `dir`, if it has a readable one.
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
        match serde_json::from_str(&text) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "unreadable {MARKER} marker ({e}); treating the folder as not distill's");
                None
            }
        }
    }

    /// Whether `dir` holds a marker.
    pub fn is_marked(dir: &Path) -> bool {
        dir.join(MARKER).is_file()
    }

    /// Writes the marker into `dir` (atomically).
    pub fn write(&self, dir: &Path) -> Result<(), FilesError> {
        let json = serde_json::to_vec_pretty(self).expect("a marker serialises");
        crate::atomic::write_file(&dir.join(MARKER), &json)
    }

    /// The listed entries that name something directly inside the folder: a marker never
    /// makes distill touch anything outside it (`..`, `/`, separators are ignored).
    pub fn owned_entries(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| {
                let p = Path::new(e.as_str());
                let mut parts = p.components();
                matches!(
                    (parts.next(), parts.next()),
                    (Some(std::path::Component::Normal(_)), None)
                ) && e.as_str() != MARKER
            })
            .cloned()
            .collect()
    }
}

/// Marks `dir` as a folder of `kind` whose entries distill adds over time (a run folder, a
/// compression output), creating it if needed. An existing marker is kept.
pub fn mark_container(dir: &Path, kind: &str) -> Result<(), FilesError> {
    std::fs::create_dir_all(dir).map_err(FilesError::io(dir, "creating the folder"))?;
    if Marker::is_marked(dir) {
        return Ok(());
    }
    Marker::new(kind, vec![]).write(dir)
}

/// Removes the entries of `dir` named in `names` (those distill writes there), leaving
/// everything else — the marker, a lock, the user's files — where it is.
pub fn remove_entries(dir: &Path, names: &[&str]) -> Result<Vec<String>, FilesError> {
    let mut removed = vec![];
    for name in names {
        let p = dir.join(name);
        if std::fs::symlink_metadata(&p).is_ok() {
            crate::atomic::remove_owned(&p)?;
            removed.push(name.to_string());
        }
    }
    Ok(removed)
}
