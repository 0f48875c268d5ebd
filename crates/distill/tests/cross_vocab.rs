//! `distill.vocab: cross`: distillation across tokenizers.
//!
//! On the tiny teacher, a cross run whose student has the teacher's own tokenizer (cut from the
//! teacher as `student.base`) must be the strict run: every position aligns, every id matches,
//! the ULD term has nothing to compare and the KL over the shared ids with k = V is the full
//! forward KL. On the real tokenizers (SmolLM2's and Gemma 3's), every aligned pair has read
//! the same bytes, through multi-byte characters the two split differently. The bad inputs of
//! the mode are refused, naming the key or tokenizer.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod group;

use common::{loss_parts, max_loss_gap};

use std::path::{Path, PathBuf};

use common::tiny::{
    tiny_llama, tiny_llama_config, tiny_tokenizer, write_tiny_documents, write_tiny_llama_folder,
};
use distill::{parse_job, run, Job, RunOptions, RunOutcome};

/// A 3-step run over the tiny teacher: `distill` and `student` extend those sections.
fn job_text(root: &Path, name: &str, distill: &str, student: &str) -> String {
    format!(
        "teacher: {{source: {t}}}
data:
  source: {{kind: folder, path: {d}, pattern: '*.txt'}}
  block_size: 32
  validation_fraction: 0.34
student: {{layers: 1{student}}}
distill: {{loss: forward_kl, alpha: 0.6, temperature: 2.0{distill}}}
train: {{steps: 3, batch_size: 2, lr: 0.003, eval_every: 3, eval_blocks: 4, seed: 1}}
output: {{dir: {r}, name: {name}}}
",
        t = root.join("teacher").display(),
        d = root.join("docs").display(),
        r = root.join("runs").display(),
    )
}

/// The tiny teacher with a head of exactly its tokenizer's ids (no padding rows, which no piece
/// spells and `cross` would compare by ULD alone).
fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = distill_models::LlamaConfig {
        vocab_size: tiny_tokenizer().get_vocab_size(true),
        ..tiny_llama_config()
    };
    write_tiny_llama_folder(&tmp.path().join("teacher"), &cfg, &tiny_llama(&cfg));
    write_tiny_documents(&tmp.path().join("docs"));
    tmp
}

fn job(root: &Path, name: &str, distill: &str, student: &str) -> Job {
    parse_job(&job_text(root, name, distill, student)).unwrap()
}

fn lm_run(job: &Job, opts: &RunOptions) -> distill::causal_lm::LmRun {
    match run(job, opts).unwrap() {
        RunOutcome::CausalLm(lm) => lm,
        RunOutcome::Classification(_) => unreachable!(),
    }
}

