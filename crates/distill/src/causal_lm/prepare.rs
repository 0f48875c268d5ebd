//! The first stage: the config resolved once (a resumed `batch_size: auto` run takes the batch
//! it started with), this process's device and place in a data-parallel group, and — on rank 0
//! — the run folder made, locked and given the config.

use std::path::{Path, PathBuf};

use distill_teacher::LoadOptions;
use distill_train::parallel::Communicator;

use crate::error::Result;
use crate::group::load_and_join;
use crate::job::RunConfig;
use crate::options::RunOptions;
use crate::run_dir::{local_inputs, RunDir, RunDirOptions};

/// A run ready for its teacher: what every later stage reads.
pub(crate) struct Prepared {
    /// The config as the run trains it.
    pub(crate) cfg: RunConfig,
    pub(crate) run_dir: PathBuf,
    /// The locked run folder (rank 0 alone holds it).
    pub(crate) folder: Option<RunDir>,
    pub(crate) load: LoadOptions,
    pub(crate) comm: Option<Box<dyn Communicator>>,
    pub(crate) rank: usize,
    pub(crate) resume: bool,
}

impl Prepared {
    pub(crate) fn comm(&self) -> Option<&dyn Communicator> {
        self.comm.as_deref()
    }

    /// Training begins: the folder now keeps whatever happens.
    pub(crate) fn keep_folder(&mut self) {
        if let Some(f) = self.folder.as_mut() {
            f.keep();
        }
    }
}

/// Resolves `cfg`, joins the group and (on rank 0) prepares the run folder; the other ranks
/// wait until it is there.
pub(crate) fn prepare(cfg: &RunConfig, opts: &RunOptions) -> Result<Prepared> {
    let run_dir = cfg.run_dir();
    let cfg = resolve(cfg, opts);
    let (load, comm) = load_and_join(&cfg.teacher, opts.launch.as_ref())?;
    let rank = comm.as_ref().map_or(0, |c| c.rank());
    let folder = if rank == 0 {
        Some(RunDir::prepare(
            &run_dir,
            &RunDirOptions {
                resume: opts.resume,
                overwrite: opts.overwrite,
                inputs: inputs(&cfg),
            },
        )?)
    } else {
        None
    };
    if let Some(c) = &comm {
        // The others start once the folder is there (and an old one is gone).
        c.barrier()?;
    }
    Ok(Prepared {
        cfg,
        run_dir,
        folder,
        load,
        comm,
        rank,
        resume: opts.resume,
    })
}

/// The local paths the run reads: the run folder may not be or hold one.
fn inputs(cfg: &RunConfig) -> Vec<PathBuf> {
    let mut inputs = vec![Path::new(&cfg.teacher.source)];
    inputs.extend(cfg.data.source.paths());
    if let Some(c) = &cfg.teacher.cache {
        inputs.push(Path::new(c.dir()));
    }
    local_inputs(inputs)
}

/// The config the run trains with: for a resumed run with `batch_size: auto`, the batch size
/// the run chose when it started (its `config.yaml`), so that it reads the data it would have.
fn resolve(cfg: &RunConfig, opts: &RunOptions) -> RunConfig {
    let mut cfg = cfg.clone();
    if !(opts.resume && cfg.train.batch_auto) {
        return cfg;
    }
    let started = std::fs::read_to_string(cfg.run_dir().join("config.yaml"))
        .ok()
        .and_then(|text| crate::parse_job(&text).ok());
    if let Some(crate::Job::CausalLm(started)) = started {
        if !started.train.batch_auto {
            tracing::info!(
                batch_size = started.train.batch_size,
                "batch_size auto: the batch the run started with"
            );
            cfg.train.batch_size = started.train.batch_size;
            cfg.train.batch_auto = false;
        }
    }
    cfg
}
