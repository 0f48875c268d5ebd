//! `distill.vocab: shared` on a teacher whose head is padded beyond its tokenizer (the Qwen2.5
//! 7B / 0.5B case): the student gets its tokenizer's ids, the teacher's extra rows are left out
//! and its distribution renormalised over the shared ids, so the run distils exactly as from the
//! same teacher without the padding.

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::{loss_parts, max_loss_gap};

use std::path::Path;

use candle_core::{Device, Tensor};
use common::tiny::{tiny_llama, tiny_tokenizer, write_tiny_documents, write_tiny_llama_folder};
use distill::{parse_job, run, Job, RunOptions, RunOutcome};
use distill_models::LlamaConfig;

/// Rows the padded teacher adds.
const PADDING: usize = 62;

fn config(vocab: usize) -> LlamaConfig {
    distill_models::testing::TinyLlama {
        vocab,
        hidden: 32,
        ffn: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        positions: 128,
        rms_norm_eps: 1e-5,
    }
    .config()
}

/// Writes the teacher without padding and the same teacher with `PADDING` random head rows.
fn write_teachers(root: &Path) {
    let tokens = tiny_tokenizer().get_vocab_size(true);
    let exact = config(tokens);
    let vm = tiny_llama(&exact);
    write_tiny_llama_folder(&root.join("exact"), &exact, &vm);
    let padded = config(tokens + PADDING);
    let pvm = tiny_llama(&padded);
    {
        let src = vm.data().lock().unwrap();
        let dst = pvm.data().lock().unwrap();
        for (name, var) in src.iter() {
            let t = var.as_tensor();
            let value = if name == "model.embed_tokens.weight" {
                // Padding rows like the real ones: the teacher puts real mass on them.
                let extra = Tensor::randn(0f32, 0.02, (PADDING, 32), &Device::Cpu).unwrap();
                Tensor::cat(&[t, &extra], 0).unwrap()
            } else {
                t.clone()
            };
            dst[name].set(&value).unwrap();
        }
    }
    write_tiny_llama_folder(&root.join("padded"), &padded, &pvm);
}

/// A 3-step run over the `teacher` folder: `vocab` and `student` extend the `distill:` and
/// `student:` sections.
fn job_text(root: &Path, teacher: &str, name: &str, vocab: &str, student: &str) -> String {
    format!(
        "teacher: {{source: {t}}}
data:
  source: {{kind: folder, path: {d}, pattern: '*.txt'}}
  block_size: 32
  validation_fraction: 0.34
student: {{layers: 1, init: {{kind: from_teacher}}{student}}}
distill: {{loss: forward_kl, alpha: 0.6, temperature: 2.0{vocab}}}
train: {{steps: 3, batch_size: 2, lr: 0.003, eval_every: 3, eval_blocks: 4, seed: 1}}
output: {{dir: {r}, name: {name}}}
",
        t = root.join(teacher).display(),
        d = root.join("docs").display(),
        r = root.join("runs").display(),
    )
}

fn run_on_with(
    root: &Path,
    teacher: &str,
    name: &str,
    vocab: &str,
    student: &str,
) -> distill::causal_lm::LmRun {
    let Job::CausalLm(c) = parse_job(&job_text(root, teacher, name, vocab, student)).unwrap()
    else {
        unreachable!()
    };
    match run(&Job::CausalLm(c), &RunOptions::default()).unwrap() {
        RunOutcome::CausalLm(lm) => lm,
        RunOutcome::Classification(_) => unreachable!(),
    }
}

/// The error of a run that must be refused.
fn refusal(root: &Path, name: &str, vocab: &str, student: &str) -> String {
    let Job::CausalLm(c) = parse_job(&job_text(root, "exact", name, vocab, student)).unwrap()
    else {
        unreachable!()
    };
    match run(&Job::CausalLm(c), &RunOptions::default()) {
        Ok(_) => panic!("run `{name}` was not refused"),
        Err(e) => e.to_string(),
    }
}

fn run_on(root: &Path, teacher: &str, name: &str, vocab: &str) -> distill::causal_lm::LmRun {
    run_on_with(root, teacher, name, vocab, "")
}

#[test]
fn a_padded_head_distils_as_the_unpadded_one_under_shared() {
    let tmp = tempfile::tempdir().unwrap();
    write_teachers(tmp.path());
    write_tiny_documents(&tmp.path().join("docs"));

    let exact = run_on(tmp.path(), "exact", "exact", "");
    let shared = run_on(tmp.path(), "padded", "shared", ", vocab: shared");
    let strict = run_on(tmp.path(), "padded", "strict", "");

    let (le, ls, lt) = (
        loss_parts(&exact.run_dir),
        loss_parts(&shared.run_dir),
        loss_parts(&strict.run_dir),
    );
    assert_eq!(le.len(), 3);
    let gap = max_loss_gap(&le, &ls);
    assert!(
        gap < 1e-6,
        "shared differs from the unpadded teacher's run by {gap}: {le:?} vs {ls:?}"
    );
    // Under strict the student copies the padding rows and learns them: not the same run.
    assert!(max_loss_gap(&le, &lt) > 1e-3, "{le:?} vs {lt:?}");

    let tokens = tiny_tokenizer().get_vocab_size(true);
    let report = shared.report.unwrap();
    // Bits per byte of teacher and student: the same blocks, so the same tokens per byte.
    let per_nat =
        |m: &distill::report::ModelStats| m.val_bits_per_byte.unwrap() / m.val_ppl.unwrap().ln();
    let (t, st) = (per_nat(&report.teacher), per_nat(&report.student));
    assert!(t > 0.0 && (t - st).abs() < 1e-9 * t, "{t} vs {st}");
    let s = report
        .shared_vocab
        .expect("the shared vocabulary is reported");
    assert_eq!(
        (s.student_ids, s.mapped, s.teacher_rows),
        (tokens, tokens, tokens + PADDING)
    );
    let mass = s.teacher_mass_outside.unwrap();
    eprintln!(
        "shared vs unpadded: max loss gap {gap:.2e}; strict vs unpadded {:.2e}; teacher mass on the padding {mass:.4}",
        max_loss_gap(&le, &lt)
    );
    assert!(mass > 0.01 && mass < 1.0, "mass outside {mass}");
    assert!(s.mass_positions > 0);
    let exported: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared.student.unwrap().join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(exported["vocab_size"], tokens);
    assert!(strict.report.unwrap().shared_vocab.is_none());
}

