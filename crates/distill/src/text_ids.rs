//! A text file's token ids, read a piece at a time and only as far as they are needed: memory
//! stays bounded on a text of any size, `--max-tokens 256` reads a few KiB of a 40 MB file, and
//! a stream that never ends (a FIFO, `/dev/zero`) is refused before reading.
//!
//! Pieces are cut where a single line break sits between two non-space characters (`…x\nY…`):
//! the pre-tokenizers of byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2) never join tokens
//! across such a break, so the ids equal those of the whole text read at once. A tokenizer
//! that would split differently there (one that adds a prefix space to every input, as
//! SentencePiece-style ones do) is found by a check on a sample text, and then the text is
//! read in one piece, bounded by `max_tokens` when given.

use std::io::Read;
use std::path::Path;

use distill_teacher::LoadedTokenizer;

use crate::error::{io, Error, Result};

/// Bytes read at a time.
const PIECE: usize = 1 << 20;

/// The most bytes one token covers in any vocabulary this reads (a bound for reading a
/// prefix when `max_tokens` is given but pieces cannot be cut).
const MAX_TOKEN_BYTES: usize = 256;

/// The ids of the text at `path` (BOS added as the model's tokenizer adds it), at most
/// `max_tokens` of them.
pub fn text_ids(
    path: &Path,
    tokenizer: &LoadedTokenizer,
    max_tokens: Option<usize>,
) -> Result<Vec<u32>> {
    // A piece of about 64 bytes per wanted token (text runs about 4 bytes a token), so a small
    // `max_tokens` reads a few KiB; more pieces follow when that falls short.
    let limit = max_tokens.unwrap_or(usize::MAX);
    let piece = PIECE.min(limit.saturating_mul(64).max(64 << 10));
    ids_in_pieces(path, tokenizer, limit, piece)
}

/// [`text_ids`] reading `piece` bytes at a time.
fn ids_in_pieces(
    path: &Path,
    tokenizer: &LoadedTokenizer,
    limit: usize,
    piece: usize,
) -> Result<Vec<u32>> {
    distill_files::input::regular_file(path)?;
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    if !cuts_are_exact(tokenizer)? {
        let bytes = limit.saturating_mul(MAX_TOKEN_BYTES).saturating_add(PIECE);
        let mut raw = vec![];
        (&mut file)
            .take(bytes as u64)
            .read_to_end(&mut raw)
            .map_err(io(path))?;
        let text = utf8_prefix(&raw, path, true)?;
        let mut ids = tokenizer.encode(text)?;
        ids.truncate(limit);
        return Ok(ids);
    }
    let mut ids: Vec<u32> = vec![];
    let mut pending: Vec<u8> = vec![];
    let mut eof = false;
    while ids.len() < limit && !(eof && pending.is_empty()) {
        if !eof {
            let before = pending.len();
            pending.resize(before + piece, 0);
            let n = read_full(&mut file, &mut pending[before..]).map_err(io(path))?;
            pending.truncate(before + n);
            eof = n == 0;
        }
        let text = utf8_prefix(&pending, path, eof)?;
        let cut = if eof { text.len() } else { last_cut(text) };
        // No place to cut yet: read more, unless what is here already holds every token
        // wanted (then it is encoded whole).
        let enough = pending.len() > limit.saturating_mul(MAX_TOKEN_BYTES);
        let cut = if cut == 0 && enough { text.len() } else { cut };
        if cut == 0 && !eof {
            continue;
        }
        let piece = &text[..cut];
        let more = if ids.is_empty() {
            tokenizer.encode(piece)?
        } else {
            tokenizer.encode_continuation(piece)?
        };
        ids.extend(more);
        let whole = cut == text.len();
        pending.drain(..cut);
        if eof && whole {
            pending.clear();
        }
    }
    ids.truncate(limit);
    Ok(ids)
}

/// `ids` (a text's ids, BOS first when the tokenizer adds one) cut into windows of `block`
/// tokens of at least 2. When the tokenizer adds BOS, every window begins with it, as llama.cpp's
/// perplexity begins every chunk (a model trained with BOS, as Gemma is, falls apart on
/// windows without one); then no token of the text goes unpredicted.
pub fn windows(ids: &[u32], block: usize, tokenizer: &LoadedTokenizer) -> Vec<Vec<u32>> {
    let bos = tokenizer
        .info
        .bos_token_id
        .filter(|&b| tokenizer.info.add_bos && ids.first() == Some(&b));
    let (body, lead) = match bos {
        Some(b) => (&ids[1..], vec![b]),
        None => (ids, vec![]),
    };
    body.chunks(block - lead.len())
        .map(|c| lead.iter().chain(c).copied().collect::<Vec<u32>>())
        .filter(|w| w.len() >= 2)
        .collect()
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The longest UTF-8 prefix of `bytes`; at the end of the file every byte must be UTF-8, before
/// it a character split by the read may wait for its remaining bytes.
fn utf8_prefix<'a>(bytes: &'a [u8], path: &Path, at_end: bool) -> Result<&'a str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) if !at_end && e.error_len().is_none() => {
            Ok(std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("valid prefix"))
        }
        Err(e) => Err(Error::Invalid(format!(
            "{}: not UTF-8 text (invalid byte near offset {} of a piece)",
            path.display(),
            e.valid_up_to()
        ))),
    }
}

