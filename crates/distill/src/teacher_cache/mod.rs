//! The offline teacher cache of a causal-LM run: `distill cache-teacher` runs the teacher once
//! over the training blocks the run will read and the validation blocks it evaluates on, and
//! keeps per position the top-k targets ([`distill_cache`]); `distill run` with
//! `teacher.cache` then trains and evaluates from them without running the teacher.

mod across;

use crate::teacher_answers::{self as answers, AnswersMade};

use std::path::{Path, PathBuf};
use std::time::Instant;

use distill_cache::{
    file_digest, sample_tail, top_k_row, vocabulary_digest, CacheBuilder, ExpectedSplit, Identity,
    Layout, Manifest, SplitRequest, TeacherCache,
};
use distill_models::{Input, Model};
use distill_teacher::{CacheConfig, LoadOptions, LoadedTokenizer, Teacher, TeacherSource};
use distill_train::config::VocabMode;
use distill_train::data::BlockSet;
use distill_train::tasks::blocks_read;
use distill_train::{Event, Observer, StopFlag};
use rayon::prelude::*;

use crate::cross::student::{student_data, TeacherFacts};
use crate::cross::CrossRun;
use crate::data::{build_data, split_run_documents};
use crate::error::{Context, Error, Result};
use crate::group::load_and_join;
use crate::job::RunConfig;
use crate::options::RunOptions;

/// Blocks per shard: at most this much teacher work is lost to a kill (≈ 30 s for the
/// quickstart's teacher on two cores).
const SHARD_BLOCKS: usize = 64;

/// Split names inside a cache.
pub const TRAIN: &str = "train";
pub const VALID: &str = "valid";

/// What `cache_teacher` made.
#[derive(Debug)]
pub struct CacheOutcome {
    pub dir: PathBuf,
    /// This process's rank in its group (0 alone); only rank 0 writes the manifest.
    pub rank: usize,
    /// The cache's manifest (`None` when stopped while the teacher was still answering).
    pub manifest: Option<Manifest>,
    /// Shards made in this session (the others were there from an earlier one).
    pub shards_made: usize,
    /// Positions in the cache and bytes of its shards.
    pub positions: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// Stopped by the stop flag; running the command again finishes the cache.
    pub interrupted: bool,
    /// What the teacher answered first (`teacher.cache.generate`).
    pub answers: Option<AnswersMade>,
}

impl CacheOutcome {
    /// Stopped while the teacher was still answering the prompts: no target cached yet.
    fn stopped_answering(dir: PathBuf, rank: usize, started: Instant, made: AnswersMade) -> Self {
        Self {
            dir,
            rank,
            manifest: None,
            shards_made: 0,
            positions: 0,
            bytes: 0,
            seconds: started.elapsed().as_secs_f64(),
            interrupted: true,
            answers: Some(made),
        }
    }
}

/// The `teacher.cache` section of a run, or an error saying how to write it.
pub fn cache_config(cfg: &RunConfig) -> Result<&CacheConfig> {
    cfg.teacher.cache.as_ref().ok_or_else(|| {
        Error::Job(
            "teacher.cache: name the directory of the teacher cache (`cache: DIR`, or `cache: {dir: DIR, top_k: 16, tail_samples: 24, logprob_bits: 8}`)".into(),
        )
    })
}

/// The blocks of each split the run reads: the training blocks of all its micro-batches,
/// and the validation blocks it evaluates on.
pub fn blocks_the_run_reads(
    cfg: &RunConfig,
    train: &BlockSet,
    valid: &BlockSet,
) -> (Vec<usize>, Vec<usize>) {
    let t = &cfg.train;
    let micro = t.total_steps(train.len().div_ceil(t.batch_size.max(1))) * t.grad_accum;
    let train_reads = blocks_read(train, t.seed, micro, t.batch_size);
    let n = t.eval_block_count(valid.len());
    (train_reads, (0..n).collect())
}

/// What the run's cached targets depend on.
pub fn run_identity(
    cfg: &RunConfig,
    files: &[PathBuf],
    tokenizer: &LoadedTokenizer,
    load: &LoadOptions,
) -> Result<Identity> {
    let vocab = tokenizer.id_pieces();
    let gguf = files
        .iter()
        .any(|f| f.extension().is_some_and(|e| e == "gguf"));
    Ok(Identity {
        teacher: cfg.teacher.source.clone(),
        teacher_sha256: file_digest(files).context("teacher.source")?,
        teacher_compute: if gguf {
            format!(
                "gguf_weights {}, {:?}",
                cfg.teacher.gguf_weights, load.dtype
            )
        } else {
            format!("{:?}", load.dtype)
        },
        tokenizer_sha256: vocabulary_digest(vocab.iter().map(|t| t.as_deref())),
        block_size: cfg.data.block_size,
        temperature: cfg.distill.temperature,
    })
}

