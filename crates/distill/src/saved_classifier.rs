//! Classifier folders read back from disk (`BertForSequenceClassification` layout): the model,
//! its labels, tokenizer, padding id, pooling and trained length.

use candle_core::{DType, Device};
use distill_models::{ArchConfig, BertClassifier, BertConfig, Pooling, SafetensorsWeights};
use distill_teacher::{load_tokenizer, resolve, HubOptions, Resolved, TeacherSource};

use crate::error::{Error, Result};

/// A classifier folder read back from disk.
pub struct LoadedClassifier {
    pub model: BertClassifier,
    pub labels: Vec<String>,
    pub tokenizer: tokenizers::Tokenizer,
    pub config: BertConfig,
    pub bytes: u64,
    pub parameters: usize,
    pub pad_id: u32,
    /// `distill_pooling` of the config (`cls` when absent).
    pub pooling: Pooling,
    /// Token limit the model was trained with (`model_max_length` of `tokenizer_config.json`).
    pub max_length: usize,
}

/// Pad id of a BERT tokenizer: `[PAD]` when it has one, else the config's.
pub fn pad_id(tok: &tokenizers::Tokenizer, cfg: &BertConfig) -> u32 {
    tok.token_to_id("[PAD]").unwrap_or(cfg.pad_token_id as u32)
}

/// Loads a saved classifier (a `BertForSequenceClassification` folder or `hf://` repo).
pub fn load_classifier(source: &str, device: &Device) -> Result<LoadedClassifier> {
    let src = TeacherSource::parse(source)?;
    let resolved = resolve(&src, &HubOptions::from_env())?;
    distill_teacher::check_finite(&src, &resolved, distill_teacher::NonFinite::Refuse)?;
    let Resolved::Folder(folder) = &resolved else {
        return Err(Error::Invalid(format!(
            "{source}: a classifier is a Hugging Face folder, not a GGUF file"
        )));
    };
    let ArchConfig::Bert(cfg) = &folder.config else {
        return Err(Error::Invalid(format!(
            "{source}: a `{}` model is not a BERT classifier",
            folder.config.family()
        )));
    };
    let st = SafetensorsWeights::open(&folder.weight_files, DType::F32, device)?;
    if !BertClassifier::has_head(&st) {
        return Err(Error::Invalid(format!(
            "{source}: no classification head (`classifier.weight`); fine-tune one with a `finetune:` section"
        )));
    }
    let labels = labels_of(cfg, &st, source)?;
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&folder.config_path)
            .map_err(crate::error::io(&folder.config_path))?,
    )
    .map_err(|e| Error::Invalid(format!("{}: {e}", folder.config_path.display())))?;
    let pooling = match raw.get("distill_pooling").and_then(|p| p.as_str()) {
        None | Some("cls") => Pooling::Cls,
        Some("mean") => Pooling::Mean,
        Some(other) => {
            return Err(Error::Invalid(format!(
                "{}: distill_pooling `{other}` is not cls or mean",
                folder.config_path.display()
            )))
        }
    };
    let model = BertClassifier::load(cfg, &st, labels.len(), pooling)?;
    let tokenizer = load_tokenizer(&resolved)?.tokenizer;
    let parameters = st
        .tensor_infos()
        .iter()
        .filter(|(n, _, _)| !n.ends_with("position_ids"))
        .map(|(_, _, s)| s.iter().product::<usize>())
        .sum();
    let max_length = std::fs::read_to_string(folder.dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("model_max_length").and_then(|m| m.as_u64()))
        .map(|m| (m as usize).min(cfg.max_position_embeddings))
        .unwrap_or(cfg.max_position_embeddings);
    Ok(LoadedClassifier {
        max_length,
        pooling,
        pad_id: pad_id(&tokenizer, cfg),
        model,
        labels,
        tokenizer,
        config: cfg.clone(),
        bytes: distill_models::weights::bytes_on_disk(&folder.weight_files),
        parameters,
    })
}

/// Class names of a checkpoint with a head: from `id2label`, else `LABEL_i`.
pub fn labels_of(cfg: &BertConfig, st: &SafetensorsWeights, source: &str) -> Result<Vec<String>> {
    // The head's rows: `id2label` when the config has it (a compressed head may be stored as
    // codes rather than as `classifier.weight`), else the head's shape.
    let rows = match &cfg.id2label {
        Some(m) => m.len(),
        None => st
            .tensor_infos()
            .into_iter()
            .find(|(n, _, _)| n == "classifier.weight")
            .map(|(_, _, s)| s[0])
            .unwrap_or(0),
    };
    match &cfg.id2label {
        Some(m) => (0..rows)
            .map(|i| {
                m.get(&i.to_string()).cloned().ok_or_else(|| {
                    Error::Invalid(format!("{source}: id2label has no entry for class {i}"))
                })
            })
            .collect(),
        None => Ok((0..rows).map(|i| format!("LABEL_{i}")).collect()),
    }
}
