//! The tasks the [`crate::Learner`] trains.

mod causal_lm;
mod classification;

pub use causal_lm::CausalLm;
pub use classification::{Classification, TeacherSignal};
