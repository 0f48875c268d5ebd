//! Reading a cache: `cache.json` and every shard checked once at open (header, length,
//! CRC-32), the shards memory-mapped, then any block's records decoded on demand.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::CacheError;
use crate::manifest::{blocks_digest, Identity, Manifest, SplitManifest};
use crate::shard;

/// The cached teacher targets of a set of positions, row-major: row `r` has ids and
/// log-probabilities `r·k..(r+1)·k` (summing with `rest[r]` to one); `k` is the top-k plus the
/// tail samples, whose repeats are entries of log-probability [`crate::PAD_LOGP`] (weight 0).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopK {
    pub k: usize,
    pub ids: Vec<u32>,
    pub logp: Vec<f32>,
    pub rest: Vec<f32>,
    /// log p(next token) at T = 1.
    pub label_logp: Vec<f32>,
}

impl TopK {
    pub fn rows(&self) -> usize {
        self.rest.len()
    }

    /// Rows `keep` of these targets, in that order (the positions a masked loss counts).
    pub fn select(&self, keep: &[usize]) -> TopK {
        let k = self.k;
        TopK {
            k,
            ids: keep
                .iter()
                .flat_map(|&r| &self.ids[r * k..(r + 1) * k])
                .copied()
                .collect(),
            logp: keep
                .iter()
                .flat_map(|&r| &self.logp[r * k..(r + 1) * k])
                .copied()
                .collect(),
            rest: keep.iter().map(|&r| self.rest[r]).collect(),
            label_logp: keep.iter().map(|&r| self.label_logp[r]).collect(),
        }
    }
}

struct Split {
    maps: Vec<Mmap>,
    /// Block index → (shard, entry within it).
    entry: HashMap<u32, (usize, usize)>,
}

/// An opened, checked cache.
pub struct TeacherCache {
    dir: PathBuf,
    manifest: Manifest,
    splits: Vec<Split>,
}

/// What a run expects of one split: its data and the blocks it will read.
pub struct ExpectedSplit<'a> {
    pub name: &'a str,
    pub data: &'a [Vec<u32>],
    pub reads: &'a [usize],
}

