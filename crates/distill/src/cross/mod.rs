//! Distillation across tokenizers (`distill.vocab: cross`): the two vocabularies met where
//! their pieces spell the same bytes, and every block of the run aligned with the teacher's
//! tokenisation of the same bytes ([`align`]). What is aligned and what is dropped is written
//! down in `docs/vocabulary.md`.

mod align;
pub mod student;

use std::collections::{HashMap, HashSet};

use distill_teacher::tokenizer::Piece;
use distill_teacher::LoadedTokenizer;
use distill_train::data::{BlockSet, CrossSet, CrossVocab};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use align::{Aligner, TeacherEncode};

use crate::error::{Error, Result};

/// What the report says of a cross-tokenizer run.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CrossStats {
    /// Rows of the teacher's head.
    pub teacher_ids: usize,
    /// Ids of the student's vocabulary.
    pub student_ids: usize,
    /// Ids whose pieces both vocabularies spell the same (special tokens by role): the KL
    /// term's buckets.
    pub matched: usize,
    /// Share of the student's training positions (those with a next token) where both
    /// tokenisations end at the same byte: where the cross loss applies.
    pub aligned_share_train: f64,
    pub aligned_share_validation: f64,
    /// Teacher tokens per student token over the training blocks.
    pub teacher_tokens_per_student_token: f64,
}

/// The two sides of a cross-tokenizer run.
pub struct CrossSides<'a> {
    pub student: &'a LoadedTokenizer,
    /// The student's separator between documents (its blocks' packing).
    pub student_separator: u32,
    /// Rows of the student's head.
    pub student_rows: usize,
    pub teacher: &'a LoadedTokenizer,
    pub teacher_separator: u32,
    pub teacher_rows: usize,
    /// The teacher's source, for errors.
    pub teacher_name: &'a str,
}

/// A cross-tokenizer run's vocabularies and aligned blocks.
pub struct CrossRun {
    pub vocab: CrossVocab,
    pub train: CrossSet,
    pub valid: CrossSet,
    pub stats: CrossStats,
}

/// Refuses a tokenizer whose pieces do not say their bytes, saying why it cannot be aligned.
pub fn check_spells_bytes(t: &LoadedTokenizer, side: &str) -> Result<()> {
    if t.spells_bytes() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "distill.vocab: cross: the {side}'s tokenizer ({}) does not say which bytes its pieces spell — its decoder is neither byte-level nor SentencePiece — so its tokens have no byte offsets to align by",
        t.info.kind
    )))
}

/// The pieces of `t`, or the error of [`check_spells_bytes`].
fn pieces_of(t: &LoadedTokenizer, side: &str) -> Result<Vec<Piece>> {
    check_spells_bytes(t, side)?;
    Ok(t.pieces().expect("checked: the tokenizer spells bytes"))
}

