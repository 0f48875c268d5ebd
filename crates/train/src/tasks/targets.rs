//! Which next-token predictions a causal-LM loss counts: all of them, or — for blocks whose
//! tokens are marked as targets (chat data: the assistant's) — those whose next token is one.
//! The choice is a selection of rows, applied alike to the student's and the teacher's
//! logits or features, the labels and cached targets, so every loss (the fused head paths
//! included) sees only the rows that count.

use candle_core::{Device, Tensor};

use crate::data::BlockSet;

/// The counted rows of `blocks` when each block contributes its first `per_block` positions,
/// position `p` predicting token `p + 1`: row `i·per_block + p` where token `p + 1` of block
/// `blocks[i]` is a target. `None`: the set marks no targets, every row counts.
pub fn counted_rows(set: &BlockSet, blocks: &[usize], per_block: usize) -> Option<Vec<usize>> {
    let targets = set.targets.as_ref()?;
    Some(
        blocks
            .iter()
            .enumerate()
            .flat_map(|(i, &b)| {
                let t = &targets[b];
                (0..per_block)
                    .filter(move |&p| t.get(p + 1).copied().unwrap_or(false))
                    .map(move |p| i * per_block + p)
            })
            .collect(),
    )
}

/// Rows `keep` of `t` (`[rows, …]`), or `t` itself when every row counts.
pub fn select_rows(t: &Tensor, keep: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match keep {
        Some(rows) => t.index_select(rows, 0),
        None => Ok(t.clone()),
    }
}

/// `rows` as an index tensor on `device`.
pub fn row_index(rows: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(
        rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        rows.len(),
        device,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_next_token_s_mark() {
        let set = BlockSet {
            block_size: 4,
            blocks: vec![vec![0; 4], vec![0; 4]],
            stream_tokens: 8,
            targets: Some(vec![
                vec![false, false, true, true],
                vec![false, true, false, false],
            ]),
        };
        // Block 1 then block 0, 3 predictions each.
        assert_eq!(counted_rows(&set, &[1, 0], 3), Some(vec![0, 4, 5]));
        let plain = BlockSet {
            targets: None,
            ..set
        };
        assert_eq!(counted_rows(&plain, &[0], 3), None);
    }
}
