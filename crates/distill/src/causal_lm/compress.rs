//! The compression stage: the run's `compress:` section on the student it just trained, with
//! the run's own blocks and settings (no second split or tokenisation), then the edge artifact
//! — the smallest GGUF variant within the headline's quality budget — measured as a runtime
//! runs it.

use std::path::PathBuf;

use candle_core::DType;
use distill_compress::framework::pipeline::{smallest_within_budget, Row};
use distill_compress::CompressConfig;
use distill_teacher::{Teacher, TeacherSource};
use distill_train::data::BlockSet;
use distill_train::scoring::{agreement, perplexity, scoring_speed, top1_tokens};

use super::data::RunData;
use super::report::Exported;
use crate::compression::lm::LmData;
use crate::compression::{self, Compression};
use crate::error::{Context, Result};
use crate::job::RunConfig;
use crate::options::RunOptions;
use crate::report::compress::Reference;
use crate::report::{ArtifactStats, ModelStats, RunReport};

/// What the compression stage needs from the run.
pub(crate) struct ToCompress<'a> {
    pub(crate) cfg: &'a RunConfig,
    pub(crate) section: &'a CompressConfig,
    pub(crate) exported: &'a Exported,
    pub(crate) data: RunData,
    /// The teacher's top-1 tokens on the report's validation blocks (for the artifact's
    /// agreement), taken before the teacher was let go to make room.
    pub(crate) teacher_top1: Option<Vec<Vec<u32>>>,
    /// Blocks the report measures on, and the batch it scores speed in.
    pub(crate) report_blocks: usize,
    pub(crate) batch: usize,
}

/// Runs the section into `RUN/compressed` and measures the artifact; the report's teacher
/// is marked on the plot.
pub(crate) fn run(
    t: ToCompress,
    run_dir: &std::path::Path,
    report: &RunReport,
    opts: &RunOptions,
) -> Result<(Compression, Option<ArtifactStats>)> {
    let RunData { train, valid, .. } = t.data;
    let blocks: Vec<Vec<u32>> = valid.blocks[..t.report_blocks].to_vec();
    let data = LmData {
        train,
        valid: valid.clone(),
        eval_blocks: t.section.eval_blocks,
        calibration_blocks: t.section.calibration_blocks,
    };
    let mut prepared = compression::lm::for_trained(&t.exported.dir, t.cfg, data, opts)?;
    prepared.teacher = report.teacher.val_ppl.map(|q| Reference {
        name: "teacher".into(),
        bytes: report.teacher.bytes_on_disk,
        quality: q,
    });
    let done = compression::run(&prepared, t.section, &run_dir.join("compressed"))?;
    drop(prepared);
    let artifact = measure_artifact(&done, &blocks, t.teacher_top1.as_deref(), &valid, t.batch)?;
    Ok((done, artifact))
}

/// The edge artifact of a compress section — its smallest GGUF file within the headline's
/// quality budget — measured as a runtime runs it (quantised matrices through QMatMul) on the
/// report's validation `blocks`: perplexity, agreement with the teacher's `teacher_top1`
/// tokens, scoring speed.
fn measure_artifact(
    c: &Compression,
    blocks: &[Vec<u32>],
    teacher_top1: Option<&[Vec<u32>]>,
    valid: &BlockSet,
    batch: usize,
) -> Result<Option<ArtifactStats>> {
    let is_gguf = |r: &Row| r.artifact.as_deref().is_some_and(|p| p.ends_with(".gguf"));
    let Some(row) = smallest_within_budget(&c.outcome.rows, is_gguf) else {
        tracing::warn!(
            "no GGUF variant is within 3% of the student's perplexity: the report has no artifact"
        );
        return Ok(None);
    };
    let path = row
        .artifact
        .as_deref()
        .expect("a GGUF row has its artifact");
    let q = Teacher::load(
        &TeacherSource::Gguf(PathBuf::from(path)),
        &distill_teacher::LoadOptions {
            device: candle_core::Device::Cpu,
            dtype: DType::F32,
            gguf_mode: distill_teacher::GgufCompute::Quantized,
            ..Default::default()
        },
    )?;
    let (m, cfg) = q.language_model().context("compress artifact")?;
    let (ppl, _) = perplexity(m, blocks.iter().map(Vec::as_slice))?;
    let top1 = match teacher_top1 {
        Some(t) => Some(agreement(
            &top1_tokens(m, blocks.iter().map(Vec::as_slice))?,
            t,
        )),
        None => None,
    };
    Ok(Some(ArtifactStats {
        stats: ModelStats {
            name: path.to_string(),
            parameters: cfg.param_count(),
            embedding_parameters: cfg.vocab_size * cfg.hidden_size,
            bytes_on_disk: std::fs::metadata(path)
                .map(|m| m.len())
                .unwrap_or(row.bytes),
            val_ppl: Some(ppl),
            val_bits_per_byte: Some(crate::eval::bits_per_byte_at(
                ppl,
                blocks,
                &q.tokenizer.byte_lengths(),
            )),
            tokens_per_second: scoring_speed(m, valid, batch)?,
        },
        top1_agreement: top1,
        steps: row.steps.clone(),
    }))
}
