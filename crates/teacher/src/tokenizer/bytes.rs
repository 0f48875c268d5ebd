//! What bytes of text each token id stands for: the units two tokenisations are aligned by,
//! and their count, so that a score can be normalised per byte (perplexities of models whose
//! tokenizers differ are not comparable, bits per byte are).
//!
//! Read from the vocabulary by the decoder's scheme: byte-level BPE (every character of a piece
//! is one byte), SentencePiece (`▁` is a space, `<0xNN>` one byte); other pieces by decoding
//! them alone. Special tokens stand for no text (0); other added tokens for their content.

use tokenizers::{DecoderWrapper, Tokenizer};

/// SentencePiece's whitespace mark.
const SPACE: char = '\u{2581}';

/// How a decoder turns pieces back into bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    ByteLevel,
    SentencePiece,
    Decode,
}

fn scheme(decoder: Option<&DecoderWrapper>) -> Scheme {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => Scheme::ByteLevel,
        Some(DecoderWrapper::Metaspace(_) | DecoderWrapper::ByteFallback(_)) => {
            Scheme::SentencePiece
        }
        Some(DecoderWrapper::Sequence(s)) => s
            .get_decoders()
            .iter()
            .map(|d| scheme(Some(d)))
            .find(|s| *s != Scheme::Decode)
            .unwrap_or(Scheme::Decode),
        _ => Scheme::Decode,
    }
}

/// The bytes of text each id of `t` stands for, by id: its [`pieces`]' lengths, or, for a
/// decoder whose pieces do not say their bytes, the length of each id decoded alone.
pub(super) fn byte_lengths(t: &Tokenizer) -> Vec<u32> {
    if let Some(pieces) = pieces(t) {
        return pieces.iter().map(|p| p.bytes().len() as u32).collect();
    }
    let added = t.get_added_tokens_decoder();
    (0..t.get_vocab_size(true) as u32)
        .map(|id| match added.get(&id) {
            Some(tok) if tok.special => 0,
            Some(tok) => tok.content.len() as u32,
            None => t.decode(&[id], false).map_or(0, |s| s.len() as u32),
        })
        .collect()
}

/// What one id of a vocabulary spells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Bytes of text.
    Text(Vec<u8>),
    /// One byte of a character the vocabulary lacks (SentencePiece's `<0xNN>`): the same bytes
    /// as a text piece may spell, but not the piece the tokenizer prefers.
    Byte(u8),
    /// A special token: no text.
    Special,
}

impl Piece {
    /// The bytes of text the piece stands for (none for a special token).
    pub fn bytes(&self) -> &[u8] {
        match self {
            Piece::Text(b) => b,
            Piece::Byte(b) => std::slice::from_ref(b),
            Piece::Special => &[],
        }
    }
}

/// What each id of `t` spells, by id; `None` when its decoder is neither byte-level nor
/// SentencePiece, whose pieces say their bytes (a decoder that rewrites text, as WordPiece's
/// `##`, does not).
pub(super) fn pieces(t: &Tokenizer) -> Option<Vec<Piece>> {
    if !spells_bytes(t) {
        return None;
    }
    let scheme = scheme(t.get_decoder());
    let added = t.get_added_tokens_decoder();
    let to_byte = byte_of_char();
    let pieces = (0..t.get_vocab_size(true) as u32)
        .map(|id| match added.get(&id) {
            Some(tok) if tok.special => Piece::Special,
            Some(tok) => Piece::Text(tok.content.clone().into_bytes()),
            None => match t.id_to_token(id) {
                None => Piece::Special,
                Some(piece) => match scheme {
                    Scheme::ByteLevel => Piece::Text(
                        piece
                            .chars()
                            .map(|c| to_byte.get(&c).copied().unwrap_or(b'?'))
                            .collect(),
                    ),
                    _ if is_byte_piece(&piece) => {
                        Piece::Byte(u8::from_str_radix(&piece[3..5], 16).expect("hex"))
                    }
                    _ => Piece::Text(piece.replace(SPACE, " ").into_bytes()),
                },
            },
        })
        .collect();
    Some(pieces)
}

/// Whether `t`'s pieces say their bytes ([`pieces`] would give them), read off its decoder alone.
pub(super) fn spells_bytes(t: &Tokenizer) -> bool {
    scheme(t.get_decoder()) != Scheme::Decode
}

/// Byte-level BPE's alphabet read backwards: the character standing for each byte (GPT-2's
/// table: printable bytes stand for themselves, the others for 256 + their rank).
fn byte_of_char() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).expect("a character")
            };
            (c, b)
        })
        .collect()
}

/// `<0xNN>`: one byte of a character the vocabulary lacks.
fn is_byte_piece(piece: &str) -> bool {
    piece.len() == 6
        && piece.starts_with("<0x")
        && piece.ends_with('>')
        && piece[3..5].chars().all(|c| c.is_ascii_hexdigit())
}
