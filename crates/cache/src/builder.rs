//! Making a cache: shard by shard, resumable. The caller runs the teacher on each pending
//! shard's blocks and hands over the encoded records; the builder writes the shard (temp file,
//! then rename) and records it in `cache.json`, so a killed run loses at most one shard.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::CacheError;
use crate::layout::Layout;
use crate::manifest::{
    blocks_digest, write_atomically, Identity, Manifest, ShardManifest, SplitManifest, FORMAT,
    MANIFEST, VERSION,
};
use crate::shard;

/// One split to cache: its data and which of its blocks to cache.
pub struct SplitRequest<'a> {
    pub name: &'a str,
    pub data: &'a [Vec<u32>],
    /// Block indices to cache (any order, duplicates allowed).
    pub blocks: Vec<u32>,
}

/// A shard still to make: entries `entries` of split `split`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardJob {
    pub split: usize,
    pub shard: usize,
    pub entries: Range<usize>,
}

/// A cache being made in a directory.
pub struct CacheBuilder {
    dir: PathBuf,
    manifest: Manifest,
    /// Held by the one process that opened the cache: one writer per cache.
    _lock: Option<distill_files::Lock>,
}

fn shard_file(split: &str, shard: usize) -> String {
    format!("{split}-{shard:05}.bin")
}

impl CacheBuilder {
    /// Starts a cache in `dir`, or resumes the one there when it was made from the same
    /// teacher, tokenizer, layout and data (an error naming what differs otherwise). Shards it
    /// finished are kept after checking them; a damaged one is made again.
    pub fn open(
        dir: &Path,
        identity: Identity,
        layout: Layout,
        splits: &[SplitRequest],
        shard_entries: usize,
    ) -> Result<Self, CacheError> {
        let shard_entries = shard_entries.max(1);
        let wanted: Vec<SplitManifest> = splits
            .iter()
            .map(|s| {
                let mut blocks = s.blocks.clone();
                blocks.sort_unstable();
                blocks.dedup();
                if let Some(&b) = blocks.iter().find(|&&b| b as usize >= s.data.len()) {
                    return Err(CacheError::Invalid(format!(
                        "{} block {b} requested; the data has {}",
                        s.name,
                        s.data.len()
                    )));
                }
                Ok(SplitManifest {
                    name: s.name.to_string(),
                    data_blocks: s.data.len(),
                    data_sha256: blocks_digest(s.data.iter().map(|b| &b[..])),
                    blocks,
                    shards: vec![],
                })
            })
            .collect::<Result<_, _>>()?;
        let fresh = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            identity,
            layout,
            shard_entries,
            splits: wanted,
            complete: false,
            teacher_tokens_per_second: None,
        };
        let existed = dir.exists();
        std::fs::create_dir_all(dir).map_err(CacheError::io(dir, "creating"))?;
        let lock = match distill_files::Lock::acquire(dir, "distill cache-teacher") {
            Ok(l) => l,
            Err(e) => {
                if !existed {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(e.into());
            }
        };
        let manifest = match Manifest::read(dir) {
            Ok(old) => resume(dir, old, fresh, splits)?,
            Err(CacheError::NotACache { .. }) if !Manifest::path(dir).exists() => {
                let occupied = holds_other_files(dir);
                if occupied {
                    return Err(CacheError::NotACache {
                        dir: dir.into(),
                        why: format!(
                            "it holds other files and no {MANIFEST}; give the cache an empty or new directory"
                        ),
                    });
                }
                fresh.write(dir)?;
                fresh
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            dir: dir.into(),
            manifest,
            _lock: Some(lock),
        })
    }

