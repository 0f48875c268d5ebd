//! A cache made from synthetic logits: what is read back, resuming after a kill, and every
//! kind of input a run must refuse.

use std::path::Path;

use distill_cache::{
    top_k_row, CacheBuilder, CacheError, ExpectedSplit, Identity, Layout, SplitRequest,
    TeacherCache,
};

const V: usize = 37;
const S: usize = 6;

fn identity() -> Identity {
    Identity {
        teacher: "teacher.gguf".into(),
        teacher_sha256: "a".repeat(64),
        teacher_compute: "dequantized f32".into(),
        tokenizer_sha256: "b".repeat(64),
        block_size: S,
        temperature: 1.0,
    }
}

fn data(n: usize, salt: u32) -> Vec<Vec<u32>> {
    (0..n)
        .map(|b| {
            (0..S)
                .map(|p| ((b * 7 + p * 3) as u32 + salt) % V as u32)
                .collect()
        })
        .collect()
}

/// Deterministic "teacher logits" for position `p` of `block`.
fn logits(block: &[u32], p: usize) -> Vec<f32> {
    (0..V)
        .map(|j| {
            ((j as f32 * 0.37 + block[p] as f32 * 1.3).sin() * 3.0)
                + (j == block[p + 1] as usize) as u8 as f32
        })
        .collect()
}

fn records(layout: &Layout, blocks: &[u32], data: &[Vec<u32>]) -> Vec<u8> {
    let mut out = vec![0u8; blocks.len() * (S - 1) * layout.record_bytes];
    let mut recs = out.chunks_mut(layout.record_bytes);
    for &b in blocks {
        let block = &data[b as usize];
        for p in 0..S - 1 {
            let r = top_k_row(&logits(block, p), layout.top_k, 1.0, Some(block[p + 1])).unwrap();
            layout.encode(&r, recs.next().unwrap());
        }
    }
    out
}

/// Makes the cache in `dir`, stopping after `stop_after` shards when given.
fn make(
    dir: &Path,
    train: &[Vec<u32>],
    reads: Vec<u32>,
    stop_after: Option<usize>,
) -> Result<usize, CacheError> {
    let layout = Layout::new(5, V, 8)?;
    let mut b = CacheBuilder::open(
        dir,
        identity(),
        layout,
        &[SplitRequest {
            name: "train",
            data: train,
            blocks: reads,
        }],
        2,
    )?;
    let jobs = b.pending();
    let mut written = 0;
    for job in jobs.iter().take(stop_after.unwrap_or(usize::MAX)) {
        let blocks = b.blocks(job).to_vec();
        b.write(job, train, &records(&layout, &blocks, train))?;
        written += 1;
    }
    if stop_after.is_none() {
        b.finish(Some(123.0))?;
    }
    Ok(written)
}

fn expect<'a>(train: &'a [Vec<u32>], reads: &'a [usize]) -> [ExpectedSplit<'a>; 1] {
    [ExpectedSplit {
        name: "train",
        data: train,
        reads,
    }]
}

