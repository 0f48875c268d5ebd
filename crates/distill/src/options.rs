//! How a job runs: resume or start over, who hears about progress, what stops it, and the
//! data-parallel group it belongs to.

use distill_train::parallel::Launch;
use distill_train::{Observer, Silent, StopFlag};

/// How a job runs.
pub struct RunOptions<'a> {
    /// Continue the run from its newest checkpoints.
    pub resume: bool,
    /// Delete an existing run folder of the same name and start over.
    pub overwrite: bool,
    /// Receives progress.
    pub observer: &'a dyn Observer,
    /// Set to stop at the next step boundary with a checkpoint.
    pub stop: StopFlag,
    /// This process's place in a data-parallel group a launcher started (`Launch::from_env`);
    /// `None` trains alone.
    pub launch: Option<Launch>,
}

impl Default for RunOptions<'static> {
    fn default() -> Self {
        Self {
            resume: false,
            overwrite: false,
            observer: &Silent,
            stop: StopFlag::new(),
            launch: None,
        }
    }
}