#[test]
fn shared_is_refused_for_a_classifier() {
    let e = parse_job(
        "task: classification
teacher: {source: minilm}
data:
  source: {kind: class_folders, path: /tmp, classes: {a: x, b: y}}
  labels: [x, y]
student: {layers: 2}
distill: {vocab: shared}
train: {steps: 10, lr: 1.0e-4}
output: {name: x}
",
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(e.contains("distill.vocab"), "{e}");
}

/// The tiny tokenizer with its 256 byte-level pieces under reversed ids (EOS and `ab` keep
/// theirs), saved as `tokenizer.json` at `path`.
fn write_permuted_tokenizer(path: &Path) {
    write_tokenizer(path, true);
}

/// The permuted tokenizer, with or without its one merge (`a b` → `ab`).
fn write_tokenizer(path: &Path, merge: bool) {
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let tokens = common::tiny::tiny_tokens();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), if i < 256 { 255 - i as u32 } else { i as u32 }))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab,
            if merge {
                vec![("a".to_string(), "b".to_string())]
            } else {
                vec![]
            },
        )
        .build()
        .unwrap();
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    t.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    t.add_special_tokens([tokenizers::AddedToken::from(common::tiny::EOS, true)])
        .unwrap();
    t.save(path, false).unwrap();
}

#[test]
fn a_student_tokenizer_with_the_same_pieces_under_other_ids_distils_as_the_teachers() {
    let tmp = tempfile::tempdir().unwrap();
    write_teachers(tmp.path());
    write_tiny_documents(&tmp.path().join("docs"));
    let own = tmp.path().join("permuted.json");
    write_permuted_tokenizer(&own);
    let exact = run_on(tmp.path(), "exact", "exact", "");
    let permuted = run_on_with(
        tmp.path(),
        "exact",
        "permuted",
        ", vocab: shared",
        &format!(", tokenizer: {}", own.display()),
    );
    let gap = max_loss_gap(&loss_parts(&exact.run_dir), &loss_parts(&permuted.run_dir));
    eprintln!("permuted student ids vs the teacher's: max loss gap {gap:.2e}");
    // The same function under relabelled ids: only the order of sums differs.
    assert!(gap < 1e-5, "{gap}");
    let report = permuted.report.unwrap();
    assert!(report.shared_vocab.is_some());
    // A model source names a tokenizer too: the teacher's own folder maps every id to itself.
    let from_folder = run_on_with(
        tmp.path(),
        "exact",
        "from-folder",
        ", vocab: shared",
        &format!(", tokenizer: {}", tmp.path().join("exact").display()),
    );
    let gap = max_loss_gap(
        &loss_parts(&exact.run_dir),
        &loss_parts(&from_folder.run_dir),
    );
    assert!(gap < 1e-6, "{gap}");
    // The exported student carries its own tokenizer.
    let exported =
        tokenizers::Tokenizer::from_file(permuted.student.unwrap().join("tokenizer.json")).unwrap();
    let mine = tokenizers::Tokenizer::from_file(&own).unwrap();
    assert_eq!(exported.token_to_id("a"), mine.token_to_id("a"));
    assert_ne!(exported.token_to_id("a"), tiny_tokenizer().token_to_id("a"));
    // Without `shared` the student's own tokenizer is refused, naming the key.
    let e = refusal(
        tmp.path(),
        "strict-own",
        "",
        &format!(", tokenizer: {}", own.display()),
    );
    assert!(
        e.contains("student.tokenizer") && e.contains("shared"),
        "{e}"
    );
}

#[test]
fn a_student_tokenizer_that_splits_text_otherwise_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_teachers(tmp.path());
    write_tiny_documents(&tmp.path().join("docs"));
    std::fs::write(tmp.path().join("docs/doc_ab.txt"), "abab cab ".repeat(20)).unwrap();
    // The same pieces, but without the merge the teacher's tokenizer makes of "ab".
    let own = tmp.path().join("unmerged.json");
    write_tokenizer(&own, false);
    let e = refusal(
        tmp.path(),
        "unmerged",
        ", vocab: shared",
        &format!(", tokenizer: {}", own.display()),
    );
    assert!(
        e.contains("student.tokenizer") && e.contains("differently") && e.contains("cross"),
        "{e}"
    );
}