/// What a cross-tokenizer run's cached targets depend on: those of [`run_identity`], with the
/// vocabulary digest over both tokenizers (the cache keeps the teacher's ids at positions that
/// the student's tokenisation decides).
pub fn run_identity_across(
    cfg: &RunConfig,
    files: &[PathBuf],
    teacher: &LoadedTokenizer,
    student: &LoadedTokenizer,
    load: &LoadOptions,
) -> Result<Identity> {
    let mut identity = run_identity(cfg, files, teacher, load)?;
    let (t, s) = (teacher.id_pieces(), student.id_pieces());
    identity.tokenizer_sha256 = vocabulary_digest(
        t.iter()
            .map(|p| p.as_deref())
            .chain([Some("\u{0}student\u{0}")])
            .chain(s.iter().map(|p| p.as_deref())),
    );
    Ok(identity)
}

/// Opens the run's cache and checks it against the run: teacher, tokenizer, block size,
/// temperature, vocabulary, data, and that it holds every block the run reads.
pub fn open_for_run(
    cfg: &RunConfig,
    identity: &Identity,
    vocab_size: usize,
    train: &BlockSet,
    valid: &BlockSet,
) -> Result<TeacherCache> {
    let dir = PathBuf::from(cache_config(cfg)?.dir());
    let cache = TeacherCache::open(&dir).context("teacher.cache")?;
    let (tr, va) = blocks_the_run_reads(cfg, train, valid);
    cache
        .check(
            identity,
            vocab_size,
            &[
                ExpectedSplit {
                    name: TRAIN,
                    data: &train.blocks,
                    reads: &tr,
                },
                ExpectedSplit {
                    name: VALID,
                    data: &valid.blocks,
                    reads: &va,
                },
            ],
        )
        .context("teacher.cache")?;
    Ok(cache)
}

