//! The one shape every compression technique has: a [`Pass`] that changes a [`Candidate`]
//! (a model's config and weights) given a [`Context`] (calibration data and, for passes that
//! train, a [`Trainer`]), and reports what it did.

use std::collections::BTreeMap;

use candle_core::Var;

use crate::calibration::walk::CalibrationTokens;
use crate::error::CompressError;
pub use crate::model::Candidate;

/// What a pass did, for the report.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    /// Notes such as factorisation ranks or which layers were dropped.
    pub notes: Vec<String>,
}

impl PassReport {
    pub fn note(note: impl Into<String>) -> Self {
        Self {
            notes: vec![note.into()],
        }
    }
}

/// The data passes calibrate on: the training split's first examples, never the validation
/// data a step is measured on.
pub trait Calibration {
    /// Name of [`Calibration::loss`] in reports, e.g. `calibration perplexity`.
    fn measure_name(&self) -> &str;
    /// How well a candidate does on the calibration data; lower is better.
    fn loss(&self, c: &Candidate) -> Result<f64, CompressError>;
    /// Calibration token ids for activation statistics (decoder blocks or encoder examples),
    /// if the task has them.
    fn tokens(&self) -> Option<CalibrationTokens>;
}

/// How long a training pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Length {
    Steps(usize),
    Epochs(usize),
}

impl Length {
    pub fn label(&self) -> String {
        match self {
            Length::Steps(n) => format!("{n} steps"),
            Length::Epochs(n) => format!("{n} epoch(s)"),
        }
    }
}

/// Called after every optimiser step with the trained variables by name.
pub type StepHook<'a> = &'a mut dyn FnMut(&BTreeMap<String, Var>) -> candle_core::Result<()>;

/// Training for passes that need it (healing), provided by the layer that owns the task's
/// data and objective: this crate knows weights, not training loops.
pub trait Trainer {
    /// Trains `c`'s weights in place for `length` at peak learning rate `lr` (`None`: the
    /// run's), distilling from the uncompressed model with the run's objective; `after_step`
    /// runs after every optimiser step.
    fn train(
        &self,
        c: &mut Candidate,
        length: Length,
        lr: Option<f64>,
        after_step: StepHook,
    ) -> Result<(), CompressError>;
}

/// What a pass may use besides the model.
pub struct Context<'a> {
    pub calibration: &'a dyn Calibration,
    pub trainer: Option<&'a dyn Trainer>,
}

/// A compression technique with its settings.
pub trait Pass {
    /// The registry name (`step:` in configs).
    fn name(&self) -> &'static str;
    /// A short label for report rows.
    fn label(&self) -> String;
    /// Whether the pass changes how weights are stored (factors, codes, int8): after it,
    /// nothing may prune, train or re-encode them.
    fn encodes(&self) -> bool;
    fn apply(&self, c: &mut Candidate, cx: &Context) -> Result<PassReport, CompressError>;
}
