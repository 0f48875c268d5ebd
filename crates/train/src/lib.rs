//! # distill-train
//!
//! Owns learning. Data: text files, folders and JSONL for causal LMs (tokenised, packed into
//! blocks with document boundaries, split by whole documents), labelled sets for
//! classification (class folders, JSONL, CSV; e-mail parsed by `mail-parser`; stratified
//! splits), every order and random draw a function of a seed and a position. Losses: forward
//! and reverse KL at temperature T, JSD, cross-entropy and hidden-state losses, the soft ones
//! named by [`losses::SoftLoss`], combined by one [`objective::Objective`].
//!
//! Training is one loop, the [`Learner`] (AdamW, warm-up and cosine decay, accumulation,
//! clipping, evaluation cadence, keep-best and early stopping, metrics, checkpoints with
//! bit-exact resume, hooks after each step, progress through an [`progress::Observer`]),
//! generic over a [`Task`]: [`tasks::CausalLm`] and [`tasks::Classification`]. Tasks take any
//! `distill_models::Model`; models know nothing of checkpoints or metrics.
//!
//! ```no_run
//! # fn demo(student: &dyn distill_models::Model, vars: &candle_nn::VarMap,
//! #         teacher: &dyn distill_models::Model, train: &distill_train::data::BlockSet,
//! #         valid: &distill_train::data::BlockSet) -> Result<(), distill_train::TrainError> {
//! use distill_train::tasks::{CausalLm, CausalLmSetup, Student, TeacherSignal};
//! use distill_train::{training::TrainConfig, Learner};
//! let training = TrainConfig { steps: Some(100), ..Default::default() }
//!     .resolve(distill_train::training::TaskKind::CausalLm, "train")?;
//! let distill = distill_train::config::DistillConfig::default();
//! let mut task = CausalLm::new(CausalLmSetup {
//!     student: Student { model: student, varmap: vars },
//!     teacher: Some(TeacherSignal::Online(teacher)),
//!     distill: &distill,
//!     training: &training,
//!     train,
//!     valid,
//!     device: candle_core::Device::Cpu,
//!     cross: None,
//! })?;
//! let outcome = Learner::new(&training, "train").checkpoints("run/checkpoints").fit(&mut task, false)?;
//! println!("{:?}", outcome.evals.last().and_then(|e| e.get("val_ppl")));
//! # Ok(()) }
//! ```

pub mod batch_probe;
pub mod checkpoint;
pub mod config;
pub mod data;
mod error;
pub mod learner;
pub mod losses;
pub mod objective;
pub mod optim;
pub mod parallel;
pub mod progress;
pub mod records;
pub mod schedule;
pub mod scoring;
pub mod task;
pub mod tasks;
pub mod training;

pub use error::TrainError;
pub use learner::{LearnOutcome, Learner};
pub use progress::{Event, Observer, Silent, StopFlag};
pub use records::{EvalRecord, StepRecord};
pub use task::{BatchAt, Evaluation, Losses, Task};
pub use training::{BatchSize, TaskKind, TrainConfig, Training};