/// Runs the teacher of `cfg` over the blocks the run reads and writes (or finishes) its cache
/// in `teacher.cache`.
///
/// As one rank of a data-parallel group (`opts.launch`), it runs the teacher on the device of
/// its `LOCAL_RANK` over every `world`-th pending shard and writes those shard files; rank 0
/// opens the cache first and, once every rank is done, records the files in order and marks
/// the cache complete. A group stopped part-way leaves files the next session records.
pub fn cache_teacher(cfg: &RunConfig, opts: &RunOptions) -> Result<CacheOutcome> {
    let started = Instant::now();
    let c = cache_config(cfg)?;
    let dir = PathBuf::from(c.dir());
    let (load, comm) = load_and_join(&cfg.teacher, opts.launch.as_ref())?;
    let source = TeacherSource::parse(&cfg.teacher.source).context("teacher.source")?;
    tracing::info!(source = %source, "loading the teacher");
    let teacher = Teacher::load(&source, &load)?;
    let (lm, lcfg) = teacher.language_model().context("teacher.source")?;
    let vocab = lcfg.vocab_size;
    let answers = match answer_prompts(cfg, &teacher, comm.as_deref(), opts)? {
        Some(made) if made.interrupted => {
            let rank = comm.as_ref().map_or(0, |c| c.rank());
            return Ok(CacheOutcome::stopped_answering(dir, rank, started, made));
        }
        made => made,
    };
    let CacheData {
        train,
        valid,
        identity,
        cross,
    } = cache_data(cfg, &load, &teacher, &source)?;
    let (tr, va) = blocks_the_run_reads(cfg, &train, &valid);
    let layout = Layout::new(c.top_k(), vocab, c.logprob_bits())
        .and_then(|l| l.with_tail_samples(c.tail_samples()))
        .context("teacher.cache")?;
    let split_data = |split: usize| if split == 0 { &train } else { &valid };
    let (rank, world) = comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world()));
    let requests = [
        SplitRequest {
            name: TRAIN,
            data: &train.blocks,
            blocks: tr.iter().map(|&b| b as u32).collect(),
        },
        SplitRequest {
            name: VALID,
            data: &valid.blocks,
            blocks: va.iter().map(|&b| b as u32).collect(),
        },
    ];
    let mut builder = open_shared(
        &dir,
        identity,
        layout,
        &requests,
        comm.as_deref(),
        &split_data,
    )?;
    // Every rank sees the same pending shards and takes every `world`-th of them.
    let all_jobs = builder.pending();
    let jobs: Vec<_> = all_jobs.iter().skip(rank).step_by(world).cloned().collect();
    let pending: usize = all_jobs.iter().map(|j| j.entries.len()).sum();
    let mine: usize = jobs.iter().map(|j| j.entries.len()).sum();
    if world > 1 {
        tracing::info!(
            rank,
            world,
            shards = jobs.len(),
            blocks = mine,
            "this rank's share of the teacher cache"
        );
    }
    tracing::info!(
        dir = %dir.display(),
        top_k = layout.top_k,
        bytes_per_position = layout.record_bytes,
        train_blocks = tr.len(),
        validation_blocks = va.len(),
        pending,
        "teacher cache"
    );
    let maker = ShardMaker {
        lm,
        enc: Encoding {
            layout,
            vocab,
            temperature: cfg.distill.temperature as f32,
        },
        batch: cfg.train.batch_size.max(1),
        world,
        stage: "cache-teacher",
        observer: opts.observer,
        cross: cross.as_ref(),
    };
    let done = (tr.len() + va.len() - pending) as u64;
    opts.observer.event(&Event::Started {
        stage: maker.stage,
        unit: "blocks",
        // A rank of a group counts its own share.
        total: done + mine as u64,
        done,
    });
    let mut made = maker.make(&mut builder, &jobs, &split_data, done, &opts.stop)?;
    opts.observer.event(&Event::Finished { stage: maker.stage });
    if let Some(c) = &comm {
        // Every rank's files are written (or it stopped); rank 0 records them in order. A
        // rank stopped early leaves the cache unfinished for every rank.
        let stopped = c.all_reduce_sum(&candle_core::Tensor::new(
            &[f32::from(u8::from(made.interrupted))],
            &candle_core::Device::Cpu,
        )?)?;
        made.interrupted = stopped.to_vec1::<f32>()?[0] > 0.0;
        if rank == 0 {
            adopt_written(&mut builder, &split_data)?;
        }
    }
    let speed =
        (made.teacher_seconds > 0.0).then(|| made.teacher_tokens as f64 / made.teacher_seconds);
    let manifest = if made.interrupted || rank != 0 {
        builder.manifest().clone()
    } else {
        builder.finish(speed).context("teacher.cache")?
    };
    let positions = (tr.len() + va.len()) * (cfg.data.block_size - 1);
    Ok(CacheOutcome {
        rank,
        bytes: shard_bytes(&dir, &manifest),
        dir,
        manifest: Some(manifest),
        shards_made: made.shards,
        positions,
        seconds: started.elapsed().as_secs_f64(),
        interrupted: made.interrupted,
        answers,
    })
}

/// The teacher answers the run's prompts (this rank's share), when `teacher.cache.generate`
/// asks it to; the ranks of a group wait for each other, so that every rank then reads every
/// answer.
fn answer_prompts(
    cfg: &RunConfig,
    teacher: &Teacher,
    comm: Option<&dyn distill_train::parallel::Communicator>,
    opts: &RunOptions,
) -> Result<Option<AnswersMade>> {
    let c = cache_config(cfg)?;
    let Some(settings) = c.generate() else {
        return Ok(None);
    };
    let split = crate::data::split_source_documents(cfg)?;
    let answerer = answers::Answerer {
        teacher,
        teacher_sha256: file_digest(&teacher.files).context("teacher.source")?,
        settings,
        cache_dir: Path::new(c.dir()),
        rank: comm.map_or(0, |c| c.rank()),
        world: comm.map_or(1, |c| c.world()),
        observer: opts.observer,
    };
    let mut made = answerer.answer(&split, &opts.stop)?;
    if let Some(c) = comm {
        let stopped = c.all_reduce_sum(&candle_core::Tensor::new(
            &[f32::from(u8::from(made.interrupted))],
            &candle_core::Device::Cpu,
        )?)?;
        made.interrupted = stopped.to_vec1::<f32>()?[0] > 0.0;
    }
    Ok(Some(made))
}

/// What a cache is made over: the run's blocks — across tokenizers the student's, with their
/// alignment to the teacher's tokens — and what the cached targets depend on.
struct CacheData {
    train: BlockSet,
    valid: BlockSet,
    identity: Identity,
    cross: Option<CrossRun>,
}

