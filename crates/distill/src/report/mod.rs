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

/// What a run's `compress:` section adds to its report: the headline and the table, with the
/// size-vs-quality plot of `compressed/`.
#[derive(Clone, Debug)]
pub struct CompressionSection {
    pub headline: String,
    pub table: String,
}

impl CompressionSection {
    pub fn of(c: &crate::compression::Compression) -> Self {
        Self {
            headline: c.headline(),
            table: c.table(),
        }
    }

    /// The section as it ends `report.md`.
    pub fn markdown(&self) -> String {
        format!(
            "\n## Compression\n\n{}\n\n{}\n![size vs quality](compressed/compress.svg)\n",
            self.headline, self.table
        )
    }
}
