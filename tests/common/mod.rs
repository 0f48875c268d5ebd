//! Helpers shared by the integration tests of several crates (included with `#[path]`).
#![allow(dead_code)]

pub mod hub_server;
pub mod tiny;

use std::path::PathBuf;

/// Largest absolute element-wise difference of two tensors of the same shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Root of the workspace.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Folder where `scripts/fetch-assets.sh` puts real models and data.
pub fn assets_dir() -> PathBuf {
    match std::env::var_os("DISTILL_ASSETS") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/distill/assets")
        }
    }
}

/// A fetched asset; a missing one fails the test with the command that fetches it.
pub fn asset(rel: &str) -> PathBuf {
    let p = assets_dir().join(rel);
    assert!(
        p.exists(),
        "missing asset {}: run scripts/fetch-assets.sh (real-asset tests never skip: a skipped claim is an unproven claim)",
        p.display()
    );
    p
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF.
pub fn smollm2_gguf() -> PathBuf {
    asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The Gemma 3 270M Q4_K_M GGUF.
pub fn gemma3_gguf() -> PathBuf {
    asset("gemma-3-270m/gemma-3-270m-q4_k_m.gguf")
}

/// The all-MiniLM-L6-v2 folder.
pub fn minilm_dir() -> PathBuf {
    asset("all-minilm-l6-v2")
}

/// A committed fixture.
pub fn fixture(rel: &str) -> PathBuf {
    let p = workspace().join("tests/fixtures").join(rel);
    assert!(p.exists(), "missing fixture {}", p.display());
    p
}

/// A TCP port on 127.0.0.1 that nothing listens on now (for a data-parallel group's rank 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `loss`, `hard` and `soft` of every training step a run logged in its `metrics.jsonl`.
pub fn loss_parts(run_dir: &std::path::Path) -> Vec<[f64; 3]> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| ["loss", "hard", "soft"].map(|k| v[k].as_f64().unwrap()))
        .collect()
}

/// The largest difference between two runs' [`loss_parts`], step by step (same step count).
pub fn max_loss_gap(a: &[[f64; 3]], b: &[[f64; 3]]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(u, v)| (u - v).abs()))
        .fold(0.0, f64::max)
}
