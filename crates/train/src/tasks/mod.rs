//! The tasks the [`crate::Learner`] trains.

mod causal_lm;
mod classification;

pub use causal_lm::{blocks_read, CausalLm};
pub use classification::{Classification, TeacherSignal};
