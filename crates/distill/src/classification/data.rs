//! The data stage: labelled examples split by class (the split written as `split.json`), then
//! encoded with the teacher's tokenizer up to the length it was trained for.

use distill_train::data::{encode_examples, EncodedSet};
use distill_train::data::{load_labelled, split_stratified, LabelledSet, LabelledSplit};

use super::prepare::Prepared;
use crate::error::{Context, Error, Result};

/// The run's examples and their split.
pub(crate) struct Labelled {
    pub(crate) set: LabelledSet,
    pub(crate) split: LabelledSplit,
}

impl Labelled {
    pub(crate) fn num_labels(&self) -> usize {
        self.set.labels.len()
    }
}

/// The three parts, encoded.
pub(crate) struct Encoded {
    pub(crate) train: EncodedSet,
    pub(crate) valid: EncodedSet,
    pub(crate) test: EncodedSet,
}

/// Loads and splits the run's examples; writes `split.json`.
pub(crate) fn load(run: &Prepared) -> Result<Labelled> {
    let cfg = run.cfg;
    let set = load_labelled(&cfg.data).context("data.source")?;
    let split: LabelledSplit = split_stratified(
        &set,
        cfg.data.validation_fraction,
        cfg.data.test_fraction,
        cfg.data.seed,
        cfg.data.max_per_class,
    );
    let ids_of = |idx: &[usize]| {
        idx.iter()
            .map(|&i| set.examples[i].id.clone())
            .collect::<Vec<_>>()
    };
    let split_json = serde_json::json!({
        "labels": set.labels,
        "seed": cfg.data.seed,
        "train": ids_of(&split.train),
        "validation": ids_of(&split.validation),
        "test": ids_of(&split.test),
    });
    let json = serde_json::to_string_pretty(&split_json).expect("JSON");
    distill_files::write_file(&run.run_dir.join("split.json"), json.as_bytes())?;
    tracing::info!(
        examples = set.examples.len(),
        skipped = set.skipped.len(),
        train = split.train.len(),
        validation = split.validation.len(),
        test = split.test.len(),
        "labelled data"
    );
    if split.test.is_empty() || split.validation.is_empty() {
        return Err(Error::Invalid(format!(
            "data: the split has {} validation and {} test examples; the run needs both (raise validation_fraction/test_fraction or max_per_class)",
            split.validation.len(),
            split.test.len()
        )));
    }
    Ok(Labelled { set, split })
}

/// How examples become token ids: the teacher's tokenizer, at most `max_len` tokens, ids
/// below `vocab_size`.
pub(crate) struct Encoding<'a> {
    pub(crate) tokenizer: &'a tokenizers::Tokenizer,
    pub(crate) max_len: usize,
    pub(crate) vocab_size: usize,
}

/// Encodes the split.
pub(crate) fn encode(l: &Labelled, e: &Encoding) -> Result<Encoded> {
    let encode =
        |idx: &[usize]| encode_examples(e.tokenizer, &l.set.examples, idx, e.max_len, e.vocab_size);
    Ok(Encoded {
        train: encode(&l.split.train)?,
        valid: encode(&l.split.validation)?,
        test: encode(&l.split.test)?,
    })
}
