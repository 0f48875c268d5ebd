//! Loading a [`DocumentSource`]: text files, folders, JSONL lines, or conversations.

use std::path::PathBuf;

use super::chat::{read_conversations, read_prompts};
use super::documents::{natural_key, read, DataError, Document, DocumentSource};

/// Loads every document of `source`, in a stable order. Empty documents are skipped; no
/// documents at all is an error.
pub fn load_documents(source: &DocumentSource) -> Result<Vec<Document>, DataError> {
    let mut docs = vec![];
    match source {
        DocumentSource::Text { paths } => {
            for p in paths {
                docs.push(Document {
                    id: p.display().to_string(),
                    text: read(p)?,
                    turns: None,
                });
            }
        }
        DocumentSource::Folder { path, pattern } => {
            if !path.is_dir() {
                return Err(DataError::File {
                    path: path.clone(),
                    msg: "not a folder".into(),
                });
            }
            let full = path.join(pattern);
            let mut files: Vec<PathBuf> = glob::glob(&full.to_string_lossy())
                .map_err(|e| DataError::Other(format!("data pattern `{pattern}`: {e}")))?
                .filter_map(|r| r.ok())
                .filter(|p| p.is_file())
                .collect();
            files.sort_by_key(|p| natural_key(p));
            if files.is_empty() {
                return Err(DataError::File {
                    path: path.clone(),
                    msg: format!("no file matches `{pattern}`"),
                });
            }
            for p in files {
                docs.push(Document {
                    id: p.display().to_string(),
                    text: read(&p)?,
                    turns: None,
                });
            }
        }
        DocumentSource::Jsonl { paths, field } => {
            for p in paths {
                let text = read(p)?;
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let v: serde_json::Value =
                        serde_json::from_str(line).map_err(|e| DataError::Line {
                            path: p.clone(),
                            line: i + 1,
                            msg: format!("not valid JSON: {e}"),
                        })?;
                    let t =
                        v.get(field)
                            .and_then(|t| t.as_str())
                            .ok_or_else(|| DataError::Line {
                                path: p.clone(),
                                line: i + 1,
                                msg: format!("expected a string field `{field}`"),
                            })?;
                    docs.push(Document {
                        id: format!("{}:{}", p.display(), i + 1),
                        text: t.to_string(),
                        turns: None,
                    });
                }
            }
        }
        DocumentSource::Chat { paths } => {
            for p in paths {
                docs.extend(read_conversations(p)?);
            }
        }
        DocumentSource::Prompts { paths } => {
            for p in paths {
                docs.extend(read_prompts(p)?);
            }
        }
    }
    docs.retain(|d| !d.text.trim().is_empty());
    if docs.is_empty() {
        return Err(DataError::Other(format!(
            "no non-empty documents in {}",
            describe(source)
        )));
    }
    Ok(docs)
}

fn describe(source: &DocumentSource) -> String {
    match source {
        DocumentSource::Text { paths }
        | DocumentSource::Jsonl { paths, .. }
        | DocumentSource::Chat { paths }
        | DocumentSource::Prompts { paths } => paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        DocumentSource::Folder { path, pattern } => format!("{}/{pattern}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_text_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        for (n, t) in [
            ("chapter_10.txt", "ten"),
            ("chapter_2.txt", "two"),
            ("notes.md", "x"),
            ("chapter_3.txt", "  "),
        ] {
            std::fs::write(dir.path().join(n), t).unwrap();
        }
        let docs = load_documents(&DocumentSource::Folder {
            path: dir.path().into(),
            pattern: "chapter_*.txt".into(),
        })
        .unwrap();
        assert_eq!(
            docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
            ["two", "ten"]
        );

        let j = dir.path().join("d.jsonl");
        std::fs::write(&j, "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n").unwrap();
        let docs = load_documents(&DocumentSource::Jsonl {
            paths: vec![j.clone()],
            field: "text".into(),
        })
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert!(docs[1].id.ends_with("d.jsonl:3"));

        std::fs::write(&j, "{\"text\": \"a\"}\n{\"body\": 1}\n").unwrap();
        let e = load_documents(&DocumentSource::Jsonl {
            paths: vec![j.clone()],
            field: "text".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("d.jsonl:2") && e.contains("`text`"), "{e}");
        std::fs::write(&j, "not json\n").unwrap();
        let e = load_documents(&DocumentSource::Jsonl {
            paths: vec![j],
            field: "text".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("d.jsonl:1") && e.contains("JSON"), "{e}");
    }

    #[test]
    fn empty_missing_and_binary_data_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_documents(&DocumentSource::Folder {
            path: dir.path().into(),
            pattern: "*.txt".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("no file matches"), "{e}");
        let p = dir.path().join("empty.txt");
        std::fs::write(&p, "\n  \n").unwrap();
        let e = load_documents(&DocumentSource::Text {
            paths: vec![p.clone()],
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no non-empty documents") && e.contains("empty.txt"),
            "{e}"
        );
        let e = load_documents(&DocumentSource::Text {
            paths: vec![dir.path().join("nope.txt")],
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope.txt"), "{e}");
        std::fs::write(&p, [0xff, 0xfe, 0x00]).unwrap();
        let e = load_documents(&DocumentSource::Text { paths: vec![p] })
            .unwrap_err()
            .to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }
}
