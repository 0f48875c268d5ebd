//! Teacher-written answers (`data.source.kind: prompts` with `teacher.cache.generate`): the real
//! SmolLM2 teacher answers prompts into its cache folder, a second session makes nothing again,
//! other settings make them again, a stopped session keeps what it finished, and a run trains
//! on the conversations the answers complete and judges the student's answers to held-out
//! prompts. Judging a model against itself gives no divergence and identical answers.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod group;

use std::path::Path;

use distill::eval::{evaluate_prompt_file, AnswerEvalOptions, PromptFile};
use distill::teacher_cache::cache_teacher;
use distill::{parse_job, run, RunConfig, RunOptions, RunOutcome};
use distill_train::StopFlag;

/// Prompts over Moby Dick paragraphs, one per line.
fn write_prompts(path: &Path, n: usize) {
    let text = std::fs::read_to_string(common::asset("moby-dick/chapter_1.txt")).unwrap();
    let lines: Vec<String> = text
        .split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| p.len() > 120)
        .take(n)
        .enumerate()
        .map(|(i, p)| {
            let passage: String = p.chars().take(200).collect();
            if i % 2 == 0 {
                serde_json::json!({"prompt": format!("Explain this passage: {passage}")})
            } else {
                serde_json::json!({"messages": [{"role": "user", "content": format!("Continue this passage: {passage}")}]})
            }
            .to_string()
        })
        .collect();
    assert_eq!(lines.len(), n);
    std::fs::write(path, lines.join("\n")).unwrap();
}

fn job(dir: &Path, prompts: &Path, max_new_tokens: usize, steps: usize) -> RunConfig {
    let yaml = format!(
        "teacher:
  source: {t}
  gguf_weights: dequantized
  cache: {{dir: {c}, generate: {{max_new_tokens: {max_new_tokens}, batch_size: 2}}}}
data:
  source: {{kind: prompts, paths: [{p}]}}
  block_size: 128
  validation_fraction: 0.34
student: {{layers: 2, init: {{kind: from_teacher}}}}
distill: {{loss: forward_kl, alpha: 0.5}}
train: {{steps: {steps}, batch_size: 2, eval_every: {steps}, eval_blocks: 2}}
output: {{dir: {r}, name: answers}}
",
        t = common::smollm2_gguf().display(),
        c = dir.join("cache").display(),
        p = prompts.display(),
        r = dir.join("runs").display(),
    );
    match parse_job(&yaml).unwrap() {
        distill::Job::CausalLm(c) => *c,
        _ => unreachable!(),
    }
}

fn answer_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("cache/answers"))
        .unwrap()
        .count()
}

