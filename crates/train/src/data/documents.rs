//! Reading documents: a text file is one document, a folder is one document per matching file,
//! a JSONL file is one document per line (its `text` field).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors about training data; each names the file (and line) concerned.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{path}:{line}: {msg}")]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{0}")]
    Other(String),
}

/// One unit of text that is never split across train and validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Where it came from (`file` or `file:line`).
    pub id: String,
    /// Its text; a conversation's contents, one turn per line.
    pub text: String,
    /// A conversation's turns (`data.source.kind: chat`), rendered through the chat template
    /// when it is tokenised.
    pub turns: Option<Vec<Turn>>,
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
    /// An answer cut short (at a token budget): the turn's end-of-turn marker is not a target,
    /// so the student is not taught to end where the answer was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

/// Where documents come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DocumentSource {
    /// Plain-text files; each file is one document.
    Text { paths: Vec<PathBuf> },
    /// Every file under `path` whose name matches `pattern` (a glob such as `chapter_*.txt`).
    Folder {
        path: PathBuf,
        #[serde(default = "default_pattern")]
        pattern: String,
    },
    /// JSON lines; the `field` of each object (default `text`) is one document.
    Jsonl {
        paths: Vec<PathBuf>,
        #[serde(default = "default_field")]
        field: String,
    },
    /// Conversations, one per JSON line: `{"messages": [{"role", "content"}, …]}` or
    /// `{"prompt", "completion"}`. Rendered through the chat template; the loss counts the
    /// assistant's tokens only.
    Chat { paths: Vec<PathBuf> },
    /// Prompts for the teacher to answer, one per JSON line: `{"messages": [...]}` ending in a
    /// user turn, or `{"prompt": TEXT}`. `distill cache-teacher` with `teacher.cache.generate`
    /// writes the answers; the run trains on the conversations they complete.
    Prompts { paths: Vec<PathBuf> },
}

impl DocumentSource {
    /// Whether its documents are conversations.
    pub fn is_chat(&self) -> bool {
        matches!(
            self,
            DocumentSource::Chat { .. } | DocumentSource::Prompts { .. }
        )
    }

    /// Whether its documents are prompts waiting for the teacher's answers.
    pub fn is_prompts(&self) -> bool {
        matches!(self, DocumentSource::Prompts { .. })
    }

    /// The files or folders the source reads.
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            DocumentSource::Text { paths }
            | DocumentSource::Jsonl { paths, .. }
            | DocumentSource::Chat { paths }
            | DocumentSource::Prompts { paths } => paths.iter().map(PathBuf::as_path).collect(),
            DocumentSource::Folder { path, .. } => vec![path.as_path()],
        }
    }
}

fn default_pattern() -> String {
    "*.txt".into()
}
fn default_field() -> String {
    "text".into()
}

/// Refuses a data file that is not a regular file: a FIFO or a device such as `/dev/zero` may
/// never end, and reading it would grow memory until something kills the process.
pub(crate) fn check_regular(path: &Path) -> Result<(), DataError> {
    distill_files::input::regular_file(path)
        .map(|_| ())
        .map_err(|e| DataError::File {
            path: path.to_path_buf(),
            msg: match e {
                distill_files::FilesError::Refused { why, .. } => why,
                other => other.to_string(),
            },
        })
}

pub(crate) fn read(path: &Path) -> Result<String, DataError> {
    check_regular(path)?;
    let bytes = std::fs::read(path).map_err(|e| DataError::File {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    String::from_utf8(bytes).map_err(|e| DataError::File {
        path: path.to_path_buf(),
        msg: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })
}

/// Sort key that orders `chapter_2` before `chapter_10`.
pub(crate) fn natural_key(p: &Path) -> Vec<(String, u64)> {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = vec![];
    let mut text = String::new();
    let mut num = String::new();
    for c in name.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((std::mem::take(&mut text), num.parse().unwrap_or(u64::MAX)));
                num.clear();
            }
            text.push(c);
        }
    }
    out.push((text, num.parse().unwrap_or(0)));
    out
}
