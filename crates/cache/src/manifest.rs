//! `cache.json`: what a cache was made from and where its shards are. Written at the start of
//! `cache-teacher` and rewritten (temp file, then rename) after every shard, so a killed run
//! resumes from the shards it finished.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::CacheError;
use crate::layout::Layout;

pub const FORMAT: &str = "distill-teacher-cache";
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "cache.json";

/// What the cached distributions depend on. A run whose own identity differs in any field
/// refuses the cache, naming the field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The teacher's `source` as written in the run file (informational).
    pub teacher: String,
    /// Digest of the teacher's weight files ([`crate::file_digest`]).
    pub teacher_sha256: String,
    /// How the teacher computed (`gguf_weights`, dtype): its logits differ slightly by path.
    pub teacher_compute: String,
    /// Digest of the tokenizer's vocabulary in id order ([`crate::vocabulary_digest`]).
    pub tokenizer_sha256: String,
    pub block_size: usize,
    pub temperature: f64,
}

/// One split's cached blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitManifest {
    pub name: String,
    /// Blocks in the split's data, and a digest of all their tokens ([`crate::blocks_digest`]).
    pub data_blocks: usize,
    pub data_sha256: String,
    /// Indices (ascending) of the cached blocks; entry `i` of the cache is block `blocks[i]`.
    pub blocks: Vec<u32>,
    /// Shards in entry order, as they are finished.
    pub shards: Vec<ShardManifest>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub file: String,
    /// Entries `first..first + count` of the split.
    pub first: usize,
    pub count: usize,
    /// Digest of the tokens of the shard's blocks: the data each record was computed on.
    pub tokens_sha256: String,
    /// CRC-32 of the records.
    pub crc32: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub identity: Identity,
    pub layout: Layout,
    /// Entries per shard (the last may hold fewer).
    pub shard_entries: usize,
    pub splits: Vec<SplitManifest>,
    pub complete: bool,
    /// The teacher's speed while the cache was made (tokens/s).
    pub teacher_tokens_per_second: Option<f64>,
}

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST)
    }

    /// Reads `dir/cache.json`.
    pub fn read(dir: &Path) -> Result<Self, CacheError> {
        let path = Self::path(dir);
        if !dir.is_dir() {
            return Err(CacheError::NotACache {
                dir: dir.into(),
                why: "no such directory".into(),
            });
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CacheError::NotACache {
                    dir: dir.into(),
                    why: format!("no {MANIFEST}"),
                })
            }
            Err(e) => return Err(CacheError::io(&path, "reading")(e)),
        };
        let m: Manifest = serde_json::from_str(&text).map_err(|e| CacheError::NotACache {
            dir: dir.into(),
            why: format!("{MANIFEST} is not a cache manifest: {e}"),
        })?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(CacheError::NotACache {
                dir: dir.into(),
                why: format!(
                    "{MANIFEST} is format `{}` version {}; expected `{FORMAT}` version {VERSION}",
                    m.format, m.version
                ),
            });
        }
        Ok(m)
    }

    /// Writes `dir/cache.json` through a temporary file.
    pub fn write(&self, dir: &Path) -> Result<(), CacheError> {
        let path = Self::path(dir);
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| CacheError::Invalid(format!("cache manifest: {e}")))?;
        write_atomically(&path, json.as_bytes())
    }

    pub fn shard_count(&self) -> usize {
        self.splits
            .iter()
            .map(|s| s.blocks.len().div_ceil(self.shard_entries))
            .sum()
    }

    pub fn shards_done(&self) -> usize {
        self.splits.iter().map(|s| s.shards.len()).sum()
    }
}

/// Writes `bytes` to `path` via a sibling temporary file and a rename: a reader never sees a
/// half-written file, and a failed write leaves none behind.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    Ok(distill_files::write_file(path, bytes)?)
}

/// A digest of token blocks: their count, length and ids in order.
pub fn blocks_digest<'a>(blocks: impl IntoIterator<Item = &'a [u32]>) -> String {
    let mut h = Sha256::new();
    for b in blocks {
        h.update((b.len() as u64).to_le_bytes());
        for id in b {
            h.update(id.to_le_bytes());
        }
    }
    hex(&h.finalize())
}

/// A digest of a vocabulary given as each id's token, in id order.
pub fn vocabulary_digest<'a>(tokens: impl IntoIterator<Item = Option<&'a str>>) -> String {
    let mut h = Sha256::new();
    for t in tokens {
        match t {
            Some(t) => {
                h.update((t.len() as u64).to_le_bytes());
                h.update(t.as_bytes());
            }
            None => h.update(u64::MAX.to_le_bytes()),
        }
    }
    hex(&h.finalize())
}

/// A digest of model files that reads a bounded amount of each: its name, length, first 1 MiB
/// (the GGUF metadata or the safetensors header with every tensor's name, dtype and offsets)
/// and 64 KiB at 32 evenly spaced offsets. Two different teachers agree with negligible
/// probability; a multi-GB teacher costs milliseconds, not a full read, on every run.
pub fn file_digest(files: &[PathBuf]) -> Result<String, CacheError> {
    use std::io::{Read, Seek, SeekFrom};
    const HEAD: u64 = 1 << 20;
    const SAMPLE: u64 = 64 << 10;
    let mut h = Sha256::new();
    for path in files {
        let mut f = std::fs::File::open(path).map_err(CacheError::io(path, "opening"))?;
        let len = f
            .metadata()
            .map_err(CacheError::io(path, "reading metadata"))?
            .len();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        h.update(name.as_bytes());
        h.update(len.to_le_bytes());
        let mut buf = vec![0u8; HEAD.min(len) as usize];
        f.read_exact(&mut buf)
            .map_err(CacheError::io(path, "reading"))?;
        h.update(&buf);
        if len > HEAD {
            for i in 0..32u64 {
                let at = HEAD + (len - HEAD).saturating_sub(SAMPLE) * i / 31;
                let n = SAMPLE.min(len - at) as usize;
                f.seek(SeekFrom::Start(at))
                    .map_err(CacheError::io(path, "seeking"))?;
                buf.resize(n, 0);
                f.read_exact(&mut buf)
                    .map_err(CacheError::io(path, "reading"))?;
                h.update(&buf);
            }
        }
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