/// The blocks and identity of `cfg`'s cache for `teacher`.
fn cache_data(
    cfg: &RunConfig,
    load: &LoadOptions,
    teacher: &Teacher,
    source: &TeacherSource,
) -> Result<CacheData> {
    let (_, lcfg) = teacher.language_model().context("teacher.source")?;
    if cfg.distill.vocab != VocabMode::Cross {
        let (train, valid) = build_data(cfg, &teacher.tokenizer, lcfg.vocab_size)?;
        return Ok(CacheData {
            train,
            valid,
            identity: run_identity(cfg, &teacher.files, &teacher.tokenizer, load)?,
            cross: None,
        });
    }
    let facts = TeacherFacts {
        tokenizer: &teacher.tokenizer,
        config: lcfg,
        name: source.to_string(),
    };
    let d = student_data(cfg, load, &facts, &split_run_documents(cfg)?)?;
    let student = d
        .vocab
        .as_ref()
        .map_or(&d.cross.tokenizer, |v| &v.tokenizer);
    let identity = run_identity_across(cfg, &teacher.files, &teacher.tokenizer, student, load)?;
    Ok(CacheData {
        train: d.train,
        valid: d.valid,
        identity,
        cross: Some(d.cross.run),
    })
}

/// The cache in `dir`, opened (checked, resumed) by rank 0 while the others wait; they then
/// follow its manifest.
fn open_shared<'a>(
    dir: &Path,
    identity: distill_cache::Identity,
    layout: Layout,
    requests: &[SplitRequest],
    comm: Option<&dyn distill_train::parallel::Communicator>,
    split_data: &impl Fn(usize) -> &'a BlockSet,
) -> Result<CacheBuilder> {
    let rank = comm.map_or(0, |c| c.rank());
    let opened = if rank == 0 {
        let mut b = CacheBuilder::open(dir, identity, layout, requests, SHARD_BLOCKS)
            .context("teacher.cache")?;
        adopt_written(&mut b, split_data)?;
        Some(b)
    } else {
        None
    };
    if let Some(c) = comm {
        c.barrier()?;
    }
    Ok(match opened {
        Some(b) => b,
        None => CacheBuilder::follow(dir).context("teacher.cache")?,
    })
}

/// How the teacher's rows become cache records.
struct Encoding {
    layout: Layout,
    vocab: usize,
    temperature: f32,
}

/// Runs the teacher on shards and writes their records.
struct ShardMaker<'a> {
    lm: &'a dyn Model,
    enc: Encoding,
    /// Blocks per teacher forward.
    batch: usize,
    world: usize,
    stage: &'static str,
    observer: &'a dyn Observer,
    /// Across tokenizers: the blocks' alignment with the teacher's tokens.
    cross: Option<&'a CrossRun>,
}

/// What a session of making shards did.
struct Made {
    shards: usize,
    interrupted: bool,
    teacher_seconds: f64,
    teacher_tokens: usize,
}

impl ShardMaker<'_> {
    /// Makes `jobs` in order until done or `stop` is set; `done` blocks were made before.
    fn make<'d>(
        &self,
        builder: &mut CacheBuilder,
        jobs: &[distill_cache::ShardJob],
        split_data: &impl Fn(usize) -> &'d BlockSet,
        mut done: u64,
        stop: &StopFlag,
    ) -> Result<Made> {
        let mut made = Made {
            shards: 0,
            interrupted: false,
            teacher_seconds: 0.0,
            teacher_tokens: 0,
        };
        for job in jobs {
            if stop.is_set() {
                made.interrupted = true;
                break;
            }
            let data = split_data(job.split);
            let blocks: Vec<usize> = builder.blocks(job).iter().map(|&b| b as usize).collect();
            let records = self.records(data, &blocks, job.split as u64, &mut made, &mut done)?;
            if self.world > 1 {
                builder.write_file(job, &records)
            } else {
                builder.write(job, &data.blocks, &records)
            }
            .context("teacher.cache")?;
            made.shards += 1;
        }
        Ok(made)
    }

    /// The records of `blocks` of `data` (split `split`), the teacher run a batch at a time.
    fn records(
        &self,
        data: &BlockSet,
        blocks: &[usize],
        split: u64,
        made: &mut Made,
        done: &mut u64,
    ) -> Result<Vec<u8>> {
        let s = data.block_size;
        let rb = self.enc.layout.record_bytes;
        let mut records = vec![0u8; blocks.len() * (s - 1) * rb];
        for (ci, chunk) in blocks.chunks(self.batch).enumerate() {
            let first = ci * self.batch * (s - 1) * rb;
            let out = &mut records[first..first + chunk.len() * (s - 1) * rb];
            if let Some(cross) = self.cross {
                let set = if split == 0 {
                    &cross.train
                } else {
                    &cross.valid
                };
                let work = across::CrossRecords {
                    lm: self.lm,
                    enc: &self.enc,
                    vocab: &cross.vocab,
                }
                .chunk(data, set, chunk, split, out)?;
                made.teacher_seconds += work.seconds;
                made.teacher_tokens += work.tokens;
            } else {
                let t0 = Instant::now();
                let logits = teacher_logits(self.lm, data, chunk)?;
                made.teacher_seconds += t0.elapsed().as_secs_f64();
                made.teacher_tokens += chunk.len() * s;
                encode_rows(&logits, data, chunk, split, &self.enc, out)?;
            }
            *done += chunk.len() as u64;
            self.observer.event(&Event::Progress {
                stage: self.stage,
                done: *done,
            });
        }
        Ok(records)
    }
}