/// The error of a run (or config) that must be refused.
fn refusal(root: &Path, name: &str, distill: &str, student: &str) -> String {
    let job = match parse_job(&job_text(root, name, distill, student)) {
        Ok(j) => j,
        Err(e) => return e.to_string(),
    };
    match run(&job, &RunOptions::default()) {
        Ok(_) => panic!("run `{name}` was not refused"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn cross_with_the_teachers_own_tokenizer_distils_as_strict() {
    let tmp = setup();
    let root = tmp.path();
    let v = tiny_tokenizer().get_vocab_size(true);
    let strict = lm_run(
        &job(root, "strict", "", ", init: {kind: from_teacher}"),
        &RunOptions::default(),
    );
    let base = format!(
        ", init: {{kind: from_teacher}}, base: {}",
        root.join("teacher").display()
    );
    let cross = lm_run(
        &job(
            root,
            "cross",
            &format!(", vocab: cross, cross: {{top_k: {v}}}"),
            &base,
        ),
        &RunOptions::default(),
    );
    let (ls, lc) = (loss_parts(&strict.run_dir), loss_parts(&cross.run_dir));
    assert_eq!(ls.len(), 3);
    let gap = max_loss_gap(&ls, &lc);
    eprintln!("cross with the teacher's own tokenizer vs strict: max loss gap {gap:.2e}");
    assert!(gap < 1e-5, "{ls:?} vs {lc:?}");
    let report = cross.report.unwrap();
    let x = report
        .cross_vocab
        .expect("the cross vocabularies are reported");
    assert_eq!((x.matched, x.student_ids, x.teacher_ids), (v, v, v));
    assert_eq!(x.aligned_share_train, 1.0);
    assert_eq!(x.aligned_share_validation, 1.0);
    assert_eq!(x.teacher_tokens_per_student_token, 1.0);
    // The teacher scored over its own tokens — here the student's — in bits per byte.
    let strict_report = strict.report.unwrap();
    let (a, b) = (
        report.teacher.val_bits_per_byte.unwrap(),
        strict_report.teacher.val_bits_per_byte.unwrap(),
    );
    assert!((a - b).abs() < 1e-4 * b, "teacher bits per byte {a} vs {b}");
    assert!((report.val_kl.unwrap() - strict_report.val_kl.unwrap()).abs() < 1e-4);
}

#[test]
fn two_ranks_of_a_group_train_a_cross_run_as_one_process() {
    let tmp = setup();
    let root = tmp.path();
    let base = format!(
        ", init: {{kind: from_teacher}}, base: {}",
        root.join("teacher").display()
    );
    let single = lm_run(
        &job(root, "single", ", vocab: cross, cross: {top_k: 8}", &base),
        &RunOptions::default(),
    );
    let group = job(root, "group", ", vocab: cross, cross: {top_k: 8}", &base);
    let port = common::free_port();
    let runs: Vec<_> = group::in_group_of_two(port, |opts| lm_run(&group, opts));
    let rank0 = runs.iter().find(|r| r.rank == 0).unwrap();
    let (a, b) = (
        single.report.as_ref().unwrap().student.val_ppl.unwrap(),
        rank0.report.as_ref().unwrap().student.val_ppl.unwrap(),
    );
    eprintln!("cross run, one process vs two ranks: validation perplexity {a} vs {b}");
    assert!((a - b).abs() < 1e-4 * a, "{a} vs {b}");
}

#[test]
fn the_bad_inputs_of_cross_are_refused_by_name() {
    let tmp = setup();
    let root = tmp.path();
    // No tokenizer of the student's own.
    let e = refusal(root, "no-tokenizer", ", vocab: cross", "");
    assert!(
        e.contains("distill.vocab") && e.contains("student.base"),
        "{e}"
    );
    // A cut from another model outside cross.
    let base = format!(", base: {}", root.join("teacher").display());
    let e = refusal(root, "base-strict", "", &base);
    assert!(e.contains("student.base") && e.contains("cross"), "{e}");
    // The teacher's embeddings cannot start a student of another tokenizer.
    let own = root.join("own.json");
    tiny_tokenizer().save(&own, false).unwrap();
    let e = refusal(
        root,
        "init",
        ", vocab: cross",
        &format!(
            ", init: {{kind: from_teacher}}, tokenizer: {}",
            own.display()
        ),
    );
    assert!(
        e.contains("student.init") && e.contains("student.base"),
        "{e}"
    );
    // A tokenizer whose pieces do not say their bytes (WordPiece's `##`): no offsets to align.
    let wordpiece = assets().join("all-minilm-l6-v2/tokenizer.json");
    assert!(
        wordpiece.exists(),
        "missing asset: run scripts/fetch-assets.sh"
    );
    let e = refusal(
        root,
        "wordpiece",
        ", vocab: cross",
        &format!(
            ", init: {{kind: random}}, tokenizer: {}",
            wordpiece.display()
        ),
    );
    assert!(e.contains("byte offsets") && e.contains("WordPiece"), "{e}");
    // Hidden-state losses pair positions one to one.
    let e = refusal(
        root,
        "hidden",
        ", vocab: cross, hidden: [{student_layer: 1, teacher_layer: 2}]",
        &base,
    );
    assert!(e.contains("distill.hidden"), "{e}");
}

fn assets() -> PathBuf {
    std::env::var_os("DISTILL_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/distill/assets")
        })
}

/// SmolLM2's blocks of a text with whitespace runs, digits, code, CJK and emoji, aligned with
/// Gemma 3's tokenisation: every aligned pair has read the same bytes, positions inside a
/// character one side splits are left out, and most of the English text aligns.
#[test]
fn real_tokenizers_align_where_they_have_read_the_same_bytes() {
    use distill_teacher::tokenizer::Piece;
    let load = |p: &str| {
        let src = distill_teacher::TeacherSource::Gguf(assets().join(p));
        distill_teacher::load_tokenizer(
            &distill_teacher::resolve(&src, &distill_teacher::HubOptions::from_env()).unwrap(),
        )
        .unwrap()
    };
    let student = load("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let teacher = load("gemma-3-270m/gemma-3-270m-q4_k_m.gguf");
    let mut text = "    fn main() {\n\tprintln!(\"{}\", 12345 + 678);\n}\n  日本語のテキスト、中文文本。 🐋🐳 café naïve — “quoted” 1,234.56\n".repeat(3);
    text += &std::fs::read_to_string(assets().join("moby-dick/chapter_1.txt")).unwrap();
    let sep = student.tokenizer.token_to_id("<|endoftext|>").unwrap();
    let mut ids = student.encode_continuation(&text).unwrap();
    ids.push(sep);
    ids.extend(student.encode_continuation("Call me Ishmael.").unwrap());
    let block = 64;
    let blocks: Vec<Vec<u32>> = ids.chunks_exact(block).map(<[u32]>::to_vec).collect();
    let set = distill_train::data::BlockSet {
        block_size: block,
        stream_tokens: ids.len(),
        blocks,
        targets: None,
    };
    let sides = distill::cross::CrossSides {
        student: &student,
        student_separator: sep,
        student_rows: student.tokenizer.get_vocab_size(true),
        teacher: &teacher,
        teacher_separator: teacher.info.eos_token_id.unwrap(),
        teacher_rows: teacher.tokenizer.get_vocab_size(true),
        teacher_name: "gemma",
    };
    let x = distill::cross::for_run(&sides, &set, &set).unwrap();
    let (sp, tp) = (student.pieces().unwrap(), teacher.pieces().unwrap());
    // What a side has read after each of its tokens: bytes of text, a special token as a mark.
    let read = |pieces: &[Piece], ids: &[u32]| -> Vec<Vec<u8>> {
        let mut seen = vec![];
        ids.iter()
            .map(|&i| {
                match &pieces[i as usize] {
                    Piece::Special => seen.push(0xFF),
                    p => seen.extend_from_slice(p.bytes()),
                }
                seen.clone()
            })
            .collect()
    };
    let mut cut_characters = 0;
    for (b, xb) in set.blocks.iter().zip(&x.train.blocks) {
        let s_read = read(&sp, b);
        let t_read = read(&tp, &xb.teacher_ids);
        for &(i, j) in &xb.pairs {
            let (s, t) = (&s_read[i as usize], &t_read[j as usize]);
            // The teacher may lack the bytes of a character the block's edge cut, and its BOS.
            let s_text: Vec<u8> = s.iter().copied().filter(|&c| c != 0xFF).collect();
            let t_text: Vec<u8> = t.iter().copied().filter(|&c| c != 0xFF).collect();
            assert!(
                s_text.ends_with(&t_text),
                "block pair ({i}, {j}) read different bytes"
            );
            assert!(std::str::from_utf8(&s_text[s_text.len() - t_text.len()..]).is_ok());
        }
        // Student positions that end inside a character are never aligned.
        for (i, s) in s_read.iter().enumerate() {
            let text: Vec<u8> = s.iter().copied().filter(|&c| c != 0xFF).collect();
            let lead = text
                .iter()
                .take(3)
                .take_while(|&&c| (0x80..0xC0).contains(&c))
                .count();
            if std::str::from_utf8(&text[lead..]).is_err() {
                cut_characters += 1;
                assert!(
                    !xb.pairs.iter().any(|p| p.0 as usize == i),
                    "position {i} ends inside a character"
                );
            }
        }
    }
    assert!(
        cut_characters > 0,
        "the text splits some character across student tokens"
    );
    let share = x.stats.aligned_share_train;
    eprintln!("SmolLM2 ↔ Gemma 3: aligned share {share:.3}, matched ids {}, {cut_characters} student positions inside a character", x.stats.matched);
    assert!(share > 0.8, "{share}");
    assert!(x.stats.matched > 30_000, "{}", x.stats.matched);
}

/// The run's config with its teacher's outputs from a cache in `dir` (every id kept, exact
/// log-probabilities, no tail samples: the cache then holds the teacher's distributions).
fn cached(text: String, dir: &Path, top_k: usize) -> Box<distill::RunConfig> {
    let text = text.replace(
        "teacher: {source: ",
        &format!(
            "teacher: {{cache: {{dir: {}, top_k: {top_k}, logprob_bits: 32, tail_samples: 0}}, source: ",
            dir.display()
        ),
    );
    match parse_job(&text).unwrap() {
        Job::CausalLm(c) => c,
        Job::Classification(_) => unreachable!(),
    }
}

#[test]
fn a_cross_run_trains_from_its_teacher_cache_as_online() {
    let tmp = setup();
    let root = tmp.path();
    let v = tiny_tokenizer().get_vocab_size(true);
    let base = format!(
        ", init: {{kind: from_teacher}}, base: {}",
        root.join("teacher").display()
    );
    let distill = format!(", vocab: cross, cross: {{top_k: {v}}}");
    let online = lm_run(
        &job(root, "online", &distill, &base),
        &RunOptions::default(),
    );
    let cfg = cached(
        job_text(root, "cached", &distill, &base),
        &root.join("cache"),
        v,
    );
    let made = distill::teacher_cache::cache_teacher(&cfg, &RunOptions::default()).unwrap();
    assert!(made.manifest.as_ref().unwrap().complete);
    let from_cache = lm_run(&Job::CausalLm(cfg), &RunOptions::default());
    let gap = max_loss_gap(
        &loss_parts(&online.run_dir),
        &loss_parts(&from_cache.run_dir),
    );
    eprintln!("cross run from its teacher cache vs online: max loss gap {gap:.2e}");
    assert!(gap < 1e-4, "{gap}");
    // A cache made over the teacher's own blocks (a strict run's) is not this run's.
    let strict = cached(
        job_text(root, "strict", "", ", init: {kind: from_teacher}"),
        &root.join("strict-cache"),
        v,
    );
    distill::teacher_cache::cache_teacher(&strict, &RunOptions::default()).unwrap();
    let mut wrong = cached(
        job_text(root, "wrong", &distill, &base),
        &root.join("strict-cache"),
        v,
    );
    wrong.output.name = "wrong".into();
    let e = match run(&Job::CausalLm(wrong), &RunOptions::default()) {
        Ok(_) => panic!("a strict run's cache was taken for a cross run's"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("teacher.cache") && e.contains("tokenizer"),
        "{e}"
    );
}

/// `student.vocab` trims the student's own tokenizer under `cross`: the student keeps the ids
/// its corpus uses (its rows picked from `student.base`), each still meeting the teacher's piece.
#[test]
fn a_trimmed_student_vocabulary_distils_across_tokenizers() {
    let tmp = setup();
    let root = tmp.path();
    let base = format!(
        ", init: {{kind: from_teacher}}, base: {}, vocab: {{trim: corpus}}",
        root.join("teacher").display()
    );
    let trimmed = lm_run(
        &job(root, "trimmed", ", vocab: cross", &base),
        &RunOptions::default(),
    );
    let report = trimmed.report.unwrap();
    let kept = report
        .vocab
        .as_ref()
        .expect("the trimmed vocabulary is reported")
        .kept;
    let x = report
        .cross_vocab
        .expect("the cross vocabularies are reported");
    let v = tiny_tokenizer().get_vocab_size(true);
    // The byte alphabet stays (every text must still tokenise); the unused merge goes.
    assert!(kept < v, "kept {kept} of {v}");
    assert_eq!((x.student_ids, x.matched, x.teacher_ids), (kept, kept, v));
    assert_eq!(x.aligned_share_train, 1.0);
    assert!(loss_parts(&trimmed.run_dir)
        .iter()
        .all(|l| l.iter().all(|x| x.is_finite())));
    let exported: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(trimmed.student.unwrap().join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(exported["vocab_size"], kept);
}
