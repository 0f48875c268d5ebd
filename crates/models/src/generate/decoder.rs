//! What the generation loop needs of a model: a cache of what each sequence of the batch has
//! seen, and each row's next-token logits — from candle's decoder (dense or `QMatMul` weights,
//! any device) or from the ggml path (llama.cpp's CPU arithmetic).

use crate::error::{ModelError, Result, TensorContext};
use crate::ggml_cpu::{GgmlDecoder, SequenceCache};
use crate::llama::{KvCache, Llama, LlamaConfig};

/// A decoder the generation loop can drive.
pub trait Decoder {
    type Cache: BatchCache;
    /// An empty cache.
    fn new_cache(&self) -> Self::Cache;
    /// Runs `rows` — each sequence's next tokens, the whole prompt at the first step — after
    /// what `cache` holds, and returns the logits at each row's last token.
    fn step(&self, rows: &[&[u32]], cache: &mut Self::Cache) -> Result<Vec<Vec<f32>>>;
    fn config(&self) -> &LlamaConfig;
}

/// A batch's cache, from which finished sequences leave.
pub trait BatchCache {
    /// Keeps rows `keep` (indices into the current batch, in the order given).
    fn keep_rows(&mut self, keep: &[usize]) -> Result<()>;
}

impl Decoder for Llama {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        Llama::new_cache(self)
    }

    /// The batch runs together, shorter prompts padded on the left.
    fn step(&self, rows: &[&[u32]], cache: &mut KvCache) -> Result<Vec<Vec<f32>>> {
        Llama::step(self, rows, cache)?
            .to_vec2()
            .context(|| "generation logits".into())
    }

    fn config(&self) -> &LlamaConfig {
        Llama::config(self)
    }
}

impl BatchCache for KvCache {
    fn keep_rows(&mut self, keep: &[usize]) -> Result<()> {
        KvCache::keep_rows(self, keep)
    }
}

/// The ggml path's sequences, each with its own cache.
pub struct GgmlBatch {
    sequences: Vec<SequenceCache>,
}

impl Decoder for GgmlDecoder {
    type Cache = GgmlBatch;

    fn new_cache(&self) -> GgmlBatch {
        GgmlBatch { sequences: vec![] }
    }

    /// Every sequence runs alone, as llama.cpp runs one: its prompt in one batch, then a token
    /// per step — so the kernels, and the bits, are the ones llama.cpp's generation uses.
    fn step(&self, rows: &[&[u32]], cache: &mut GgmlBatch) -> Result<Vec<Vec<f32>>> {
        if cache.sequences.is_empty() {
            cache.sequences = rows.iter().map(|_| self.new_sequence()).collect();
        }
        if cache.sequences.len() != rows.len() {
            return Err(ModelError::Config {
                source_name: "ggml generation".into(),
                key: "rows".into(),
                msg: format!(
                    "{} rows for a batch of {} sequences",
                    rows.len(),
                    cache.sequences.len()
                ),
            });
        }
        let vocab = self.config().vocab_size;
        rows.iter()
            .zip(&mut cache.sequences)
            .map(|(ids, seq)| {
                let logits = self.extend(ids, seq, &mut |_, _| {})?;
                Ok(logits[logits.len() - vocab..].to_vec())
            })
            .collect()
    }

    fn config(&self) -> &LlamaConfig {
        GgmlDecoder::config(self)
    }
}

impl BatchCache for GgmlBatch {
    fn keep_rows(&mut self, keep: &[usize]) -> Result<()> {
        if let Some(&bad) = keep.iter().find(|&&r| r >= self.sequences.len()) {
            return Err(ModelError::Config {
                source_name: "ggml generation".into(),
                key: "rows".into(),
                msg: format!("row {bad} kept of a batch of {}", self.sequences.len()),
            });
        }
        let mut old: Vec<Option<SequenceCache>> = std::mem::take(&mut self.sequences)
            .into_iter()
            .map(Some)
            .collect();
        self.sequences = keep.iter().filter_map(|&r| old[r].take()).collect();
        if self.sequences.len() != keep.len() {
            return Err(ModelError::Config {
                source_name: "ggml generation".into(),
                key: "rows".into(),
                msg: format!("a row kept twice in {keep:?}"),
            });
        }
        Ok(())
    }
}
