//! Hugging Face model folders: `config.json`, safetensors weights (single file or sharded with
//! `model.safetensors.index.json`), and `tokenizer.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use distill_models::{ArchConfig, ModelError};

use crate::error::{io_err, Result, TeacherError};

/// The files of a model folder, found and checked.
#[derive(Clone, Debug)]
pub struct HfFolder {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub config: ArchConfig,
    pub weight_files: Vec<PathBuf>,
    pub tokenizer_path: Option<PathBuf>,
}

impl HfFolder {
    /// Finds the config, weights and tokenizer of `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(TeacherError::NotFound {
                path: dir.to_path_buf(),
            });
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::Format {
                path: dir.to_path_buf(),
                msg: "no config.json: a Hugging Face model folder needs one".into(),
            }
            .into());
        }
        let text = std::fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
        let config = ArchConfig::from_config_json(&text, &config_path.display().to_string())?;
        let weight_files = find_weights(dir)?;
        let tokenizer_path = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
        Ok(Self {
            dir: dir.to_path_buf(),
            config_path,
            config,
            weight_files,
            tokenizer_path,
        })
    }
}

/// The safetensors files holding the weights, in a stable order.
pub fn find_weights(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Format {
            path: index.clone(),
            msg: format!("not valid JSON: {e}"),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config {
                source_name: index.display().to_string(),
                key: "weight_map".into(),
                msg: "missing or not an object of tensor name → shard file".into(),
            })?;
        let mut shards = BTreeSet::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| ModelError::Config {
                source_name: index.display().to_string(),
                key: format!("weight_map.{tensor}"),
                msg: "expected a file name".into(),
            })?;
            if file.contains('/') || file.contains("..") {
                return Err(ModelError::Config {
                    source_name: index.display().to_string(),
                    key: format!("weight_map.{tensor}"),
                    msg: format!("shard `{file}` must be a file name inside the folder"),
                }
                .into());
            }
            shards.insert(file.to_string());
        }
        let files: Vec<PathBuf> = shards.into_iter().map(|f| dir.join(f)).collect();
        for f in &files {
            if !f.is_file() {
                return Err(ModelError::Format {
                    path: index.clone(),
                    msg: format!("lists shard {} which does not exist", f.display()),
                }
                .into());
            }
        }
        if files.is_empty() {
            return Err(ModelError::Format {
                path: index,
                msg: "weight_map is empty".into(),
            }
            .into());
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut any: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    any.sort();
    if any.is_empty() {
        let has_bin = dir.join("pytorch_model.bin").exists();
        return Err(ModelError::Format {
            path: dir.to_path_buf(),
            msg: if has_bin {
                "only pytorch_model.bin found; convert it to safetensors (pickle files are not loaded)".into()
            } else {
                "no model.safetensors, model.safetensors.index.json or *.safetensors".into()
            },
        }
        .into());
    }
    Ok(any)
}
