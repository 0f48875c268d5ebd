//! The offline teacher cache end to end on a tiny teacher: a run from a cache that keeps the
//! whole vocabulary exactly trains as the online run does; `cache-teacher` resumes after a
//! stop; a run refuses a cache that is not for it, naming what differs.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod group;

use std::path::Path;

use common::tiny::{
    tiny_llama, tiny_llama_config, write_tiny_documents, write_tiny_llama_folder, TINY_VOCAB,
};
use distill::teacher_cache::cache_teacher;
use distill::{parse_job, run, Event, Job, Observer, RunConfig, RunOptions, RunOutcome, StopFlag};

/// A run of `name` over the tiny teacher at `root`, with `extra` lines under `teacher:` and
/// `edit` applied to the text.
fn job(root: &Path, name: &str, teacher_extra: &str, edit: impl Fn(String) -> String) -> RunConfig {
    let text = format!(
        "teacher:
  source: {s}
{teacher_extra}
data:
  source: {{kind: folder, path: {d}, pattern: '*.txt'}}
  block_size: 32
  validation_fraction: 0.34
student: {{layers: 1, init: {{kind: from_teacher}}}}
distill: {{loss: forward_kl, alpha: 0.6, temperature: 2.0}}
train: {{steps: 3, batch_size: 2, lr: 0.003, eval_every: 3, eval_blocks: 4, seed: 1}}
output: {{dir: {r}, name: {name}}}
",
        s = root.join("teacher").display(),
        d = root.join("docs").display(),
        r = root.join("runs").display(),
    );
    match parse_job(&edit(text)).unwrap() {
        Job::CausalLm(c) => *c,
        Job::Classification(_) => unreachable!(),
    }
}

fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    write_tiny_llama_folder(&tmp.path().join("teacher"), &cfg, &tiny_llama(&cfg));
    write_tiny_documents(&tmp.path().join("docs"));
    tmp
}

