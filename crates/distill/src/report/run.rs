//! The report of a causal-LM run, as data and as `report.md` / `report.json` / SVG curves:
//! teacher vs student — parameters, bytes on disk, validation perplexity, agreement, CPU
//! inference speed, training time.

use std::fmt::Write as _;
use std::path::Path;

use distill_files::write_file;
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
    /// The same validation in bits per byte of text: comparable across tokenizers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_bits_per_byte: Option<f64>,
    /// Full-sequence scoring throughput on this machine's CPU.
    pub tokens_per_second: f64,
}

/// The edge artifact of a run's `compress:` section (its smallest GGUF file within the quality
/// budget), measured on the same validation blocks as teacher and student.
#[derive(Clone, Debug, Serialize)]
pub struct ArtifactStats {
    /// `name` is the file's path.
    pub stats: ModelStats,
    pub top1_agreement: Option<f64>,
    /// The compression steps that made it.
    pub steps: Vec<String>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactStats>,
    /// The student's vocabulary, when trimmed to the corpus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab: Option<crate::vocab::VocabStats>,
    /// The student's ids under a wider teacher head (`distill.vocab: shared`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_vocab: Option<crate::vocab::SharedVocabStats>,
    /// The tokenizers met and aligned (`distill.vocab: cross`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_vocab: Option<crate::cross::CrossStats>,
    /// Chat data: the student's answers to held-out prompts, judged by the teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<crate::eval::AnswerEval>,
    /// The `compress:` section's table and headline (its numbers are in
    /// `compressed/compress.json`).
    #[serde(skip)]
    pub compression: Option<super::CompressionSection>,
}

/// The headline table's two header lines, for the columns `names` beside the teacher's.
fn table_header(names: &[&str]) -> String {
    let ratios: Vec<String> = names.iter().map(|n| format!("{n} / teacher")).collect();
    format!(
        "| | teacher | {} | {} |\n|---|---:|{}\n",
        names.join(" | "),
        ratios.join(" | "),
        "---:|".repeat(2 * names.len())
    )
}

fn millions(n: usize) -> String {
    format!("{:.2} M", n as f64 / 1e6)
}

fn mb(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

impl RunReport {
    /// The headline table (also what the binary prints at the end of a run): teacher, student
    /// and, after a `compress:` section, the artifact, each beside its ratio to the teacher.
    pub fn table(&self) -> String {
        let t = &self.teacher;
        let mut cols: Vec<(&str, &ModelStats, Option<f64>)> =
            vec![("student", &self.student, self.top1_agreement)];
        if let Some(a) = &self.artifact {
            cols.push(("artifact", &a.stats, a.top1_agreement));
        }
        let ppl = |p: Option<f64>| p.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into());
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}×", a / b)
            } else {
                "–".into()
            }
        };
        let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
        let mut md = table_header(&names);
        let mut line = |label: &str,
                        value: &dyn Fn(&ModelStats) -> String,
                        r: Option<&dyn Fn(&ModelStats) -> f64>| {
            let values: Vec<String> = cols.iter().map(|c| value(c.1)).collect();
            let ratios: Vec<String> = cols
                .iter()
                .map(|c| r.map(|f| ratio(f(c.1), f(t))).unwrap_or_default())
                .collect();
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} |",
                value(t),
                values.join(" | "),
                ratios.join(" | ")
            );
        };
        line(
            "parameters",
            &|m| millions(m.parameters),
            Some(&|m| m.parameters as f64),
        );
        line(
            "non-embedding parameters",
            &|m| millions(m.parameters - m.embedding_parameters),
            Some(&|m| (m.parameters - m.embedding_parameters) as f64),
        );
        line(
            "bytes on disk",
            &|m| mb(m.bytes_on_disk),
            Some(&|m| m.bytes_on_disk as f64),
        );
        line("validation perplexity", &|m| ppl(m.val_ppl), None);
        line(
            "validation bits per byte",
            &|m| {
                m.val_bits_per_byte
                    .map_or(String::new(), |b| format!("{b:.4}"))
            },
            None,
        );
        line(
            "CPU tokens/s (scoring)",
            &|m| format!("{:.0}", m.tokens_per_second),
            Some(&|m| m.tokens_per_second),
        );
        if cols.iter().any(|c| c.2.is_some()) {
            let a: Vec<String> = cols
                .iter()
                .map(|c| {
                    c.2.map(|a| format!("{:.1}%", 100.0 * a))
                        .unwrap_or_else(|| "–".into())
                })
                .collect();
            let _ = writeln!(
                md,
                "| top-1 agreement with the teacher | | {} |{}",
                a.join(" | "),
                " |".repeat(cols.len())
            );
        }
        if let Some(k) = self.val_kl {
            let _ = writeln!(
                md,
                "| KL(teacher ‖ student) per token | | {k:.3} |{}",
                " |".repeat(2 * cols.len() - 1)
            );
        }
        if let Some(a) = &self.artifact {
            let _ = writeln!(
                md,
                "\nThe artifact is `{}` ({}), run as a runtime runs it (quantised matrices), on the same validation blocks.",
                a.stats.name,
                a.steps.join(" → ")
            );
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
        if let Some(v) = &self.shared_vocab {
            let mass = v.teacher_mass_outside.map_or(String::new(), |m| {
                format!(
                    " The teacher put {:.4}% of its probability on the rows left out (mean over {} validation positions); its distribution is renormalised over the shared ids.",
                    100.0 * m,
                    v.mass_positions
                )
            });
            let _ = writeln!(
                md,
                "\nShared vocabulary: the student's {} ids map to {} of the teacher's {} head rows.{mass}",
                v.student_ids, v.mapped, v.teacher_rows
            );
        }
        if let Some(v) = &self.vocab {
            let _ = writeln!(
                md,
                "\nVocabulary trimmed to the training documents: {} of {} ids kept ({} used by the corpus's {} tokens at least {} time(s), {} special, {} bytes, {} for the chat template, {} listed, {} merge intermediates); {} of {} merges kept.{}",
                v.kept,
                v.full,
                v.kept_for.corpus,
                v.corpus_tokens,
                v.min_count,
                v.kept_for.special,
                v.kept_for.bytes,
                v.kept_for.template,
                v.kept_for.listed,
                v.kept_for.merges,
                v.merges_after,
                v.merges_before,
                if v.corpus_tokenisation_exact {
                    " The trimmed tokenizer splits every training document exactly as the full one; the teacher's distribution is renormalised over the kept ids, and its perplexity here is over them."
                } else {
                    ""
                }
            );
        }
        md.push_str(
            "\n![training loss](plots/loss.svg)\n\n![validation perplexity](plots/val_ppl.svg)\n",
        );
        md.push_str("\nPerplexity is over next-token predictions on held-out documents; throughput is full-sequence scoring in this run's block size, on this machine's CPU.\n");
        if let Some(a) = &self.answers {
            md.push_str("\n## Answers on held-out prompts\n\n");
            md.push_str(&a.markdown());
        }
        if let Some(c) = &self.compression {
            md.push_str(&c.markdown());
        }
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
            false,
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
            true,
        )?;
        let write = |name: &str, data: &[u8]| -> Result<()> {
            let p = run_dir.join(name);
            write_file(&p, data).map_err(crate::error::Error::from)
        };
        write("report.md", self.markdown().as_bytes())?;
        write(
            "report.json",
            &serde_json::to_vec_pretty(self).expect("a report serialises"),
        )?;
        Ok(())
    }
}