#[test]
fn reads_back_what_the_teacher_gave_and_refuses_other_runs() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(9, 0);
    make(dir.path(), &train, vec![4, 1, 7, 1, 0], None).unwrap();
    let cache = TeacherCache::open(dir.path()).unwrap();
    let reads = [0usize, 1, 4, 7];
    cache
        .check(&identity(), V, &expect(&train, &reads))
        .unwrap();

    // What comes back is the top-k of each position, in block order.
    let got = cache.rows("train", &[7, 0]).unwrap();
    assert_eq!(got.rows(), 2 * (S - 1));
    for (r, (b, p)) in [7usize, 0]
        .iter()
        .flat_map(|&b| (0..S - 1).map(move |p| (b, p)))
        .enumerate()
    {
        let want = top_k_row(&logits(&train[b], p), 5, 1.0, Some(train[b][p + 1])).unwrap();
        assert_eq!(&got.ids[r * 5..r * 5 + 5], &want.ids[..]);
        assert_eq!(got.rest[r], want.rest);
        assert_eq!(got.label_logp[r], want.label_logp);
        for (a, w) in got.logp[r * 5..r * 5 + 5].iter().zip(&want.logp) {
            assert!((a - w).abs() < 0.03, "{a} vs {w}");
        }
    }
    assert_eq!(cache.manifest().teacher_tokens_per_second, Some(123.0));

    let msg = |e: CacheError| e.to_string();
    // Another teacher, tokenizer, block size, temperature, vocabulary.
    let mut other = identity();
    other.teacher_sha256 = "c".repeat(64);
    let e = msg(cache.check(&other, V, &expect(&train, &reads)).unwrap_err());
    assert!(
        e.contains("cache.json") && e.contains("made for teacher"),
        "{e}"
    );
    let mut other = identity();
    other.tokenizer_sha256 = "d".repeat(64);
    let e = msg(cache.check(&other, V, &expect(&train, &reads)).unwrap_err());
    assert!(e.contains("made for tokenizer"), "{e}");
    let mut other = identity();
    other.block_size = 128;
    let e = msg(cache.check(&other, V, &expect(&train, &reads)).unwrap_err());
    assert!(e.contains("data.block_size 6, this run has 128"), "{e}");
    let mut other = identity();
    other.temperature = 2.0;
    let e = msg(cache.check(&other, V, &expect(&train, &reads)).unwrap_err());
    assert!(e.contains("distill.temperature"), "{e}");
    let e = msg(cache
        .check(&identity(), V + 1, &expect(&train, &reads))
        .unwrap_err());
    assert!(e.contains("vocabulary size 37, this run has 38"), "{e}");
    // Other data.
    let other_data = data(9, 1);
    let e = msg(cache
        .check(&identity(), V, &expect(&other_data, &reads))
        .unwrap_err());
    assert!(e.contains("made for train data 9 blocks"), "{e}");
    // A run that reads blocks the cache does not hold.
    let e = msg(cache
        .check(&identity(), V, &expect(&train, &[0, 1, 2]))
        .unwrap_err());
    assert!(
        e.contains("shorter than the data") && e.contains("block 2 is missing"),
        "{e}"
    );
    let e = msg(cache.rows("train", &[3]).unwrap_err());
    assert!(e.contains("block 3 is missing"), "{e}");
}

#[test]
fn resumes_after_a_kill_and_remakes_a_damaged_shard() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(9, 0);
    let reads: Vec<u32> = (0..9).collect();
    // Killed after two of five shards: the cache is incomplete and says so.
    assert_eq!(make(dir.path(), &train, reads.clone(), Some(2)).unwrap(), 2);
    let e = TeacherCache::open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("incomplete (2 of 5 shards)"), "{e}");
    // Damage the second finished shard: resuming keeps the first and makes the other four.
    let second = dir.path().join("train-00001.bin");
    let mut bytes = std::fs::read(&second).unwrap();
    bytes[40] ^= 0x55;
    std::fs::write(&second, bytes).unwrap();
    assert_eq!(make(dir.path(), &train, reads.clone(), None).unwrap(), 4);
    let cache = TeacherCache::open(dir.path()).unwrap();
    let all: Vec<usize> = (0..9).collect();
    cache.check(&identity(), V, &expect(&train, &all)).unwrap();
    // Resuming a finished cache makes nothing.
    assert_eq!(make(dir.path(), &train, reads.clone(), None).unwrap(), 0);
    // Resuming with other data is refused rather than mixed.
    let e = make(dir.path(), &data(9, 2), reads, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("train data"), "{e}");
}

