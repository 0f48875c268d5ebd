//! The tasks the [`crate::Learner`] trains, and what both take: the student, and the teacher's
//! signal — the teacher run on every batch, or its outputs computed once.

mod causal_lm;
mod classification;
mod cross_lm;
mod targets;

use candle_nn::VarMap;
use distill_models::Model;

pub use causal_lm::{blocks_read, CausalLm, CausalLmSetup, LmTeacher};
pub use classification::{ClassTeacher, Classification, ClassificationSetup};
pub use cross_lm::CrossSetup;

/// The student a task trains: its model and the variables it computes with.
#[derive(Clone, Copy)]
pub struct Student<'a> {
    pub model: &'a dyn Model,
    pub varmap: &'a VarMap,
}

/// What a student learns from besides its labels: the teacher itself, run on every batch (what
/// hidden-state losses need), or its outputs computed once — a classifier's logits of every
/// training example, a causal LM's top-k targets in a teacher cache.
pub enum TeacherSignal<'a, C> {
    Online(&'a dyn Model),
    Cached(C),
}