fn losses(run_dir: &Path) -> Vec<(f64, f64, f64)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| {
            (
                v["loss"].as_f64().unwrap(),
                v["hard"].as_f64().unwrap(),
                v["soft"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The online and the cached run's three steps: total, hard and soft losses within 1e-4.
fn assert_same_losses(online: &Path, cached: &Path) {
    let (a, b) = (losses(online), losses(cached));
    assert_eq!(a.len(), 3);
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        for (u, v) in [(x.0, y.0), (x.1, y.1), (x.2, y.2)] {
            assert!(
                (u - v).abs() < 1e-4 * u.abs().max(1.0),
                "step {}: online {x:?}, cached {y:?}",
                step + 1
            );
        }
    }
}

fn lm(outcome: RunOutcome) -> distill::causal_lm::LmRun {
    match outcome {
        RunOutcome::CausalLm(lm) => lm,
        RunOutcome::Classification(_) => unreachable!(),
    }
}

#[test]
fn a_cache_of_the_whole_vocabulary_trains_as_the_online_run() {
    let tmp = setup();
    let cache = tmp.path().join("cache");
    let extra = format!(
        "  cache: {{dir: {}, top_k: {TINY_VOCAB}, tail_samples: 0, logprob_bits: 32}}",
        cache.display()
    );
    let offline = job(tmp.path(), "offline", &extra, |t| t);
    let made = cache_teacher(&offline, &RunOptions::default()).unwrap();
    assert!(!made.interrupted);
    assert!(made.manifest.as_ref().unwrap().complete);
    assert_eq!(made.manifest.as_ref().unwrap().layout.top_k, TINY_VOCAB);

    let online = lm(run(
        &Job::CausalLm(Box::new(job(tmp.path(), "online", "", |t| t))),
        &RunOptions::default(),
    )
    .unwrap());
    let cached = lm(run(&Job::CausalLm(Box::new(offline)), &RunOptions::default()).unwrap());
    assert_same_losses(&online.run_dir, &cached.run_dir);
    let (ra, rb) = (online.report.unwrap(), cached.report.unwrap());
    let (pa, pb) = (ra.student.val_ppl.unwrap(), rb.student.val_ppl.unwrap());
    assert!(
        (pa - pb).abs() < 1e-4 * pa,
        "student perplexity online {pa}, cached {pb}"
    );
    // The teacher's perplexity from the cached next-token log-probabilities.
    let (ta, tb) = (ra.teacher.val_ppl.unwrap(), rb.teacher.val_ppl.unwrap());
    assert!(
        (ta - tb).abs() < 1e-3 * ta,
        "teacher perplexity online {ta}, cached {tb}"
    );
}

/// Asks to stop at the first progress event: the shard being made is finished, no more.
struct StopSoon(StopFlag);

impl Observer for StopSoon {
    fn event(&self, e: &Event) {
        if matches!(e, Event::Progress { .. }) {
            self.0.request();
        }
    }
}

#[test]
fn cache_teacher_resumes_after_a_stop_and_runs_refuse_caches_not_made_for_them() {
    let tmp = setup();
    let cache = tmp.path().join("cache");
    let extra = format!("  cache: {{dir: {}, top_k: 5}}", cache.display());
    let cfg = job(tmp.path(), "offline", &extra, |t| t);
    let named = |name: &str| job(tmp.path(), name, &extra, |t| t);
    let run_err = |c: RunConfig| {
        run(&Job::CausalLm(Box::new(c)), &RunOptions::default())
            .expect_err("refused")
            .to_string()
    };
    let e = run_err(named("none"));
    assert!(
        e.contains("teacher.cache") && e.contains("not a teacher cache: no such directory"),
        "{e}"
    );

    let stop = StopFlag::new();
    let observer = StopSoon(stop.clone());
    let opts = RunOptions {
        observer: &observer,
        stop,
        ..RunOptions::default()
    };
    let first = cache_teacher(&cfg, &opts).unwrap();
    assert!(first.interrupted);
    assert_eq!(
        (
            first.shards_made,
            first.manifest.as_ref().unwrap().shard_count()
        ),
        (1, 2)
    );
    let e = run_err(named("incomplete"));
    assert!(e.contains("incomplete (1 of 2 shards)"), "{e}");
    let second = cache_teacher(&cfg, &RunOptions::default()).unwrap();
    assert!(!second.interrupted);
    assert_eq!(second.shards_made, 1, "the finished shard was kept");
    assert!(lm(run(
        &Job::CausalLm(Box::new(cfg.clone())),
        &RunOptions::default()
    )
    .unwrap())
    .report
    .is_some());

    // Another block size, more steps than were cached, another temperature, another loss,
    // another teacher.
    let e = run_err(job(tmp.path(), "b", &extra, |t| {
        t.replace("block_size: 32", "block_size: 16")
    }));
    assert!(e.contains("data.block_size 32, this run has 16"), "{e}");
    let e = run_err(job(tmp.path(), "s", &extra, |t| {
        t.replace("steps: 3,", "steps: 30,")
    }));
    assert!(e.contains("shorter than the data"), "{e}");
    let e = run_err(job(tmp.path(), "t", &extra, |t| {
        t.replace("temperature: 2.0", "temperature: 1.0")
    }));
    assert!(e.contains("distill.temperature 2, this run has 1"), "{e}");
    let e = run_err(job(tmp.path(), "l", &extra, |t| {
        t.replace("forward_kl", "reverse_kl")
    }));
    assert!(
        e.contains("distill.loss `reverse_kl` with teacher.cache"),
        "{e}"
    );
    let cfg2 = tiny_llama_config();
    let other = tiny_llama(&cfg2);
    write_tiny_llama_folder(&tmp.path().join("teacher"), &cfg2, &other);
    let e = run_err(named("other-teacher"));
    assert!(e.contains("the cache was made for teacher"), "{e}");
    // k larger than the vocabulary.
    let big = format!(
        "  cache: {{dir: {}, top_k: 999}}",
        tmp.path().join("c2").display()
    );
    let e = cache_teacher(&job(tmp.path(), "k", &big, |t| t), &RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("top_k: 999") && e.contains("vocabulary size (260)"),
        "{e}"
    );
}

/// Two ranks of a group (threads joined over TCP) share the shards of `cache-teacher`: the
/// cache they leave is the one a single process makes, byte for byte but the measured speed.
#[test]
fn a_group_of_two_ranks_makes_the_cache_one_process_makes() {
    let tmp = setup();
    let cache_at = |dir: &str| {
        job(
            tmp.path(),
            "offline",
            &format!(
                "  cache: {{dir: {}, top_k: 5}}",
                tmp.path().join(dir).display()
            ),
            |t| t,
        )
    };
    let single = cache_teacher(&cache_at("single"), &RunOptions::default()).unwrap();
    assert!(single.manifest.as_ref().unwrap().complete);
    let cfg = cache_at("group");
    let port = common::free_port();
    let outcomes: Vec<_> = group::in_group_of_two(port, |opts| cache_teacher(&cfg, opts).unwrap());
    assert_eq!((outcomes[0].rank, outcomes[1].rank), (0, 1));
    // One training and one validation shard: each rank made one.
    assert!(
        outcomes.iter().all(|o| o.shards_made == 1),
        "shards made: {:?}",
        outcomes.iter().map(|o| o.shards_made).collect::<Vec<_>>()
    );
    let group = outcomes[0].manifest.as_ref().unwrap();
    assert!(group.complete);
    assert_eq!(
        group.shard_count(),
        single.manifest.as_ref().unwrap().shard_count()
    );
    let mut a = single.manifest.as_ref().unwrap().clone();
    let mut b = group.clone();
    a.teacher_tokens_per_second = None;
    b.teacher_tokens_per_second = None;
    assert_eq!(a, b);
    for s in a.splits.iter().flat_map(|s| &s.shards) {
        assert_eq!(
            std::fs::read(tmp.path().join("single").join(&s.file)).unwrap(),
            std::fs::read(tmp.path().join("group").join(&s.file)).unwrap(),
            "{}",
            s.file
        );
    }
    // A run trains from the group's cache.
    let ran = lm(run(&Job::CausalLm(Box::new(cfg)), &RunOptions::default()).unwrap());
    assert!(ran.report.is_some());
}

/// Chat data from a cache of the whole vocabulary trains as online: the cache holds every
/// position of the conversations' blocks and the step selects the assistant's, as online.
#[test]
fn chat_data_trains_from_its_cache_as_online() {
    let tmp = setup();
    let template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
                    {% if add_generation_prompt %}<|assistant|>{% endif %}";
    std::fs::write(
        tmp.path().join("teacher/tokenizer_config.json"),
        serde_json::json!({ "chat_template": template }).to_string(),
    )
    .unwrap();
    let chat = tmp.path().join("chat.jsonl");
    let lines: Vec<String> = (0..9)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("whale {i}?")},
                {"role": "assistant", "content": format!("a sea beast, {} of them", i * 7)},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(&chat, lines.join("\n")).unwrap();
    let folder = format!(
        "source: {{kind: folder, path: {}, pattern: '*.txt'}}",
        tmp.path().join("docs").display()
    );
    let to_chat = |t: String| {
        t.replace(
            &folder,
            &format!("source: {{kind: chat, paths: [{}]}}", chat.display()),
        )
        .replace("block_size: 32", "block_size: 48")
    };
    let cache = tmp.path().join("cache");
    let extra = format!(
        "  cache: {{dir: {}, top_k: {TINY_VOCAB}, tail_samples: 0, logprob_bits: 32}}",
        cache.display()
    );
    let offline = job(tmp.path(), "offline", &extra, to_chat);
    assert!(offline.data.source.is_chat());
    cache_teacher(&offline, &RunOptions::default()).unwrap();
    let online = lm(run(
        &Job::CausalLm(Box::new(job(tmp.path(), "online", "", to_chat))),
        &RunOptions::default(),
    )
    .unwrap());
    let cached = lm(run(&Job::CausalLm(Box::new(offline)), &RunOptions::default()).unwrap());
    assert_same_losses(&online.run_dir, &cached.run_dir);
    let (pa, pb) = (
        online.report.unwrap().student.val_ppl.unwrap(),
        cached.report.unwrap().student.val_ppl.unwrap(),
    );
    assert!((pa - pb).abs() < 1e-4 * pa, "online {pa}, cached {pb}");
}