    /// The cache another process of a group is making in `dir` (it opened it with
    /// [`Self::open`], which checked it): for reading the pending jobs and writing their
    /// shard files with [`Self::write_file`]; the manifest stays the opener's to write.
    pub fn follow(dir: &Path) -> Result<Self, CacheError> {
        Ok(Self {
            dir: dir.into(),
            manifest: Manifest::read(dir)?,
            _lock: None,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shards still to make, in order.
    pub fn pending(&self) -> Vec<ShardJob> {
        let per = self.manifest.shard_entries;
        let mut jobs = vec![];
        for (si, s) in self.manifest.splits.iter().enumerate() {
            for shard in s.shards.len()..s.blocks.len().div_ceil(per) {
                let start = shard * per;
                jobs.push(ShardJob {
                    split: si,
                    shard,
                    entries: start..(start + per).min(s.blocks.len()),
                });
            }
        }
        jobs
    }

    /// The block indices of a job's entries.
    pub fn blocks(&self, job: &ShardJob) -> &[u32] {
        &self.manifest.splits[job.split].blocks[job.entries.clone()]
    }

    /// Writes a job's records (`entries × (block_size − 1) × record_bytes`) computed on
    /// `data` (the split's blocks), and records the shard.
    pub fn write(
        &mut self,
        job: &ShardJob,
        data: &[Vec<u32>],
        records: &[u8],
    ) -> Result<(), CacheError> {
        let split = &self.manifest.splits[job.split];
        if job.shard != split.shards.len() {
            return Err(CacheError::Invalid(format!(
                "shard {} of {} written out of order: shard {} is next",
                job.shard,
                split.name,
                split.shards.len()
            )));
        }
        self.write_file(job, records)?;
        self.record(job, data, records)
    }

    /// Writes a job's shard file without recording it: how the ranks of a group share the
    /// work, the one that opened the cache recording each file with [`Self::adopt`].
    pub fn write_file(&self, job: &ShardJob, records: &[u8]) -> Result<(), CacheError> {
        let m = &self.manifest;
        let positions = m.identity.block_size - 1;
        let count = job.entries.len();
        let want = count * positions * m.layout.record_bytes;
        let split = &m.splits[job.split];
        if records.len() != want {
            return Err(CacheError::Invalid(format!(
                "shard {} of {}: {} record bytes, expected {want}",
                job.shard,
                split.name,
                records.len(),
            )));
        }
        let mut bytes = Vec::with_capacity(shard::HEADER + records.len());
        bytes.extend_from_slice(&shard::header(count, positions, m.layout.record_bytes));
        bytes.extend_from_slice(records);
        write_atomically(&self.dir.join(shard_file(&split.name, job.shard)), &bytes)
    }

    /// Records the next shard from its file when one is there (written by [`Self::write_file`],
    /// here or in an earlier session): `false` when there is none. A file of the wrong shape
    /// is an error naming it.
    pub fn adopt(&mut self, job: &ShardJob, data: &[Vec<u32>]) -> Result<bool, CacheError> {
        let m = &self.manifest;
        let split = &m.splits[job.split];
        if job.shard != split.shards.len() {
            return Ok(false);
        }
        let path = self.dir.join(shard_file(&split.name, job.shard));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(CacheError::io(&path, "reading")(e)),
        };
        let body = bytes.get(shard::HEADER..).unwrap_or_default();
        let records = shard::records(
            &path,
            &bytes,
            job.entries.len(),
            m.identity.block_size - 1,
            m.layout.record_bytes,
            crc32fast::hash(body),
        )?;
        self.record(job, data, records)?;
        Ok(true)
    }

    /// Adds a written shard to the manifest and writes it.
    fn record(
        &mut self,
        job: &ShardJob,
        data: &[Vec<u32>],
        records: &[u8],
    ) -> Result<(), CacheError> {
        let split = &self.manifest.splits[job.split];
        let file = shard_file(&split.name, job.shard);
        let tokens = blocks_digest(self.blocks(job).iter().map(|&b| &data[b as usize][..]));
        self.manifest.splits[job.split].shards.push(ShardManifest {
            file,
            first: job.entries.start,
            count: job.entries.len(),
            tokens_sha256: tokens,
            crc32: crc32fast::hash(records),
        });
        self.manifest.write(&self.dir)
    }

    /// Marks the cache complete (every shard written) with the teacher's measured speed.
    pub fn finish(
        mut self,
        teacher_tokens_per_second: Option<f64>,
    ) -> Result<Manifest, CacheError> {
        if !self.pending().is_empty() {
            return Err(CacheError::Incomplete {
                dir: self.dir.clone(),
                done: self.manifest.shards_done(),
                total: self.manifest.shard_count(),
            });
        }
        self.manifest.complete = true;
        if teacher_tokens_per_second.is_some() {
            self.manifest.teacher_tokens_per_second = teacher_tokens_per_second;
        }
        self.manifest.write(&self.dir)?;
        Ok(self.manifest)
    }
}

/// The manifest to continue from: `old` when it was made for what `fresh` describes, with its
/// shards checked (the first damaged or missing one and all after it are made again).
fn resume(
    dir: &Path,
    old: Manifest,
    fresh: Manifest,
    splits: &[SplitRequest],
) -> Result<Manifest, CacheError> {
    let path = Manifest::path(dir);
    crate::reader::compare_identity(&path, &old, &fresh.identity, fresh.layout.vocab_size)?;
    let differs = |what: &str, cached: String, expected: String| CacheError::Mismatch {
        path: path.clone(),
        what: what.into(),
        cached,
        expected,
    };
    if old.layout != fresh.layout {
        return Err(differs(
            "the record layout",
            format!("{:?}", old.layout),
            format!("{:?}", fresh.layout),
        ));
    }
    if old.shard_entries != fresh.shard_entries {
        return Err(differs(
            "shards of",
            format!("{} blocks", old.shard_entries),
            format!("{} blocks", fresh.shard_entries),
        ));
    }
    let names = |m: &Manifest| m.splits.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    if names(&old) != names(&fresh) {
        return Err(differs(
            "splits",
            names(&old).join(", "),
            names(&fresh).join(", "),
        ));
    }
    let mut m = old;
    m.complete = false;
    for ((ms, ws), req) in m.splits.iter_mut().zip(&fresh.splits).zip(splits) {
        crate::reader::compare_split(&path, ms, ws.data_blocks, &ws.data_sha256)?;
        if ms.blocks != ws.blocks {
            return Err(differs(
                &format!("{} blocks", ms.name),
                format!("{} selected blocks", ms.blocks.len()),
                format!(
                    "{} (other train.steps, batch_size or seed)",
                    ws.blocks.len()
                ),
            ));
        }
        let positions = m.identity.block_size - 1;
        let keep = ms
            .shards
            .iter()
            .take_while(|s| {
                let p = dir.join(&s.file);
                let ok = std::fs::read(&p).ok().is_some_and(|bytes| {
                    shard::records(
                        &p,
                        &bytes,
                        s.count,
                        positions,
                        m.layout.record_bytes,
                        s.crc32,
                    )
                    .is_ok()
                }) && s.tokens_sha256
                    == blocks_digest(
                        ms.blocks[s.first..s.first + s.count]
                            .iter()
                            .map(|&b| &req.data[b as usize][..]),
                    );
                if !ok {
                    tracing::warn!(shard = %p.display(), "damaged shard: making it again");
                }
                ok
            })
            .count();
        // The files of dropped shards go, so that none is adopted again.
        for s in &ms.shards[keep..] {
            let _ = std::fs::remove_file(dir.join(&s.file));
        }
        ms.shards.truncate(keep);
    }
    tracing::info!(
        done = m.shards_done(),
        total = m.shard_count(),
        "resuming the teacher cache"
    );
    m.write(dir)?;
    Ok(m)
}

/// The folder of a cache where the teacher's answers to a run's prompts are kept (written
/// before the cache's targets, which are made over the conversations they complete).
pub const ANSWERS_DIR: &str = "answers";

/// Whether `dir` holds anything but what a cache writes before its manifest: its lock and its
/// answers folder.
pub fn holds_other_files(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()).any(|e| {
                let name = e.file_name();
                let answers = name == ANSWERS_DIR && e.path().is_dir();
                name != distill_files::lock::LOCK_FILE && !answers
            })
        })
        .unwrap_or(false)
}
