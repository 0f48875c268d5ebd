//! End-to-end tests of the `distill` binary.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::quantized::GgmlDType;
use common::hub_server::{Commit, HubServer, RepoSpec};
use common::tiny::{tiny_llama, tiny_llama_config, write_tiny_llama_folder, write_tiny_llama_gguf};

fn distill(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
    c.args(args);
    for k in [
        "HF_TOKEN",
        "HF_ENDPOINT",
        "HF_HUB_CACHE",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "RUST_LOG",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run distill")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "distill failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn help_shows_examples() {
    let out = ok(&distill(&["--help"], &[]));
    assert!(
        out.contains("Examples:") && out.contains("distill inspect") && out.contains("hf://"),
        "{out}"
    );
}

#[test]
fn schema_describes_every_section_and_refuses_unknown_keys() {
    let v: serde_json::Value = serde_json::from_str(&ok(&distill(&["schema"], &[]))).unwrap();
    // One alternative per task: causal-LM and classification runs.
    let alternatives = v["anyOf"].as_array().expect("anyOf of the two run kinds");
    assert_eq!(alternatives.len(), 2, "{v}");
    let defs = &v["$defs"];
    let resolve = |a: &serde_json::Value| -> serde_json::Value {
        match a.get("$ref").and_then(|r| r.as_str()) {
            Some(r) => defs[r.trim_start_matches("#/$defs/")].clone(),
            None => a.clone(),
        }
    };
    for alt in alternatives {
        let alt = resolve(alt);
        for section in ["teacher", "data", "student", "distill", "train", "output"] {
            assert!(
                alt["properties"].get(section).is_some(),
                "no {section} in {alt}"
            );
        }
        assert_eq!(alt["additionalProperties"], false);
    }
    let text = v.to_string();
    assert!(
        text.contains("forward_kl") && text.contains("from_teacher") && text.contains("block_size"),
        "{text}"
    );
    assert!(
        text.contains("class_folders")
            && text.contains("freeze_layers")
            && text.contains("scratch_baseline"),
        "{text}"
    );
}

#[test]
fn inspect_tokenize_and_eval_a_tiny_gguf_and_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let vm = tiny_llama(&cfg);
    let dir = tmp.path().join("hf");
    write_tiny_llama_folder(&dir, &cfg, &vm);
    let gguf = tmp.path().join("tiny.gguf");
    write_tiny_llama_gguf(&gguf, &cfg, &vm, GgmlDType::Q8_0, true);

    for src in [gguf.to_str().unwrap(), dir.to_str().unwrap()] {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&distill(&["inspect", src, "--json"], &[]))).unwrap();
        assert_eq!(v["layers"], 2);
        assert_eq!(v["hidden_size"], 32);
        assert_eq!(v["kv_heads"], 2);
        assert_eq!(v["vocab_size"], 260);
        assert_eq!(v["tokenizer"]["kind"], "BPE");
        assert!(v["parameters"].as_u64().unwrap() > 10_000);
        let text = ok(&distill(&["inspect", src], &[]));
        assert!(
            text.contains("architecture  llama") && text.contains("parameters"),
            "{text}"
        );

        let ids: Vec<u32> =
            serde_json::from_str(&ok(&distill(&["tokenize", src, "Hi!", "--json"], &[]))).unwrap();
        assert_eq!(ids.len(), 3);
    }
    let v: serde_json::Value = serde_json::from_str(&ok(&distill(
        &["inspect", gguf.to_str().unwrap(), "--json"],
        &[],
    )))
    .unwrap();
    assert!(
        v["dtypes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["dtype"] == "Q8_0"),
        "{v}"
    );

    let text = tmp.path().join("t.txt");
    std::fs::write(
        &text,
        "Call me Ishmael. Some years ago, never mind how long precisely.",
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&distill(
        &[
            "eval",
            gguf.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--block",
            "16",
            "--batch",
            "2",
            "--json",
        ],
        &[],
    )))
    .unwrap();
    let ppl = v["perplexity"].as_f64().unwrap();
    // A random model over 260 tokens is close to uniform.
    assert!(ppl > 50.0 && ppl < 1000.0, "{v}");
    assert!(v["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(v["gguf_weights"], "quantized");

    // llama.cpp's arithmetic: the same Q8_0 activation quantisation, so nearly the same score.
    let eval = |flags: &[&str]| {
        let mut args = vec![
            "eval",
            gguf.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--block",
            "16",
            "--json",
        ];
        args.extend_from_slice(flags);
        distill(&args, &[])
    };
    let g: serde_json::Value = serde_json::from_str(&ok(&eval(&["--ggml"]))).unwrap();
    assert_eq!(g["gguf_weights"], "ggml");
    let ggml_ppl = g["perplexity"].as_f64().unwrap();
    assert!((ggml_ppl / ppl - 1.0).abs() < 0.01, "{ggml_ppl} vs {ppl}");
    let o = eval(&["--ggml", "--dequantize"]);
    assert!(!o.status.success(), "conflicting flags accepted");
}

#[test]
fn run_distils_from_a_teacher_run_with_llamacpp_arithmetic() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let teacher = tmp.path().join("teacher.gguf");
    write_tiny_llama_gguf(&teacher, &cfg, &tiny_llama(&cfg), GgmlDType::Q8_0, true);
    let data = tmp.path().join("docs");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..6 {
        let text = format!("Document {i}. Call me Ishmael. Some years ago, never mind how long. ")
            .repeat(3);
        std::fs::write(data.join(format!("doc_{i}.txt")), text).unwrap();
    }
    let config = tmp.path().join("run.yaml");
    let yaml = |weights: &str| {
        format!(
            "teacher: {{source: {teacher}, gguf_weights: {weights}}}
data:
  source: {{kind: folder, path: {data}, pattern: '*.txt'}}
  block_size: 32
  validation_fraction: 0.34
student: {{layers: 1, init: {{kind: from_teacher}}}}
distill:
  alpha: 0.5
  temperature: 2.0
  hidden: [{{student_layer: 1, teacher_layer: 2, loss: mse, weight: 0.1}}]
train: {{steps: 2, batch_size: 2, lr: 0.001, eval_every: 2, eval_blocks: 4, checkpoint_every: 2}}
output: {{dir: {runs}, name: tiny}}
",
            teacher = teacher.display(),
            data = data.display(),
            runs = tmp.path().join("runs").display(),
        )
    };
    std::fs::write(&config, yaml("ggml")).unwrap();
    ok(&distill(&["run", config.to_str().unwrap()], &[]));
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("runs/tiny/report.json")).unwrap(),
    )
    .unwrap();
    let teacher_ppl = report["teacher"]["val_ppl"].as_f64().unwrap();
    assert!(teacher_ppl.is_finite() && teacher_ppl > 1.0, "{report}");
    assert_eq!(report["steps"], 2);

    std::fs::write(&config, yaml("llama.cpp")).unwrap();
    let o = distill(&["run", config.to_str().unwrap(), "--overwrite"], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("gguf_weights") && err.contains("`ggml`"),
        "{err}"
    );
}