/// Records the pending shards whose files are already written (by the ranks of a group, now
/// or in a session that stopped), in order up to the first missing one.
fn adopt_written<'a>(
    builder: &mut CacheBuilder,
    data: &impl Fn(usize) -> &'a BlockSet,
) -> Result<()> {
    for job in builder.pending() {
        if !builder
            .adopt(&job, &data(job.split).blocks)
            .context("teacher.cache")?
        {
            break;
        }
    }
    Ok(())
}

/// The teacher's logits `[blocks·s·V]` (f32, row-major) for `blocks` of `data`.
fn teacher_logits(lm: &dyn Model, data: &BlockSet, blocks: &[usize]) -> Result<Vec<f32>> {
    let s = data.block_size;
    let ids: Vec<u32> = blocks
        .iter()
        .flat_map(|&b| data.blocks[b].iter().copied())
        .collect();
    let ids = candle_core::Tensor::from_vec(ids, (blocks.len(), s), lm.device())?;
    let input = Input::new(&ids);
    let logits = match lm.run_features(&input) {
        Some(f) => {
            let f = f.context("teacher forward")?;
            distill_models::weights::times_transposed(&f.features, &f.head)?
        }
        None => lm.run(&input).context("teacher forward")?.logits,
    };
    Ok(logits
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

/// Encodes every position but the last of each block into `out`, in parallel. Tail draws are
/// seeded by split, block and position, so a cache made again (or resumed) is the same.
fn encode_rows(
    logits: &[f32],
    data: &BlockSet,
    blocks: &[usize],
    split: u64,
    enc: &Encoding,
    out: &mut [u8],
) -> Result<()> {
    let (layout, vocab, temperature) = (&enc.layout, enc.vocab, enc.temperature);
    let s = data.block_size;
    out.par_chunks_mut(layout.record_bytes)
        .enumerate()
        .try_for_each(|(r, rec)| {
            let (bi, p) = (r / (s - 1), r % (s - 1));
            let block = &data.blocks[blocks[bi]];
            let row = &logits[(bi * s + p) * vocab..(bi * s + p + 1) * vocab];
            let mut t =
                top_k_row(row, layout.top_k, temperature, Some(block[p + 1])).ok_or_else(|| {
                    Error::Invalid(format!(
                        "teacher forward: non-finite logits at block {}, position {p}",
                        blocks[bi]
                    ))
                })?;
            if layout.tail_samples > 0 {
                let seed = (split << 56) ^ ((blocks[bi] as u64) << 20) ^ p as u64;
                t.tail = sample_tail(row, &t, temperature, layout.tail_samples, seed);
                // A tail without mass (all probability in the top-k): any tokens; the decoded
                // weights are shares of a zero residual.
                t.tail.resize(layout.tail_samples, t.ids[0]);
            }
            layout.encode(&t, rec);
            Ok(())
        })
}

fn shard_bytes(dir: &Path, m: &Manifest) -> u64 {
    m.splits
        .iter()
        .flat_map(|s| &s.shards)
        .filter_map(|s| std::fs::metadata(dir.join(&s.file)).ok())
        .map(|m| m.len())
        .sum()
}
