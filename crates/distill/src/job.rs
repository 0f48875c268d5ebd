//! A run file as a typed job: one YAML document composed of the sections each crate owns,
//! parsed once as a value to read `task` and once as the matching config (so errors keep
//! their line and column), with `${VAR}` / `${VAR:-default}` expanded from the environment
//! and every range checked before any work starts.

use std::path::{Path, PathBuf};

use distill_compress::{CompressConfig, Defaults};
use distill_models::Pooling;
use distill_student::StudentConfig;
use distill_teacher::TeacherConfig;
use distill_train::config::{ConfigError, DataConfig, DistillConfig, VocabMode};
use distill_train::data::LabelledDataConfig;
use distill_train::training::serde_as;
use distill_train::{TrainConfig, Training};
use serde::{Deserialize, Serialize};

use crate::env::expand_env;
use crate::error::{Error, Result};

/// What a run does; `causal_lm` when the key is absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Per-token logit distillation of a decoder (the [`RunConfig`] sections).
    CausalLm,
    /// Fine-tune an encoder teacher and distil a classifier (the [`ClassifyConfig`] sections).
    Classification,
}

/// A parsed run config of either task.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    CausalLm(Box<RunConfig>),
    Classification(Box<ClassifyConfig>),
}

impl Job {
    /// The run's folder.
    pub fn run_dir(&self) -> PathBuf {
        match self {
            Job::CausalLm(c) => c.run_dir(),
            Job::Classification(c) => c.run_dir(),
        }
    }
}

/// The JSON Schema of both kinds of run config.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum AnyConfig {
    CausalLm(Box<RunConfig>),
    Classification(Box<ClassifyConfig>),
}

/// A causal-LM distillation run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `causal_lm` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    pub teacher: TeacherConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub student: StudentConfig,
    #[serde(default)]
    pub distill: DistillConfig,
    #[serde(
        deserialize_with = "serde_as::causal_lm",
        serialize_with = "serde_as::write"
    )]
    #[schemars(with = "TrainConfig")]
    pub train: Training,
    pub output: OutputConfig,
    /// Compressed variants of the trained student, measured step by step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<CompressConfig>,
    /// The search space and evaluation budget of `distill auto` (defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<distill_compress::auto::AutoConfig>,
}

/// `output:` — where the run folder goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Parent folder of runs.
    #[serde(default = "default_runs")]
    pub dir: PathBuf,
    /// The run's folder name under `dir`.
    pub name: String,
}

fn default_runs() -> PathBuf {
    PathBuf::from("runs")
}

impl RunConfig {
    pub fn run_dir(&self) -> PathBuf {
        self.output.dir.join(&self.output.name)
    }

    /// Range checks of every section.
    pub fn validate(&self) -> Result<()> {
        self.data.validate()?;
        self.distill.validate()?;
        if self.distill.scratch_baseline {
            return Err(ConfigError {
                key: "distill.scratch_baseline".into(),
                msg: "is for classification runs; for a causal LM, scripts/bench-kd-vs-scratch.sh trains the labels-only baseline".into(),
            }
            .into());
        }
        if self.train.batch_auto && self.teacher.cache.is_some() {
            return Err(ConfigError {
                key: "train.batch_size".into(),
                msg: "`auto` cannot train from teacher.cache: the cache holds the blocks a fixed batch size reads; write the number".into(),
            }
            .into());
        }
        self.check_vocab_mode()?;
        self.check_chat()?;
        self.check_answers()?;
        if let Some(c) = &self.compress {
            c.plans(&Defaults::causal_lm())?;
        }
        check_name(&self.output.name)
    }