/// Meets the vocabularies and aligns every block of `train` and `valid`.
pub fn for_run(sides: &CrossSides, train: &BlockSet, valid: &BlockSet) -> Result<CrossRun> {
    let student = pieces_of(sides.student, "student")?;
    let teacher = pieces_of(sides.teacher, "teacher")?;
    let roles = roles(sides);
    let vocab = meet(&student, &teacher, &roles, sides);
    let encode = |text: &str| -> Result<Vec<u32>> { Ok(sides.teacher.encode_continuation(text)?) };
    let teacher_bos = sides
        .teacher
        .info
        .bos_token_id
        .filter(|_| sides.teacher.info.add_bos);
    let mut specials: HashMap<u32, Vec<u32>> = HashMap::new();
    for &(s, t) in &roles {
        let mut ids = vec![t];
        if t == sides.teacher_separator {
            // A document ends; the teacher begins the next with its BOS.
            ids.extend(teacher_bos);
        }
        specials.entry(s).or_insert(ids);
    }
    let aligner = Aligner {
        student: &student,
        teacher: &teacher,
        encode: &encode,
        specials,
        teacher_bos,
        teacher_name: sides.teacher_name,
    };
    let align = |set: &BlockSet| -> Result<CrossSet> {
        Ok(CrossSet {
            blocks: set
                .blocks
                .par_iter()
                .map(|b| aligner.align(b))
                .collect::<Result<_>>()?,
        })
    };
    let (train_x, valid_x) = (align(train)?, align(valid)?);
    let teacher_tokens: usize = train_x.blocks.iter().map(|b| b.teacher_ids.len()).sum();
    let stats = CrossStats {
        teacher_ids: sides.teacher_rows,
        student_ids: sides.student_rows,
        matched: vocab.matched(),
        aligned_share_train: train_x.aligned_share(train.block_size),
        aligned_share_validation: valid_x.aligned_share(valid.block_size),
        teacher_tokens_per_student_token: teacher_tokens as f64 / train.tokens().max(1) as f64,
    };
    tracing::info!(
        matched = stats.matched,
        student_ids = stats.student_ids,
        teacher_ids = stats.teacher_ids,
        aligned_share = format!("{:.3}", stats.aligned_share_train),
        teacher_tokens_per_student_token = format!("{:.3}", stats.teacher_tokens_per_student_token),
        "distill.vocab: cross — the tokenisations aligned by byte offsets"
    );
    Ok(CrossRun {
        vocab,
        train: train_x,
        valid: valid_x,
        stats,
    })
}

/// Special tokens by role: `(student id, teacher id)` for BOS, and the student's separator
/// and EOS as the teacher's separator.
fn roles(sides: &CrossSides) -> Vec<(u32, u32)> {
    let (s, t) = (&sides.student.info, &sides.teacher.info);
    let mut roles = vec![];
    if let (Some(a), Some(b)) = (s.bos_token_id, t.bos_token_id) {
        roles.push((a, b));
    }
    roles.push((sides.student_separator, sides.teacher_separator));
    if let Some(e) = s.eos_token_id {
        roles.push((e, sides.teacher_separator));
    }
    roles
}

/// The student id of each teacher id whose piece spells the same bytes (text pieces before
/// byte pieces, each student id once; special tokens by `roles`).
fn meet(
    student: &[Piece],
    teacher: &[Piece],
    roles: &[(u32, u32)],
    sides: &CrossSides,
) -> CrossVocab {
    let mut by_bytes: HashMap<&[u8], u32> = HashMap::new();
    for (id, p) in student.iter().enumerate().take(sides.student_rows) {
        if !matches!(p, Piece::Special) {
            by_bytes.entry(p.bytes()).or_insert(id as u32);
        }
    }
    let mut of_teacher: Vec<Option<u32>> = vec![None; sides.teacher_rows];
    let mut taken: HashSet<u32> = HashSet::new();
    for &(s, t) in roles {
        if (t as usize) < of_teacher.len() && of_teacher[t as usize].is_none() && taken.insert(s) {
            of_teacher[t as usize] = Some(s);
        }
    }
    // Text pieces first: a byte piece (`<0x41>`) spells what a text piece ("A") may, and the
    // tokenizer prefers the text piece.
    for bytes_only in [false, true] {
        for (id, p) in teacher.iter().enumerate().take(sides.teacher_rows) {
            let eligible = match p {
                Piece::Text(b) => !bytes_only && !b.is_empty(),
                Piece::Byte(_) => bytes_only,
                Piece::Special => false,
            };
            if !eligible || of_teacher[id].is_some() {
                continue;
            }
            if let Some(&s) = by_bytes.get(p.bytes()) {
                if taken.insert(s) {
                    of_teacher[id] = Some(s);
                }
            }
        }
    }
    let mut student_matched = vec![false; sides.student_rows];
    for s in of_teacher.iter().flatten() {
        student_matched[*s as usize] = true;
    }
    let teacher_bytes = teacher
        .iter()
        .map(|p| p.bytes().len() as u32)
        .chain(std::iter::repeat(0))
        .take(sides.teacher_rows)
        .collect();
    CrossVocab {
        student_of_teacher: of_teacher,
        student_matched,
        teacher_bytes,
        teacher_pad: sides.teacher_separator,
    }
}
