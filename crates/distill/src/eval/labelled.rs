//! `distill eval CLASSIFIER --labelled …`: a saved classifier's accuracy, per-class F1 and
//! confusion matrix on labelled data.

use std::path::Path;

use candle_core::Device;
use distill_train::data::{
    encode_examples, load_labelled, split_stratified, LabelledDataConfig, LabelledSource, Skipped,
    TextFormat,
};
use distill_train::scoring::{argmaxes, predict_logits, ClassMetrics, Confusion};
use serde::Serialize;

use crate::error::{Context, Error, Result};
use crate::job::{load_job, Job};
use crate::saved_classifier::load_classifier;

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
