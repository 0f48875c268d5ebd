//! `distill run CONFIG`: the job, with Ctrl-C as a stop request and progress on stderr.

use std::path::PathBuf;

use distill::{load_job, Launch, RunOptions, RunOutcome};

use crate::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// The run's YAML config.
    config: PathBuf,
    /// Continue the run from its newest checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start the run over in its existing folder: what an earlier run wrote there is removed
    /// (nothing else is), unless another run holds the folder.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let job = load_job(&a.config)?;
    // Under a launcher (WORLD_SIZE > 1) this process is one rank; rank 0 shows the progress.
    let launch = Launch::from_env()?;
    let progress = Progress::default();
    let observer = super::rank_observer(launch.as_ref(), &progress);
    let opts = RunOptions {
        resume: a.resume,
        overwrite: a.overwrite,
        observer,
        stop: crate::signals::stop_flag(),
        launch,
    };
    let compression = match distill::run(&job, &opts)? {
        RunOutcome::CausalLm(lm) if lm.rank != 0 => {
            tracing::info!(
                rank = lm.rank,
                steps = lm.steps,
                "rank done; rank 0 exports and reports"
            );
            return Ok(());
        }
        RunOutcome::CausalLm(lm) => {
            let (Some(report), Some(student)) = (&lm.report, &lm.student) else {
                crate::out!(
                    "interrupted at step {}; continue with: distill run {} --resume",
                    lm.steps,
                    a.config.display()
                )?;
                return Err(super::Stopped.into());
            };
            crate::out!("\n{}", report.table())?;
            if let Some(a) = &report.answers {
                crate::out!("{}", a.markdown())?;
            }
            crate::out!("report: {}", lm.run_dir.join("report.md").display())?;
            crate::out!("student: {}", student.display())?;
            lm.compression
        }
        RunOutcome::Classification(cls) => {
            let Some(report) = &cls.report else {
                crate::out!(
                    "{}; continue with: distill run {} --resume",
                    cls.interrupted.as_deref().unwrap_or("interrupted"),
                    a.config.display()
                )?;
                return Err(super::Stopped.into());
            };
            crate::out!("\n{}", report.markdown())?;
            crate::out!("report: {}", cls.run_dir.join("report.md").display())?;
            cls.compression
        }
    };
    if let Some(c) = compression {
        crate::out!("\n{}\n{}", c.table(), c.headline())?;
        crate::out!("compressed: {}", c.out.display())?;
    }
    Ok(())
}
