//! The run folder: made or reused only as the user asked, held by one run at a time, and
//! written with the resolved config (what the run did, every default filled in).
//!
//! A run folder is marked as distill's (`.distill`) and locked while a run writes it
//! (`.distill.lock`, naming the run's pid, host and start). `--overwrite` removes only the
//! entries a run writes ([`RUN_ENTRIES`]), never anything else the folder holds. A run that
//! fails before training leaves no folder it made behind, and a folder that holds no
//! checkpoint or result from an earlier try does not block the next one.

use std::path::{Path, PathBuf};

use distill_files::container::{mark_container, remove_entries};
use distill_files::target::{check_folder_target, FolderPolicy, FolderState};
use distill_files::{write_file, Lock};

use crate::error::{Error, Result};

/// Every entry a run writes in its folder (a test runs both tasks and checks that nothing else
/// appears); `--overwrite` removes these and nothing else.
pub const RUN_ENTRIES: &[&str] = &[
    "config.yaml",
    "split.json",
    "metrics.jsonl",
    "checkpoints",
    "final",
    "teacher",
    "student",
    "scratch",
    "plots",
    "report.md",
    "report.json",
    "compressed",
    "auto",
];

/// Entries that hold work worth keeping: a folder with any of them is not started over
/// without `--overwrite`.
const PROGRESS: &[&str] = &["checkpoints", "final", "teacher", "student", "report.json"];

/// How the run treats an existing folder.
#[derive(Clone, Debug, Default)]
pub struct RunDirOptions {
    pub resume: bool,
    pub overwrite: bool,
    /// Paths the run reads (teacher, data, cache): the run folder may not be or hold one.
    pub inputs: Vec<PathBuf>,
}

/// A prepared run folder, locked for this process while the value lives.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    lock: Option<Lock>,
    /// This process made the folder: it is removed again if the run fails before training.
    made_here: bool,
}

impl RunDir {
    /// Prepares `path` for a run: a new folder is made; an existing one is continued
    /// (`resume`), cleared of what runs write (`overwrite`), or refused when it holds an
    /// earlier run's work. Takes the folder's lock; the run writes its config once it is
    /// final ([`Self::write_config`]).
    pub fn prepare(path: &Path, o: &RunDirOptions) -> Result<Self> {
        let policy = FolderPolicy {
            // A folder written before runs were marked is still a run folder to resume.
            overwrite: o.overwrite || o.resume,
            inputs: o.inputs.clone(),
        };
        let state = check_folder_target(path, &policy)?;
        if o.resume && matches!(state, FolderState::New | FolderState::Empty) {
            return Err(Error::Invalid(format!(
                "--resume: {} holds no run to continue; run without --resume to start one",
                path.display()
            )));
        }
        let made_here = state == FolderState::New;
        std::fs::create_dir_all(path).map_err(crate::error::io(path))?;
        let mut dir = Self {
            path: path.to_path_buf(),
            lock: None,
            made_here,
        };
        dir.lock = Some(Lock::acquire(path, "distill run")?);
        if !o.resume && state != FolderState::New {
            dir.clear_for_new_run(o.overwrite)?;
        }
        mark_container(path, "run")?;
        Ok(dir)
    }

    /// Training has begun: from here on the folder holds the run's progress and stays, even
    /// if the run fails.
    pub fn keep(&mut self) {
        self.made_here = false;
    }

    /// Removes what an earlier run wrote, when the user said `--overwrite` or when it holds no
    /// work worth keeping (a try that failed before its first checkpoint).
    fn clear_for_new_run(&self, overwrite: bool) -> Result<()> {
        let progress: Vec<&str> = PROGRESS
            .iter()
            .copied()
            .filter(|e| self.path.join(e).exists())
            .collect();
        if !overwrite && !progress.is_empty() {
            return Err(Error::Invalid(format!(
                "{} exists and holds an earlier run's {}: pass --resume to continue that run or --overwrite to start over",
                self.path.display(),
                progress.join(", ")
            )));
        }
        let removed = remove_entries(&self.path, RUN_ENTRIES)?;
        if !removed.is_empty() {
            tracing::info!(
                dir = %self.path.display(),
                removed = removed.join(", "),
                "starting the run over: removed what the earlier run wrote"
            );
        }
        Ok(())
    }

    /// Writes the resolved config (every default filled in, `auto` choices made) as
    /// `config.yaml`; a resumed run whose config changed says so.
    pub fn write_config(&self, cfg: &impl serde::Serialize, resume: bool) -> Result<()> {
        let resolved = serde_yaml::to_string(cfg).map_err(|e| Error::Job(e.to_string()))?;
        let path = self.path.join("config.yaml");
        if resume {
            if let Ok(old) = std::fs::read_to_string(&path) {
                if old != resolved {
                    tracing::warn!("the config differs from the one the run started with; continuing with the new one");
                }
            }
        }
        Ok(write_file(&path, resolved.as_bytes())?)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        // The lock goes first: its file is inside the folder.
        drop(self.lock.take());
        if self.made_here && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The local paths a run reads, for the run folder's checks.
pub fn local_inputs<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<PathBuf> {
    paths
        .into_iter()
        .filter(|p| !p.as_os_str().is_empty() && !p.to_string_lossy().starts_with("hf://"))
        .map(Path::to_path_buf)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(resume: bool, overwrite: bool) -> RunDirOptions {
        RunDirOptions {
            resume,
            overwrite,
            inputs: vec![],
        }
    }

    #[test]
    fn overwrite_removes_only_what_runs_write() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        let first = RunDir::prepare(&run, &opts(false, false)).unwrap();
        std::fs::create_dir(run.join("checkpoints")).unwrap();
        std::fs::write(run.join("notes.md"), "mine").unwrap();
        let mut first = first;
        first.keep();
        drop(first);
        let e = RunDir::prepare(&run, &opts(false, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--resume") && e.contains("checkpoints"), "{e}");
        let again = RunDir::prepare(&run, &opts(false, true)).unwrap();
        again.write_config(&2, false).unwrap();
        assert!(!run.join("checkpoints").exists());
        assert_eq!(
            std::fs::read_to_string(run.join("notes.md")).unwrap(),
            "mine"
        );
        assert_eq!(
            std::fs::read_to_string(run.join("config.yaml")).unwrap(),
            "2\n"
        );
        drop(again);
    }

    #[test]
    fn a_second_run_is_refused_while_the_first_holds_the_folder() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        let mut first = RunDir::prepare(&run, &opts(false, false)).unwrap();
        first.write_config(&1, false).unwrap();
        first.keep();
        for (resume, overwrite) in [(true, false), (false, true)] {
            let e = RunDir::prepare(&run, &opts(resume, overwrite))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("in use") && e.contains(&format!("pid {}", std::process::id())),
                "{e}"
            );
        }
        assert!(
            run.join("config.yaml").is_file(),
            "the first run's folder is intact"
        );
    }

    #[test]
    fn a_run_that_fails_before_training_leaves_no_folder_it_made() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        drop(RunDir::prepare(&run, &opts(false, false)).unwrap());
        assert!(!run.exists());
        // A folder left by a try that never checkpointed does not block the next one.
        std::fs::create_dir(&run).unwrap();
        mark_container(&run, "run").unwrap();
        std::fs::write(run.join("metrics.jsonl"), "").unwrap();
        let mut again = RunDir::prepare(&run, &opts(false, false)).unwrap();
        again.keep();
        assert!(!run.join("metrics.jsonl").exists());
        let e = RunDir::prepare(&d.path().join("new"), &opts(true, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no run"), "{e}");
        assert!(!d.path().join("new").exists());
    }
}
