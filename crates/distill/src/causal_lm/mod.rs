//! A causal-LM job as stages that hand their output forward: prepare (the config resolved,
//! the group joined, the run folder made and locked) → teacher → data → student → train →
//! export → compress (the `compress:` section) → report, written once. Each stage is a
//! function of what the earlier ones produced, in its own file.

pub(crate) mod across;
mod compress;
mod data;
mod importance;
mod prepare;
mod report;
mod student;
mod teacher;
mod train;

use std::path::PathBuf;

use distill_train::config::VocabMode;
use distill_train::scoring::top1_tokens;

use crate::compression::Compression;
use crate::error::Result;
use crate::job::RunConfig;
use crate::options::RunOptions;
use crate::report::{CompressionSection, RunReport};

use report::Compared;
use teacher::TeacherSide;

/// What a causal-LM run produced.
#[derive(Debug)]
pub struct LmRun {
    pub run_dir: PathBuf,
    /// This process's rank in its data-parallel group (0 when it trained alone); only rank 0
    /// exports, reports and compresses.
    pub rank: usize,
    /// Steps trained, over all sessions of the run.
    pub steps: usize,
    /// Stopped by the stop flag (a checkpoint was written; `--resume` continues).
    pub interrupted: bool,
    /// The report, unless interrupted.
    pub report: Option<RunReport>,
    /// The exported student (Hugging Face layout), unless interrupted.
    pub student: Option<PathBuf>,
    pub compression: Option<Compression>,
}

/// Runs a causal-LM job.
///
/// As one rank of a data-parallel group (`opts.launch`), it trains its share of every batch on
/// the device of its `LOCAL_RANK`; rank 0 alone prepares the run folder, writes checkpoints and
/// metrics, and exports, reports and compresses the student, while the other ranks return after
/// training (their [`LmRun::rank`] is not 0 and they have no report).
pub fn run(cfg: &RunConfig, opts: &RunOptions) -> Result<LmRun> {
    let mut run = prepare::prepare(cfg, opts)?;
    let teacher = TeacherSide::load(&run)?;
    let data = match run.cfg.distill.vocab {
        VocabMode::Cross => across::build(&run, &teacher)?,
        _ => data::build(&run, &teacher)?,
    };
    let student = student::build(&run, &teacher, &data)?;
    let view = teacher.view(data.kept())?;
    let trained = train::fit(&mut run, view.lm(), &data, &student, opts)?;
    if trained.outcome.interrupted || run.rank != 0 {
        return Ok(LmRun {
            run_dir: run.run_dir,
            rank: run.rank,
            steps: trained.outcome.steps,
            interrupted: trained.outcome.interrupted,
            report: None,
            student: None,
            compression: None,
        });
    }
    let exported = report::export(run.run_dir.join("final"), &student, &teacher, &data)?;
    let compared = Compared {
        teacher: &teacher,
        teacher_lm: view.lm(),
        student: &student,
        exported: &exported,
    };
    let mut report = report::build(&run.cfg, &data, &trained, &compared)?;
    report.answers = report::answers(&run.load, &teacher, &exported, &data)?;
    let compression = match &run.cfg.compress {
        None => None,
        Some(section) => {
            let report_blocks = trained.training.eval_block_count(data.valid.len());
            let teacher_top1 = view
                .lm()
                .map(|lm| {
                    top1_tokens(
                        lm,
                        data.valid.blocks[..report_blocks].iter().map(Vec::as_slice),
                    )
                })
                .transpose()?;
            // The teacher makes room for compression.
            drop(view);
            drop(teacher);
            let stage = compress::ToCompress {
                cfg: &run.cfg,
                section,
                exported: &exported,
                data,
                teacher_top1,
                report_blocks,
                batch: trained.training.batch_size,
            };
            let done = compress::run(stage, &run.run_dir, &report, opts);
            Some(done)
        }
    };
    let compression = match compression {
        Some(Ok((done, artifact))) => {
            report.artifact = artifact;
            report.compression = Some(CompressionSection::of(&done));
            Some(done)
        }
        Some(Err(e)) => {
            // The training's report is kept; the compression error is the run's.
            report.write(&run.run_dir, &trained.outcome)?;
            return Err(e);
        }
        None => None,
    };
    report.write(&run.run_dir, &trained.outcome)?;
    Ok(LmRun {
        run_dir: run.run_dir,
        rank: run.rank,
        steps: trained.outcome.steps,
        interrupted: false,
        report: Some(report),
        student: Some(exported.dir),
        compression,
    })
}
