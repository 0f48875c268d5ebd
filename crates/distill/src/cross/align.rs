//! Two tokenisations of one block aligned by byte offsets.
//!
//! The student's block is spelled back into bytes from its own pieces (so nothing depends on
//! where the block was cut from its documents); each run of text between special tokens is
//! tokenised by the teacher, whose pieces must spell it byte for byte. Every token gets the
//! coordinate where it ends: bytes of text so far, with each special token of the student one
//! unit more. A student position and a teacher position are aligned when they end at the same
//! coordinate: both have then read the same bytes, and their next tokens start at the same
//! byte. Coordinates are bytes, not characters, so a multi-byte character split differently
//! by the two tokenizers (or cut by the block's edge) breaks nothing: positions inside it are
//! simply not aligned.
//!
//! Special tokens are mapped by role, explicitly: the student's BOS is the teacher's BOS, the
//! student's separator (or EOS) is the teacher's EOS followed by its BOS when the teacher
//! begins every text with one (the student position at the separator then meets the teacher
//! at that BOS, both about to read the next document); any other special token the teacher
//! spells the same, else nothing. A teacher that begins with BOS gets one before a block that
//! does not begin with the student's: it ends at coordinate 0, where no student token ends.

use std::collections::HashMap;

use distill_teacher::tokenizer::Piece;
use distill_train::data::CrossBlock;

use crate::error::{Error, Result};

/// Splits a block's text the teacher's way.
pub type TeacherEncode<'a> = dyn Fn(&str) -> Result<Vec<u32>> + Sync + 'a;

/// What aligning needs of the two tokenizers.
pub struct Aligner<'a> {
    pub student: &'a [Piece],
    pub teacher: &'a [Piece],
    pub encode: &'a TeacherEncode<'a>,
    /// Teacher ids each student special token stands for (absent: none).
    pub specials: HashMap<u32, Vec<u32>>,
    /// The teacher's BOS, when it begins every text with one.
    pub teacher_bos: Option<u32>,
    /// Where the teacher's ids come from, for errors.
    pub teacher_name: &'a str,
}

/// The teacher's side of a block being built.
#[derive(Default)]
struct TeacherSide {
    ids: Vec<u32>,
    ends: Vec<u64>,
}

impl Aligner<'_> {
    /// The teacher's ids for the bytes of student `block`, and the aligned positions.
    pub fn align(&self, block: &[u32]) -> Result<CrossBlock> {
        let mut t = TeacherSide::default();
        let mut s_ends = Vec::with_capacity(block.len());
        let starts_with_bos = block
            .first()
            .and_then(|id| self.specials.get(id))
            .is_some_and(|ids| ids.first() == self.teacher_bos.as_ref());
        if let (Some(bos), false) = (self.teacher_bos, starts_with_bos) {
            t.ids.push(bos);
            t.ends.push(0);
        }
        let (mut at, mut text, mut text_start) = (0u64, Vec::<u8>::new(), 0u64);
        for &id in block {
            match self.student.get(id as usize) {
                Some(Piece::Special) | None => {
                    self.teacher_text(&text, text_start, &mut t)?;
                    text.clear();
                    at += 1;
                    for &tid in self.specials.get(&id).into_iter().flatten() {
                        t.ids.push(tid);
                        t.ends.push(at);
                    }
                }
                Some(piece) => {
                    if text.is_empty() {
                        text_start = at;
                    }
                    text.extend_from_slice(piece.bytes());
                    at += piece.bytes().len() as u64;
                }
            }
            s_ends.push(at);
        }
        self.teacher_text(&text, text_start, &mut t)?;
        Ok(CrossBlock {
            pairs: pairs(&s_ends, &t.ends),
            teacher_ids: t.ids,
        })
    }

    /// Tokenises `bytes` (a run of text starting at coordinate `start`) the teacher's way,
    /// leaving out a character cut by the block's edges.
    fn teacher_text(&self, bytes: &[u8], start: u64, t: &mut TeacherSide) -> Result<()> {
        let lead = bytes
            .iter()
            .take(3)
            .take_while(|&&b| (0x80..0xC0).contains(&b))
            .count();
        let body = &bytes[lead..];
        let text = match std::str::from_utf8(body) {
            Ok(s) => s,
            // A character cut at the end: its first bytes wait for the next block.
            Err(e) if e.error_len().is_none() => {
                std::str::from_utf8(&body[..e.valid_up_to()]).expect("valid prefix")
            }
            Err(e) => {
                return Err(Error::Invalid(format!(
                    "distill.vocab: cross: the student's pieces spell bytes that are not UTF-8 text (at byte {} of a run of {})",
                    lead + e.valid_up_to(),
                    bytes.len()
                )))
            }
        };
        if text.is_empty() {
            return Ok(());
        }
        let ids = (self.encode)(text)?;
        let mut at = start + lead as u64;
        let mut spelled = Vec::with_capacity(text.len());
        for &id in &ids {
            let piece = self.teacher.get(id as usize).map_or(&[][..], Piece::bytes);
            spelled.extend_from_slice(piece);
            at += piece.len() as u64;
            t.ids.push(id);
            t.ends.push(at);
        }
        if spelled != text.as_bytes() {
            let shown: String = text.chars().take(40).collect();
            return Err(Error::Invalid(format!(
                "distill.vocab: cross: the tokenizer of `{}` does not spell the text byte for byte (it normalises or adds text, so byte offsets cannot align): {:?} became {:?}",
                self.teacher_name,
                shown,
                String::from_utf8_lossy(&spelled[..spelled.len().min(shown.len() + 8)])
            )));
        }
        Ok(())
    }
}

