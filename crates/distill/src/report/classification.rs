//! The report of a classification run, as data and as `report.md` / `report.json`: every
//! model read back from its exported folder and scored on the test split.

use distill_train::data::Skipped;
use distill_train::scoring::{ClassMetrics, Confusion};
use distill_train::LearnOutcome;
use serde::Serialize;

/// One model of the test-split table.
#[derive(Clone, Debug, Serialize)]
pub struct ModelRow {
    pub role: String,
    pub path: String,
    pub parameters: usize,
    pub bytes: u64,
    pub accuracy: f64,
    pub classes: Vec<ClassMetrics>,
    pub confusion: Confusion,
    /// Share of test messages where the prediction equals the teacher's.
    pub agreement_with_teacher: f64,
    pub latency_ms_b1: f64,
    pub msgs_per_s_b32: f64,
}

/// What the data was.
#[derive(Clone, Debug, Serialize)]
pub struct DataReport {
    pub labels: Vec<String>,
    pub examples: usize,
    pub per_class: Vec<usize>,
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub test: Vec<usize>,
    pub skipped: Vec<Skipped>,
    pub unknown_charset: usize,
    pub truncated: [usize; 3],
    pub max_length: usize,
}

/// One training stage, as the report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub steps: usize,
    pub evals: Vec<distill_train::EvalRecord>,
    /// The evaluation whose weights were kept.
    pub best: Option<distill_train::EvalRecord>,
    pub stopped_early: bool,
    pub interrupted: bool,
    pub seconds: f64,
    pub examples_per_second: f64,
    pub trainable_parameters: usize,
}

impl From<&LearnOutcome> for StageReport {
    fn from(o: &LearnOutcome) -> Self {
        Self {
            stage: o.stage.clone(),
            steps: o.steps,
            evals: o.evals.clone(),
            best: o.best.clone(),
            stopped_early: o.stopped_early,
            interrupted: o.interrupted,
            seconds: o.seconds,
            examples_per_second: o.units_per_second,
            trainable_parameters: o.trainable_parameters,
        }
    }
}

/// A classification run's report.
#[derive(Clone, Debug, Serialize)]
pub struct ClassificationReport {
    pub run: String,
    pub data: DataReport,
    pub models: Vec<ModelRow>,
    pub stages: Vec<StageReport>,
    pub threads: usize,
    pub wall_seconds: f64,
    pub summary: serde_json::Value,
    /// The `compress:` section's table and headline (its numbers are in
    /// `compressed/compress.json`).
    #[serde(skip)]
    pub compression: Option<super::CompressionSection>,
}

/// Flat keys for scripts: `teacher_acc`, `kd_acc`, `scratch_acc`, bytes, speed, F1 of the last
/// class (the positive one in a binary task).
pub fn summary(rows: &[ModelRow], labels: &[String]) -> serde_json::Value {
    let mut s = serde_json::Map::new();
    let positive = labels.len() - 1;
    for r in rows {
        let key = match r.role.as_str() {
            "teacher" => "teacher",
            "student (KD)" => "kd",
            _ => "scratch",
        };
        s.insert(format!("{key}_acc"), r.accuracy.into());
        s.insert(
            format!("{key}_f1_{}", labels[positive]),
            r.classes[positive].f1.into(),
        );
        s.insert(format!("{key}_params"), r.parameters.into());
        s.insert(format!("{key}_bytes"), r.bytes.into());
        s.insert(format!("{key}_latency_ms_b1"), r.latency_ms_b1.into());
        s.insert(format!("{key}_msgs_per_s_b32"), r.msgs_per_s_b32.into());
    }
    // The names scripts use for the distilled model.
    for k in ["bytes", "msgs_per_s_b32", "params", "latency_ms_b1"] {
        if let Some(v) = s.get(&format!("kd_{k}")).cloned() {
            s.insert(format!("student_{k}"), v);
        }
    }
    serde_json::Value::Object(s)
}

impl ClassificationReport {
    pub fn markdown(&self) -> String {
        let r = self;
        let mut md = format!("# {} — classification report\n\n", r.run);
        md += "Test split, models read back from their exported folders; speed on the CPU with ";
        md += &format!("{} threads.\n\n", r.threads);
        md += "| model | params | bytes | accuracy | ";
        md += &r
            .data
            .labels
            .iter()
            .map(|l| format!("F1 {l}"))
            .collect::<Vec<_>>()
            .join(" | ");
        md +=
            " | agrees with teacher | ms/msg (batch 1) | msgs/s (batch 32) |\n|---|---:|---:|---:|";
        md += &"---:|".repeat(r.data.labels.len());
        md += "---:|---:|---:|\n";
        for m in &r.models {
            md += &format!(
                "| {} | {:.2} M | {:.1} MB | {:.4} | {} | {:.4} | {:.2} | {:.1} |\n",
                m.role,
                m.parameters as f64 / 1e6,
                m.bytes as f64 / 1e6,
                m.accuracy,
                m.classes
                    .iter()
                    .map(|c| format!("{:.4}", c.f1))
                    .collect::<Vec<_>>()
                    .join(" | "),
                m.agreement_with_teacher,
                m.latency_ms_b1,
                m.msgs_per_s_b32
            );
        }
        for m in &r.models {
            md += &format!(
                "\nConfusion, {} (rows: true class):\n\n```\n{}```\n",
                m.role,
                m.confusion.table()
            );
        }
        md += "\n## Data\n\n";
        md += &format!(
            "{} examples ({}), split train {:?} / validation {:?} / test {:?} per class.\n",
            r.data.examples,
            r.data
                .labels
                .iter()
                .zip(&r.data.per_class)
                .map(|(l, n)| format!("{l} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.data.train,
            r.data.validation,
            r.data.test
        );
        md += &format!(
            "Truncated to {} tokens: {} train, {} validation, {} test. Unknown charsets (decoded as UTF-8 with replacements): {}. Inputs that could not be decoded: {}.\n",
            r.data.max_length, r.data.truncated[0], r.data.truncated[1], r.data.truncated[2], r.data.unknown_charset, r.data.skipped.len()
        );
        for s in &r.data.skipped {
            md += &format!("- `{}`: {}\n", s.id, s.reason);
        }
        md += "\n## Training\n\n| stage | steps | best step | best val acc | stopped early | seconds | examples/s |\n|---|---:|---:|---:|---|---:|---:|\n";
        for s in &r.stages {
            md += &format!(
                "| {} | {} | {} | {:.4} | {} | {:.0} | {:.1} |\n",
                s.stage,
                s.steps,
                s.best.as_ref().map(|b| b.step).unwrap_or(0),
                s.best
                    .as_ref()
                    .and_then(|b| b.get("val_acc"))
                    .unwrap_or(0.0),
                s.stopped_early,
                s.seconds,
                s.examples_per_second
            );
        }
        md += &format!("\nWall time of the whole run: {:.0} s.\n", r.wall_seconds);
        if let Some(c) = &r.compression {
            md += &c.markdown();
        }
        md
    }

    /// Writes `report.json` and `report.md` into `run_dir`.
    pub fn write(&self, run_dir: &std::path::Path) -> crate::error::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("a report serialises");
        distill_files::write_file(&run_dir.join("report.json"), &json)?;
        distill_files::write_file(&run_dir.join("report.md"), self.markdown().as_bytes())?;
        Ok(())
    }
}
