//! `distill run CONFIG`: the job, with Ctrl-C as a stop request and progress on stderr.

use std::path::PathBuf;

use distill::{load_job, RunOptions, RunOutcome};

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
    let progress = Progress::default();
    let opts = RunOptions {
        resume: a.resume,
        overwrite: a.overwrite,
        observer: &progress,
        stop: super::interrupt_flag(),
    };
    let compression = match distill::run(&job, &opts)? {
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
