//! Chat data (`data.source.kind: chat`): conversations rendered through the real chat templates
//! of SmolLM2 (ChatML) and Gemma 3 with exactly the assistant's tokens marked, and a run that
//! distils the real SmolLM2 teacher on conversations, each in a block of its own, counting the
//! assistant's tokens only.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use distill::chat_data::render_conversation;
use distill::{parse_job, run, RunOptions, RunOutcome};
use distill_models::GgufFile;
use distill_teacher::tokenizer::tokenizer_from_gguf;
use distill_teacher::LoadedTokenizer;
use distill_train::data::Turn;

/// Gemma 3's chat template (its Hugging Face `tokenizer_config.json`, text contents only): the
/// 270M GGUF carries none.
const GEMMA_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set first_user_prefix = "" -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
{%- endif -%}
{%- if (message['role'] == 'assistant') -%}{%- set role = "model" -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
{{- message['content'] | trim -}}
{{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"#;

fn turn(role: &str, content: &str) -> Turn {
    Turn {
        role: role.into(),
        content: content.into(),
        cut: false,
    }
}

fn conversation() -> Vec<Turn> {
    vec![
        turn("user", "What is a whale?"),
        turn("assistant", "A large sea mammal."),
        turn("user", "Where does it live?"),
        turn(
            "assistant",
            "In every ocean, from the poles to the tropics.",
        ),
    ]
}

/// The marked tokens' texts, one string per run of consecutive marked tokens.
fn marked_runs(tok: &LoadedTokenizer, turns: &[Turn]) -> Vec<String> {
    let r = render_conversation(turns, tok).unwrap();
    assert_eq!(r.ids.len(), r.targets.len());
    let mut runs: Vec<Vec<u32>> = vec![];
    let mut open = false;
    for (&id, &t) in r.ids.iter().zip(&r.targets) {
        match (t, open) {
            (true, true) => runs.last_mut().unwrap().push(id),
            (true, false) => runs.push(vec![id]),
            _ => {}
        }
        open = t;
    }
    runs.iter()
        .map(|ids| tok.tokenizer.decode(ids, false).unwrap())
        .collect()
}

#[test]
fn the_assistant_tokens_are_marked_through_the_real_templates() {
    for (gguf, end) in [
        (common::smollm2_gguf(), "<|im_end|>"),
        (common::gemma3_gguf(), "<end_of_turn>"),
    ] {
        let mut tok = tokenizer_from_gguf(&GgufFile::open(&gguf).unwrap()).unwrap();
        tok.chat_template
            .get_or_insert_with(|| GEMMA_TEMPLATE.to_string());
        let runs = marked_runs(&tok, &conversation());
        let answers = [
            "A large sea mammal.",
            "In every ocean, from the poles to the tropics.",
        ];
        assert_eq!(runs.len(), 2, "{}: {runs:?}", gguf.display());
        for (run, answer) in runs.iter().zip(answers) {
            // The answer and the end of its turn, nothing of the prompt or the turn's opening.
            assert_eq!(
                run.trim_end(),
                format!("{answer}{end}"),
                "{}",
                gguf.display()
            );
        }
        // The ids are the template's text tokenised as one, as generation tokenises a prompt.
        let r = render_conversation(&conversation(), &tok).unwrap();
        let text = tok
            .render_chat(
                &conversation()
                    .iter()
                    .map(|t| distill_teacher::tokenizer::Message {
                        role: t.role.clone(),
                        content: t.content.clone(),
                    })
                    .collect::<Vec<_>>(),
                false,
            )
            .unwrap();
        assert_eq!(r.ids, tok.encode_continuation(&text).unwrap());
    }
}

#[test]
fn an_answer_cut_short_marks_no_end_of_turn() {
    let tok = tokenizer_from_gguf(&GgufFile::open(&common::smollm2_gguf()).unwrap()).unwrap();
    let mut turns = conversation();
    turns[3].cut = true;
    let runs = marked_runs(&tok, &turns);
    // The whole answer before it, with its end of turn; the cut one without.
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].trim_end(), "A large sea mammal.<|im_end|>");
    assert_eq!(runs[1], "In every ocean, from the poles to the tropics.");
}

#[test]
fn a_conversation_that_opens_with_the_assistant_is_refused() {
    let tok = tokenizer_from_gguf(&GgufFile::open(&common::smollm2_gguf()).unwrap()).unwrap();
    let e =
        render_conversation(&[turn("assistant", "Hi."), turn("user", "Hello")], &tok).unwrap_err();
    assert!(e.contains("message 0"), "{e}");
}

/// Conversations over Moby Dick paragraphs: the user gives a paragraph's first sentence, the
/// assistant continues it.
fn write_conversations(path: &Path, n: usize) {
    let text = std::fs::read_to_string(common::asset("moby-dick/chapter_1.txt")).unwrap();
    let paragraphs: Vec<String> = text
        .split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| p.len() > 200 && p.contains(". "))
        .take(n)
        .collect();
    assert_eq!(paragraphs.len(), n);
    let lines: Vec<String> = paragraphs
        .iter()
        .map(|p| {
            let (first, rest) = p.split_once(". ").unwrap();
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("Continue this passage: {first}.")},
                {"role": "assistant", "content": rest.chars().take(300).collect::<String>()},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

#[test]
fn a_chat_run_distils_on_the_assistant_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("chat.jsonl");
    write_conversations(&data, 12);
    let job = format!(
        "teacher: {{source: {t}, gguf_weights: dequantized}}
data:
  source: {{kind: chat, paths: [{d}]}}
  block_size: 96
  validation_fraction: 0.25
student: {{layers: 2, init: {{kind: from_teacher}}}}
distill: {{loss: forward_kl, alpha: 0.5, temperature: 2.0}}
train: {{steps: 2, batch_size: 2, lr: 0.0005, eval_every: 2, eval_blocks: 3, seed: 1}}
output: {{dir: {r}, name: chat}}
",
        t = common::smollm2_gguf().display(),
        d = data.display(),
        r = tmp.path().join("runs").display(),
    );
    let job = parse_job(&job).unwrap();
    let RunOutcome::CausalLm(lm) = run(&job, &RunOptions::default()).unwrap() else {
        unreachable!()
    };
    // The exported student chats as the teacher does: its tokenizer carries the template.
    let exported = lm.student.as_ref().unwrap().join("tokenizer_config.json");
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported).unwrap()).unwrap();
    assert!(tc["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    let report = lm.report.unwrap();
    let (t, s) = (
        report.teacher.val_ppl.unwrap(),
        report.student.val_ppl.unwrap(),
    );
    // The teacher answers its own kind of text far better than a 2-layer cut of it.
    assert!(
        t.is_finite() && s.is_finite() && t < s,
        "teacher {t}, student {s}"
    );
    let metrics = std::fs::read_to_string(lm.run_dir.join("metrics.jsonl")).unwrap();
    let eval: serde_json::Value = metrics
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("val_ppl").is_some())
        .unwrap();
    // 3 blocks of 96 positions: only the assistant's tokens are scored.
    let tokens = eval["tokens"].as_f64().unwrap();
    assert!(
        tokens > 30.0 && tokens < 3.0 * 95.0,
        "{tokens} tokens scored"
    );
}

#[test]
fn chat_data_refuses_what_it_does_not_train_with() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("chat.jsonl");
    write_conversations(&data, 4);
    let job = |extra: &str| {
        format!(
            "teacher: {{source: {t}}}
data: {{source: {{kind: chat, paths: [{d}]}}, block_size: 64}}
student: {{layers: 1{extra}}}
train: {{steps: 1}}
output: {{dir: {r}, name: refused}}
",
            t = common::smollm2_gguf().display(),
            d = data.display(),
            r = tmp.path().join("runs").display(),
        )
    };
    let e = parse_job(&job(", vocab: {trim: corpus}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("student.vocab"), "{e}");
    // A conversation without an assistant turn names its line.
    std::fs::write(
        &data,
        r#"{"messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .unwrap();
    let job = parse_job(&job("")).unwrap();
    let e = run(&job, &RunOptions::default()).err().unwrap().to_string();
    assert!(e.contains("chat.jsonl:1") && e.contains("assistant"), "{e}");
}