#[test]
fn errors_name_what_is_wrong_and_exit_non_zero() {
    let o = distill(&["inspect", "/no/such/model.gguf"], &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("error:") && err.contains("/no/such/model.gguf"),
        "{err}"
    );
    let o = distill(&["inspect", "hf://just-a-name"], &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("hf://org/name"));
    let o = distill(&["eval", "x.gguf", "--text", "/no/such.txt"], &[]);
    assert!(!o.status.success());
    // A cause is said once, though the library's message already quotes it.
    let gguf = common::smollm2_gguf();
    let o = distill(
        &["eval", gguf.to_str().unwrap(), "--text", "/no/such.txt"],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/no/such.txt") && err.matches("No such file or directory").count() == 1,
        "{err}"
    );
}

#[test]
fn hub_token_reaches_the_server_but_never_the_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let dir = tmp.path().join("hf");
    write_tiny_llama_folder(&dir, &cfg, &tiny_llama(&cfg));
    let files: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_str().unwrap().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    let token = "hf_SECRET_token_that_must_not_leak";
    let mut repos = BTreeMap::new();
    repos.insert(
        "org/tiny".to_string(),
        RepoSpec {
            commits: vec![Commit {
                sha: "c".repeat(40),
                refs: vec!["main".into()],
                files,
                missing: vec![],
            }],
            private_token: Some(token.into()),
        },
    );
    let server = HubServer::start(repos);
    let cache = tmp.path().join("cache");
    let env = [
        ("HF_ENDPOINT", server.url.as_str()),
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_TOKEN", token),
        ("RUST_LOG", "trace"),
    ];
    let o = distill(&["inspect", "hf://org/tiny", "--json"], &env);
    let stdout = ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stdout.contains(token) && !stderr.contains(token),
        "token leaked:\n{stderr}"
    );
    assert!(
        stderr.contains("resolved Hub repository"),
        "trace logging was not on: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["layers"], 2);
    let reqs = server.requests.lock().unwrap().clone();
    assert!(!reqs.is_empty());
    assert!(reqs
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {token}"))));

    // Offline, from the cache, with no request.
    server.clear();
    let offline = [
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let ids: Vec<u32> = serde_json::from_str(&ok(&distill(
        &["tokenize", "hf://org/tiny", "xy", "--json"],
        &offline,
    )))
    .unwrap();
    assert_eq!(ids.len(), 2);
    assert!(server.requests.lock().unwrap().is_empty());
}

#[test]
fn real_smollm2_inspect_and_tokenize_through_the_binary() {
    let gguf = common::smollm2_gguf();
    let g = gguf.to_str().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&ok(&distill(&["inspect", g, "--json"], &[]))).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["layers"], 30);
    assert_eq!(v["tokenizer"]["pre_tokenizer"], "smollm");
    let ids: Vec<u32> = serde_json::from_str(&ok(&distill(
        &["tokenize", g, "Once upon a time", "--json"],
        &[],
    )))
    .unwrap();
    assert_eq!(ids[0], 6403);
    let text = ok(&distill(
        &["inspect", common::minilm_dir().to_str().unwrap()],
        &[],
    ));
    assert!(
        text.contains("architecture  bert") && text.contains("WordPiece"),
        "{text}"
    );
}

