//! Saving a Llama-family model in Hugging Face layout: `config.json`, `model.safetensors`,
//! `tokenizer.json`, `tokenizer_config.json` and `generation_config.json`, written into a
//! temporary folder that replaces the target only once complete.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use distill_models::LlamaConfig;
use serde_json::json;

use crate::error::StudentError;

/// What goes into an exported folder.
pub struct HfExport<'a> {
    pub config: &'a LlamaConfig,
    pub varmap: &'a VarMap,
    pub tokenizer: &'a tokenizers::Tokenizer,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub chat_template: Option<&'a str>,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(String) -> StudentError + '_ {
    move |msg| StudentError::Io {
        path: path.to_path_buf(),
        msg,
    }
}

/// Writes the model into `dir` (replacing what distill wrote there earlier). Returns the bytes of the weights.
pub fn save_hf(dir: &Path, e: &HfExport) -> Result<u64, StudentError> {
    write_folder_atomically(dir, |tmp| fill_llama_folder(dir, tmp, e))
}

/// Fills a temporary sibling of `dir` with `fill`, then puts it in place of `dir` (see
/// [`distill_files::write_folder`]: a reader never sees a half-written model folder, and only
/// files distill wrote are ever replaced). Returns what `fill` returns.
pub(crate) fn write_folder_atomically(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<u64, StudentError>,
) -> Result<u64, StudentError> {
    distill_files::write_folder(dir, "model", fill)
}

/// Saves the variables of `varmap` as `model.safetensors` in `dir`, converted to `dtype`.
pub(crate) fn save_varmap(dir: &Path, varmap: &VarMap, dtype: DType) -> Result<u64, StudentError> {
    let tensors: HashMap<String, Tensor> = distill_models::weights::vars(varmap)
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(dtype)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()
        .map_err(|x| io(dir)(x.to_string()))?;
    let st = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &st).map_err(|x| io(&st)(x.to_string()))?;
    distill_files::usual_mode(&st).map_err(|x| io(&st)(x.to_string()))?;
    Ok(std::fs::metadata(&st).map(|m| m.len()).unwrap_or(0))
}

pub(crate) fn write_json(
    dir: &Path,
    file: &str,
    v: &serde_json::Value,
) -> Result<(), StudentError> {
    let p = dir.join(file);
    std::fs::write(
        &p,
        serde_json::to_string_pretty(v).expect("JSON value") + "\n",
    )
    .map_err(|x| io(&p)(x.to_string()))
}

fn fill_llama_folder(dir: &Path, tmp: &Path, e: &HfExport) -> Result<u64, StudentError> {
    let arch = e
        .config
        .family()
        .map_err(|x| io(dir)(x.to_string()))?
        .hf_architecture();
    let mut config = serde_json::to_value(e.config).map_err(|x| io(dir)(x.to_string()))?;
    config["architectures"] = json!([arch]);
    config["torch_dtype"] = json!("float32");
    if let Some(b) = e.bos_token_id {
        config["bos_token_id"] = json!(b);
    }
    if let Some(b) = e.eos_token_id {
        config["eos_token_id"] = json!(b);
    }
    let write_json = |file: &str, v: &serde_json::Value| write_json(tmp, file, v);
    write_json("config.json", &config)?;
    write_json(
        "generation_config.json",
        &json!({ "bos_token_id": e.bos_token_id, "eos_token_id": e.eos_token_id, "_from_model_config": true }),
    )?;
    let token = |id: Option<u32>| id.and_then(|i| e.tokenizer.id_to_token(i));
    let mut tok_cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": e.config.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
    });
    if let Some(b) = token(e.bos_token_id) {
        tok_cfg["bos_token"] = json!(b);
    }
    if let Some(t) = token(e.eos_token_id) {
        tok_cfg["eos_token"] = json!(t);
    }
    if let Some(t) = e.chat_template {
        tok_cfg["chat_template"] = json!(t);
    }
    write_json("tokenizer_config.json", &tok_cfg)?;
    let tok_path = tmp.join("tokenizer.json");
    e.tokenizer
        .save(&tok_path, false)
        .map_err(|x| io(&tok_path)(x.to_string()))?;

    save_varmap(tmp, e.varmap, DType::F32)
}
