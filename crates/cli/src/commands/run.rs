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
    /// Delete an existing run folder of the same name and start over.
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
        stop: super::interrupt_flag(),
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
                println!(
                    "interrupted at step {}; continue with: distill run {} --resume",
                    lm.steps,
                    a.config.display()
                );
                return Ok(());
            };
            println!("\n{}", report.table());
            println!("report: {}", lm.run_dir.join("report.md").display());
            println!("student: {}", student.display());
            lm.compression
        }
        RunOutcome::Classification(cls) => {
            let Some(report) = &cls.report else {
                println!(
                    "{}; continue with: distill run {} --resume",
                    cls.interrupted.as_deref().unwrap_or("interrupted"),
                    a.config.display()
                );
                return Ok(());
            };
            println!("\n{}", report.markdown());
            println!("report: {}", cls.run_dir.join("report.md").display());
            cls.compression
        }
    };
    if let Some(c) = compression {
        println!("\n{}\n{}", c.table(), c.headline());
        println!("compressed: {}", c.out.display());
    }
    Ok(())
}