/// Whether the byte at `i` is a line break with a non-space character (Unicode's sense, as
/// the pre-tokenizers' `\s`) on each side.
fn is_cut(text: &str, i: usize) -> bool {
    let nonspace = |c: Option<char>| c.is_some_and(|c| !c.is_whitespace());
    text.as_bytes()[i] == b'\n'
        && nonspace(text[..i].chars().next_back())
        && nonspace(text[i + 1..].chars().next())
}

/// The byte offset after the last single line break between two non-space characters, or 0.
fn last_cut(text: &str) -> usize {
    (1..text.len().saturating_sub(1))
        .rev()
        .find(|&i| is_cut(text, i))
        .map_or(0, |i| i + 1)
}

/// Whether cutting at [`last_cut`]'s places gives the ids of the whole text, on a sample.
fn cuts_are_exact(tokenizer: &LoadedTokenizer) -> Result<bool> {
    const SAMPLE: &str = "CHAPTER 1. Loomings.\nCall me Ishmael. Some years ago\u{2014}never mind how long.\nIt is a way I have, 42 times; \u{4e2d}\u{6587}.\n\"Whenever\" I find myself\ngrowing grim.";
    let whole = tokenizer.encode(SAMPLE)?;
    let mut rest = SAMPLE;
    let mut pieces: Vec<u32> = vec![];
    while !rest.is_empty() {
        let cut = first_cut(rest).unwrap_or(rest.len());
        let piece = &rest[..cut];
        pieces.extend(if pieces.is_empty() {
            tokenizer.encode(piece)?
        } else {
            tokenizer.encode_continuation(piece)?
        });
        rest = &rest[cut..];
    }
    Ok(pieces == whole)
}

/// The byte offset after the first place [`last_cut`] would choose, if any.
fn first_cut(text: &str) -> Option<usize> {
    (1..text.len().saturating_sub(1))
        .find(|&i| is_cut(text, i))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(add_bos: bool) -> LoadedTokenizer {
        let bpe = tokenizers::models::bpe::BPE::default();
        LoadedTokenizer {
            tokenizer: tokenizers::Tokenizer::new(bpe),
            info: distill_teacher::tokenizer::TokenizerInfo {
                kind: "BPE".into(),
                vocab_size: 0,
                pre_tokenizer: None,
                special_tokens: vec![],
                bos_token_id: Some(2),
                eos_token_id: Some(1),
                add_bos,
                has_chat_template: false,
            },
            chat_template: None,
        }
    }

    #[test]
    fn windows_begin_with_bos_when_the_tokenizer_adds_it() {
        let ids = [2u32, 10, 11, 12, 13, 14, 15];
        assert_eq!(
            windows(&ids, 3, &tokenizer(true)),
            vec![vec![2, 10, 11], vec![2, 12, 13], vec![2, 14, 15]]
        );
        // Without BOS in the tokenizer's habits the text is cut as it is; a last window of
        // one token predicts nothing and is dropped.
        assert_eq!(
            windows(&ids, 3, &tokenizer(false)),
            vec![vec![2, 10, 11], vec![12, 13, 14]]
        );
    }

    #[test]
    fn cuts_fall_after_a_single_break_between_words() {
        assert_eq!(last_cut("ab\ncd\n\nef"), 3);
        assert_eq!(last_cut("ab \ncd"), 0);
        assert_eq!(last_cut("ab\n cd"), 0);
        assert_eq!(first_cut("a\nb\nc"), Some(2));
        assert_eq!(first_cut("abc"), None);
        assert_eq!(
            last_cut("a\u{3000}\nb"),
            0,
            "an ideographic space is a space"
        );
        assert_eq!(last_cut("\u{4e2d}\n\u{6587}"), 4);
    }

    /// The real SmolLM2 tokenizer reads the whole of Moby Dick in pieces (with small pieces
    /// forced, so there are hundreds of cuts) and gives the ids of the book read at once.
    #[test]
    fn real_smollm2_pieces_give_the_ids_of_the_whole_text() {
        let assets = std::env::var_os("DISTILL_ASSETS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap())
                    .join(".cache/distill/assets")
            });
        let gguf = assets.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(gguf.exists(), "missing asset: run scripts/fetch-assets.sh");
        let src = distill_teacher::TeacherSource::Gguf(gguf);
        let tok = distill_teacher::load_tokenizer(
            &distill_teacher::resolve(&src, &distill_teacher::HubOptions::from_env()).unwrap(),
        )
        .unwrap();
        assert!(cuts_are_exact(&tok).unwrap());
        let d = tempfile::tempdir().unwrap();
        let book = d.path().join("moby.txt");
        let mut text = String::new();
        for i in 1..=135 {
            text += &std::fs::read_to_string(assets.join(format!("moby-dick/chapter_{i}.txt")))
                .unwrap();
        }
        std::fs::write(&book, &text).unwrap();
        let whole = tok.encode(&text).unwrap();
        assert_eq!(text_ids(&book, &tok, Some(20)).unwrap(), whole[..20]);
        assert_eq!(text_ids(&book, &tok, None).unwrap(), whole);
        // Pieces of 4 KiB: about 300 cuts.
        assert_eq!(ids_in_pieces(&book, &tok, usize::MAX, 4096).unwrap(), whole);
        assert_eq!(
            ids_in_pieces(&book, &tok, 70_000, 4096).unwrap(),
            whole[..70_000]
        );
    }
}
