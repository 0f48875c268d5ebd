//! The data-aware compression methods end to end on a tiny decoder: Wanda and SparseGPT reach
//! their sparsity patterns, importance-matrix and GPTQ quantisation write GGUF files that load
//! and score, the importance matrix is written in llama.cpp's format and can be fed back, and
//! a matrix that does not match the model is refused by name.

#[path = "../../../tests/common/mod.rs"]
mod common;

use candle_core::quantized::GgmlDType;
use common::tiny::{
    tiny_llama, tiny_llama_config, write_tiny_documents, write_tiny_llama_folder,
    write_tiny_llama_gguf,
};
use distill::compression::{for_causal_lm, run};
use distill::{parse_job, Job, RunOptions};
use distill_compress::formats::gguf::imatrix::Imatrix;
use distill_compress::CompressConfig;

struct Setup {
    _tmp: tempfile::TempDir,
    student: std::path::PathBuf,
    run: distill::job::RunConfig,
    out: std::path::PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let vm = tiny_llama(&cfg);
    let student = tmp.path().join("student");
    write_tiny_llama_folder(&student, &cfg, &vm);
    let teacher = tmp.path().join("teacher.gguf");
    write_tiny_llama_gguf(&teacher, &cfg, &vm, GgmlDType::F32, true);
    let docs = tmp.path().join("docs");
    write_tiny_documents(&docs);
    let job = parse_job(&format!(
        "teacher: {{source: {t}}}
data:
  source: {{kind: folder, path: {d}, pattern: '*.txt'}}
  block_size: 32
  validation_fraction: 0.34
distill: {{alpha: 0.5, temperature: 1.0}}
train: {{steps: 2, batch_size: 2, lr: 0.001}}
output: {{dir: {r}, name: tiny}}
",
        t = teacher.display(),
        d = docs.display(),
        r = tmp.path().join("runs").display(),
    ))
    .unwrap();
    let Job::CausalLm(run) = job else {
        unreachable!()
    };
    let out = tmp.path().join("out");
    Setup {
        _tmp: tmp,
        student,
        run: *run,
        out,
    }
}

fn compress(s: &Setup, variants: &str) -> distill::Result<distill::compression::Compression> {
    let opts = RunOptions::default();
    let p = for_causal_lm(&s.student.display().to_string(), &s.run, 4, 8, &opts)?;
    let section: CompressConfig = serde_yaml::from_str(&format!("variants:\n{variants}")).unwrap();
    run(&p, &section, &s.out)
}

#[test]
fn wanda_and_sparsegpt_reach_their_patterns_and_calibrated_gguf_files_load() {
    let s = setup();
    let c = compress(
        &s,
        "  - {name: wanda-50, steps: [{step: prune, sparsity: 0.5, method: wanda}]}
  - {name: sparsegpt-24, steps: [{step: prune, two_four: true, method: sparsegpt}]}
  - {name: imatrix, steps: [{step: quantize, type: q4_k, method: imatrix}]}
  - {name: gptq, steps: [{step: quantize, type: q4_k, method: gptq}]}
",
    )
    .unwrap();
    let rows = &c.outcome.rows;
    let base = &rows[0];
    for r in &rows[1..3] {
        // Half of every layer matrix is gone; embeddings and norms are kept.
        // Per layer q and o [32, 32], k and v [16, 32], gate, up and down 32 × 64.
        let layer_params = 2 * (2 * 32 * 32 + 2 * 16 * 32 + 3 * 32 * 64);
        assert_eq!(
            base.nonzero_params - r.nonzero_params,
            layer_params / 2,
            "{}",
            r.variant
        );
        assert!(r.val_ppl().unwrap().is_finite());
        assert!(
            r.notes.iter().any(|n| n.contains("calibration blocks")),
            "{:?}",
            r.notes
        );
    }
    for v in ["imatrix", "gptq"] {
        let last: Vec<_> = rows.iter().filter(|r| r.variant == v).collect();
        // The encoding pass, measured dense, then the GGUF file through QMatMul.
        assert_eq!(last.len(), 2, "{v}");
        let file = last[1].artifact.as_ref().unwrap();
        assert!(file.ends_with(".gguf"), "{file}");
        let (dense, gguf) = (last[0].val_ppl().unwrap(), last[1].val_ppl().unwrap());
        assert!(
            (dense - gguf).abs() / dense < 0.05,
            "{v}: {dense} vs {gguf}"
        );
        // Rows of 32 and 64 do not fit Q4_K's 256-value blocks: llama.cpp's fallback, said.
        assert!(
            last[1].notes.iter().any(|n| n.contains("Q5_0")),
            "{:?}",
            last[1].notes
        );
        let im = Imatrix::read(&s.out.join(format!("{v}.imatrix"))).unwrap();
        assert_eq!(im.entries.len(), 2 * 7 + 1);
        assert_eq!(im.entries["blk.1.ffn_down.weight"].len(), 64);
        assert_eq!(im.entries["output.weight"].len(), 32);
        assert!((1..=8).contains(&im.chunks), "{}", im.chunks);
    }
}

