//! Hugging Face Hub repositories through `hf-hub`: the standard cache layout
//! (`models--org--name/{blobs,refs,snapshots}`), `HF_TOKEN`, `HF_ENDPOINT`, `HF_HUB_CACHE` /
//! `HF_HOME`, `HF_HUB_OFFLINE`, and use of the cache when the Hub cannot be reached.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Result, TeacherError};

/// Files that every model folder may carry beside its weights.
const SIDE_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// How to reach the Hub.
#[derive(Clone, Default)]
pub struct HubOptions {
    /// Base URL, `https://huggingface.co` when `None`.
    pub endpoint: Option<String>,
    /// Cache root (the folder holding `models--org--name`).
    pub cache_dir: Option<PathBuf>,
    /// Bearer token for private and gated repos. Never logged.
    pub token: Option<String>,
    /// Use only what the cache holds.
    pub offline: bool,
    /// Show download progress bars.
    pub progress: bool,
}

impl std::fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("offline", &self.offline)
            .finish()
    }
}

impl HubOptions {
    /// Options from the environment variables the Python client reads.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|h| Path::new(&h).join("hub")));
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Self {
            endpoint: var("HF_ENDPOINT").map(|e| e.trim_end_matches('/').to_string()),
            cache_dir,
            token: var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")),
            offline,
            progress: false,
        }
    }

    fn cache(&self) -> Result<Cache> {
        match &self.cache_dir {
            Some(d) => Ok(Cache::new(d.clone())),
            None => {
                let home = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| TeacherError::Source {
                        source_spec: "hf://".into(),
                        msg: "no cache folder: set HF_HUB_CACHE or HF_HOME (HOME is not set)"
                            .into(),
                    })?;
                Ok(Cache::new(Path::new(&home).join(".cache/huggingface/hub")))
            }
        }
    }
}

/// Makes the files of `repo` at `revision` available locally and returns the snapshot folder
/// (a Hugging Face model folder). Online, the revision is resolved to a commit first and only
/// files missing from the cache are downloaded; offline, or when the Hub cannot be reached,
/// the cached snapshot of that revision is used.
pub fn snapshot(repo: &str, revision: &str, opts: &HubOptions) -> Result<PathBuf> {
    let cache = opts.cache()?;
    let hub_err = |msg: String| TeacherError::Hub {
        repo: repo.to_string(),
        revision: revision.to_string(),
        msg,
    };
    let cached = || {
        cache
            .repo(Repo::with_revision(
                repo.to_string(),
                RepoType::Model,
                revision.to_string(),
            ))
            .get("config.json")
    };
    if opts.offline {
        return cached().map(|p| parent(&p)).ok_or_else(|| {
            hub_err(format!(
                "offline (HF_HUB_OFFLINE) and not in the cache at {}",
                cache.path().display()
            ))
        });
    }

    let mut builder = ApiBuilder::from_cache(cache.clone())
        .with_progress(opts.progress)
        .with_token(opts.token.clone());
    if let Some(e) = &opts.endpoint {
        builder = builder.with_endpoint(e.clone());
    }
    let api = builder.build().map_err(|e| hub_err(describe(e)))?;
    let info = match api
        .repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            revision.to_string(),
        ))
        .info()
    {
        Ok(info) => info,
        Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Transport(_)) => {
            return match cached() {
                Some(p) => {
                    tracing::warn!(
                        repo,
                        revision,
                        "the Hub cannot be reached ({e}); using the cached snapshot"
                    );
                    Ok(parent(&p))
                }
                None => Err(hub_err(format!(
                    "the Hub cannot be reached and nothing is cached: {e}"
                ))),
            };
        }
        Err(e) => return Err(hub_err(describe(e))),
    };
    let files =
        choose_files(info.siblings.iter().map(|s| s.rfilename.as_str())).map_err(hub_err)?;
    tracing::info!(repo, revision, commit = %info.sha, files = files.len(), "resolved Hub repository");

    // Fetch at the resolved commit, so every file comes from the same snapshot.
    let pinned = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        info.sha.clone(),
    ));
    let mut config = None;
    for f in &files {
        let path = pinned
            .get(f)
            .map_err(|e| hub_err(format!("{f}: {}", describe(e))))?;
        if f == "config.json" {
            config = Some(path);
        }
    }
    // Point the named revision at the commit, so offline use finds it.
    if revision != info.sha {
        cache
            .repo(Repo::with_revision(
                repo.to_string(),
                RepoType::Model,
                revision.to_string(),
            ))
            .create_ref(&info.sha)
            .map_err(|e| hub_err(format!("writing the cache ref: {e}")))?;
    }
    let config = config.ok_or_else(|| hub_err("no config.json in the repository".into()))?;
    let mut dir = parent(&config);
    // Sharded files from the index must be fetched too.
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        for shard in index_shards(&index).map_err(hub_err)? {
            pinned
                .get(&shard)
                .map_err(|e| hub_err(format!("{shard}: {}", describe(e))))?;
        }
        dir = parent(&config);
    }
    Ok(dir)
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The files to fetch from a repository listing: config, tokenizer and safetensors weights.
fn choose_files<'a>(
    listing: impl Iterator<Item = &'a str>,
) -> std::result::Result<Vec<String>, String> {
    let all: BTreeSet<&str> = listing.collect();
    if !all.contains("config.json") {
        return Err(format!(
            "the repository has no config.json (files: {})",
            all.iter().take(12).copied().collect::<Vec<_>>().join(", ")
        ));
    }
    let mut files: Vec<String> = SIDE_FILES
        .iter()
        .filter(|f| all.contains(*f))
        .map(|f| f.to_string())
        .collect();
    if all.contains("model.safetensors.index.json") {
        files.push("model.safetensors.index.json".into());
    } else if all.contains("model.safetensors") {
        files.push("model.safetensors".into());
    } else {
        let st: Vec<String> = all
            .iter()
            .filter(|f| f.ends_with(".safetensors") && !f.contains('/'))
            .map(|f| f.to_string())
            .collect();
        if st.is_empty() {
            return Err(
                "the repository has no safetensors weights (pickle checkpoints are not loaded)"
                    .into(),
            );
        }
        files.extend(st);
    }
    Ok(files)
}

