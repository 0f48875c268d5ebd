//! Teacher sources: `hf://org/name[@revision]`, a local Hugging Face folder, or a `.gguf` file.

use std::path::{Path, PathBuf};

use crate::error::{Result, TeacherError};

/// Where a teacher comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TeacherSource {
    /// A Hugging Face Hub model repository at a revision (branch, tag or commit).
    Hub { repo: String, revision: String },
    /// A local folder in Hugging Face layout (`config.json`, `*.safetensors`, `tokenizer.json`).
    Folder(PathBuf),
    /// A GGUF file (weights, hyper-parameters and tokenizer in one file).
    Gguf(PathBuf),
}

impl TeacherSource {
    /// Parses a source string. Local paths must exist; a Hub repo is `org/name`.
    pub fn parse(spec: &str) -> Result<Self> {
        let err = |msg: &str| TeacherError::Source {
            source_spec: spec.to_string(),
            msg: msg.to_string(),
        };
        if let Some(rest) = spec.strip_prefix("hf://") {
            let (repo, revision) = match rest.split_once('@') {
                Some((r, rev)) if !rev.is_empty() => (r, rev),
                Some(_) => return Err(err("empty revision after `@`")),
                None => (rest, "main"),
            };
            let parts: Vec<&str> = repo.split('/').collect();
            let valid = |p: &str| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    && !p.starts_with('.')
            };
            if parts.len() != 2 || !parts.iter().all(|p| valid(p)) {
                return Err(err("expected hf://org/name or hf://org/name@revision"));
            }
            return Ok(Self::Hub {
                repo: repo.to_string(),
                revision: revision.to_string(),
            });
        }
        let path = Path::new(spec);
        if !path.exists() {
            return Err(TeacherError::NotFound {
                path: path.to_path_buf(),
            });
        }
        if path.is_dir() {
            Ok(Self::Folder(path.to_path_buf()))
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            Ok(Self::Gguf(path.to_path_buf()))
        } else {
            Err(err(
                "expected a .gguf file, a model folder, or hf://org/name[@revision]",
            ))
        }
    }
}

impl std::fmt::Display for TeacherSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hub { repo, revision } if revision == "main" => write!(f, "hf://{repo}"),
            Self::Hub { repo, revision } => write!(f, "hf://{repo}@{revision}"),
            Self::Folder(p) | Self::Gguf(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_specs() {
        assert_eq!(
            TeacherSource::parse("hf://HuggingFaceTB/SmolLM2-135M").unwrap(),
            TeacherSource::Hub {
                repo: "HuggingFaceTB/SmolLM2-135M".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            TeacherSource::parse("hf://org/name@v1.0").unwrap(),
            TeacherSource::Hub {
                repo: "org/name".into(),
                revision: "v1.0".into()
            }
        );
        for bad in [
            "hf://noslash",
            "hf://a/b/c",
            "hf://a/b@",
            "hf:///b",
            "hf://a/../b",
        ] {
            assert!(
                TeacherSource::parse(bad).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn local_paths() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            TeacherSource::parse(dir.path().to_str().unwrap()).unwrap(),
            TeacherSource::Folder(dir.path().into())
        );
        let g = dir.path().join("m.gguf");
        std::fs::write(&g, b"x").unwrap();
        assert_eq!(
            TeacherSource::parse(g.to_str().unwrap()).unwrap(),
            TeacherSource::Gguf(g.clone())
        );
        let e = TeacherSource::parse("/definitely/not/here.gguf")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/definitely/not/here.gguf") && e.contains("no such file"),
            "{e}"
        );
        let t = dir.path().join("m.txt");
        std::fs::write(&t, b"x").unwrap();
        assert!(TeacherSource::parse(t.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains(".gguf"));
    }
}
