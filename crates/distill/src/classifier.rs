//! Classifier folders read back from disk, and scoring one on labelled data (`distill eval
//! --labelled`): accuracy, per-class F1 and the confusion matrix.

use std::path::Path;

use candle_core::{DType, Device};
use distill_models::{ArchConfig, BertClassifier, BertConfig, Pooling, SafetensorsWeights};
use distill_teacher::{load_tokenizer, resolve, HubOptions, Resolved, TeacherSource};
use distill_train::classify::{encode_examples, ClassMetrics, Confusion};
use distill_train::data::{
    load_labelled, split_stratified, LabelledDataConfig, LabelledSource, Skipped, TextFormat,
};
use distill_train::scoring::{argmaxes, predict_logits};
use serde::Serialize;

use crate::error::{Context, Error, Result};
use crate::job::{load_job, Job};

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

/// A classifier scored on labelled examples.
#[derive(Clone, Debug, Serialize)]
pub struct LabelledEval {
    pub model: String,
    pub examples: usize,
    pub truncated: usize,
    pub skipped: Vec<Skipped>,
    pub accuracy: f64,
    pub classes: Vec<ClassMetrics>,
    pub confusion: Confusion,
    pub max_length: usize,
    /// Which part of the data was scored (`all`, or a split part).
    #[serde(skip)]
    pub part: String,
    /// Every example's id, label, text and logits, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Vec<serde_json::Value>>,
}

impl LabelledEval {
    /// Accuracy, per-class precision/recall/F1 and the confusion matrix as text.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{} examples ({}), accuracy {:.4}; {} truncated to {} tokens, {} skipped\n",
            self.examples,
            self.part,
            self.accuracy,
            self.truncated,
            self.max_length,
            self.skipped.len()
        );
        for c in &self.classes {
            s += &format!(
                "  {:<12} precision {:.4} recall {:.4} F1 {:.4} (support {})\n",
                c.label, c.precision, c.recall, c.f1, c.support
            );
        }
        s += &format!("\nconfusion (rows: true class)\n{}", self.confusion.table());
        s
    }
}

/// Scores the classifier at `model_source` on `labelled`: a `.jsonl` (`text`, `label`) or
/// `.csv` file (all of it), or a classification run config (its data, split as the run split
/// it; `split` names the part).
pub fn evaluate_labelled(
    model_source: &str,
    labelled: &Path,
    split: &str,
    device: &Device,
    predictions: bool,
) -> Result<LabelledEval> {
    let m = load_classifier(model_source, device)?;
    let ext = labelled.extension().and_then(|e| e.to_str()).unwrap_or("");
    let plain = |source: LabelledSource| LabelledDataConfig {
        source,
        format: TextFormat::Plain,
        email: Default::default(),
        labels: Some(m.labels.clone()),
        max_length: m.max_length,
        validation_fraction: 0.0,
        test_fraction: 0.0,
        seed: 0,
        max_per_class: None,
    };
    let (data, part) = match ext {
        "jsonl" => (
            plain(LabelledSource::Jsonl {
                path: labelled.to_path_buf(),
                text_field: "text".into(),
                label_field: "label".into(),
            }),
            "all",
        ),
        "csv" => (
            plain(LabelledSource::Csv {
                path: labelled.to_path_buf(),
                text_column: "text".into(),
                label_column: "label".into(),
                delimiter: ',',
            }),
            "all",
        ),
        "yaml" | "yml" => match load_job(labelled)? {
            Job::Classification(c) => {
                let mut d = c.data.clone();
                d.labels = Some(m.labels.clone());
                (d, split)
            }
            Job::CausalLm(_) => {
                return Err(Error::Invalid(format!(
                    "{}: not a classification config",
                    labelled.display()
                )))
            }
        },
        _ => {
            return Err(Error::Invalid(format!(
                "--labelled {}: expected a .jsonl, .csv or classification .yaml file",
                labelled.display()
            )))
        }
    };
    let set = load_labelled(&data).with_context(|| labelled.display().to_string())?;
    let s = split_stratified(
        &set,
        data.validation_fraction,
        data.test_fraction,
        data.seed,
        data.max_per_class,
    );
    let idx: Vec<usize> = match part {
        "all" => (0..set.examples.len()).collect(),
        "train" => s.train,
        "validation" => s.validation,
        "test" => s.test,
        other => {
            return Err(Error::Invalid(format!(
                "--split: expected all, train, validation or test, got `{other}`"
            )))
        }
    };
    let max_len = data.max_length.min(m.config.max_position_embeddings);
    let enc = encode_examples(
        &m.tokenizer,
        &set.examples,
        &idx,
        max_len,
        m.config.vocab_size,
    )?;
    let logits = predict_logits(&m.model, &enc, 32, m.pad_id, device)?;
    let confusion = Confusion::new(&m.labels, &enc.labels, &argmaxes(&logits));
    Ok(LabelledEval {
        model: model_source.to_string(),
        examples: enc.len(),
        truncated: enc.truncated,
        skipped: set.skipped.clone(),
        accuracy: confusion.accuracy(),
        classes: (0..m.labels.len()).map(|c| confusion.class(c)).collect(),
        confusion,
        max_length: max_len,
        part: part.to_string(),
        predictions: predictions.then(|| {
            idx.iter()
                .zip(&logits)
                .map(|(&i, l)| {
                    serde_json::json!({
                        "id": set.examples[i].id,
                        "label": set.labels[set.examples[i].label],
                        "text": set.examples[i].text,
                        "logits": l,
                    })
                })
                .collect()
        }),
    })
}
