//! Blocks of a cross-tokenizer run: each student block with the teacher's tokenisation of the
//! same bytes, and the positions where both end a token at the same byte — where the two
//! next-token distributions are over the same continuation and can be compared.

/// One student block as the teacher reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrossBlock {
    /// The teacher's ids for the block's bytes (its BOS first when it begins with one).
    pub teacher_ids: Vec<u32>,
    /// `(student position, teacher position)` pairs that end at the same byte, ascending;
    /// only student positions that have a next token in the block.
    pub pairs: Vec<(u32, u32)>,
}

/// The cross blocks of one split, by block index.
#[derive(Clone, Debug, Default)]
pub struct CrossSet {
    pub blocks: Vec<CrossBlock>,
}

impl CrossSet {
    /// Aligned positions over all blocks.
    pub fn aligned(&self) -> usize {
        self.blocks.iter().map(|b| b.pairs.len()).sum()
    }

    /// The share of student positions with a next token that are aligned.
    pub fn aligned_share(&self, block_size: usize) -> f64 {
        let positions = self.blocks.len() * block_size.saturating_sub(1);
        self.aligned() as f64 / positions.max(1) as f64
    }

    /// The longest teacher sequence (what a batch of them is padded to).
    pub fn longest(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| b.teacher_ids.len())
            .max()
            .unwrap_or(0)
    }
}

/// The teacher sequences of some blocks as one batch: padded to the longest, and every aligned
/// pair with its block's place in the batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaddedTeacher {
    /// `[blocks × len]`, row-major; padding after each sequence's end (never read: attention
    /// is causal).
    pub ids: Vec<u32>,
    pub len: usize,
    /// `(place in the batch, student position, teacher position)` of every aligned pair.
    pub pairs: Vec<(usize, u32, u32)>,
}

impl CrossSet {
    /// The teacher sequences of `blocks` padded with `pad`.
    pub fn padded(&self, blocks: &[usize], pad: u32) -> PaddedTeacher {
        let len = blocks
            .iter()
            .map(|&b| self.blocks[b].teacher_ids.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut out = PaddedTeacher {
            ids: Vec::with_capacity(blocks.len() * len),
            len,
            pairs: vec![],
        };
        for (bi, &b) in blocks.iter().enumerate() {
            let block = &self.blocks[b];
            out.ids.extend(&block.teacher_ids);
            out.ids
                .extend(std::iter::repeat_n(pad, len - block.teacher_ids.len()));
            out.pairs
                .extend(block.pairs.iter().map(|&(sp, tp)| (bi, sp, tp)));
        }
        out
    }
}

/// How the two vocabularies meet: the ids whose strings both spell.
#[derive(Clone, Debug)]
pub struct CrossVocab {
    /// The student id spelling each teacher id's bytes (special tokens by role), by teacher
    /// id; `None`: the student's vocabulary has no such piece.
    pub student_of_teacher: Vec<Option<u32>>,
    /// Whether each student id has a teacher id of the same string, by student id.
    pub student_matched: Vec<bool>,
    /// Bytes of text each teacher id stands for (the teacher's bits per byte).
    pub teacher_bytes: Vec<u32>,
    /// The id teacher sequences are padded with (past their end, never read).
    pub teacher_pad: u32,
}

impl CrossVocab {
    /// Ids matched across the vocabularies.
    pub fn matched(&self) -> usize {
        self.student_of_teacher.iter().flatten().count()
    }
}
