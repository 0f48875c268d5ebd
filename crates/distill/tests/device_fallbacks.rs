//! The paths a GPU build trains through, checked on the CPU: a bf16 teacher (the CUDA default)
//! is not fed to the fused f32 kernels but to the composed ops every device has, with its
//! outputs compared in the student's dtype; it trains to nearly the f32 teacher's losses.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use common::tiny::{tiny_llama, tiny_llama_config, write_tiny_documents, write_tiny_llama_folder};
use distill::{parse_job, run, RunOptions, RunOutcome};

fn losses(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn a_bf16_teacher_trains_through_the_composed_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    write_tiny_llama_folder(&tmp.path().join("teacher"), &cfg, &tiny_llama(&cfg));
    let docs = tmp.path().join("docs");
    write_tiny_documents(&docs);
    let mut result = vec![];
    for dtype in ["f32", "bf16"] {
        let job = parse_job(&format!(
            "teacher: {{source: {s}, dtype: {dtype}}}
data:
  source: {{kind: folder, path: {d}, pattern: '*.txt'}}
  block_size: 32
  validation_fraction: 0.34
student: {{layers: 1, init: {{kind: from_teacher}}}}
distill:
  alpha: 0.5
  temperature: 2.0
  hidden: [{{student_layer: 1, teacher_layer: 2, loss: mse, weight: 0.1}}]
train: {{steps: 3, batch_size: 2, lr: 0.003, eval_every: 3, eval_blocks: 4}}
output: {{dir: {r}, name: {dtype}}}
",
            s = tmp.path().join("teacher").display(),
            d = docs.display(),
            r = tmp.path().join("runs").display(),
        ))
        .unwrap();
        let RunOutcome::CausalLm(lm) = run(&job, &RunOptions::default()).unwrap() else {
            unreachable!()
        };
        let report = lm.report.unwrap();
        assert!(report.student.val_ppl.unwrap().is_finite());
        assert!(report.teacher.val_ppl.unwrap().is_finite());
        result.push(losses(&lm.run_dir));
    }
    let (f32_run, bf16_run) = (&result[0], &result[1]);
    for (a, b) in f32_run.iter().zip(bf16_run) {
        assert!(b.is_finite());
        assert!(
            (a - b).abs() < 0.03 * a.abs(),
            "f32 teacher {a}, bf16 teacher {b}"
        );
    }
}
