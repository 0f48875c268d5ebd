//! The run config: one YAML file composed of the sections each crate owns. Unknown keys are
//! refused; `${VAR}` and `${VAR:-default}` in values are replaced from the environment.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use distill_compress::config::CompressConfig;
use distill_models::Pooling;
use distill_student::StudentConfig;
use distill_teacher::TeacherConfig;
use distill_train::classify::{ClsDistillConfig, ClsTrainConfig};
use distill_train::config::{DataConfig, DistillConfig, TrainConfig};
use distill_train::data::LabelledDataConfig;
use serde::{Deserialize, Serialize};

/// What a run does; `causal_lm` when the key is absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Per-token logit distillation of a decoder (the `RunConfig` sections).
    CausalLm,
    /// Fine-tune an encoder teacher and distil a classifier (the `ClassifyConfig` sections).
    Classification,
}

/// A parsed run config of either task.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    CausalLm(Box<RunConfig>),
    Classification(Box<ClassifyConfig>),
}

/// The JSON Schema of both kinds of run config.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum AnyConfig {
    CausalLm(RunConfig),
    Classification(ClassifyConfig),
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
    pub train: TrainConfig,
    pub output: OutputConfig,
    /// Compressed variants of the trained student, measured step by step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<CompressConfig>,
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
    pub fn validate(&self) -> anyhow::Result<()> {
        self.data.validate()?;
        self.distill.validate()?;
        self.train.validate()?;
        if let Some(c) = &self.compress {
            c.validate()?;
        }
        check_name(&self.output.name)
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
    #[serde(default)]
    pub finetune: Option<ClsTrainConfig>,
    #[serde(default)]
    pub student: StudentConfig,
    #[serde(default)]
    pub distill: ClsDistillConfig,
    /// How the student is trained.
    pub train: ClsTrainConfig,
    pub output: ClsOutputConfig,
    /// Compressed variants of the trained student, measured step by step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<CompressConfig>,
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
    #[serde(default = "d_f32")]
    pub dtype: String,
}

fn d_f32() -> String {
    "f32".into()
}

impl ClassifyConfig {
    pub fn run_dir(&self) -> PathBuf {
        self.output.dir.join(&self.output.name)
    }

    pub fn export_dtype(&self) -> anyhow::Result<candle_core::DType> {
        Ok(match self.output.dtype.as_str() {
            "f32" => candle_core::DType::F32,
            "f16" => candle_core::DType::F16,
            "bf16" => candle_core::DType::BF16,
            other => bail!("output.dtype: expected f32, f16 or bf16, got `{other}`"),
        })
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.data.validate()?;
        if let Some(f) = &self.finetune {
            f.validate("finetune", None)?;
        }
        self.train.validate("train", self.student.layers)?;
        self.distill.validate()?;
        self.export_dtype()?;
        if let Some(c) = &self.compress {
            c.validate()?;
        }
        check_name(&self.output.name)
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!("output.name: `{name}` must be a plain folder name");
    }
    Ok(())
}

/// Reads, expands, parses and validates a run config of either task.
pub fn load_job(path: &Path) -> anyhow::Result<Job> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_job(&text).with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
pub fn parse(text: &str) -> anyhow::Result<RunConfig> {
    match parse_job(text)? {
        Job::CausalLm(c) => Ok(*c),
        Job::Classification(_) => bail!("a classification config, not a causal-LM one"),
    }
}

/// Parses the text once as a YAML value to read `task`, then as the matching config (so
/// errors keep their line and column).
pub fn parse_job(text: &str) -> anyhow::Result<Job> {
    let expanded = expand_env(text)?;
    let value: serde_yaml::Value =
        serde_yaml::from_str(&expanded).map_err(|e| anyhow::anyhow!("{e}"))?;
    let task = match value.get("task") {
        None => Task::CausalLm,
        Some(t) => serde_yaml::from_value(t.clone())
            .map_err(|e| anyhow::anyhow!("task: {e} (causal_lm or classification)"))?,
    };
    Ok(match task {
        Task::CausalLm => {
            let cfg: RunConfig =
                serde_yaml::from_str(&expanded).map_err(|e| anyhow::anyhow!("{e}"))?;
            cfg.validate()?;
            Job::CausalLm(Box::new(cfg))
        }
        Task::Classification => {
            let cfg: ClassifyConfig =
                serde_yaml::from_str(&expanded).map_err(|e| anyhow::anyhow!("{e}"))?;
            cfg.validate()?;
            Job::Classification(Box::new(cfg))
        }
    })
}

