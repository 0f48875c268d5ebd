//! The report of a causal-LM run, as data and as `report.md` / `report.json` / SVG curves:
//! teacher vs student — parameters, bytes on disk, validation perplexity, agreement, CPU
//! inference speed, training time.

use std::fmt::Write as _;
use std::path::Path;

use distill_train::checkpoint::write_atomic;
use distill_train::LearnOutcome;
use serde::Serialize;

use super::plot::line_plot;
use crate::error::{io, Result};

/// One model of the report.
#[derive(Clone, Debug, Serialize)]
pub struct ModelStats {
    pub name: String,
    pub parameters: usize,
    pub embedding_parameters: usize,
    pub bytes_on_disk: u64,
    pub val_ppl: Option<f64>,
    /// Full-sequence scoring throughput on this machine's CPU.
    pub tokens_per_second: f64,
}

/// Teacher against student after a causal-LM run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub run: String,
    pub teacher: ModelStats,
    pub student: ModelStats,
    pub top1_agreement: Option<f64>,
    pub val_kl: Option<f64>,
    pub steps: usize,
    pub train_tokens: u64,
    pub train_seconds: f64,
    pub train_tokens_per_second: f64,
    pub student_layers_from_teacher: Option<Vec<usize>>,
    pub loss: String,
    pub alpha: f64,
    pub temperature: f64,
}

fn millions(n: usize) -> String {
    format!("{:.2} M", n as f64 / 1e6)
}

fn mb(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

impl RunReport {
    /// The headline table (also what the binary prints at the end of a run).
    pub fn table(&self) -> String {
        let (t, s) = (&self.teacher, &self.student);
        let ppl = |p: Option<f64>| p.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into());
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}×", a / b)
            } else {
                "–".into()
            }
        };
        let mut md = String::new();
        let _ = writeln!(md, "| | teacher | student | student / teacher |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        let _ = writeln!(
            md,
            "| parameters | {} | {} | {} |",
            millions(t.parameters),
            millions(s.parameters),
            ratio(s.parameters as f64, t.parameters as f64)
        );
        let _ = writeln!(
            md,
            "| non-embedding parameters | {} | {} | {} |",
            millions(t.parameters - t.embedding_parameters),
            millions(s.parameters - s.embedding_parameters),
            ratio(
                (s.parameters - s.embedding_parameters) as f64,
                (t.parameters - t.embedding_parameters) as f64
            )
        );
        let _ = writeln!(
            md,
            "| bytes on disk | {} | {} | {} |",
            mb(t.bytes_on_disk),
            mb(s.bytes_on_disk),
            ratio(s.bytes_on_disk as f64, t.bytes_on_disk as f64)
        );
        let _ = writeln!(
            md,
            "| validation perplexity | {} | {} | |",
            ppl(t.val_ppl),
            ppl(s.val_ppl)
        );
        let _ = writeln!(
            md,
            "| CPU tokens/s (scoring) | {:.0} | {:.0} | {} |",
            t.tokens_per_second,
            s.tokens_per_second,
            ratio(s.tokens_per_second, t.tokens_per_second)
        );
        if let Some(a) = self.top1_agreement {
            let _ = writeln!(
                md,
                "| top-1 agreement with the teacher | | {:.1}% | |",
                100.0 * a
            );
        }
        if let Some(k) = self.val_kl {
            let _ = writeln!(md, "| KL(teacher ‖ student) per token | | {k:.3} | |");
        }
        md
    }

    pub fn markdown(&self) -> String {
        let mut md = format!("# Distillation report: {}\n\n{}\n", self.run, self.table());
        let _ = writeln!(
            md,
            "Training: {} steps, {} tokens in {:.1} min ({:.0} tokens/s), loss `{}` at T = {}, α = {}.",
            self.steps,
            self.train_tokens,
            self.train_seconds / 60.0,
            self.train_tokens_per_second,
            self.loss,
            self.temperature,
            self.alpha
        );
        if let Some(l) = &self.student_layers_from_teacher {
            let _ = writeln!(
                md,
                "\nStudent layers were initialised from teacher layers {l:?}."
            );
        }
        md.push_str(
            "\n![training loss](plots/loss.svg)\n\n![validation perplexity](plots/val_ppl.svg)\n",
        );
        md.push_str("\nPerplexity is over next-token predictions on held-out documents; throughput is full-sequence scoring in this run's block size, on this machine's CPU.\n");
        md
    }

    /// Writes `report.md`, `report.json` and `plots/*.svg` into `run_dir` (each through a
    /// temporary file).
    pub fn write(&self, run_dir: &Path, outcome: &LearnOutcome) -> Result<()> {
        let plots = run_dir.join("plots");
        std::fs::create_dir_all(&plots).map_err(io(&plots))?;
        let curve = |part: &str| -> Vec<(f64, f64)> {
            outcome
                .steps_log
                .iter()
                .filter_map(|r| r.part(part).map(|v| (r.step as f64, v as f64)))
                .collect()
        };
        let loss: Vec<(f64, f64)> = outcome
            .steps_log
            .iter()
            .map(|r| (r.step as f64, r.loss as f64))
            .collect();
        let soft = curve("soft");
        let mut series = vec![
            ("total loss", loss),
            ("cross-entropy (labels)", curve("hard")),
        ];
        if !soft.is_empty() {
            series.push(("soft-target loss", soft));
        }
        line_plot(
            &plots.join("loss.svg"),
            "training loss",
            "step",
            "loss",
            &series,
        )?;
        let val: Vec<(f64, f64)> = outcome
            .evals
            .iter()
            .filter_map(|e| e.get("val_ppl").map(|p| (e.step as f64, p)))
            .collect();
        let mut series = vec![("student", val.clone())];
        if let (Some(t), Some(first), Some(last)) = (self.teacher.val_ppl, val.first(), val.last())
        {
            series.push(("teacher", vec![(first.0.min(0.0), t), (last.0, t)]));
        }
        line_plot(
            &plots.join("val_ppl.svg"),
            "validation perplexity",
            "step",
            "perplexity",
            &series,
        )?;
        let write = |name: &str, data: &[u8]| -> Result<()> {
            let p = run_dir.join(name);
            write_atomic(&p, data).map_err(io(&p))
        };
        write("report.md", self.markdown().as_bytes())?;
        write(
            "report.json",
            &serde_json::to_vec_pretty(self).expect("a report serialises"),
        )?;
        Ok(())
    }
}