#[test]
fn the_teacher_answers_once_and_a_run_trains_on_its_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    write_prompts(&prompts, 6);
    let cfg = job(tmp.path(), &prompts, 12, 2);
    // Stopped before the first batch: nothing is made, and the cache says so.
    let stop = StopFlag::new();
    stop.request();
    let stopped = cache_teacher(
        &cfg,
        &RunOptions {
            stop,
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(stopped.interrupted && stopped.manifest.is_none());
    assert_eq!(stopped.answers.as_ref().unwrap().answered, 0);

    let first = cache_teacher(&cfg, &RunOptions::default()).unwrap();
    let made = first.answers.as_ref().unwrap();
    assert_eq!(made.answered, 6);
    assert!(made.new_tokens > 6 && made.new_tokens <= 6 * 12, "{made:?}");
    assert!(first.manifest.as_ref().unwrap().complete);
    // Four training prompts and two held out, answered two at a time: three files.
    assert_eq!(answer_files(tmp.path()), 3);

    // A second session finds every answer made.
    let again = cache_teacher(&cfg, &RunOptions::default()).unwrap();
    assert_eq!(again.answers.as_ref().unwrap().answered, 0);
    assert_eq!(again.shards_made, 0);

    let RunOutcome::CausalLm(lm) = run(
        &distill::Job::CausalLm(Box::new(cfg.clone())),
        &RunOptions::default(),
    )
    .unwrap() else {
        unreachable!()
    };
    let report = lm.report.unwrap();
    let answers = report
        .answers
        .expect("a chat run judges the student's answers");
    // The held-out prompts: the validation conversations before their answers.
    assert_eq!(answers.prompts, 2);
    assert_eq!(answers.samples.len(), 2);
    assert!(answers.samples.iter().all(|s| !s.teacher.is_empty()));
    assert!(answers.reverse_kl.is_finite() && answers.reverse_kl > 0.0);
    assert!(answers.teacher_nll > answers.teacher_nll_of_teacher);
    let md = std::fs::read_to_string(lm.run_dir.join("report.md")).unwrap();
    assert!(
        md.contains("Answers on held-out prompts") && md.contains("| prompt | teacher | student |")
    );

    // Other settings: the answers are made again.
    let longer = job(tmp.path(), &prompts, 14, 2);
    std::fs::remove_dir_all(tmp.path().join("runs")).unwrap();
    let e = run(
        &distill::Job::CausalLm(Box::new(longer.clone())),
        &RunOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("distill cache-teacher"), "{e}");
    std::fs::remove_dir_all(tmp.path().join("cache")).unwrap();
    let remade = cache_teacher(&longer, &RunOptions::default()).unwrap();
    assert_eq!(remade.answers.unwrap().answered, 6);
}

#[test]
fn prompts_and_the_teachers_answers_come_together() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    write_prompts(&prompts, 4);
    let t = common::smollm2_gguf();
    let yaml = |teacher_extra: &str, kind: &str| {
        format!(
            "teacher: {{source: {t}{teacher_extra}}}
data: {{source: {{kind: {kind}, paths: [{p}]}}, block_size: 64}}
student: {{layers: 1}}
train: {{steps: 1}}
output: {{dir: {r}, name: refused}}
",
            t = t.display(),
            p = prompts.display(),
            r = tmp.path().join("runs").display(),
        )
    };
    let e = parse_job(&yaml("", "prompts")).unwrap_err().to_string();
    assert!(e.contains("data.source") && e.contains("generate"), "{e}");
    let c = tmp.path().join("c");
    let e = parse_job(&yaml(
        &format!(", cache: {{dir: {}, generate: {{}}}}", c.display()),
        "chat",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("teacher.cache.generate"), "{e}");
    let e = parse_job(&yaml(
        &format!(
            ", cache: {{dir: {}, generate: {{max_new_tokens: 0}}}}",
            c.display()
        ),
        "prompts",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("teacher.cache.generate.max_new_tokens"), "{e}");
    // A prompt that ends with the assistant's turn names its line.
    std::fs::write(
        &prompts,
        "{\"prompt\": \"Hi\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n",
    )
    .unwrap();
    let cfg = yaml(
        &format!(
            ", gguf_weights: dequantized, cache: {{dir: {}, generate: {{max_new_tokens: 4}}}}",
            c.display()
        ),
        "prompts",
    );
    let distill::Job::CausalLm(cfg) = parse_job(&cfg).unwrap() else {
        unreachable!()
    };
    let e = cache_teacher(&cfg, &RunOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("prompts.jsonl:2") && e.contains("user"), "{e}");
    // The answers are never written among files the tool did not make.
    write_prompts(&prompts, 4);
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("notes.txt"), "mine").unwrap();
    let e = cache_teacher(&cfg, &RunOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("holds other files"), "{e}");
    assert_eq!(
        std::fs::read_to_string(c.join("notes.txt")).unwrap(),
        "mine"
    );
    assert!(!c.join("answers").exists());
}

#[test]
fn a_model_judged_against_itself_answers_as_it_does() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    write_prompts(&prompts, 3);
    let t = common::smollm2_gguf().display().to_string();
    let load = distill_teacher::LoadOptions {
        gguf_mode: distill_teacher::GgufCompute::Dequantized,
        ..distill_teacher::LoadOptions::default()
    };
    let o = AnswerEvalOptions {
        max_new_tokens: 12,
        match_tokens: 8,
        ..AnswerEvalOptions::default()
    };
    let file = PromptFile {
        path: prompts.clone(),
        chat: true,
    };
    let e = evaluate_prompt_file(&t, &t, &file, &load, &o).unwrap();
    assert_eq!(e.prompts, 3);
    assert_eq!(e.greedy_match, 1.0);
    assert!(e.reverse_kl.abs() < 1e-4, "{}", e.reverse_kl);
    assert_eq!(e.teacher_nll, e.teacher_nll_of_teacher);
    assert!(e.sampled_tokens >= 3 && e.greedy_tokens >= 3);
    assert!(e.samples.iter().all(|s| s.teacher == s.student));
    // Two tokenizers cannot be compared token by token.
    let g = common::gemma3_gguf().display().to_string();
    let err = evaluate_prompt_file(&g, &t, &file, &load, &o)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizers differ"), "{err}");
}

/// Two ranks of a group (threads joined over TCP) share the batches of prompts: each answers
/// its own, both then read every answer, and the cache they make is complete.
#[test]
fn a_group_of_two_ranks_shares_the_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    write_prompts(&prompts, 6);
    let cfg = job(tmp.path(), &prompts, 6, 2);
    let port = common::free_port();
    let outcomes: Vec<_> = group::in_group_of_two(port, |opts| cache_teacher(&cfg, opts).unwrap());
    // Three batches of two: rank 0 answers the first and the third, rank 1 the second.
    let answered: Vec<usize> = outcomes
        .iter()
        .map(|o| o.answers.as_ref().unwrap().answered)
        .collect();
    assert_eq!(answered, [4, 2]);
    assert_eq!(answer_files(tmp.path()), 3);
    assert!(outcomes[0].manifest.as_ref().unwrap().complete);
    // One process finds nothing left to answer.
    let after = cache_teacher(&cfg, &RunOptions::default()).unwrap();
    assert_eq!(after.answers.unwrap().answered, 0);
}
