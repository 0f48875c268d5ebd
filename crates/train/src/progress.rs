//! How long work reports progress and is asked to stop: the library never prints, so every
//! stage tells an [`Observer`] what happens (the binary draws a progress bar on a terminal and
//! writes log lines otherwise), and checks a [`StopFlag`] (Ctrl-C in the binary).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::records::{EvalRecord, StepRecord};

/// Something that happened in a long stage.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// A stage begins: `total` units of `unit` (steps, examples, blocks), `done` of them
    /// already (a resumed run).
    Started {
        stage: &'a str,
        unit: &'a str,
        total: u64,
        done: u64,
    },
    /// `done` units of the stage are complete.
    Progress { stage: &'a str, done: u64 },
    /// A training step finished.
    Step(&'a StepRecord),
    /// An evaluation finished.
    Eval(&'a EvalRecord),
    /// A line worth showing (an interruption, early stopping, a checkpoint after a stop).
    Note { stage: &'a str, text: &'a str },
    /// The stage is over.
    Finished { stage: &'a str },
}

/// Receives the events of long work.
pub trait Observer: Sync {
    fn event(&self, event: &Event);
}

/// An observer that ignores everything (tests, library callers that do not care).
pub struct Silent;

impl Observer for Silent {
    fn event(&self, _: &Event) {}
}

/// Set to ask running work to stop at the next step boundary, with a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks for a stop; returns whether one had been asked for already.
    pub fn request(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
