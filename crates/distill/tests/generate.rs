//! The generation engine against llama.cpp on the real SmolLM2-135M-Instruct: greedy decoding
//! through the key/value cache, all 20 prompts of `tests/fixtures/smollm2-generate.json` in one
//! batch, against llama.cpp's greedy tokens (`scripts/ref-llamacpp-generate.py`) — the dense path
//! against llama.cpp's run of the file dequantised to F32, the quantised and ggml paths against
//! its Q4_1 run — and the chat template and tokenizer against the ids llama.cpp was given.

#[path = "../../../tests/common/mod.rs"]
mod common;

use distill::generate::{generate_answers, GenerateRequest, Prompt, Sampling};
use distill_models::generate::{generate, GenerateOptions};
use distill_teacher::tokenizer::Message;
use distill_teacher::{GgufCompute, LoadOptions, Teacher, TeacherModel, TeacherSource};

fn fixture() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/smollm2-generate.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn gguf() -> String {
    common::assets_dir()
        .join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
        .display()
        .to_string()
}

fn load(mode: GgufCompute) -> Teacher {
    let opts = LoadOptions {
        gguf_mode: mode,
        ..LoadOptions::default()
    };
    Teacher::load(&TeacherSource::parse(&gguf()).unwrap(), &opts).unwrap()
}

/// The engine's greedy tokens for every fixture prompt, in one batch.
fn greedy(teacher: &Teacher, f: &serde_json::Value) -> Vec<Vec<u32>> {
    let prompts: Vec<Vec<u32>> = f["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| ids(&p["ids"]))
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: f["new_tokens"].as_u64().unwrap() as usize,
        sampling: Sampling::default(),
        stop_ids: ids(&f["stop_ids"]),
    };
    let generations = match &teacher.model {
        TeacherModel::Llama(m) => generate(m, &prompts, &opts, &mut |_, _| false),
        TeacherModel::Ggml(m) => generate(m, &prompts, &opts, &mut |_, _| false),
        TeacherModel::Bert(_) => panic!("SmolLM2 is a decoder"),
    };
    generations.unwrap().into_iter().map(|g| g.tokens).collect()
}

/// Prompts whose tokens equal the reference's, and tokens that agree before the first
/// difference, over all prompts.
fn agreement(ours: &[Vec<u32>], f: &serde_json::Value, key: &str) -> (usize, usize, usize) {
    let (mut same, mut agree, mut total) = (0, 0, 0);
    for (o, p) in ours.iter().zip(f["prompts"].as_array().unwrap()) {
        let want = ids(&p[key]);
        same += usize::from(*o == want);
        agree += o.iter().zip(&want).take_while(|(a, b)| a == b).count();
        total += want.len();
    }
    (same, agree, total)
}

#[test]
fn greedy_decoding_follows_llama_cpp() {
    let f = fixture();
    let n = f["prompts"].as_array().unwrap().len();
    assert!(n >= 20);
    let dense = greedy(&load(GgufCompute::Dequantized), &f);
    let (same, agree, total) = agreement(&dense, &f, "f32");
    eprintln!("dense path vs llama.cpp F32: {same}/{n} prompts identical, {agree}/{total} tokens before the first difference");
    assert_eq!(
        same, n,
        "the dense path follows llama.cpp's F32 run token for token"
    );
    let quantized = greedy(&load(GgufCompute::Quantized), &f);
    let (same, agree, total) = agreement(&quantized, &f, "q4_1");
    eprintln!("quantised (QMatMul) path vs llama.cpp Q4_1: {same}/{n} prompts identical, {agree}/{total} tokens before the first difference");
    assert!(same * 2 >= n, "{same}/{n}");
    let ggml = greedy(&load(GgufCompute::Ggml), &f);
    let (same, agree, total) = agreement(&ggml, &f, "q4_1");
    eprintln!("ggml path vs llama.cpp Q4_1: {same}/{n} prompts identical, {agree}/{total} tokens before the first difference");
    assert_eq!(
        same, n,
        "the ggml path follows llama.cpp's Q4_1 run token for token"
    );
}

#[test]
fn prompts_are_rendered_and_tokenised_as_llama_cpp_was_given_them() {
    let f = fixture();
    let teacher = load(GgufCompute::Dequantized);
    let tok = &teacher.tokenizer;
    for p in f["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let want = ids(&p["ids"]);
        if p["kind"] == "chat" {
            let rendered = tok
                .render_chat(
                    &[Message {
                        role: "user".into(),
                        content: p["user"].as_str().unwrap().into(),
                    }],
                    true,
                )
                .unwrap();
            assert_eq!(rendered, text, "the template renders as transformers does");
            assert_eq!(tok.encode_continuation(text).unwrap(), want, "{text:?}");
        } else {
            assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
        }
    }
}

