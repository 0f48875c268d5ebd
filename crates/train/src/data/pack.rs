//! Packing tokenised documents into fixed-length blocks.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::documents::{DataError, Document};

/// Fixed-length token blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSet {
    pub block_size: usize,
    pub blocks: Vec<Vec<u32>>,
    /// Tokens in the stream, EOS separators included (the tail that fills no block is dropped).
    pub stream_tokens: usize,
    /// Per block and position, whether that token is a target the loss counts (chat data: the
    /// assistant's tokens); `None`: every next token counts.
    pub targets: Option<Vec<Vec<bool>>>,
}

impl BlockSet {
    pub fn len(&self) -> usize {
        self.blocks.len()
    }
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
    pub fn tokens(&self) -> usize {
        self.blocks.len() * self.block_size
    }

    /// The visiting order of blocks in `epoch` (see [`epoch_order`]).
    pub fn epoch_order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        epoch_order(self.blocks.len(), seed, epoch)
    }
}

/// The visiting order of `n` items in `epoch`: a permutation drawn from `seed` and the epoch,
/// so any position of any epoch can be recomputed exactly on resume.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(
        seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ));
    order
}

/// How a stream of documents is cut into blocks.
#[derive(Clone, Copy, Debug)]
pub struct Packing {
    /// Tokens per block.
    pub block_size: usize,
    /// The token placed after every document.
    pub separator: u32,
    /// The token every block begins with (BOS, for models that expect one).
    pub lead: Option<u32>,
}

/// Tokenises each document with `encode`, joins them with the separator after every document,
/// and cuts the stream into blocks as `packing` says. Fails when not one block can be filled.
pub fn pack_blocks(
    docs: &[Document],
    packing: Packing,
    encode: impl Fn(&str) -> Result<Vec<u32>, String>,
) -> Result<BlockSet, DataError> {
    let Packing {
        block_size,
        separator: eos,
        lead,
    } = packing;
    if block_size < 2 {
        return Err(DataError::Other(format!(
            "block_size must be at least 2, got {block_size}"
        )));
    }
    let mut stream = vec![];
    for d in docs {
        let ids =
            encode(&d.text).map_err(|e| DataError::Other(format!("{}: tokenising: {e}", d.id)))?;
        stream.extend(ids);
        stream.push(eos);
    }
    let lead: Vec<u32> = lead.into_iter().collect();
    let blocks: Vec<Vec<u32>> = stream
        .chunks_exact(block_size - lead.len())
        .map(|c| lead.iter().chain(c).copied().collect())
        .collect();
    if blocks.is_empty() {
        return Err(DataError::Other(format!(
            "{} tokens of data ({} documents) do not fill one block of {block_size}",
            stream.len(),
            docs.len()
        )));
    }
    Ok(BlockSet {
        block_size,
        blocks,
        stream_tokens: stream.len(),
        targets: None,
    })
}

/// A conversation rendered and tokenised: its ids, and for each whether it is a target (the
/// assistant's tokens, its end-of-turn marker included).
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub ids: Vec<u32>,
    pub targets: Vec<bool>,
}

/// What packing conversations cut and left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChatPacking {
    pub conversations: usize,
    /// Longer than a block: their tokens past `block_size` were dropped.
    pub truncated: usize,
    /// Left without a target once cut (the assistant's turns all past the block): not used.
    pub dropped: usize,
}

/// Puts each conversation in a block of its own — conversations never attend across each
/// other — cut at `block_size` tokens (the rest dropped) and padded with `pad`, which is never
/// a target. Fails when no conversation is left.
pub fn pack_conversations(
    docs: &[Document],
    block_size: usize,
    pad: u32,
    render: impl Fn(&Document) -> Result<Rendered, String>,
) -> Result<(BlockSet, ChatPacking), DataError> {
    if block_size < 2 {
        return Err(DataError::Other(format!(
            "block_size must be at least 2, got {block_size}"
        )));
    }
    let mut stats = ChatPacking::default();
    let (mut blocks, mut targets, mut tokens) = (vec![], vec![], 0);
    for d in docs {
        let Rendered {
            mut ids,
            targets: mut is_target,
        } = render(d).map_err(|e| DataError::Other(format!("{}: {e}", d.id)))?;
        stats.conversations += 1;
        if ids.len() > block_size {
            stats.truncated += 1;
            ids.truncate(block_size);
            is_target.truncate(block_size);
        }
        // Position 0 is never predicted.
        if !is_target.iter().skip(1).any(|&t| t) {
            stats.dropped += 1;
            continue;
        }
        tokens += ids.len();
        ids.resize(block_size, pad);
        is_target.resize(block_size, false);
        blocks.push(ids);
        targets.push(is_target);
    }
    if blocks.is_empty() {
        return Err(DataError::Other(format!(
            "none of {} conversations has an assistant token within a block of {block_size}",
            docs.len()
        )));
    }
    Ok((
        BlockSet {
            block_size,
            blocks,
            stream_tokens: tokens,
            targets: Some(targets),
        },
        stats,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> Result<Vec<u32>, String> {
        Ok(s.bytes().map(u32::from).collect())
    }

    #[test]
    fn packs_with_eos_between_documents() {
        let docs = vec![
            Document {
                id: "a".into(),
                text: "abc".into(),
                turns: None,
            },
            Document {
                id: "b".into(),
                text: "de".into(),
                turns: None,
            },
        ];
        let pack = |block_size, lead| Packing {
            block_size,
            separator: 0,
            lead,
        };
        let b = pack_blocks(&docs, pack(3, None), enc).unwrap();
        assert_eq!(b.blocks, vec![vec![97, 98, 99], vec![0, 100, 101]]);
        assert_eq!(b.stream_tokens, 7);
        let e = pack_blocks(&docs, pack(10, None), enc)
            .unwrap_err()
            .to_string();
        assert!(e.contains("7 tokens") && e.contains("block of 10"), "{e}");
        // Blocks begun with BOS (9) hold one stream token fewer each.
        let led = pack_blocks(&docs, pack(3, Some(9)), enc).unwrap();
        assert_eq!(
            led.blocks,
            vec![vec![9, 97, 98], vec![9, 99, 0], vec![9, 100, 101]]
        );
        let o1 = b.epoch_order(1, 0);
        assert_eq!(o1, b.epoch_order(1, 0));
        let mut sorted = o1.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1]);
    }
}