    /// What chat data (`data.source.kind: chat`) does not train with yet: each names the key.
    fn check_chat(&self) -> Result<()> {
        if !self.data.source.is_chat() {
            return Ok(());
        }
        let refuse = |key: &str, msg: &str| -> Result<()> {
            Err(ConfigError {
                key: key.into(),
                msg: msg.into(),
            }
            .into())
        };
        if !self.distill.vocab.is_strict() {
            return refuse(
                "distill.vocab",
                "chat data trains with the teacher's own vocabulary (strict) for now; shared and cross map tokens the chat template writes",
            );
        }
        if self.student.vocab.is_some() {
            return refuse(
                "student.vocab",
                "a trimmed vocabulary keeps the ids the texts use, not the chat template's markers; drop it for chat data",
            );
        }
        if !self.distill.hidden.is_empty() {
            return refuse(
                "distill.hidden",
                "hidden-state losses would count the prompt's positions too; chat data trains on the assistant's tokens only",
            );
        }
        Ok(())
    }

    /// Prompts (`data.source.kind: prompts`) and the teacher's answers to them
    /// (`teacher.cache.generate`) come together.
    fn check_answers(&self) -> Result<()> {
        let generate = self.teacher.cache.as_ref().and_then(|c| c.generate());
        let refuse = |key: &str, msg: String| -> Result<()> {
            Err(ConfigError {
                key: key.into(),
                msg,
            }
            .into())
        };
        match (self.data.source.is_prompts(), generate) {
            (true, None) => refuse(
                "data.source",
                "prompts are answered by the teacher before the run trains on them: add `teacher.cache: {dir: DIR, generate: {max_new_tokens: 128}}` and run `distill cache-teacher` first".into(),
            ),
            (false, Some(_)) => refuse(
                "teacher.cache.generate",
                "the teacher answers prompts: it needs `data.source.kind: prompts`".into(),
            ),
            (_, Some(g)) => match g.validate() {
                Err((key, msg)) => refuse(&key, msg),
                Ok(()) => Ok(()),
            },
            (false, None) => Ok(()),
        }
    }

    /// `distill.vocab` against the student's tokenizer and base and the teacher cache.
    fn check_vocab_mode(&self) -> Result<()> {
        let refuse = |key: &str, msg: &str| -> Result<()> {
            Err(ConfigError {
                key: key.into(),
                msg: msg.into(),
            }
            .into())
        };
        let (own_tokenizer, base) = (
            self.student.tokenizer.is_some(),
            self.student.base.is_some(),
        );
        match self.distill.vocab {
            VocabMode::Cross if !own_tokenizer && !base => refuse(
                "distill.vocab",
                "cross needs the student's own tokenizer: name student.base (a model to shape and start the student from, whose tokenizer it takes) or student.tokenizer",
            ),
            VocabMode::Strict | VocabMode::Shared if base => refuse(
                "student.base",
                "a student cut from another model than the teacher is a cross-tokenizer run: set distill.vocab: cross",
            ),
            _ => Ok(()),
        }
    }
}

/// A classification run: fine-tune an encoder into a teacher (optional), distil a student.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    /// `classification`.
    pub task: Task,
    /// A BERT-family encoder: a Hugging Face folder or `hf://` repo.
    pub teacher: TeacherConfig,
    pub data: LabelledDataConfig,
    /// Pooling of teacher and student: `cls` (transformers' BertForSequenceClassification) or
    /// `mean`.
    #[serde(default = "d_pooling")]
    pub pooling: Pooling,
    /// Fine-tune the teacher (a fresh head on a pre-trained encoder) first; without it the
    /// teacher must already have a classification head.
    #[serde(
        default,
        deserialize_with = "serde_as::finetune",
        serialize_with = "serde_as::write_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<TrainConfig>")]
    pub finetune: Option<Training>,
    #[serde(default)]
    pub student: StudentConfig,
    /// The objective on class logits (every soft loss, hidden-state losses) and the
    /// labels-only baseline.
    #[serde(default)]
    pub distill: DistillConfig,
    /// How the student is trained.
    #[serde(
        deserialize_with = "serde_as::classification",
        serialize_with = "serde_as::write"
    )]
    #[schemars(with = "TrainConfig")]
    pub train: Training,
    pub output: ClsOutputConfig,
    /// Compressed variants of the trained student, measured step by step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<CompressConfig>,
    /// The search space and evaluation budget of `distill auto` (defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<distill_compress::auto::AutoConfig>,
}

