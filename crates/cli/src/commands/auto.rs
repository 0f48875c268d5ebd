//! `distill auto RUN.yaml --budget ppl:+5%`: the smallest GGUF artifact of the run's student
//! within a quality budget, found by measuring candidates.

use std::path::PathBuf;

use distill::auto::{run_auto, Budget, Target};
use distill::{load_job, RunOptions};

use crate::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// The run config whose data measures and heals (its `auto:` section, if any, sets the
    /// search space and the evaluation budget).
    config: PathBuf,
    /// Quality the artifact may give up against the uncompressed student: ppl:+N% (causal
    /// LM) or acc:-Npt (classifier).
    #[arg(long)]
    budget: String,
    /// Also reach bytes:N[K|M|G] (then: the best quality that fits) or tokens_per_s:N.
    #[arg(long)]
    target: Option<String>,
    /// The model to search (default: the run's trained student, RUN/final or RUN/student).
    #[arg(long)]
    model: Option<String>,
    /// Where auto.gguf and the reports go (default: RUN/auto): a new or empty folder, or one
    /// distill wrote.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write into an --out folder distill did not make (only the files distill writes are
    /// replaced).
    #[arg(long)]
    overwrite: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let budget = Budget::parse(&a.budget)?;
    let target = a.target.as_deref().map(Target::parse).transpose()?;
    let job = load_job(&a.config)?;
    let progress = Progress::default();
    let opts = RunOptions {
        observer: &progress,
        stop: crate::signals::stop_flag(),
        overwrite: a.overwrite,
        ..RunOptions::default()
    };
    let r = run_auto(
        &job,
        a.model.as_deref(),
        budget,
        target,
        a.out.as_deref(),
        &opts,
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", a.config.display()))?;
    if a.json {
        crate::out!("{}", serde_json::to_string_pretty(&r.outcome)?)?;
    } else {
        crate::out!("{}", distill::report::auto::verdict(&r.outcome))?;
        crate::out!("report: {}", r.out.join("auto.md").display())?;
    }
    Ok(())
}
