//! The metrics log: one JSON line per optimiser step (`kind: train`) and per evaluation
//! (`kind: eval`), appended to `metrics.jsonl`. A resumed stage first drops its own lines past
//! the checkpoint's step (the steps it will train again); other stages' lines stay.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{io_err, TrainError};
use crate::records::{EvalRecord, StepRecord};

/// An open metrics log, or none (no path, or a rank that does not write).
pub(crate) struct MetricsLog {
    file: Option<(std::fs::File, PathBuf)>,
}

impl MetricsLog {
    /// Opens `path` for `stage`, resumed at `step` (0 for a fresh stage).
    pub(crate) fn open(path: Option<&Path>, stage: &str, step: usize) -> Result<Self, TrainError> {
        let Some(p) = path else {
            return Ok(Self { file: None });
        };
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        truncate_metrics(p, stage, step).map_err(io_err(p))?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(io_err(p))?;
        Ok(Self {
            file: Some((f, p.to_path_buf())),
        })
    }

    pub(crate) fn step(&mut self, record: &StepRecord) -> Result<(), TrainError> {
        self.line("train", record)
    }

    pub(crate) fn eval(&mut self, record: &EvalRecord) -> Result<(), TrainError> {
        self.line("eval", record)
    }

    fn line(&mut self, kind: &str, record: &impl Serialize) -> Result<(), TrainError> {
        let Some((f, path)) = self.file.as_mut() else {
            return Ok(());
        };
        let mut v = serde_json::to_value(record).expect("record serialises");
        v["kind"] = serde_json::json!(kind);
        writeln!(f, "{v}").map_err(io_err(path))
    }
}

/// Drops metric lines of `stage` past `step` (they belong to steps a resume will redo).
fn truncate_metrics(path: &Path, stage: &str, step: usize) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: String = text
        .lines()
        .filter(|l| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                return false;
            };
            let ours = v
                .get("stage")
                .and_then(|s| s.as_str())
                .is_none_or(|s| s == stage);
            !ours
                || v.get("step")
                    .and_then(|s| s.as_u64())
                    .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    distill_files::write_file(path, kept.as_bytes()).map_err(std::io::Error::other)
}