fn index_shards(index: &Path) -> std::result::Result<BTreeSet<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| format!("{}: {e}", index.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
    Ok(v.get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// A readable message for a Hub error: status, the Hub's `X-Error-Code`, and what to do.
fn describe(e: ApiError) -> String {
    match e {
        ApiError::RequestError(e) => match *e {
            ureq::Error::Status(code, resp) => {
                let hub_code = resp.header("x-error-code").map(str::to_string);
                let hub_msg = resp.header("x-error-message").map(str::to_string);
                let what = match (code, hub_code.as_deref()) {
                    (_, Some("RepoNotFound")) => {
                        "repository not found (or private: set HF_TOKEN)".to_string()
                    }
                    (_, Some("RevisionNotFound")) => "revision not found".to_string(),
                    (_, Some("EntryNotFound")) => "file not found in the repository".to_string(),
                    (_, Some("GatedRepo")) => {
                        "gated repository: accept its terms on the Hub and set HF_TOKEN".to_string()
                    }
                    (401, _) => {
                        "unauthorized: the repository is private or gated, or HF_TOKEN is wrong"
                            .to_string()
                    }
                    (403, _) => "forbidden: HF_TOKEN has no access to this repository".to_string(),
                    (404, _) => "not found".to_string(),
                    (c, _) => format!("the Hub answered HTTP {c}"),
                };
                match hub_msg {
                    Some(m) => format!("{what} (HTTP {code}: {m})"),
                    None => format!("{what} (HTTP {code})"),
                }
            }
            ureq::Error::Transport(t) => format!("network error: {t}"),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_config_tokenizer_and_weights() {
        let f = choose_files(
            [
                "config.json",
                "tokenizer.json",
                "model.safetensors",
                "README.md",
                "pytorch_model.bin",
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(
            f,
            vec!["config.json", "tokenizer.json", "model.safetensors"]
        );
        let f = choose_files(
            [
                "config.json",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(f, vec!["config.json", "model.safetensors.index.json"]);
        assert!(
            choose_files(["config.json", "pytorch_model.bin"].into_iter())
                .unwrap_err()
                .contains("safetensors")
        );
        assert!(choose_files(["model.safetensors"].into_iter())
            .unwrap_err()
            .contains("config.json"));
    }

    #[test]
    fn token_is_redacted_in_debug_output() {
        let o = HubOptions {
            token: Some("hf_secret".into()),
            ..Default::default()
        };
        assert!(!format!("{o:?}").contains("hf_secret"));
    }
}
