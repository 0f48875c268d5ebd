//! How many bytes of text each token id stands for, so that a score can be normalised per
//! byte: perplexities of models whose tokenizers differ are not comparable, bits per byte are.
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

/// The bytes of text each id of `t` stands for, by id.
pub(super) fn byte_lengths(t: &Tokenizer) -> Vec<u32> {
    let scheme = scheme(t.get_decoder());
    let added = t.get_added_tokens_decoder();
    (0..t.get_vocab_size(true) as u32)
        .map(|id| match added.get(&id) {
            Some(tok) if tok.special => 0,
            Some(tok) => tok.content.len() as u32,
            None => t
                .id_to_token(id)
                .map_or(0, |piece| piece_bytes(t, scheme, id, &piece)),
        })
        .collect()
}

fn piece_bytes(t: &Tokenizer, scheme: Scheme, id: u32, piece: &str) -> u32 {
    match scheme {
        Scheme::ByteLevel => piece.chars().count() as u32,
        Scheme::SentencePiece if is_byte_piece(piece) => 1,
        Scheme::SentencePiece => piece
            .chars()
            .map(|c| if c == SPACE { 1 } else { c.len_utf8() })
            .sum::<usize>() as u32,
        Scheme::Decode => t.decode(&[id], false).map_or(0, |s| s.len() as u32),
    }
}

/// `<0xNN>`: one byte of a character the vocabulary lacks.
fn is_byte_piece(piece: &str) -> bool {
    piece.len() == 6
        && piece.starts_with("<0x")
        && piece.ends_with('>')
        && piece[3..5].chars().all(|c| c.is_ascii_hexdigit())
}
