//! End-to-end tests of the `distill` binary.

mod common;

use std::collections::BTreeMap;
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
