//! The Hub path through the real `hf-hub` download code, against a local server that speaks
//! the Hub's routes: first run downloads, second run downloads nothing, pinned revisions are
//! honoured, offline use reads the cache, and failures are clear errors.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::hub_server::{Commit, HubServer, RepoSpec};
use common::tiny::{tiny_llama, tiny_llama_config, write_tiny_llama_folder};
use distill_teacher::hub::snapshot;
use distill_teacher::{HubOptions, LoadOptions, Teacher, TeacherSource};

const TOKEN: &str = "hf_test_0123456789abcdef";
const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn read_dir(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_str().unwrap().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Two commits of `org/tiny` with different weights: `main` → B (newest), `v1` → A.
fn repos(
    tmp: &Path,
) -> (
    BTreeMap<String, RepoSpec>,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let cfg = tiny_llama_config();
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    write_tiny_llama_folder(&a, &cfg, &tiny_llama(&cfg));
    write_tiny_llama_folder(&b, &cfg, &tiny_llama(&cfg));
    let commit = |sha: &str, refs: &[&str], dir: &Path, missing: Vec<String>| Commit {
        sha: sha.into(),
        refs: refs.iter().map(|r| r.to_string()).collect(),
        files: read_dir(dir),
        missing,
    };
    let mut broken = read_dir(&a);
    broken.remove("model.safetensors");
    let mut repos = BTreeMap::new();
    repos.insert(
        "org/tiny".to_string(),
        RepoSpec {
            commits: vec![
                commit(SHA_A, &["v1"], &a, vec![]),
                commit(SHA_B, &["main"], &b, vec![]),
            ],
            private_token: None,
        },
    );
    repos.insert(
        "org/private".to_string(),
        RepoSpec {
            commits: vec![commit(SHA_A, &["main"], &a, vec![])],
            private_token: Some(TOKEN.into()),
        },
    );
    repos.insert(
        "org/broken".to_string(),
        RepoSpec {
            commits: vec![Commit {
                sha: SHA_A.into(),
                refs: vec!["main".into()],
                files: broken,
                missing: vec!["model.safetensors".into()],
            }],
            private_token: None,
        },
    );
    (repos, a, b)
}

fn opts(server: &HubServer, cache: &Path, token: Option<&str>) -> HubOptions {
    HubOptions {
        endpoint: Some(server.url.clone()),
        cache_dir: Some(cache.to_path_buf()),
        token: token.map(str::to_string),
        offline: false,
        progress: false,
    }
}

fn logits_of(source: &str, hub: HubOptions) -> Vec<f32> {
    let t = Teacher::load(
        &TeacherSource::parse(source).unwrap(),
        &LoadOptions {
            hub,
            ..Default::default()
        },
    )
    .unwrap();
    let ids = t.tokenizer.encode("Call me Ishmael.").unwrap();
    t.logits(&[ids])
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn hub_download_cache_revision_offline_and_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let (repos, dir_a, dir_b) = repos(tmp.path());
    let server = HubServer::start(repos);
    let cache = tmp.path().join("hub-cache");

    // First run downloads every file; the token travels as a bearer header.
    let o = opts(&server, &cache, Some(TOKEN));
    let snap = snapshot("org/tiny", "main", &o).unwrap();
    assert!(
        snap.ends_with(format!("models--org--tiny/snapshots/{SHA_B}")),
        "{}",
        snap.display()
    );
    let downloaded: Vec<String> = server
        .downloads()
        .iter()
        .map(|r| r.url.rsplit('/').next().unwrap().to_string())
        .collect();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(
            downloaded.iter().any(|d| d == f),
            "{f} not downloaded: {downloaded:?}"
        );
    }
    for r in server.requests.lock().unwrap().iter() {
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{}",
            r.url
        );
    }
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap(),
        std::fs::read(dir_b.join("model.safetensors")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(cache.join("models--org--tiny/refs/main")).unwrap(),
        SHA_B
    );

    // Second run: nothing is downloaded again.
    server.clear();
    let again = snapshot("org/tiny", "main", &o).unwrap();
    assert_eq!(again, snap);
    assert!(
        server.downloads().is_empty(),
        "second run downloaded {:?}",
        server.downloads()
    );

    // A pinned revision (tag or commit) is honoured.
    let v1 = snapshot("org/tiny", "v1", &o).unwrap();
    assert!(v1.ends_with(SHA_A));
    assert_eq!(
        std::fs::read(v1.join("model.safetensors")).unwrap(),
        std::fs::read(dir_a.join("model.safetensors")).unwrap()
    );
    let pinned = snapshot("org/tiny", SHA_A, &o).unwrap();
    assert_eq!(pinned, v1);

    // The teacher loaded through the Hub is the same model as the folder it came from.
    assert_eq!(
        logits_of("hf://org/tiny@v1", o.clone()),
        logits_of(dir_a.to_str().unwrap(), o.clone())
    );

    // Offline: served from the cache with no request at all.
    server.clear();
    let off = HubOptions {
        offline: true,
        ..o.clone()
    };
    assert_eq!(snapshot("org/tiny", "main", &off).unwrap(), snap);
    assert_eq!(snapshot("org/tiny", "v1", &off).unwrap(), v1);
    assert!(server.requests.lock().unwrap().is_empty());
    let e = snapshot("org/never-fetched", "main", &off)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("org/never-fetched") && e.contains("offline"),
        "{e}"
    );

    // Unknown repo, unknown revision, missing file, 401.
    let e = snapshot("org/nope", "main", &o).unwrap_err().to_string();
    assert!(
        e.contains("org/nope") && e.contains("repository not found") && e.contains("404"),
        "{e}"
    );
    let e = snapshot("org/tiny", "v9", &o).unwrap_err().to_string();
    assert!(e.contains("v9") && e.contains("revision not found"), "{e}");
    let e = snapshot("org/broken", "main", &o).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("file not found"),
        "{e}"
    );
    let e = snapshot("org/private", "main", &opts(&server, &cache, None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("org/private") && e.contains("unauthorized") && e.contains("401"),
        "{e}"
    );
    let e = snapshot(
        "org/private",
        "main",
        &opts(&server, &cache, Some("hf_wrong")),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("401") && !e.contains("hf_wrong"), "{e}");
    assert!(snapshot("org/private", "main", &o).is_ok());
}

#[test]
fn unreachable_hub_falls_back_to_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (repos, _, _) = repos(tmp.path());
    let cache = tmp.path().join("hub-cache");
    let snap = {
        let server = HubServer::start(repos);
        snapshot("org/tiny", "main", &opts(&server, &cache, None)).unwrap()
    };
    // The server is gone: its port refuses connections.
    let dead = HubOptions {
        endpoint: Some("http://127.0.0.1:9".into()),
        cache_dir: Some(cache.clone()),
        ..Default::default()
    };
    assert_eq!(snapshot("org/tiny", "main", &dead).unwrap(), snap);
    let e = snapshot("org/other", "main", &dead)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot be reached") && e.contains("nothing is cached"),
        "{e}"
    );
}
