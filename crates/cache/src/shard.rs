//! A shard file: a 32-byte header, then fixed-size records, `positions` per cached block.
//!
//! ```text
//! magic "DSTLTC01" | entries u64 | positions per entry u64 | record bytes u64 | records…
//! ```

use std::path::Path;

use crate::error::CacheError;

const MAGIC: &[u8; 8] = b"DSTLTC01";
pub(crate) const HEADER: usize = 32;

/// The shard's header for `entries` blocks of `positions` records of `record_bytes`.
pub(crate) fn header(entries: usize, positions: usize, record_bytes: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    for (i, v) in [entries, positions, record_bytes].into_iter().enumerate() {
        h[8 + 8 * i..16 + 8 * i].copy_from_slice(&(v as u64).to_le_bytes());
    }
    h
}

/// The records of a shard's bytes, after checking its header, length and CRC against what
/// the manifest says.
pub(crate) fn records<'a>(
    path: &Path,
    bytes: &'a [u8],
    entries: usize,
    positions: usize,
    record_bytes: usize,
    crc32: u32,
) -> Result<&'a [u8], CacheError> {
    let corrupt = |why: String| CacheError::Corrupt {
        path: path.into(),
        why,
    };
    let want = HEADER + entries * positions * record_bytes;
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(corrupt("no shard header (magic DSTLTC01)".into()));
    }
    if bytes[..HEADER] != header(entries, positions, record_bytes) {
        return Err(corrupt(format!(
            "its header does not describe {entries} blocks of {positions} records of {record_bytes} bytes, as cache.json does"
        )));
    }
    if bytes.len() != want {
        return Err(corrupt(format!(
            "{} bytes, expected {want}{}",
            bytes.len(),
            if bytes.len() < want {
                " (truncated)"
            } else {
                ""
            }
        )));
    }
    let body = &bytes[HEADER..];
    let crc = crc32fast::hash(body);
    if crc != crc32 {
        return Err(corrupt(format!(
            "CRC-32 {crc:08x}, cache.json records {crc32:08x}"
        )));
    }
    Ok(body)
}
