//! Checkpoints: weights, optimiser moments and trainer state, written into a temporary folder
//! that is renamed into place, with `latest` naming the newest complete one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Trainer state saved beside the weights. The data position is a function of `step` (the
/// block order of every epoch is drawn from the seed), so the step is all that is needed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub tokens_seen: u64,
    pub elapsed_seconds: f64,
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_sibling(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A temporary name beside `path` (same folder, so the rename is atomic).
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

pub fn checkpoint_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:06}"))
}

/// The newest complete checkpoint of a run, if any.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(run_dir.join("checkpoints").join("latest")).ok()?;
    let dir = run_dir.join("checkpoints").join(name.trim());
    dir.join("state.json").is_file().then_some(dir)
}

/// Marks `dir` as the newest checkpoint and deletes all but the newest `keep`.
pub fn publish(run_dir: &Path, dir: &Path, keep: usize) -> std::io::Result<()> {
    let root = run_dir.join("checkpoints");
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_atomic(&root.join("latest"), name.as_bytes())?;
    let mut all: Vec<PathBuf> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    all.sort();
    while all.len() > keep {
        let old = all.remove(0);
        if old != dir {
            std::fs::remove_dir_all(&old)?;
        }
    }
    Ok(())
}