fn d_pooling() -> Pooling {
    Pooling::Cls
}

/// `output:` of a classification run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClsOutputConfig {
    #[serde(default = "default_runs")]
    pub dir: PathBuf,
    pub name: String,
    /// Storage type of the exported student: f32, f16 or bf16 (the teacher is saved in f32).
    #[serde(default)]
    pub dtype: distill_models::FloatType,
}

impl ClassifyConfig {
    pub fn run_dir(&self) -> PathBuf {
        self.output.dir.join(&self.output.name)
    }

    pub fn export_dtype(&self) -> candle_core::DType {
        self.output.dtype.dtype()
    }

    pub fn validate(&self) -> Result<()> {
        self.data.validate()?;
        if let Some(layers) = self.student.layers {
            self.train.check_layers("train", layers)?;
        }
        self.distill.validate()?;
        if self.student.vocab.is_some() {
            return Err(ConfigError {
                key: "student.vocab".into(),
                msg: "vocabulary trimming is for causal-LM runs; a classifier keeps its encoder's vocabulary".into(),
            }
            .into());
        }
        if !self.distill.vocab.is_strict() {
            return Err(ConfigError {
                key: "distill.vocab".into(),
                msg: "is for causal-LM runs; a classifier keeps its encoder's vocabulary".into(),
            }
            .into());
        }
        if self.student.base.is_some() {
            return Err(ConfigError {
                key: "student.base".into(),
                msg: "is for causal-LM runs; a classifier is cut from its teacher".into(),
            }
            .into());
        }
        if self.student.matmul_dtype.is_some() {
            return Err(ConfigError {
                key: "student.matmul_dtype".into(),
                msg: "is for causal-LM students; a classifier trains in f32".into(),
            }
            .into());
        }
        if let Some(c) = &self.compress {
            c.plans(&Defaults::classification())?;
        }
        check_name(&self.output.name)
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(Error::Job(format!(
            "output.name: `{name}` must be a plain folder name"
        )));
    }
    Ok(())
}

/// The largest run config read: far above any real one (they are a few KiB).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads, expands, parses and validates a run config of either task.
pub fn load_job(path: &Path) -> Result<Job> {
    // A regular file of sane size: `/dev/zero` or a FIFO would otherwise be read until memory
    // runs out.
    let text = distill_files::input::read_text_limited(path, MAX_CONFIG_BYTES, "a run config")?;
    parse_job(&text).map_err(|e| Error::Context {
        context: path.display().to_string(),
        source: Box::new(e),
    })
}

/// Parses the text once as a YAML value to read `task`, then as the matching config (so
/// errors keep their line and column).
pub fn parse_job(text: &str) -> Result<Job> {
    let expanded = expand_env(text)?;
    let yaml = |e: serde_yaml::Error| Error::Job(e.to_string());
    let value: serde_yaml::Value = serde_yaml::from_str(&expanded).map_err(yaml)?;
    let task = match value.get("task") {
        None => Task::CausalLm,
        Some(t) => serde_yaml::from_value(t.clone())
            .map_err(|e| Error::Job(format!("task: {e} (causal_lm or classification)")))?,
    };
    Ok(match task {
        Task::CausalLm => {
            let cfg: RunConfig = serde_yaml::from_str(&expanded).map_err(yaml)?;
            cfg.validate()?;
            Job::CausalLm(Box::new(cfg))
        }
        Task::Classification => {
            let cfg: ClassifyConfig = serde_yaml::from_str(&expanded).map_err(yaml)?;
            cfg.validate()?;
            Job::Classification(Box::new(cfg))
        }
    })
}

/// The JSON Schema of run configs, for editors (yaml-language-server) to validate and
/// complete YAML files.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(AnyConfig)).expect("a schema serialises")
}

#[cfg(test)]
mod tests;