#[test]
fn damaged_shards_and_directories_that_are_not_caches_are_refused() {
    let train = data(5, 0);
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), &train, (0..5).collect(), None).unwrap();
        dir
    };
    // Truncated.
    let dir = fresh();
    let shard = dir.path().join("train-00002.bin");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 3]).unwrap();
    let e = TeacherCache::open(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains("train-00002.bin") && e.contains("(truncated)"),
        "{e}"
    );
    // A flipped bit.
    let dir = fresh();
    let shard = dir.path().join("train-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let e = TeacherCache::open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("train-00000.bin") && e.contains("CRC-32"), "{e}");
    // A missing shard.
    let dir = fresh();
    std::fs::remove_file(dir.path().join("train-00001.bin")).unwrap();
    let e = TeacherCache::open(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains("train-00001.bin") && e.contains("cannot open"),
        "{e}"
    );
    // Not a cache: no directory, no manifest, a manifest of something else.
    let dir = tempfile::tempdir().unwrap();
    let e = TeacherCache::open(&dir.path().join("nope"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("is not a teacher cache: no such directory"),
        "{e}"
    );
    let e = TeacherCache::open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("is not a teacher cache: no cache.json"), "{e}");
    std::fs::write(dir.path().join("cache.json"), "{\"model_type\": \"llama\"}").unwrap();
    let e = TeacherCache::open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("cache.json is not a cache manifest"), "{e}");
    // Making a cache in a directory that holds other files.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let e = make(dir.path(), &train, vec![0], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds other files"), "{e}");
}

/// Two ranks of a group share the shards: each writes the files of its jobs, the rank that
/// opened the cache adopts them in order. The cache is the one a single process makes, and a
/// group stopped between writing and adopting leaves files the next session adopts.
#[test]
fn a_group_writes_shard_files_and_the_opener_adopts_them() {
    let train = data(9, 0);
    let reads: Vec<u32> = (0..9).collect();
    let single = tempfile::tempdir().unwrap();
    make(single.path(), &train, reads.clone(), None).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(5, V, 8).unwrap();
    let open_in = |dir: &Path| {
        CacheBuilder::open(
            dir,
            identity(),
            layout,
            &[SplitRequest {
                name: "train",
                data: &train,
                blocks: reads.clone(),
            }],
            2,
        )
        .unwrap()
    };
    let open = || open_in(dir.path());
    let mut opener = open();
    let follower = CacheBuilder::follow(dir.path()).unwrap();
    let jobs = opener.pending();
    assert_eq!((jobs.len(), follower.pending()), (5, jobs.clone()));
    // Rank 1 writes its share (jobs 1 and 3); rank 0 only job 0 before it is stopped.
    for job in jobs.iter().skip(1).step_by(2) {
        let blocks = follower.blocks(job).to_vec();
        follower
            .write_file(job, &records(&layout, &blocks, &train))
            .unwrap();
    }
    let blocks = opener.blocks(&jobs[0]).to_vec();
    opener
        .write_file(&jobs[0], &records(&layout, &blocks, &train))
        .unwrap();
    // Adopted in order up to the first missing file (job 2).
    let adopted = jobs
        .iter()
        .take_while(|j| opener.adopt(j, &train).unwrap())
        .count();
    assert_eq!(adopted, 2);
    drop(opener);
    let e = TeacherCache::open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("incomplete (2 of 5 shards)"), "{e}");

    // The next session adopts job 3's file once job 2 is made, and makes job 4.
    let mut opener = open();
    let jobs = opener.pending();
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        if !opener.adopt(job, &train).unwrap() {
            let blocks = opener.blocks(job).to_vec();
            opener
                .write(job, &train, &records(&layout, &blocks, &train))
                .unwrap();
        }
    }
    opener.finish(Some(123.0)).unwrap();
    let a = std::fs::read_to_string(single.path().join("cache.json")).unwrap();
    let b = std::fs::read_to_string(dir.path().join("cache.json")).unwrap();
    assert_eq!(a, b, "the group's manifest differs from one process's");
    for s in 0..5 {
        let f = format!("train-{s:05}.bin");
        assert_eq!(
            std::fs::read(single.path().join(&f)).unwrap(),
            std::fs::read(dir.path().join(&f)).unwrap(),
            "{f}"
        );
    }

    // A file of the wrong shape is refused, naming it.
    let other = tempfile::tempdir().unwrap();
    let mut b = open_in(other.path());
    std::fs::write(other.path().join("train-00000.bin"), b"DSTLTC01 too short").unwrap();
    let job = b.pending()[0].clone();
    let e = b.adopt(&job, &train).unwrap_err().to_string();
    assert!(e.contains("train-00000.bin"), "{e}");
}
