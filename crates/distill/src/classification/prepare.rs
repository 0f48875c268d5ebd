//! The first stage: one process (a classification run's stages do not split over a group),
//! the run folder made, locked and given the config, and the load options.

use std::path::{Path, PathBuf};

use candle_core::Device;
use distill_teacher::LoadOptions;

use crate::error::{Context, Error, Result};
use crate::job::ClassifyConfig;
use crate::options::RunOptions;
use crate::run_dir::{local_inputs, RunDir, RunDirOptions};

/// A classification run ready for its data.
pub(crate) struct Prepared<'c> {
    pub(crate) cfg: &'c ClassifyConfig,
    pub(crate) run_dir: PathBuf,
    pub(crate) folder: RunDir,
    pub(crate) load: LoadOptions,
    pub(crate) device: Device,
    /// The dtype exported weights are written in (`output.dtype`).
    pub(crate) export_dtype: candle_core::DType,
}

pub(crate) fn prepare<'c>(cfg: &'c ClassifyConfig, opts: &RunOptions) -> Result<Prepared<'c>> {
    if opts.launch.is_some() {
        // Its stages (fine-tuning, distillation, the labels-only baseline) train in one process.
        return Err(Error::Invalid(
            "a classification run trains in one process: run it without a launcher (WORLD_SIZE unset or 1)".into(),
        ));
    }
    let run_dir = cfg.run_dir();
    let folder = RunDir::prepare(
        &run_dir,
        &RunDirOptions {
            resume: opts.resume,
            overwrite: opts.overwrite,
            inputs: local_inputs([Path::new(&cfg.teacher.source), cfg.data.source.path()]),
        },
    )?;
    folder.write_config(cfg, opts.resume)?;
    let load = cfg.teacher.load_options().context("teacher")?;
    Ok(Prepared {
        cfg,
        run_dir,
        folder,
        device: load.device.clone(),
        load,
        export_dtype: cfg.export_dtype(),
    })
}