/// `distill chat` in the terminal: each line a turn answered in the conversation, `/reset`
/// starts again, `/exit` ends with success; a source without a chat template is refused.
#[test]
fn real_smollm2_chat_answers_resets_and_exits() {
    use std::io::Write;
    let gguf = common::smollm2_gguf();
    let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["chat", gguf.to_str().unwrap(), "--temperature", "0"])
        .args(["--max-new-tokens", "8", "--ggml"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is a whale?\n/reset\nName a colour.\n/exit\n")
        .unwrap();
    let out = ok(&child.wait_with_output().unwrap());
    let answers: Vec<&str> = out.split("> ").skip(1).collect();
    assert_eq!(answers.len(), 4, "{out}");
    assert!(answers[0].trim().len() > 3, "an answer: {out}");
    assert_eq!(answers[1].trim(), "(a new conversation)");
    assert!(answers[2].trim().len() > 3, "an answer: {out}");
    let refused = distill(&["chat", common::gemma3_gguf().to_str().unwrap()], &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no chat template"));
}

/// A tiny teacher folder, a folder of text documents and a run config around them.
fn tiny_run_setup(tmp: &Path, steps: usize, extra: &str) -> std::path::PathBuf {
    let cfg = tiny_llama_config();
    let teacher = tmp.join("teacher");
    write_tiny_llama_folder(&teacher, &cfg, &tiny_llama(&cfg));
    let data = tmp.join("docs");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..6 {
        let text = format!(
            "Document {i}. Call me Ishmael. Some years ago, never mind how long precisely. "
        )
        .repeat(3);
        std::fs::write(data.join(format!("doc_{i}.txt")), text).unwrap();
    }
    let yaml = format!(
        "teacher: {{source: {teacher}}}
data:
  source: {{kind: folder, path: {data}, pattern: '*.txt'}}
  block_size: 32
  validation_fraction: 0.34
student: {{layers: 1, init: {{kind: from_teacher}}}}
distill: {{alpha: 0.8, temperature: 2.0}}
train: {{steps: {steps}, batch_size: 2, lr: 0.001, eval_every: 2, eval_blocks: 4, checkpoint_every: 2}}
output: {{dir: {runs}, name: tiny}}
{extra}",
        teacher = teacher.display(),
        data = data.display(),
        runs = tmp.join("runs").display(),
    );
    let path = tmp.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn run_trains_checkpoints_resumes_exports_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_run_setup(tmp.path(), 4, "");
    let c = config.to_str().unwrap();
    let out = ok(&distill(&["run", c], &[]));
    assert!(
        out.contains("validation perplexity") && out.contains("report:"),
        "{out}"
    );
    let run = tmp.path().join("runs/tiny");
    for f in [
        "config.yaml",
        "metrics.jsonl",
        "report.md",
        "report.json",
        "plots/loss.svg",
        "plots/val_ppl.svg",
        "final/config.json",
        "final/model.safetensors",
        "final/tokenizer.json",
        "final/generation_config.json",
        "checkpoints/latest",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    // The export loads back as a model with the student's shape.
    let v: serde_json::Value = serde_json::from_str(&ok(&distill(
        &["inspect", run.join("final").to_str().unwrap(), "--json"],
        &[],
    )))
    .unwrap();
    assert_eq!(v["layers"], 1);
    assert_eq!(v["vocab_size"], 260);
    let svg = std::fs::read_to_string(run.join("plots/loss.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline"),
        "not an SVG line plot"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert!(
        report["student"]["parameters"].as_u64().unwrap()
            < report["teacher"]["parameters"].as_u64().unwrap()
    );
    assert_eq!(report["steps"], 4);

    // The folder exists: refused without a flag.
    let o = distill(&["run", c], &[]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--resume"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // More steps, resumed from the step-4 checkpoint.
    edit(&config, "steps: 4", "steps: 6");
    let out = ok(&distill(&["run", c, "--resume"], &[]));
    assert!(out.contains("report:"), "{out}");
    let steps: Vec<u64> = train_losses(&run).iter().map(|s| s.0).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);

    // --overwrite starts over.
    edit(&config, "steps: 6", "steps: 2");
    ok(&distill(&["run", c, "--overwrite"], &[]));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["steps"], 2);
}

#[test]
fn ctrl_c_checkpoints_and_exits_130() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_run_setup(tmp.path(), 100000, "");
    let child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["run", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = tmp.path().join("runs/tiny/metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&metrics)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 3
    {
        assert!(start.elapsed().as_secs() < 120, "the run did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // An interrupted run is not a success: 128 + SIGINT, as a shell reports it.
    assert_eq!(
        out.status.code(),
        Some(130),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("interrupted at step") && stdout.contains("--resume"),
        "{stdout}"
    );
    let latest = std::fs::read_to_string(tmp.path().join("runs/tiny/checkpoints/latest")).unwrap();
    assert!(tmp
        .path()
        .join("runs/tiny/checkpoints")
        .join(latest.trim())
        .join("optimizer.safetensors")
        .is_file());
    assert!(
        !tmp.path().join("runs/tiny/final").exists(),
        "an interrupted run must not export"
    );
}

#[test]
fn run_config_and_data_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let err_of = |extra: &str, edit: &dyn Fn(String) -> String| {
        let dir = tempfile::tempdir_in(tmp.path()).unwrap();
        let config = tiny_run_setup(dir.path(), 2, extra);
        std::fs::write(&config, edit(std::fs::read_to_string(&config).unwrap())).unwrap();
        let o = distill(&["run", config.to_str().unwrap()], &[]);
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        std::mem::forget(dir);
        e
    };
    let e = err_of("", &|s| s.replace("steps: 2", "steps: 2, stepz: 3"));
    assert!(e.contains("stepz") && e.contains("line"), "{e}");
    let e = err_of("", &|s| s.replace("alpha: 0.8", "alpha: 1.8"));
    assert!(e.contains("distill.alpha"), "{e}");
    let e = err_of("", &|s| s.replace("temperature: 2.0", "temperature: -1"));
    assert!(e.contains("distill.temperature"), "{e}");
    let e = err_of("", &|s| s.replace("batch_size: 2", "batch_size: 0"));
    assert!(e.contains("train.batch_size"), "{e}");
    let e = err_of("", &|s| s.replace("block_size: 32", "block_size: 100000"));
    assert!(e.contains("do not fill one block"), "{e}");
    let e = err_of("", &|s| s.replace("pattern: '*.txt'", "pattern: '*.md'"));
    assert!(e.contains("no file matches"), "{e}");
    let e = err_of("", &|s| s.replace("layers: 1,", "layers: 1, hidden: 30,"));
    assert!(e.contains("student.hidden"), "{e}");
    let e = err_of("", &|s| {
        s.replace("{kind: from_teacher}", "{kind: from_teacher, layers: [7]}")
    });
    assert!(e.contains("teacher layer 7"), "{e}");
}

/// A classification run on a small, seeded subset of SpamAssassin with the real MiniLM teacher.
fn spam_setup(tmp: &Path, finetune: &str, extra_data: &str) -> std::path::PathBuf {
    let yaml = format!(
        "task: classification
teacher: {{source: {minilm}, device: cpu}}
data:
  source:
    kind: class_folders
    path: {spam}
    classes: {{easy-ham-1: ham, hard-ham-1: ham, spam-1: spam, spam-2: spam}}
  format: email
  labels: [ham, spam]
  max_length: 32
  max_per_class: 16
  seed: 3
{extra_data}
{finetune}
student: {{layers: 1, hidden: 64, heads: 2, intermediate: 128}}
distill: {{alpha: 0.5, temperature: 2.0, scratch_baseline: true}}
train: {{epochs: 2, batch_size: 8, lr: 0.001}}
output: {{dir: {runs}, name: spam, dtype: f16}}
",
        minilm = common::minilm_dir().display(),
        spam = common::asset("spam-assassin").display(),
        runs = tmp.join("runs").display(),
    );
    let path = tmp.join("spam.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

const FINETUNE: &str = "finetune: {epochs: 1, batch_size: 8, lr: 0.0001, freeze_embeddings: true, freeze_layers: [0, 1, 2, 3]}";

fn safetensors_dtypes(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut d: Vec<String> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap().to_string())
        .collect();
    d.sort();
    d.dedup();
    d
}

#[test]
fn classification_run_finetunes_distils_exports_and_reports_on_real_spam() {
    let tmp = tempfile::tempdir().unwrap();
    let config = spam_setup(tmp.path(), FINETUNE, "");
    let out = ok(&distill(&["run", config.to_str().unwrap()], &[]));
    assert!(out.contains("classification report"), "{out}");
    let run = tmp.path().join("runs/spam");
    for (model, dtype) in [("teacher", "F32"), ("student", "F16"), ("scratch", "F16")] {
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join(model).join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
        assert_eq!(cfg["id2label"]["1"], "spam");
        assert_eq!(cfg["label2id"]["ham"], 0);
        assert!(run.join(model).join("tokenizer.json").is_file());
        assert_eq!(
            safetensors_dtypes(&run.join(model).join("model.safetensors")),
            vec![dtype.to_string()],
            "{model}"
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    // Every message of the four folders was read and decoded (2500 + 250 + 500 + 1396).
    let data = &report["data"];
    assert_eq!(
        data["examples"].as_u64().unwrap() + data["skipped"].as_array().unwrap().len() as u64,
        4646
    );
    assert!(data["truncated"][0].as_u64().unwrap() > 0, "{data}");
    let stages: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, vec!["finetune", "distill", "scratch"]);
    let s = &report["summary"];
    for k in [
        "teacher_acc",
        "kd_acc",
        "scratch_acc",
        "teacher_bytes",
        "student_bytes",
        "teacher_msgs_per_s_b32",
        "student_msgs_per_s_b32",
    ] {
        assert!(s[k].as_f64().is_some(), "summary lacks {k}: {s}");
    }
    assert!(s["student_bytes"].as_f64().unwrap() * 8.0 < s["teacher_bytes"].as_f64().unwrap());
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("split.json")).unwrap()).unwrap();
    assert_eq!(split["test"].as_array().unwrap().len(), 4);
    assert_eq!(split["train"].as_array().unwrap().len(), 24);
    assert!(std::fs::read_to_string(run.join("report.md"))
        .unwrap()
        .contains("true \\ pred"));

    // `distill eval` scores the exported student on the same test split, the same way.
    let student = run.join("student");
    let e = ok(&distill(
        &[
            "eval",
            student.to_str().unwrap(),
            "--labelled",
            config.to_str().unwrap(),
            "--split",
            "test",
            "--json",
        ],
        &[],
    ));
    let e: serde_json::Value = serde_json::from_str(&e).unwrap();
    assert_eq!(e["examples"], 4);
    assert_eq!(e["accuracy"], report["models"][1]["accuracy"]);
    assert_eq!(e["confusion"], report["models"][1]["confusion"]);
    let text = ok(&distill(
        &[
            "eval",
            student.to_str().unwrap(),
            "--labelled",
            config.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(
        text.contains("confusion") && text.contains("spam"),
        "{text}"
    );
}

#[test]
fn classification_input_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let err_of =
        |finetune: &str, extra_data: &str, edit: &dyn Fn(String) -> String, args: &[&str]| {
            let dir = tempfile::tempdir_in(tmp.path()).unwrap();
            let config = spam_setup(dir.path(), finetune, extra_data);
            std::fs::write(&config, edit(std::fs::read_to_string(&config).unwrap())).unwrap();
            let mut a = vec!["run", config.to_str().unwrap()];
            a.extend_from_slice(args);
            let o = distill(&a, &[]);
            assert!(
                !o.status.success(),
                "{}",
                String::from_utf8_lossy(&o.stdout)
            );
            let e = String::from_utf8_lossy(&o.stderr).to_string();
            std::mem::forget(dir);
            e
        };
    let same = |s: String| s;
    // A teacher without a head and no fine-tuning stage.
    let e = err_of("", "", &same, &[]);
    assert!(
        e.contains("no classification head") && e.contains("finetune"),
        "{e}"
    );
    // A class folder that does not exist.
    let e = err_of(
        FINETUNE,
        "",
        &|s| s.replace("spam-2: spam", "spam-9: spam"),
        &[],
    );
    assert!(e.contains("spam-9") && e.contains("does not exist"), "{e}");
    // A label the config does not map.
    let e = err_of(
        FINETUNE,
        "",
        &|s| s.replace("labels: [ham, spam]", "labels: [ham, junk]"),
        &[],
    );
    assert!(e.contains("`spam`") && e.contains("data.labels"), "{e}");
    // Frozen layers the teacher does not have.
    let e = err_of(&FINETUNE.replace("[0, 1, 2, 3]", "[0, 9]"), "", &same, &[]);
    assert!(
        e.contains("finetune.freeze_layers") && e.contains("layer 9"),
        "{e}"
    );
    // Range checks name the key.
    let e = err_of(
        FINETUNE,
        "",
        &|s| {
            s.replace(
                "max_per_class: 16",
                "max_per_class: 16\n  test_fraction: 1.5",
            )
        },
        &[],
    );
    assert!(e.contains("data.test_fraction"), "{e}");
    let e = err_of(
        FINETUNE,
        "",
        &|s| s.replace("dtype: f16", "dtype: int3"),
        &[],
    );
    assert!(e.contains("output.dtype"), "{e}");
    // A decoder teacher.
    let gguf = common::smollm2_gguf();
    let e = err_of(
        FINETUNE,
        "",
        &|s| {
            s.replace(
                &common::minilm_dir().display().to_string(),
                &gguf.display().to_string(),
            )
        },
        &[],
    );
    assert!(e.contains("BERT"), "{e}");
    // Classification runs do not resume.
    let e = err_of(FINETUNE, "", &same, &["--resume"]);
    assert!(e.contains("--resume"), "{e}");
}

#[test]
fn compress_prunes_saves_and_exports_gguf_with_measured_quality() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let vm = tiny_llama(&cfg);
    let folder = tmp.path().join("student");
    write_tiny_llama_folder(&folder, &cfg, &vm);
    let teacher = tmp.path().join("teacher.gguf");
    write_tiny_llama_gguf(&teacher, &cfg, &vm, GgmlDType::F32, true);
    let text = tmp.path().join("text.txt");
    std::fs::write(
        &text,
        "Call me Ishmael. Some years ago, never mind how long precisely. ".repeat(8),
    )
    .unwrap();
    let out = tmp.path().join("pruned");
    let gguf = tmp.path().join("pruned.gguf");
    let o = ok(&distill(
        &[
            "compress",
            folder.to_str().unwrap(),
            "--ffn-neurons",
            "32",
            "--sparsity",
            "0.25",
            "--out",
            out.to_str().unwrap(),
            "--gguf",
            gguf.to_str().unwrap(),
            "--quantize",
            "q8_0",
            "--tokenizer-from",
            teacher.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--json",
        ],
        &[],
    ));
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v}");
    assert_eq!(rows[0]["step"], "original");
    assert!(rows[1]["step"].as_str().unwrap().contains("32 FFN neurons"));
    assert!(rows[1]["parameters"].as_u64() < rows[0]["parameters"].as_u64());
    assert!(rows[1]["nonzero_parameters"].as_u64() < rows[1]["parameters"].as_u64());
    for r in rows {
        assert!(r["val_ppl"].as_f64().unwrap().is_finite(), "{r}");
    }
    assert_eq!(v["config"]["intermediate_size"], 32);
    // The pruned folder and the GGUF are real models: inspect and eval load them.
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["intermediate_size"], 32);
    let info: serde_json::Value = serde_json::from_str(&ok(&distill(
        &["inspect", gguf.to_str().unwrap(), "--json"],
        &[],
    )))
    .unwrap();
    assert_eq!(info["architecture"], "llama");
    assert_eq!(info["intermediate_size"], 32);
    // Bad input: sparsity out of range, a quantisation type that does not exist, no tokenizer.
    let err = |args: &[&str]| {
        let mut a = vec!["compress", folder.to_str().unwrap()];
        a.extend_from_slice(args);
        let o = distill(&a, &[]);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = err(&["--sparsity", "1.0"]);
    assert!(e.contains("sparsity"), "{e}");
    let e = err(&["--gguf", gguf.to_str().unwrap(), "--quantize", "q3_xs"]);
    assert!(e.contains("q3_xs"), "{e}");
    // Without --tokenizer-from, the GGUF's tokenizer comes from the folder's tokenizer.json and
    // tokenises as the folder does.
    let own = tmp.path().join("own.gguf");
    ok(&distill(
        &[
            "compress",
            folder.to_str().unwrap(),
            "--gguf",
            own.to_str().unwrap(),
        ],
        &[],
    ));
    let ids = |m: &Path| -> Vec<u32> {
        serde_json::from_str(&ok(&distill(
            &["tokenize", m.to_str().unwrap(), "ab ba abab", "--json"],
            &[],
        )))
        .unwrap()
    };
    assert!(!ids(&folder).is_empty());
    assert_eq!(ids(&own), ids(&folder));
    // A tokenizer the GGUF writer cannot express is refused by name, and no file is left.
    let wp = tmp.path().join("wordpiece");
    std::fs::create_dir_all(&wp).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(folder.join(f), wp.join(f)).unwrap();
    }
    // A real WordPiece tokenizer: MiniLM's.
    std::fs::copy(
        common::minilm_dir().join("tokenizer.json"),
        wp.join("tokenizer.json"),
    )
    .unwrap();
    let o = distill(
        &[
            "compress",
            wp.to_str().unwrap(),
            "--gguf",
            tmp.path().join("x.gguf").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("WordPiece") && e.contains("tokenizer.json"),
        "{e}"
    );
    assert!(!tmp.path().join("x.gguf").exists());
    let e = err(&["--ffn-neurons", "0"]);
    assert!(e.contains("zero"), "{e}");
}

/// A run whose `compress:` section prunes, heals, factorises, shares, quantises to int8 and to
/// GGUF: every variant is measured after every step and its artifact reloads.
#[test]
fn run_compresses_the_student_step_by_step() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    // A GGUF teacher: the GGUF export copies its tokenizer metadata.
    let teacher = tmp.path().join("teacher.gguf");
    write_tiny_llama_gguf(&teacher, &cfg, &tiny_llama(&cfg), GgmlDType::F32, true);
    let data = tmp.path().join("docs");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..6 {
        let text = format!("Document {i}. Call me Ishmael. Some years ago, never mind how long. ")
            .repeat(4);
        std::fs::write(data.join(format!("doc_{i}.txt")), text).unwrap();
    }
    let base = format!(
        "teacher: {{source: {teacher}, gguf_weights: dequantized}}
data:
  source: {{kind: folder, path: {data}, pattern: '*.txt'}}
  block_size: 32
  validation_fraction: 0.34
student: {{layers: 2, init: {{kind: from_teacher}}}}
distill: {{alpha: 0.5, temperature: 1.0}}
train: {{steps: 2, batch_size: 2, lr: 0.001, eval_every: 2, eval_blocks: 4, checkpoint_every: 2}}
output: {{dir: {runs}, name: tiny}}
",
        teacher = teacher.display(),
        data = data.display(),
        runs = tmp.path().join("runs").display(),
    );
    let config = tmp.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "{base}compress:
  eval_blocks: 4
  variants:
    - name: pruned
      steps:
        - {{step: prune, ffn_neurons: 32, drop_layers: {{least_important: 1}}, sparsity: 0.2}}
        - {{step: heal, steps: 2, lr: 0.01}}
        - {{step: quantize, type: q8_0}}
    - name: factored
      steps: [{{step: low_rank, rank: 4}}]
    - name: shared
      steps: [{{step: share, bits: 4}}]
    - name: int8
      steps: [{{step: quantize, type: int8}}]
    - name: q8
      steps: [{{step: quantize, type: q8_0}}]
"
        ),
    )
    .unwrap();
    ok(&distill(&["run", config.to_str().unwrap()], &[]));
    let run = tmp.path().join("runs/tiny");
    assert_only_run_entries(&run);
    let out = run.join("compressed");
    let o: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compress.json")).unwrap()).unwrap();
    let rows = o["rows"].as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "uncompressed",
            "pruned",
            "pruned",
            "pruned",
            "factored",
            "shared",
            "int8",
            "q8"
        ]
    );
    let p = |i: usize, k: &str| rows[i][k].as_f64().unwrap();
    let p_of = |r: &serde_json::Value| r["val_ppl"].as_f64().unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert!(
            p(i, "val_ppl").is_finite() && p(i, "tokens_per_s") > 0.0,
            "{r}"
        );
    }
    // Pruning shrank the model; healing moved its weights but kept its zeros.
    assert!(p(1, "params") < p(0, "params"));
    assert!(p(1, "nonzero_params") < p(1, "params"));
    assert_eq!(rows[2]["steps"][1], "heal 2 steps");
    assert_ne!(p(2, "val_ppl"), p(1, "val_ppl"));
    assert_eq!(p(2, "nonzero_params"), p(1, "nonzero_params"));
    // The GGUF is the pruned, healed model: one layer, 32 neurons, Q8_0.
    let gguf = rows[3]["artifact"].as_str().unwrap();
    assert!(gguf.ends_with("pruned.gguf"));
    let info: serde_json::Value =
        serde_json::from_str(&ok(&distill(&["inspect", gguf, "--json"], &[]))).unwrap();
    assert_eq!(info["layers"], 1, "{info}");
    assert_eq!(info["intermediate_size"], 32, "{info}");
    // Factors hold fewer values; k-means and int8 hold fewer bytes.
    assert!(p(4, "params") < p(0, "params"));
    assert!(p(5, "bytes") < p(0, "bytes") / 4.0);
    assert!(p(6, "bytes") < p(0, "bytes") / 2.0);
    assert!(safetensors_dtypes(&out.join("int8/model.safetensors")).contains(&"I8".to_string()));
    // Every safetensors artifact is a model the other commands load.
    let doc = data.join("doc_0.txt");
    for v in ["factored", "shared", "int8"] {
        let e: serde_json::Value = serde_json::from_str(&ok(&distill(
            &[
                "eval",
                out.join(v).to_str().unwrap(),
                "--text",
                doc.to_str().unwrap(),
                "--block",
                "32",
                "--json",
            ],
            &[],
        )))
        .unwrap();
        assert!(e["perplexity"].as_f64().unwrap().is_finite(), "{v}: {e}");
    }
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(
        md.contains("## Compression") && md.contains("k-means 4-bit"),
        "{md}"
    );
    // The smallest GGUF within 3% of the student's perplexity is the run's artifact, measured
    // beside teacher and student on the report's validation blocks.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let art = &report["artifact"];
    let within: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| {
            r["artifact"].as_str().is_some_and(|a| a.ends_with(".gguf"))
                && p_of(r) <= p(0, "val_ppl") * 1.03
        })
        .collect();
    let smallest = within
        .iter()
        .min_by_key(|r| r["bytes"].as_u64())
        .expect("a GGUF within 3%");
    assert_eq!(art["stats"]["name"], smallest["artifact"], "{report}");
    assert!(
        art["stats"]["bytes_on_disk"].as_u64() < report["student"]["bytes_on_disk"].as_u64(),
        "{art}"
    );
    assert!(art["stats"]["val_ppl"].as_f64().unwrap().is_finite());
    assert!((0.0..=1.0).contains(&art["top1_agreement"].as_f64().unwrap()));
    assert!(md.contains("| artifact / teacher |"), "{md}");
    // Model files are as readable as every other output (not the writer's private 0600).
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let final_dir = run.join("final");
        assert_eq!(
            mode(&final_dir.join("model.safetensors")),
            mode(&final_dir.join("config.json"))
        );
        assert_eq!(
            mode(&out.join("int8/model.safetensors")),
            mode(&final_dir.join("config.json"))
        );
    }
    assert!(std::fs::read_to_string(out.join("compress.svg"))
        .unwrap()
        .contains("<svg"));

    // Bad input, each named: a rank larger than the matrix, more heads than the model has,
    // a step after an encoding step.
    let final_dir = run.join("final");
    for (steps, want) in [
        ("[{step: low_rank, rank: 1000}]", "1..="),
        ("[{step: prune, heads: 5}]", "heads"),
        ("[{step: share, bits: 4}, {step: heal}]", "after"),
    ] {
        let bad = tmp.path().join("bad.yaml");
        std::fs::write(
            &bad,
            format!("{base}compress:\n  variants:\n    - name: bad\n      steps: {steps}\n"),
        )
        .unwrap();
        let o = distill(
            &[
                "compress",
                final_dir.to_str().unwrap(),
                "--config",
                bad.to_str().unwrap(),
                "--out",
                tmp.path().join("bad-out").to_str().unwrap(),
            ],
            &[],
        );
        assert!(!o.status.success(), "{steps} was accepted");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(want), "{steps}: {e}");
    }
}

