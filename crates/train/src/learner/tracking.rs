//! Tracking the best evaluation: which score is better (higher, primary then tie-break), the
//! best weights kept in memory (`keep_best`), and early stopping after evaluations without a
//! better score.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Tensor, Var};

use crate::checkpoint::{values_of, TrainerState};
use crate::error::TrainError;
use crate::records::EvalRecord;
use crate::task::EarlyStopping;

/// The best evaluation so far and what follows from it.
pub(crate) struct Tracker<'a> {
    /// Evaluations are compared at all (keep-best or early stopping is on).
    active: bool,
    keep_best: bool,
    /// The trainable weights at the best evaluation (with `keep_best`).
    pub(crate) best_values: Option<BTreeMap<String, Tensor>>,
    early_stopping: Box<dyn EarlyStopping + 'a>,
}

/// Whether score `a` beats `b`: higher primary score, then higher tie-break.
fn better(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 > b.1)
}

impl<'a> Tracker<'a> {
    pub(crate) fn new(
        keep_best: bool,
        patience: usize,
        early_stopping: Box<dyn EarlyStopping + 'a>,
        best_values: Option<BTreeMap<String, Tensor>>,
    ) -> Self {
        Self {
            active: keep_best || patience > 0,
            keep_best,
            best_values,
            early_stopping,
        }
    }

    /// Records `e` in `state` (best, evaluations since it), keeping the weights of a new best;
    /// returns why training stops early, when it does.
    pub(crate) fn observe(
        &mut self,
        e: &EvalRecord,
        state: &mut TrainerState,
        trainable: &BTreeMap<String, Var>,
    ) -> Result<Option<String>, TrainError> {
        if !self.active {
            return Ok(None);
        }
        if state.best.as_ref().is_none_or(|b| better(e.score, b.score)) {
            if self.keep_best {
                self.best_values = Some(values_of(trainable)?);
            }
            state.best = Some(e.clone());
            state.since_best = 0;
            return Ok(None);
        }
        state.since_best += 1;
        Ok(self
            .early_stopping
            .should_stop(state.since_best)
            .then(|| self.early_stopping.reason(state.since_best)))
    }

    /// Puts the best weights back into `trainable`, when they were kept.
    pub(crate) fn restore_best(&self, trainable: &BTreeMap<String, Var>) -> Result<(), TrainError> {
        if let Some(values) = &self.best_values {
            let path = PathBuf::from("(best weights)");
            crate::checkpoint::set_from(
                trainable,
                &values.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                &path,
            )?;
        }
        Ok(())
    }
}