/// `(student position, teacher position)` where both end at the same coordinate (the last
/// teacher position there), for student positions that have a next token.
fn pairs(student_ends: &[u64], teacher_ends: &[u64]) -> Vec<(u32, u32)> {
    let mut out = vec![];
    let mut j = 0;
    let last = student_ends.len().saturating_sub(1);
    for (i, &e) in student_ends[..last].iter().enumerate() {
        while j < teacher_ends.len() && teacher_ends[j] < e {
            j += 1;
        }
        let mut k = j;
        while k + 1 < teacher_ends.len() && teacher_ends[k + 1] == e {
            k += 1;
        }
        if k < teacher_ends.len() && teacher_ends[k] == e {
            out.push((i as u32, k as u32));
            j = k;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Piece {
        Piece::Text(s.as_bytes().to_vec())
    }

    /// Student pieces: 0 = BOS, 1 = EOS, then "a", "b", "ab", " c", and the two halves of "é"
    /// (bytes C3 A9). Teacher pieces: 0 = <bos>, 1 = <eos>, "a", "ba", "b", " ", "c", "é".
    fn setup() -> (Vec<Piece>, Vec<Piece>) {
        let student = vec![
            Piece::Special,
            Piece::Special,
            text("a"),
            text("b"),
            text("ab"),
            text(" c"),
            Piece::Text(vec![0xC3]),
            Piece::Text(vec![0xA9]),
        ];
        let teacher = vec![
            Piece::Special,
            Piece::Special,
            text("a"),
            text("ba"),
            text("b"),
            text(" "),
            text("c"),
            text("é"),
        ];
        (student, teacher)
    }

    /// A greedy longest-match teacher tokenizer over its pieces.
    fn greedy(teacher: &[Piece]) -> impl Fn(&str) -> Result<Vec<u32>> + Sync + '_ {
        move |s: &str| {
            let mut ids = vec![];
            let mut rest = s.as_bytes();
            while !rest.is_empty() {
                let (id, len) = teacher
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.bytes().is_empty() && rest.starts_with(p.bytes()))
                    .map(|(i, p)| (i as u32, p.bytes().len()))
                    .max_by_key(|x| x.1)
                    .expect("spellable");
                ids.push(id);
                rest = &rest[len..];
            }
            Ok(ids)
        }
    }

    fn aligner<'a>(
        student: &'a [Piece],
        teacher: &'a [Piece],
        encode: &'a TeacherEncode<'a>,
        teacher_bos: Option<u32>,
    ) -> Aligner<'a> {
        let mut specials = HashMap::new();
        specials.insert(0, vec![0]);
        let eos: Vec<u32> = std::iter::once(1).chain(teacher_bos).collect();
        specials.insert(1, eos);
        Aligner {
            student,
            teacher,
            encode,
            specials,
            teacher_bos,
            teacher_name: "test",
        }
    }

    #[test]
    fn positions_align_where_both_end_at_the_same_byte() {
        let (s, t) = setup();
        let enc = greedy(&t);
        let a = aligner(&s, &t, &enc, Some(0));
        // Student: <bos> a b a  c <eos> ab  → text "aba c" then "ab".
        let block = [0, 2, 3, 2, 5, 1, 4, 3];
        let got = a.align(&block).unwrap();
        // Teacher: <bos> a ba " " c <eos> <bos> a b b … greedy: "ab" → "a","b"; "abb"? no:
        // the second run is "abb" (ab + b) → "a", "b", "b".
        assert_eq!(got.teacher_ids, vec![0, 2, 3, 5, 6, 1, 0, 2, 4, 4]);
        // Ends: student 1,2,3,4,6,7,9,10; teacher 1,2,4,5,6,7,7,8,9,10.
        // Student 0 (<bos>) ↔ teacher 0; "a"(2) ↔ 1; "b"(3) — teacher "ba" ends at 4: none;
        // "a"(4) ↔ "ba"; " c"(6) ↔ "c"; <eos>(7) ↔ the teacher's BOS after its EOS (6);
        // "ab"(9) ↔ "b" (8); the last student position has no next token.
        assert_eq!(
            got.pairs,
            vec![(0, 0), (1, 1), (3, 2), (4, 4), (5, 6), (6, 8)]
        );
    }

    #[test]
    fn a_character_split_across_tokens_or_cut_by_the_block_breaks_nothing() {
        let (s, t) = setup();
        let enc = greedy(&t);
        let a = aligner(&s, &t, &enc, None);
        // The block begins inside "é" (its second byte), then "a", "é" as two byte tokens, "b".
        let block = [7, 2, 6, 7, 3];
        let got = a.align(&block).unwrap();
        // The leading continuation byte is left out; the teacher reads "aéb".
        assert_eq!(got.teacher_ids, vec![2, 7, 4]);
        // Ends: student 1,2,3,4,5; teacher (from 1) 2,4,5. The student's first byte of "é"
        // (3) aligns with nothing; its second (4) with the teacher's "é".
        assert_eq!(got.pairs, vec![(1, 0), (3, 1)]);
        // A block cut inside "é" at its end: the teacher leaves the half character out.
        let got = a.align(&[2, 3, 6]).unwrap();
        assert_eq!(got.teacher_ids, vec![2, 4]);
        assert_eq!(got.pairs, vec![(0, 0), (1, 1)]);
    }

    #[test]
    fn a_teacher_that_does_not_spell_the_text_is_named() {
        let (s, t) = setup();
        let upper = |text: &str| -> Result<Vec<u32>> {
            // Pretends to normalise: spells "a" for every byte.
            Ok(vec![2; text.len()])
        };
        let a = aligner(&s, &t, &upper, None);
        let e = a.align(&[2, 3]).unwrap_err().to_string();
        assert!(e.contains("`test`") && e.contains("byte for byte"), "{e}");
    }
}