#[test]
fn an_imatrix_file_is_used_and_one_of_another_model_is_refused_by_name() {
    let s = setup();
    let first = compress(
        &s,
        "  - {name: m, steps: [{step: quantize, type: q4_0, method: imatrix}]}\n",
    )
    .unwrap();
    // A variant `name` quantised with the importance matrix read from `file`.
    let with_file = |name: &str, file: &std::path::Path| {
        compress(
            &s,
            &format!("  - {{name: {name}, steps: [{{step: quantize, type: q4_0, method: imatrix, imatrix: {}}}]}}\n", file.display()),
        )
    };
    let file = s.out.join("m.imatrix");
    let again = with_file("again", &file).unwrap();
    let a: Vec<u8> = std::fs::read(s.out.join("m.gguf")).unwrap();
    let b: Vec<u8> = std::fs::read(s.out.join("again.gguf")).unwrap();
    assert_eq!(a.len(), b.len());
    let ppl = |c: &distill::compression::Compression| c.outcome.rows.last().unwrap().val_ppl();
    assert_eq!(
        ppl(&first),
        ppl(&again),
        "the same importance gives the same blocks"
    );

    let mut m = Imatrix::read(&file).unwrap();
    m.entries.get_mut("blk.0.attn_q.weight").unwrap().pop();
    let bad = s.out.join("bad.imatrix");
    m.write(&bad).unwrap();
    let e = format!("{:#}", with_file("bad", &bad).err().unwrap());
    assert!(
        e.contains("bad.imatrix") && e.contains("blk.0.attn_q.weight") && e.contains("31 values"),
        "{e}"
    );
    m.entries.remove("blk.0.attn_q.weight");
    m.write(&bad).unwrap();
    let e = format!("{:#}", with_file("bad", &bad).err().unwrap());
    assert!(e.contains("has no entry `blk.0.attn_q.weight`"), "{e}");
}

#[test]
fn methods_that_do_not_apply_are_refused_in_the_config() {
    let s = setup();
    for (steps, want) in [
        (
            "[{step: prune, sparsity: 0.5, scope: global, method: wanda}]",
            "global",
        ),
        (
            "[{step: prune, heads: 1, method: sparsegpt}]",
            "chooses the weights",
        ),
        ("[{step: quantize, type: int8, method: gptq}]", "int8"),
        (
            "[{step: quantize, type: q4_k, imatrix: x.dat}]",
            "method: imatrix",
        ),
        (
            "[{step: quantize, type: q4_k, method: gptq}, {step: heal}]",
            "last step",
        ),
        (
            "[{step: prune, sparsity: 0.5, method: sparsegpt, damp: 0}]",
            "damp",
        ),
    ] {
        let e = compress(&s, &format!("  - {{name: v, steps: {steps}}}\n"))
            .err()
            .unwrap();
        let e = format!("{e:#}");
        assert!(e.contains(want), "{steps}: {e}");
    }
}

#[test]
fn minitron_importance_narrows_heads_neurons_and_width_and_block_influence_drops_a_layer() {
    let s = setup();
    let c = compress(
        &s,
        "  - {name: narrow, steps: [{step: prune, heads: 1, ffn_neurons: 32, hidden: 24, importance: activations}]}
  - {name: shallow, steps: [{step: prune, drop_layers: {least_important: 1, by: block_influence}}]}
",
    )
    .unwrap();
    let rows = &c.outcome.rows;
    let narrow = rows.iter().find(|r| r.variant == "narrow").unwrap();
    // embed 260×24, per layer q 16×24, k/v 8×24, o 24×16, gate/up/down 32×24, two norms of 24;
    // the final norm.
    let per_layer = 16 * 24 + 2 * 8 * 24 + 24 * 16 + 3 * 32 * 24 + 2 * 24;
    assert_eq!(narrow.params, 260 * 24 + 2 * per_layer + 24);
    assert!(narrow.val_ppl().unwrap().is_finite());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.out.join("narrow/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["hidden_size"], 24);
    assert_eq!(config["num_key_value_heads"], 1);
    let shallow = rows.iter().find(|r| r.variant == "shallow").unwrap();
    assert!(
        shallow
            .notes
            .iter()
            .any(|n| n.contains("block influence of each layer")),
        "{:?}",
        shallow.notes
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.out.join("shallow/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["num_hidden_layers"], 1);
}
