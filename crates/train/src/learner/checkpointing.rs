//! Checkpoints of a stage: every variable, the optimiser's moments, the best weights so far and
//! the learner's state, written by rank 0 on a cadence, at the end and when stopped; restored
//! on resume so the stage continues bit for bit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};

use crate::checkpoint::{
    latest, load_into, publish, read_state, save_tensors, step_dir, values_of, TrainerState,
};
use crate::error::{io_err, Ctx, TrainError};
use crate::optim::AdamW;
use crate::training::Training;

/// Where and whether a stage checkpoints.
pub(crate) struct Checkpointing<'a> {
    /// The checkpoints folder (`None`: the stage writes none).
    pub(crate) root: Option<PathBuf>,
    /// This process writes them (rank 0 of a group).
    pub(crate) writes: bool,
    /// Where restored tensors go (the variables' device).
    pub(crate) device: Device,
    pub(crate) training: &'a Training,
    pub(crate) stage: String,
}

/// What a resume restored.
pub(crate) struct Restored {
    pub(crate) state: TrainerState,
    pub(crate) best: Option<BTreeMap<String, Tensor>>,
}

impl Checkpointing<'_> {
    /// Loads the newest checkpoint into `vars` and `opt`; its state and best weights.
    pub(crate) fn restore(
        &self,
        vars: &BTreeMap<String, Var>,
        opt: &mut AdamW,
    ) -> Result<Restored, TrainError> {
        let root = self.root.as_deref().ok_or_else(|| {
            TrainError::Invalid("--resume: this stage writes no checkpoints".into())
        })?;
        let dir = latest(root).ok_or_else(|| {
            TrainError::Invalid(format!("--resume: no checkpoint in {}", root.display()))
        })?;
        let state = read_state(&dir)?;
        load_into(vars, &dir.join("model.safetensors"), &self.device)?;
        opt.load(&dir.join("optimizer.safetensors"))
            .ctx(|| format!("{}: loading the optimiser", dir.display()))?;
        let best_file = dir.join("best.safetensors");
        let best = if self.training.keep_best && best_file.is_file() {
            let t = candle_core::safetensors::load(&best_file, &self.device)
                .ctx(|| format!("reading {}", best_file.display()))?;
            Some(t.into_iter().collect())
        } else {
            None
        };
        tracing::info!(stage = %self.stage, step = state.step, checkpoint = %dir.display(), "resumed");
        Ok(Restored { state, best })
    }

    /// Whether a checkpoint is written after step `done`.
    pub(crate) fn due(
        &self,
        done: usize,
        evaluated: bool,
        last: bool,
        stopped_early: bool,
    ) -> bool {
        let on_cadence = match self.training.checkpoint_every {
            0 => evaluated,
            n => done.is_multiple_of(n),
        };
        self.root.is_some() && self.writes && (on_cadence || last || stopped_early)
    }

    /// Whether this process writes checkpoints at all.
    pub(crate) fn enabled(&self) -> bool {
        self.root.is_some() && self.writes
    }

    /// Saves the checkpoint of `state` (with `elapsed_seconds` as given); returns its folder
    /// (also on the ranks that do not write it).
    pub(crate) fn save(
        &self,
        state: &TrainerState,
        vars: &BTreeMap<String, Var>,
        opt: &AdamW,
        best: &Option<BTreeMap<String, Tensor>>,
    ) -> Result<PathBuf, TrainError> {
        let root = self
            .root
            .as_deref()
            .ok_or_else(|| TrainError::Invalid("this stage writes no checkpoints".into()))?;
        let dir = step_dir(root, state.step);
        if !self.writes {
            // Rank 0 writes the group's checkpoint.
            return Ok(dir);
        }
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        // Written whole beside its place and renamed in; a failure (a full disk) leaves the
        // previous checkpoints as they were and no temporary folder.
        distill_files::write_folder(&dir, "checkpoint", |tmp| -> Result<(), TrainError> {
            save_tensors(&values_of(vars)?, &tmp.join("model.safetensors"))?;
            opt.save(&tmp.join("optimizer.safetensors"))
                .ctx(|| format!("{}: saving the optimiser", tmp.display()))?;
            if let Some(b) = best {
                save_tensors(b, &tmp.join("best.safetensors"))?;
            }
            let json = serde_json::to_vec_pretty(state).expect("state serialises");
            let path = tmp.join("state.json");
            std::fs::write(&path, json).map_err(io_err(&path))
        })?;
        publish(root, &dir, self.training.keep_checkpoints).map_err(io_err(&dir))?;
        tracing::debug!(stage = %self.stage, step = state.step, dir = %dir.display(), "checkpoint");
        Ok(dir)
    }
}
