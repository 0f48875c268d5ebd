//! `distill cache-teacher CONFIG`: run the teacher once and keep its top-k targets for the
//! run (`teacher.cache`); run it again after an interruption to finish.

use std::path::PathBuf;

use distill::{load_job, Job, Launch, RunOptions};

use crate::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// The run's YAML config (a causal-LM run with `teacher.cache`).
    config: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let Job::CausalLm(cfg) = load_job(&a.config)? else {
        anyhow::bail!(
            "{}: cache-teacher caches a causal-LM teacher; this is a classification run",
            a.config.display()
        );
    };
    // Under a launcher this process is one rank; rank 0 shows the progress and the result.
    let launch = Launch::from_env()?;
    let progress = Progress::default();
    let observer = super::rank_observer(launch.as_ref(), &progress);
    let opts = RunOptions {
        observer,
        stop: crate::signals::stop_flag(),
        launch,
        ..RunOptions::default()
    };
    let out = distill::teacher_cache::cache_teacher(&cfg, &opts)?;
    if out.rank != 0 {
        tracing::info!(
            rank = out.rank,
            shards = out.shards_made,
            "rank done; rank 0 records the cache"
        );
        return Ok(());
    }
    if let Some(made) = &out.answers {
        crate::out!(
            "teacher answers: {} prompts answered in this session ({} new tokens, {} cut at the token budget) in {:.0} s",
            made.answered,
            made.new_tokens,
            made.cut,
            made.seconds
        )?;
    }
    let Some(manifest) = out.manifest.as_ref().filter(|_| !out.interrupted) else {
        let done = out
            .manifest
            .as_ref()
            .map_or("the teacher was still answering".to_string(), |m| {
                format!("{} of {} shards", m.shards_done(), m.shard_count())
            });
        crate::out!(
            "interrupted ({done}); finish with: distill cache-teacher {}",
            a.config.display()
        )?;
        return Err(super::Stopped.into());
    };
    let layout = &manifest.layout;
    crate::out!(
        "teacher cache: {} ({} positions, top-{} at {} bits, {} bytes per position, {:.1} MB; {} shards made in {:.0} s)",
        out.dir.display(),
        out.positions,
        layout.top_k,
        layout.logprob_bits,
        layout.record_bytes,
        out.bytes as f64 / 1e6,
        out.shards_made,
        out.seconds
    )?;
    crate::out!("train from it with: distill run {}", a.config.display())?;
    Ok(())
}
