//! A student cut from the real SmolLM2 teacher by activation importance (`student.init:
//! {kind: from_teacher, importance: activations}`, as Minitron initialises students): layers by
//! block influence, FFN neurons by their activations on the run's first training blocks; it
//! trains, and what such a cut cannot make is refused by its key.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use distill::{parse_job, run, RunOptions, RunOutcome};

fn job(dir: &Path, student: &str) -> String {
    format!(
        "teacher: {{source: {t}, gguf_weights: dequantized}}
data:
  source: {{kind: folder, path: {d}, pattern: 'chapter_[1-4].txt'}}
  block_size: 64
  validation_fraction: 0.3
student: {student}
distill: {{loss: forward_kl, alpha: 0.5}}
train: {{steps: 2, batch_size: 2, eval_every: 2, eval_blocks: 2}}
output: {{dir: {r}, name: importance}}
",
        t = common::smollm2_gguf().display(),
        d = common::asset("moby-dick").display(),
        r = dir.join("runs").display(),
    )
}

#[test]
fn a_student_cut_by_activations_keeps_the_most_influential_layers_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = job(
        tmp.path(),
        "{layers: 4, intermediate: 768, init: {kind: from_teacher, importance: activations}}",
    );
    let RunOutcome::CausalLm(lm) = run(&parse_job(&cfg).unwrap(), &RunOptions::default()).unwrap()
    else {
        unreachable!()
    };
    let report = lm.report.unwrap();
    let layers = report.student_layers_from_teacher.unwrap();
    assert_eq!(layers.len(), 4);
    assert!(layers.windows(2).all(|w| w[0] < w[1]), "{layers:?}");
    // SmolLM2's first layer changes the residual stream most of all: block influence keeps it.
    assert_eq!(layers[0], 0, "{layers:?}");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lm.student.unwrap().join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["intermediate_size"], 768);
    assert_eq!(config["num_hidden_layers"], 4);
    let ppl = report.student.val_ppl.unwrap();
    assert!(ppl.is_finite(), "{ppl}");
}

#[test]
fn what_a_cut_by_activations_cannot_make_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = |student: &str| {
        let job = parse_job(&job(tmp.path(), student)).unwrap();
        run(&job, &RunOptions::default()).err().unwrap().to_string()
    };
    let e =
        refused("{layers: 2, init: {kind: from_teacher, layers: [5, 1], importance: activations}}");
    assert!(
        e.contains("student.init.layers") && e.contains("ascending"),
        "{e}"
    );
    // SmolLM2 has 9 query heads over 3 key/value groups: 4 heads over 2 groups splits them.
    let e = refused("{layers: 2, heads: 4, kv_heads: 2, hidden: 256, init: {kind: from_teacher, importance: activations}}");
    assert!(
        e.contains("student.heads") && e.contains("whole key/value groups"),
        "{e}"
    );
}