/// Replaces `${NAME}` and `${NAME:-default}` (a default starting with `~/` is under `$HOME`);
/// an unset variable without a default is an error naming the line.
fn expand_env(text: &str) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                bail!("line {}: unterminated `${{`", n + 1);
            };
            let inner = &rest[start + 2..start + end];
            let (name, default) = match inner.split_once(":-") {
                Some((a, b)) => (a, Some(b)),
                None => (inner, None),
            };
            let value = match (std::env::var(name).ok().filter(|v| !v.is_empty()), default) {
                (Some(v), _) => v,
                (None, Some(d)) => match (d.strip_prefix("~/"), std::env::var("HOME")) {
                    (Some(rest), Ok(home)) => format!("{home}/{rest}"),
                    _ => d.to_string(),
                },
                (None, None) => bail!("line {}: environment variable `{name}` is not set", n + 1),
            };
            out.push_str(&value);
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
teacher: {source: model.gguf}
data:
  source: {kind: folder, path: /tmp, pattern: '*.txt'}
train: {steps: 10}
output: {name: x}
";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.train.batch_size, 8);
        assert_eq!(c.distill.loss, "forward_kl");
        assert_eq!(c.data.block_size, 128);
        assert_eq!(c.teacher.gguf_weights, "dequantized");
        assert_eq!(c.run_dir(), PathBuf::from("runs/x"));
        // The resolved config round-trips.
        let again: RunConfig = serde_yaml::from_str(&serde_yaml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn unknown_keys_wrong_types_and_ranges_are_named() {
        let e = format!(
            "{:#}",
            parse(&MINIMAL.replace("steps: 10", "steps: 10, stepz: 3")).unwrap_err()
        );
        assert!(e.contains("stepz") && e.contains("line"), "{e}");
        let e = format!(
            "{:#}",
            parse(&MINIMAL.replace("steps: 10", "steps: ten")).unwrap_err()
        );
        assert!(e.contains("steps") || e.contains("invalid type"), "{e}");
        let e = format!(
            "{:#}",
            parse(&MINIMAL.replace("steps: 10", "steps: 0")).unwrap_err()
        );
        assert!(e.contains("train.steps"), "{e}");
        let e = format!(
            "{:#}",
            parse(&MINIMAL.replace("steps: 10", "steps: -3")).unwrap_err()
        );
        assert!(e.contains("steps") || e.contains("invalid value"), "{e}");
        let e = format!(
            "{:#}",
            parse(&format!("{MINIMAL}distill: {{alpha: 1.5}}\n")).unwrap_err()
        );
        assert!(e.contains("distill.alpha"), "{e}");
        let e = format!(
            "{:#}",
            parse(&format!("{MINIMAL}distill: {{temperature: 0}}\n")).unwrap_err()
        );
        assert!(e.contains("distill.temperature"), "{e}");
        let e = format!(
            "{:#}",
            parse(&MINIMAL.replace("steps: 10", "steps: 10, batch_size: 0")).unwrap_err()
        );
        assert!(e.contains("train.batch_size"), "{e}");
        let e = format!(
            "{:#}",
            parse(&format!("{MINIMAL}student: {{layer: 3}}\n")).unwrap_err()
        );
        assert!(e.contains("layer"), "{e}");
    }

    #[test]
    fn environment_variables_expand() {
        std::env::set_var("DISTILL_TEST_ASSETS", "/assets");
        let t = expand_env("a: ${DISTILL_TEST_ASSETS}/x\nb: ${DISTILL_TEST_UNSET:-/d}/y").unwrap();
        assert_eq!(t, "a: /assets/x\nb: /d/y\n");
        let e = expand_env("ok: 1\nb: ${DISTILL_TEST_UNSET}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("DISTILL_TEST_UNSET"),
            "{e}"
        );
    }
}