/// `distill generate`'s library call: the chat prompts as user turns, answered in one batch,
/// give the engine's greedy tokens as text; a budget-cut answer is marked.
#[test]
fn chat_prompts_answer_as_the_engine_decodes() {
    let f = fixture();
    let chats: Vec<&serde_json::Value> = f["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "chat")
        .collect();
    let req = GenerateRequest {
        prompts: chats
            .iter()
            .map(|p| Prompt::Text {
                prompt: p["user"].as_str().unwrap().into(),
            })
            .collect(),
        chat: true,
        chat_template: None,
        max_new_tokens: 24,
        sampling: Sampling::default(),
        stop: vec![],
        load: LoadOptions {
            gguf_mode: GgufCompute::Dequantized,
            ..LoadOptions::default()
        },
    };
    let mut streamed = vec![String::new(); chats.len()];
    let g = generate_answers(&gguf(), &req, &mut |p, piece| streamed[p] += piece).unwrap();
    let teacher = load(GgufCompute::Dequantized);
    for ((a, p), s) in g.answers.iter().zip(&chats).zip(&streamed) {
        let want = ids(&p["f32"]);
        assert_eq!(a.text, teacher.tokenizer.decode(&want).unwrap());
        assert_eq!(&a.text, s, "the streamed pieces make the answer");
        assert_eq!(a.tokens, want.len());
        assert_eq!(a.ids, want, "the answer's ids are the engine's tokens");
        let cut = want.len() == 24;
        assert_eq!(a.finish == distill::generate::Finish::Budget, cut);
    }
    assert!(g.tokens_per_second > 0.0);
    // A stop string ends an answer and is not kept.
    let stop = GenerateRequest {
        stop: vec![" ".into()],
        prompts: req.prompts[..1].to_vec(),
        ..req.clone()
    };
    let g = generate_answers(&gguf(), &stop, &mut |_, _| ()).unwrap();
    assert!(!g.answers[0].text.contains(' '), "{:?}", g.answers[0].text);
    assert_eq!(g.answers[0].finish, distill::generate::Finish::Stopped);
}

/// `distill chat`'s session: a turn answers as `distill generate --chat` answers the same
/// conversation, the history grows turn by turn (the second answer follows the first), an
/// interrupted answer stops where it was and stays in the history, `reset` starts again, and a
/// model without a chat template is refused.
#[test]
fn a_chat_session_keeps_the_conversation() {
    use distill::chat::{ChatOptions, ChatSession};
    let load = LoadOptions {
        gguf_mode: GgufCompute::Dequantized,
        ..LoadOptions::default()
    };
    let opts = ChatOptions {
        system: None,
        max_new_tokens: 12,
        sampling: Sampling::default(),
    };
    let mut session = ChatSession::open(&gguf(), &load, opts.clone()).unwrap();
    let mut streamed = String::new();
    let first = session
        .reply("What is a whale?", &mut |p| streamed += p, &|| false)
        .unwrap();
    assert_eq!(first.text, streamed);
    let req = GenerateRequest {
        prompts: vec![Prompt::Text {
            prompt: "What is a whale?".into(),
        }],
        chat: true,
        chat_template: None,
        max_new_tokens: 12,
        sampling: Sampling::default(),
        stop: vec![],
        load: load.clone(),
    };
    let g = generate_answers(&gguf(), &req, &mut |_, _| ()).unwrap();
    assert_eq!(first.text, g.answers[0].text);
    // The second turn is answered after the first exchange.
    let second = session
        .reply("And where does it live?", &mut |_| (), &|| false)
        .unwrap();
    assert!(second.context_tokens > first.context_tokens + first.tokens);
    assert_eq!(session.history().len(), 4);
    assert_eq!(session.history()[1].content, first.text);
    // Interrupted after three tokens: stopped there, and kept.
    let seen = std::cell::Cell::new(0);
    let cut = session
        .reply("Tell me more.", &mut |_| (), &|| {
            seen.set(seen.get() + 1);
            seen.get() >= 3
        })
        .unwrap();
    assert_eq!(
        (cut.finish, cut.tokens),
        (distill::generate::Finish::Stopped, 3)
    );
    assert_eq!(session.history().len(), 6);
    session.reset();
    assert!(session.history().is_empty());
    let e = ChatSession::open(&common::gemma3_gguf().display().to_string(), &load, opts)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no chat template"), "{e}");
}