/// The spam student compressed by the run's `compress:` section: structured pruning healed
/// by distillation then int8, k-means; a GGUF type is refused for a BERT classifier.
#[test]
fn classification_run_compresses_the_student() {
    let tmp = tempfile::tempdir().unwrap();
    let config = spam_setup(tmp.path(), FINETUNE, "");
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str(
        "compress:
  variants:
    - name: pruned
      steps:
        - {step: prune, ffn_neurons: 64, sparsity: 0.3}
        - {step: heal, epochs: 1}
        - {step: quantize, type: int8}
    - name: shared
      steps: [{step: share, bits: 4}]
    - name: sparsegpt
      steps: [{step: prune, sparsity: 0.5, method: sparsegpt}]
    - name: minitron
      steps: [{step: prune, ffn_neurons: 64, importance: activations}]
",
    );
    std::fs::write(&config, &yaml).unwrap();
    ok(&distill(&["run", config.to_str().unwrap()], &[]));
    let run = tmp.path().join("runs/spam");
    assert_only_run_entries(&run);
    let out = run.join("compressed");
    let o: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compress.json")).unwrap()).unwrap();
    let rows = o["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7, "{o}");
    for r in rows {
        let acc = r["acc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc) && r["msgs_per_s"].as_f64().unwrap() > 0.0);
    }
    // Every row says how far its class distributions moved from the uncompressed model's.
    assert!(rows[0]["kl_to_uncompressed"].as_f64().unwrap().abs() < 1e-9);
    assert!(rows[1..]
        .iter()
        .all(|r| r["kl_to_uncompressed"].as_f64().unwrap() > 0.0));
    // Data-aware methods calibrate an encoder on the training examples: SparseGPT halves the
    // layer matrices, activation importance narrows the FFN.
    let sparse = &rows[5];
    assert!(
        sparse["notes"][0]
            .as_str()
            .unwrap()
            .contains("calibration examples"),
        "{sparse}"
    );
    assert!(sparse["nonzero_params"].as_u64() < rows[0]["nonzero_params"].as_u64());
    assert_eq!(
        rows[6]["params"], rows[1]["params"],
        "the same cut, ranked by activations"
    );
    assert!(rows[1]["params"].as_u64() < rows[0]["params"].as_u64());
    assert_eq!(rows[2]["steps"][1], "heal 1 epoch(s)");
    assert_eq!(rows[2]["nonzero_params"], rows[1]["nonzero_params"]);
    let int8 = out.join("pruned");
    assert!(safetensors_dtypes(&int8.join("model.safetensors")).contains(&"I8".to_string()));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(int8.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["intermediate_size"], 64);
    assert_eq!(cfg["id2label"]["1"], "spam");
    // The compressed classifiers are classifiers `distill eval` scores exactly as measured.
    for (i, v) in [(3, "pruned"), (4, "shared")] {
        let e: serde_json::Value = serde_json::from_str(&ok(&distill(
            &[
                "eval",
                out.join(v).to_str().unwrap(),
                "--labelled",
                config.to_str().unwrap(),
                "--split",
                "validation",
                "--json",
            ],
            &[],
        )))
        .unwrap();
        assert_eq!(e["accuracy"], rows[i]["acc"], "{v}");
    }
    // GGUF quantisation of a BERT classifier is refused by name.
    let bad = tmp.path().join("bad.yaml");
    let head = yaml.split("compress:").next().unwrap().to_string();
    std::fs::write(
        &bad,
        format!("{head}compress:\n  variants:\n    - {{name: q, steps: [{{step: quantize, type: q4_k}}]}}\n"),
    )
    .unwrap();
    let o = distill(
        &[
            "compress",
            run.join("student").to_str().unwrap(),
            "--config",
            bad.to_str().unwrap(),
            "--out",
            tmp.path().join("bad").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("Llama-family") && e.contains("int8"), "{e}");

    // `distill auto` on the same student: accuracy budgets, safetensors encodings, a healed cut.
    let auto_cfg = tmp.path().join("auto.yaml");
    std::fs::write(
        &auto_cfg,
        format!(
            "{head}auto:
  max_evaluations: 6
  structure:
    - name: ffn-64-healed
      steps: [{{step: prune, ffn_neurons: 64}}, {{step: heal, epochs: 1}}]
"
        ),
    )
    .unwrap();
    let a = auto_cfg.to_str().unwrap();
    let o = distill(&["auto", a, "--budget", "ppl:+5%"], &[]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("acc:-Npt"), "{e}");
    let v: serde_json::Value = serde_json::from_str(&ok(&distill(
        &["auto", a, "--budget", "acc:-5pt", "--json"],
        &[],
    )))
    .unwrap();
    assert_eq!(v["task"], "classification");
    assert_eq!(v["met"], true, "{v}");
    assert!(v["evaluations"].as_u64().unwrap() <= 6, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows[1]["variant"], "ffn-64-healed", "{v}");
    let best = &v["best"];
    assert!(best["acc"].as_f64().unwrap() >= v["limit"].as_f64().unwrap());
    assert!(best["bytes"].as_u64().unwrap() < rows[0]["bytes"].as_u64().unwrap());
    let folder = Path::new(best["artifact"].as_str().unwrap());
    assert!(folder.join("model.safetensors").exists() && folder.join("config.json").exists());
    // The folder is a classifier our evaluator loads, at the accuracy auto measured.
    let e: serde_json::Value = serde_json::from_str(&ok(&distill(
        &[
            "eval",
            folder.to_str().unwrap(),
            "--labelled",
            a,
            "--split",
            "validation",
            "--json",
        ],
        &[],
    )))
    .unwrap();
    assert_eq!(e["accuracy"], best["acc"], "{e}");
}

/// A student of the real SmolLM2 teacher with its vocabulary trimmed to ten Moby Dick chapters:
/// the exported tokenizer splits the training text exactly as the teacher's does (the same
/// token strings), the weights have the kept rows only, and the GGUF artifact carries the
/// trimmed vocabulary and tokenises like the folder. Bad `keep` entries are refused by name.
#[test]
fn run_trims_the_vocabulary_to_the_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = common::smollm2_gguf();
    let data = common::asset("moby-dick");
    let config = tmp.path().join("run.yaml");
    let yaml = |keep: &str| {
        format!(
            "teacher: {{source: {teacher}, gguf_weights: dequantized}}
data:
  source: {{kind: folder, path: {data}, pattern: 'chapter_1?.txt'}}
  block_size: 64
  validation_fraction: 0.2
student:
  layers: 1
  hidden: 192
  init: {{kind: from_teacher}}
  vocab: {{trim: corpus, keep: [{keep}]}}
distill: {{alpha: 0.5, temperature: 1.0}}
train: {{steps: 2, batch_size: 2, lr: 0.001, eval_every: 2, eval_blocks: 2, checkpoint_every: 2}}
output: {{dir: {runs}, name: trimmed}}
compress:
  eval_blocks: 2
  variants:
    - name: q8
      steps: [{{step: quantize, type: q8_0}}]
",
            teacher = gguf.display(),
            data = data.display(),
            runs = tmp.path().join("runs").display(),
        )
    };
    std::fs::write(&config, yaml("'Queequeg', 'Ġwhale'")).unwrap();
    let o = distill(&["run", config.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("student.vocab.keep")
            && err.contains("`Queequeg` is not a token"),
        "{err}"
    );

    std::fs::write(&config, yaml("' Queequeg', 'Ġwhale'")).unwrap();
    let o = distill(&["run", config.to_str().unwrap(), "--overwrite"], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("` Queequeg` is not a token"),
        "{err}"
    );

    std::fs::write(&config, yaml("'Ġelectricity', ' submarine'")).unwrap();
    ok(&distill(
        &["run", config.to_str().unwrap(), "--overwrite"],
        &[],
    ));
    let run = tmp.path().join("runs/trimmed");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let v = &report["vocab"];
    let kept = v["kept"].as_u64().unwrap() as usize;
    assert_eq!(v["full"], 49152);
    assert!(kept > 1000 && kept < 20000, "{v}");
    assert_eq!(v["corpus_tokenisation_exact"], true);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("final/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["vocab_size"].as_u64().unwrap() as usize, kept);
    assert_eq!(
        report["student"]["embedding_parameters"].as_u64().unwrap() as usize,
        kept * 192
    );

    // The same token strings as the teacher's, on training text and on a chat turn.
    let teacher = distill_models::GgufFile::open(&gguf).unwrap();
    let teacher_tokens = teacher.get_strings("tokenizer.ggml.tokens").unwrap();
    let trimmed = tokenizers::Tokenizer::from_file(run.join("final/tokenizer.json")).unwrap();
    assert_eq!(trimmed.get_vocab_size(true), kept);
    for listed in ["Ġelectricity", "Ġsubmarine"] {
        assert!(trimmed.token_to_id(listed).is_some(), "{listed}");
    }
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("split.json")).unwrap()).unwrap();
    assert_eq!(split["validation"].as_array().unwrap().len(), 2, "{split}");
    let chapter = std::fs::read_to_string(split["train"][0].as_str().unwrap()).unwrap();
    let head: String = chapter.chars().take(1500).collect();
    let texts = [
        head.clone(),
        format!("<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
            head.chars().take(200).collect::<String>()),
    ];
    let ids = |model: &Path, text: &str| -> Vec<u32> {
        serde_json::from_str(&ok(&distill(
            &["tokenize", model.to_str().unwrap(), text, "--json"],
            &[],
        )))
        .unwrap()
    };
    let artifact = run.join("compressed/q8.gguf");
    for text in &texts {
        let full: Vec<&str> = ids(&gguf, text)
            .iter()
            .map(|&i| teacher_tokens[i as usize])
            .collect();
        let ours = ids(&run.join("final"), text);
        let strings: Vec<String> = ours
            .iter()
            .map(|&i| trimmed.id_to_token(i).unwrap())
            .collect();
        assert_eq!(strings, full, "{text:?}");
        assert!(ours.iter().all(|&i| (i as usize) < kept));
        // The artifact's GGUF tokenizer is the trimmed one.
        assert_eq!(ids(&artifact, text), ours, "{text:?}");
    }
    let art = distill_models::GgufFile::open(&artifact).unwrap();
    assert_eq!(
        art.get_strings("tokenizer.ggml.tokens").unwrap().len(),
        kept
    );
    assert_eq!(art.get_usize("llama.vocab_size").unwrap(), kept);
}

/// `distill auto` on a trained tiny student: a structural prefix healed and measured, the
/// frontier screened, a GGUF written within the budget in no more measurements than allowed;
/// an unmeetable budget returns the closest candidate and says so; bad budgets, targets and a
/// missing student are refused by name.
#[test]
fn auto_finds_a_small_artifact_within_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_run_setup(
        tmp.path(),
        2,
        "auto:
  max_evaluations: 6
  types: [q8_0, q4_0]
  embeddings: [q8_0, q4_0]
  calibration_blocks: 4
  eval_blocks: 4
  structure:
    - name: ffn-32-healed
      steps: [{step: prune, ffn_neurons: 32}, {step: heal, steps: 2, lr: 0.001}]
",
    );
    let c = config.to_str().unwrap();
    let o = distill(&["auto", c, "--budget", "ppl:+50%"], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no trained student"),
        "{err}"
    );
    ok(&distill(&["run", c], &[]));
    for (args, want) in [
        (vec!["--budget", "ppl:5"], "--budget"),
        (vec!["--budget", "bleu:+1%"], "unknown metric `bleu`"),
        (
            vec!["--budget", "ppl:+5%", "--target", "latency:3ms"],
            "unknown target unit `latency`",
        ),
    ] {
        let mut a = vec!["auto", c];
        a.extend(args);
        let o = distill(&a, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{want}: {err}");
    }

    let v: serde_json::Value = serde_json::from_str(&ok(&distill(
        &["auto", c, "--budget", "ppl:+50%", "--json"],
        &[],
    )))
    .unwrap();
    assert_eq!(v["met"], true, "{v}");
    let evaluations = v["evaluations"].as_u64().unwrap();
    assert!((3..=6).contains(&evaluations), "{v}");
    assert!(v["proxy_evaluations"].as_u64().unwrap() >= 1);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows[0]["variant"], "uncompressed");
    assert_eq!(rows[1]["variant"], "ffn-32-healed", "{v}");
    let best = &v["best"];
    let path = best["artifact"].as_str().unwrap();
    assert!(path.ends_with("auto/auto.gguf") && Path::new(path).exists());
    assert!(best["val_ppl"].as_f64().unwrap() <= v["limit"].as_f64().unwrap());
    assert!(best["bytes"].as_u64().unwrap() < rows[0]["bytes"].as_u64().unwrap() / 2);
    // The file is a model others load: our GGUF reader scores it.
    let e: serde_json::Value = serde_json::from_str(&ok(&distill(
        &[
            "eval",
            path,
            "--text",
            tmp.path().join("docs/doc_0.txt").to_str().unwrap(),
            "--block",
            "64",
            "--json",
        ],
        &[],
    )))
    .unwrap();
    assert!(e["perplexity"].as_f64().unwrap().is_finite());
    let run = tmp.path().join("runs/tiny/auto");
    for f in ["auto.md", "auto.json", "auto.svg"] {
        assert!(run.join(f).exists(), "{f}");
    }
    let md = std::fs::read_to_string(run.join("auto.md")).unwrap();
    assert!(md.contains("method: gptq") && md.contains("types:"), "{md}");
    assert!(!v["pareto"].as_array().unwrap().is_empty());

    // Nothing fits in 100 bytes: say so, and return the closest.
    let out = ok(&distill(
        &["auto", c, "--budget", "ppl:+50%", "--target", "bytes:100"],
        &[],
    ));
    assert!(
        out.contains("Nothing measured meets") && out.contains("closest"),
        "{out}"
    );
    assert!(run.join("auto.gguf").exists());
    assert_only_run_entries(&tmp.path().join("runs/tiny"));
}

/// Every entry of a run folder is one runs write (`distill::RUN_ENTRIES`), the marker or the
/// lock: `--overwrite`, which removes exactly those entries, starts a run over cleanly.
fn assert_only_run_entries(run: &Path) {
    for e in std::fs::read_dir(run).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            distill::RUN_ENTRIES.contains(&name.as_str()) || name == ".distill",
            "{}: `{name}` is not in distill::RUN_ENTRIES",
            run.display()
        );
    }
}

