//! Reports as data, and their renderers: a causal-LM run ([`RunReport`]), a classification
//! run ([`ClassificationReport`]), a compress run ([`compress`]).

pub mod auto;
mod classification;
pub mod compress;
mod plot;
mod run;

pub use classification::{summary, ClassificationReport, DataReport, ModelRow, StageReport};
pub use plot::line_plot;
pub use run::{ArtifactStats, ModelStats, RunReport};
