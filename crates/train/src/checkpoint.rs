//! Checkpoints: every variable, the optimiser's moments, the best weights so far and the
//! learner's state, written into a temporary folder that is renamed into place, with `latest`
//! naming the newest complete one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Ctx, TrainError};
use crate::records::EvalRecord;

/// Learner state saved beside the weights. The data position is a function of `step` (the
/// order of every epoch and every random draw come from the seed and the position), so the
/// step is all the data needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    /// Tokens (causal LM) or examples (classification) trained on.
    #[serde(alias = "tokens_seen")]
    pub units_seen: u64,
    pub elapsed_seconds: f64,
    /// The best evaluation so far and how many evaluations since it.
    #[serde(default)]
    pub best: Option<EvalRecord>,
    #[serde(default)]
    pub since_best: usize,
    /// Summed training loss and steps since the last evaluation.
    #[serde(default)]
    pub loss_since_eval: (f64, usize),
    /// Early stopping ended the stage (a resume does not train further).
    #[serde(default)]
    pub stopped_early: bool,
}

/// The folder of the checkpoint at `step` under the checkpoints folder `root`.
pub fn step_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("step-{step:06}"))
}

/// The newest complete checkpoint under `root`, if any.
pub fn latest(root: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(root.join("latest")).ok()?;
    let dir = root.join(name.trim());
    dir.join("state.json").is_file().then_some(dir)
}

/// Marks `dir` as the newest checkpoint under `root` and deletes all but the newest `keep`.
pub fn publish(root: &Path, dir: &Path, keep: usize) -> std::io::Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    distill_files::write_file(&root.join("latest"), name.as_bytes())
        .map_err(std::io::Error::other)?;
    let mut all: Vec<PathBuf> = std::fs::read_dir(root)?
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

/// The state a checkpoint folder holds.
pub fn read_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let p = dir.join("state.json");
    let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Io {
        path: p,
        msg: e.to_string(),
    })
}

/// Saves tensors by name as one safetensors file.
pub fn save_tensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<(), TrainError> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    candle_core::safetensors::save(&map, path)
        .and_then(|()| Ok(distill_files::usual_mode(path)?))
        .ctx(|| format!("writing {}", path.display()))
}

/// The values of `vars`, detached copies.
pub fn values_of(vars: &BTreeMap<String, Var>) -> Result<BTreeMap<String, Tensor>, TrainError> {
    vars.iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                v.as_tensor().copy().ctx(|| format!("copying {k}"))?,
            ))
        })
        .collect()
}

/// Sets every variable of `vars` to the tensor of the same name in the safetensors file at
/// `path`; a missing tensor or another shape is an error naming it.
pub fn load_into(
    vars: &BTreeMap<String, Var>,
    path: &Path,
    device: &Device,
) -> Result<(), TrainError> {
    let t = candle_core::safetensors::load(path, device)
        .ctx(|| format!("reading {}", path.display()))?;
    set_from(vars, &t, path)
}

/// Sets every variable of `vars` to the tensor of the same name in `values`.
pub fn set_from(
    vars: &BTreeMap<String, Var>,
    values: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<(), TrainError> {
    for (name, var) in vars {
        let x = values.get(name).ok_or_else(|| {
            TrainError::Invalid(format!("{}: no tensor `{name}`", path.display()))
        })?;
        if x.dims() != var.dims() {
            return Err(TrainError::Invalid(format!(
                "{}: `{name}` has shape {:?}, expected {:?}",
                path.display(),
                x.dims(),
                var.dims()
            )));
        }
        var.set(x).ctx(|| format!("restoring {name}"))?;
    }
    Ok(())
}