/// Replaces `from` by `to` in the file at `path`.
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no `{from}`", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// The `train` lines of a run's metrics: (step, loss).
fn train_losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// `distill launch` starts two CPU ranks (processes joined over TCP) that train what one
/// process trains on the same combined batch: the same loss at every step and the same
/// exported weights; rank 0 alone writes the run folder and prints the report. A rank that
/// fails stops the group with its error.
#[test]
fn launch_trains_two_cpu_ranks_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_run_setup(tmp.path(), 4, "");
    let c = config.to_str().unwrap();
    ok(&distill(&["run", c], &[]));
    let runs = tmp.path().join("runs");
    std::fs::rename(runs.join("tiny"), runs.join("single")).unwrap();

    let port = common::free_port().to_string();
    let launch = |extra: &[&str]| {
        let mut args = vec![
            "launch",
            "--nproc-per-node",
            "2",
            "--master-port",
            &port,
            "--",
            "run",
            c,
        ];
        args.extend_from_slice(extra);
        distill(&args, &[])
    };
    let o = launch(&[]);
    let out = ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(out.matches("report:").count(), 1, "{out}");
    assert!(
        err.contains("[rank 1]") && err.contains("rank done"),
        "{err}"
    );
    let (single, group) = (runs.join("single"), runs.join("tiny"));
    let (a, b) = (train_losses(&single), train_losses(&group));
    assert_eq!(a.len(), 4);
    assert_eq!(b.len(), 4, "one line per step, from rank 0 alone");
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!(
            (la - lb).abs() < 1e-4 * la.abs().max(1.0),
            "step {sa}: {la} vs {lb}"
        );
    }
    let load = |run: &Path| {
        candle_core::safetensors::load(
            run.join("final/model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (wa, wb) = (load(&single), load(&group));
    assert_eq!(wa.len(), wb.len());
    for (name, t) in &wa {
        let d = common::max_abs_diff(t, &wb[name]);
        assert!(d < 1e-4, "{name}: the group's weights differ by {d}");
    }

    // The folder exists: rank 0 refuses, and the launcher stops the group with the error.
    let o = launch(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("--resume") && err.contains("failed"), "{err}");
    // Resumed by the group from rank 0's checkpoint.
    edit(&config, "steps: 4", "steps: 6");
    ok(&launch(&["--resume"]));
    let steps: Vec<u64> = train_losses(&group).iter().map(|s| s.0).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);

    // Only `run` and `cache-teacher` are launched.
    let o = distill(&["launch", "--nproc-per-node", "2", "--", "eval", c], &[]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("cache-teacher"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `batch_size: auto` on the CPU trains with the default and records it in the run's
/// `config.yaml`, which a resumed run keeps; `student.matmul_dtype: bf16` trains a student
/// whose exported weights are still f32.
#[test]
fn batch_size_auto_and_bf16_matmuls_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_run_setup(tmp.path(), 2, "");
    edit(&config, "batch_size: 2", "batch_size: auto");
    edit(
        &config,
        "student: {layers: 1,",
        "student: {layers: 1, matmul_dtype: bf16,",
    );
    let c = config.to_str().unwrap();
    let o = distill(&["run", c], &[]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("batch_size auto") && err.contains("BF16"),
        "{err}"
    );
    let run = tmp.path().join("runs/tiny");
    let resolved = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(resolved.contains("batch_size: 8"), "{resolved}");
    assert!(resolved.contains("matmul_dtype: bf16"), "{resolved}");
    assert_eq!(
        safetensors_dtypes(&run.join("final/model.safetensors")),
        vec!["F32".to_string()]
    );
    edit(&config, "steps: 2", "steps: 3");
    let o = distill(&["run", c, "--resume"], &[]);
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the batch the run started with"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let steps: Vec<u64> = train_losses(&run).iter().map(|s| s.0).collect();
    assert_eq!(steps, vec![1, 2, 3]);
}
