//! The `.distill` marker: a small JSON file in every folder distill writes, saying that distill
//! wrote it and (for a model folder) which entries are its own. A folder without one that holds
//! anything is the user's, and distill refuses to write into it unless told to.

use std::path::Path;

use serde::{Deserialize, Serialize};

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

    /// The marker's file contents.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a marker serialises")
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