impl TeacherCache {
    /// Opens the cache in `dir`: a directory with a complete `cache.json` whose shards are all
    /// present and intact.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let manifest = Manifest::read(dir)?;
        if !manifest.complete {
            return Err(CacheError::Incomplete {
                dir: dir.into(),
                done: manifest.shards_done(),
                total: manifest.shard_count(),
            });
        }
        let positions = manifest.identity.block_size.saturating_sub(1);
        let rb = manifest.layout.record_bytes;
        let mut splits = vec![];
        for s in &manifest.splits {
            let mut maps = vec![];
            let mut entry = HashMap::new();
            let mut next = 0;
            for (si, sh) in s.shards.iter().enumerate() {
                let path = dir.join(&sh.file);
                if sh.first != next || sh.first + sh.count > s.blocks.len() {
                    return Err(CacheError::Corrupt {
                        path,
                        why: format!(
                            "cache.json lists it for entries {}..{} of {}, expected to start at {next}",
                            sh.first,
                            sh.first + sh.count,
                            s.blocks.len()
                        ),
                    });
                }
                next += sh.count;
                let file = std::fs::File::open(&path).map_err(|e| CacheError::Corrupt {
                    path: path.clone(),
                    why: format!("cannot open it: {e}"),
                })?;
                // SAFETY: the cache's files are written once (temp file, then rename) and never
                // modified in place; a concurrent writer is outside the contract.
                let map = unsafe { Mmap::map(&file) }.map_err(CacheError::io(&path, "mapping"))?;
                shard::records(&path, &map, sh.count, positions, rb, sh.crc32)?;
                for e in 0..sh.count {
                    entry.insert(s.blocks[sh.first + e], (si, e));
                }
                maps.push(map);
            }
            if next != s.blocks.len() {
                return Err(CacheError::Incomplete {
                    dir: dir.into(),
                    done: manifest.shards_done(),
                    total: manifest.shard_count(),
                });
            }
            splits.push(Split { maps, entry });
        }
        Ok(Self {
            dir: dir.into(),
            manifest,
            splits,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes per cached position.
    pub fn bytes_per_token(&self) -> usize {
        self.manifest.layout.record_bytes
    }

    /// Checks that this cache was made for `identity` with a `vocab_size` vocabulary, and
    /// holds every block each split will read of this data; errors name what differs.
    pub fn check(
        &self,
        identity: &Identity,
        vocab_size: usize,
        splits: &[ExpectedSplit],
    ) -> Result<(), CacheError> {
        let path = Manifest::path(&self.dir);
        compare_identity(&path, &self.manifest, identity, vocab_size)?;
        for want in splits {
            let s = self.split(want.name)?;
            let m = &self.manifest.splits[s];
            compare_split(
                &path,
                m,
                want.data.len(),
                &blocks_digest(want.data.iter().map(|b| &b[..])),
            )?;
            for sh in &m.shards {
                let tokens = blocks_digest(
                    m.blocks[sh.first..sh.first + sh.count]
                        .iter()
                        .map(|&b| &want.data[b as usize][..]),
                );
                if tokens != sh.tokens_sha256 {
                    return Err(CacheError::Mismatch {
                        path: self.dir.join(&sh.file),
                        what: "the tokens of its blocks".into(),
                        cached: sh.tokens_sha256.clone(),
                        expected: tokens,
                    });
                }
            }
            let mut missing = want
                .reads
                .iter()
                .filter(|&&b| !self.splits[s].entry.contains_key(&(b as u32)));
            if let Some(&first_missing) = missing.next() {
                let needed: std::collections::BTreeSet<_> = want.reads.iter().collect();
                return Err(CacheError::Shorter {
                    path: path.clone(),
                    split: want.name.into(),
                    cached: m.blocks.len(),
                    needed: needed.len(),
                    first_missing,
                });
            }
        }
        Ok(())
    }

    fn split(&self, name: &str) -> Result<usize, CacheError> {
        self.manifest
            .splits
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| CacheError::Mismatch {
                path: Manifest::path(&self.dir),
                what: "splits".into(),
                cached: self
                    .manifest
                    .splits
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                expected: format!("a `{name}` split"),
            })
    }

    /// The targets of every position but the last of `blocks` (of split `name`), block by
    /// block: `blocks.len() × (block_size − 1)` rows.
    pub fn rows(&self, name: &str, blocks: &[usize]) -> Result<TopK, CacheError> {
        let s = self.split(name)?;
        let layout = self.manifest.layout;
        let positions = self.manifest.identity.block_size - 1;
        let rb = layout.record_bytes;
        let n = blocks.len() * positions;
        let mut out = TopK {
            k: layout.row_width(),
            ids: Vec::with_capacity(n * layout.row_width()),
            logp: Vec::with_capacity(n * layout.row_width()),
            rest: Vec::with_capacity(n),
            label_logp: Vec::with_capacity(n),
        };
        for &b in blocks {
            let &(shard, e) =
                self.splits[s]
                    .entry
                    .get(&(b as u32))
                    .ok_or_else(|| CacheError::Shorter {
                        path: Manifest::path(&self.dir),
                        split: name.into(),
                        cached: self.manifest.splits[s].blocks.len(),
                        needed: blocks.len(),
                        first_missing: b,
                    })?;
            let body = &self.splits[s].maps[shard][shard::HEADER..];
            for p in 0..positions {
                let at = (e * positions + p) * rb;
                let (rest, label) = layout
                    .decode(&body[at..at + rb], &mut out.ids, &mut out.logp)
                    .map_err(|why| CacheError::Corrupt {
                        path: self.dir.join(&self.manifest.splits[s].shards[shard].file),
                        why: format!("block {b}, position {p}: {why}"),
                    })?;
                out.rest.push(rest);
                out.label_logp.push(label);
            }
        }
        Ok(out)
    }
}

/// Errors naming the first identity field in which `m` differs from `want`.
pub(crate) fn compare_identity(
    path: &Path,
    m: &Manifest,
    want: &Identity,
    vocab_size: usize,
) -> Result<(), CacheError> {
    let have = &m.identity;
    let differs = |what: &str, cached: String, expected: String| {
        Err(CacheError::Mismatch {
            path: path.into(),
            what: what.into(),
            cached,
            expected,
        })
    };
    if have.teacher_sha256 != want.teacher_sha256 {
        return differs(
            "teacher",
            format!("{} (weights {})", have.teacher, short(&have.teacher_sha256)),
            format!("{} (weights {})", want.teacher, short(&want.teacher_sha256)),
        );
    }
    if have.teacher_compute != want.teacher_compute {
        return differs(
            "teacher computing with",
            have.teacher_compute.clone(),
            want.teacher_compute.clone(),
        );
    }
    if have.tokenizer_sha256 != want.tokenizer_sha256 {
        return differs(
            "tokenizer",
            short(&have.tokenizer_sha256),
            short(&want.tokenizer_sha256),
        );
    }
    if m.layout.vocab_size != vocab_size {
        return differs(
            "vocabulary size",
            m.layout.vocab_size.to_string(),
            vocab_size.to_string(),
        );
    }
    if have.block_size != want.block_size {
        return differs(
            "data.block_size",
            have.block_size.to_string(),
            want.block_size.to_string(),
        );
    }
    if have.temperature != want.temperature {
        return differs(
            "distill.temperature",
            have.temperature.to_string(),
            want.temperature.to_string(),
        );
    }
    Ok(())
}

/// An error when split `m` was cached from other data than `blocks` blocks with digest `sha`.
pub(crate) fn compare_split(
    path: &Path,
    m: &SplitManifest,
    blocks: usize,
    sha: &str,
) -> Result<(), CacheError> {
    if m.data_blocks != blocks || m.data_sha256 != sha {
        return Err(CacheError::Mismatch {
            path: path.into(),
            what: format!("{} data", m.name),
            cached: format!(
                "{} blocks (tokens {})",
                m.data_blocks,
                short(&m.data_sha256)
            ),
            expected: format!("{blocks} blocks (tokens {})", short(sha)),
        });
    }
    Ok(())
}

fn short(sha: &str) -> String {
    format!("sha256 {}…", &sha[..sha.len().min(12)])
}
