//! The run folder: refused when it exists unless the run resumes or starts over, and the
//! resolved config written into it (what the run did, every default filled in).

use std::path::Path;

use distill_train::checkpoint::write_atomic;

use crate::error::{io, Error, Result};

/// Prepares `run_dir` for a run of `cfg`: `resume` continues an existing folder, `overwrite`
/// deletes it first; otherwise an existing folder is an error. Writes `config.yaml`.
pub fn prepare_run_dir(
    cfg: &impl serde::Serialize,
    run_dir: &Path,
    resume: bool,
    overwrite: bool,
) -> Result<()> {
    if run_dir.exists() {
        if overwrite {
            std::fs::remove_dir_all(run_dir).map_err(io(run_dir))?;
        } else if !resume {
            return Err(Error::Invalid(format!(
                "{} exists: pass --resume to continue that run or --overwrite to start over",
                run_dir.display()
            )));
        }
    } else if resume {
        return Err(Error::Invalid(format!(
            "--resume: {} does not exist",
            run_dir.display()
        )));
    }
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let resolved = serde_yaml::to_string(cfg).map_err(|e| Error::Job(e.to_string()))?;
    let path = run_dir.join("config.yaml");
    if resume {
        if let Ok(old) = std::fs::read_to_string(&path) {
            if old != resolved {
                tracing::warn!("the config differs from the one the run started with; continuing with the new one");
            }
        }
    }
    write_atomic(&path, resolved.as_bytes()).map_err(io(&path))
}
