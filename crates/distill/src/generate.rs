//! `distill generate`: a model's answers to prompts — plain text, or conversations through its
//! chat template — from any source a run reads (a GGUF file, a Hugging Face folder, `hf://`,
//! a run folder's exported student), generated in one batch through the key/value cache and
//! streamed as they come.

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use distill_models::generate::{generate_timed, GenerateOptions};
pub use distill_models::generate::{Finish, Sampling, Timing};
use distill_teacher::tokenizer::Message;
use distill_teacher::{LoadOptions, LoadedTokenizer, Teacher, TeacherModel, TeacherSource};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One prompt: text as it is, or a conversation for the chat template.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Messages { messages: Vec<Message> },
    Text { prompt: String },
}

/// What to generate, and how.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompts: Vec<Prompt>,
    /// Render text prompts as one user turn through the chat template.
    pub chat: bool,
    /// A chat template to use instead of the model's (Jinja text).
    pub chat_template: Option<String>,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Text that ends an answer where it appears (not kept).
    pub stop: Vec<String>,
    pub load: LoadOptions,
}

/// One answer.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    /// The text the model was given (the rendered template, for a conversation).
    pub input: String,
    pub text: String,
    pub tokens: usize,
    /// The new tokens' ids (a stop token not included).
    pub ids: Vec<u32>,
    /// Why it ended: `eos`, `budget` (cut short at `max_new_tokens`) or `stopped` (a stop
    /// string).
    pub finish: Finish,
}

/// The answers and how fast they came.
#[derive(Clone, Debug, Serialize)]
pub struct Generated {
    pub source: String,
    pub answers: Vec<Answer>,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub seconds: f64,
    /// New tokens per second over the whole batch.
    pub tokens_per_second: f64,
    /// Prefill and decoding apart.
    pub timing: Timing,
    /// Prompt tokens per second of the prefill, and new tokens per second of the decoding
    /// steps.
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
}

impl Generated {
    /// The answers for people: each under its prompt, cut-short ones marked.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (i, a) in self.answers.iter().enumerate() {
            let mark = match a.finish {
                Finish::Budget => " [cut short at the token budget]",
                _ => "",
            };
            out += &format!(
                "--- answer {} ({} tokens){mark}\n{}\n",
                i + 1,
                a.tokens,
                a.text
            );
        }
        out += &format!(
            "{} new tokens in {:.2} s ({:.1} tokens/s)",
            self.new_tokens, self.seconds, self.tokens_per_second
        );
        out
    }
}

/// Where a source's model is: a run folder answers with its exported student (`final/`).
fn model_source(source: &str) -> String {
    let p = Path::new(source);
    let exported = p.join("final");
    if p.join("report.json").is_file() && exported.join("config.json").is_file() {
        return exported.to_string_lossy().into_owned();
    }
    source.to_string()
}

/// Generates `req`'s answers with the model at `source`; `on_text(prompt, piece)` receives
/// each answer's text as it grows.
pub fn generate_answers(
    source: &str,
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<Generated> {
    let (teacher, spec) = load_decoder(source, &req.load)?;
    let tok = &teacher.tokenizer;
    let (inputs, ids): (Vec<String>, Vec<Vec<u32>>) =
        prompt_inputs(&req.prompts, req.chat, req.chat_template.as_deref(), tok)?
            .into_iter()
            .unzip();
    let opts = GenerateOptions {
        max_new_tokens: req.max_new_tokens,
        sampling: req.sampling.clone(),
        stop_ids: stop_ids(tok),
    };
    let mut streams: Vec<TextStream> = (0..ids.len()).map(|_| TextStream::default()).collect();
    let started = Instant::now();
    let mut on_token = |p: usize, token: u32| {
        let s = &mut streams[p];
        let piece = s.push(token, tok);
        if !piece.is_empty() {
            on_text(p, &piece);
        }
        s.stopped_by(&req.stop)
    };
    let (generations, timing) = run_decoder(&teacher.model, &spec, &ids, &opts, &mut on_token)?;
    let seconds = started.elapsed().as_secs_f64();
    let answers: Vec<Answer> = generations
        .iter()
        .zip(inputs)
        .zip(&streams)
        .map(|((g, input), s)| Answer {
            input,
            text: s.final_text(&req.stop),
            tokens: g.tokens.len(),
            ids: g.tokens.clone(),
            finish: g.finish,
        })
        .collect();
    let new_tokens: usize = answers.iter().map(|a| a.tokens).sum();
    let prompt_tokens: usize = ids.iter().map(Vec::len).sum();
    Ok(Generated {
        source: spec,
        answers,
        prompt_tokens,
        new_tokens,
        seconds,
        tokens_per_second: new_tokens as f64 / seconds.max(1e-9),
        timing,
        prefill_tokens_per_second: prompt_tokens as f64 / timing.prefill_seconds.max(1e-9),
        decode_tokens_per_second: timing.decode_tokens as f64 / timing.decode_seconds.max(1e-9),
    })
}

/// The decoder at `source` (a run folder answers with its exported student) and the source it
/// was loaded from; an encoder is refused.
pub(crate) fn load_decoder(source: &str, load: &LoadOptions) -> Result<(Teacher, String)> {
    let spec = model_source(source);
    let teacher = Teacher::load(&TeacherSource::parse(&spec)?, load)?;
    if let TeacherModel::Bert(_) = &teacher.model {
        return Err(no_generation(&spec));
    }
    Ok((teacher, spec))
}

/// Generates with whichever decoder `model` is: candle's (dense or `QMatMul`), or the ggml
/// path (llama.cpp's arithmetic, each sequence alone as llama.cpp generates it).
pub(crate) fn run_decoder(
    model: &TeacherModel,
    spec: &str,
    ids: &[Vec<u32>],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(usize, u32) -> bool,
) -> Result<(Vec<distill_models::generate::Generation>, Timing)> {
    Ok(match model {
        TeacherModel::Llama(m) => generate_timed(m, ids, opts, on_token)?,
        TeacherModel::Ggml(m) => generate_timed(m, ids, opts, on_token)?,
        TeacherModel::Bert(_) => return Err(no_generation(spec)),
    })
}

/// Why an encoder source cannot answer.
fn no_generation(spec: &str) -> Error {
    Error::Invalid(format!("{spec}: an encoder does not generate text"))
}

/// The text each prompt gives the model (the rendered template, for a conversation or under
/// `chat`), and its token ids.
pub fn prompt_inputs(
    prompts: &[Prompt],
    chat: bool,
    chat_template: Option<&str>,
    tok: &LoadedTokenizer,
) -> Result<Vec<(String, Vec<u32>)>> {
    prompts
        .iter()
        .map(|p| {
            let text = render(p, chat, chat_template, tok)?;
            let ids = encode(&text, chat || matches!(p, Prompt::Messages { .. }), tok)?;
            Ok((text, ids))
        })
        .collect()
}

impl Prompt {
    /// What a reader sees of the prompt: its text, or a conversation's last user message.
    pub fn shown(&self) -> String {
        match self {
            Prompt::Text { prompt } => prompt.clone(),
            Prompt::Messages { messages } => messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map_or(String::new(), |m| m.content.clone()),
        }
    }
}

/// The text the model is given for `p`.
fn render(
    p: &Prompt,
    chat: bool,
    chat_template: Option<&str>,
    tok: &LoadedTokenizer,
) -> Result<String> {
    let messages = match p {
        Prompt::Messages { messages } => messages.clone(),
        Prompt::Text { prompt } if chat => vec![Message {
            role: "user".into(),
            content: prompt.clone(),
        }],
        Prompt::Text { prompt } => return Ok(prompt.clone()),
    };
    Ok(match chat_template {
        Some(t) => {
            distill_teacher::tokenizer::chat::check_messages(&messages)?;
            let text = |id: Option<u32>| {
                id.and_then(|i| tok.tokenizer.id_to_token(i))
                    .unwrap_or_default()
            };
            distill_teacher::tokenizer::chat::render(
                t,
                &messages,
                true,
                &(text(tok.info.bos_token_id), text(tok.info.eos_token_id)),
            )?
        }
        None => tok.render_chat(&messages, true)?,
    })
}

/// Token ids of `text`: a rendered conversation already holds its special tokens (as
/// transformers tokenises a template's output); plain text gets BOS as the model's tokenizer
/// adds it.
fn encode(text: &str, chat: bool, tok: &LoadedTokenizer) -> Result<Vec<u32>> {
    Ok(if chat {
        tok.encode_continuation(text)?
    } else {
        tok.encode(text)?
    })
}

/// The tokens that end an answer: EOS and the end-of-turn markers of the common templates.
pub(crate) fn stop_ids(tok: &LoadedTokenizer) -> Vec<u32> {
    const END_OF_TURN: [&str; 5] = [
        "<|im_end|>",
        "<|endoftext|>",
        "<end_of_turn>",
        "<|eot_id|>",
        "<|end|>",
    ];
    let mut ids: Vec<u32> = tok.info.eos_token_id.into_iter().collect();
    ids.extend(
        END_OF_TURN
            .iter()
            .filter_map(|t| tok.tokenizer.token_to_id(t))
            .filter(|id| tok.info.special_tokens.iter().any(|s| s.id == *id)),
    );
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// One answer's text as its tokens come: what is new each time, held back while the last
/// token ends inside a character.
#[derive(Default)]
pub(crate) struct TextStream {
    tokens: Vec<u32>,
    shown: usize,
    text: String,
}

impl TextStream {
    /// Takes the answer's next token; returns the text it completes (empty while a character
    /// is still open).
    pub(crate) fn push(&mut self, token: u32, tok: &LoadedTokenizer) -> String {
        self.tokens.push(token);
        self.advance(tok)
    }

    fn advance(&mut self, tok: &LoadedTokenizer) -> String {
        let text = tok.decode(&self.tokens).unwrap_or_default();
        if text.ends_with('\u{FFFD}') {
            return String::new();
        }
        self.text = text;
        let piece = self.text.get(self.shown..).unwrap_or_default().to_string();
        self.shown = self.text.len();
        piece
    }

    fn stopped_by(&self, stop: &[String]) -> bool {
        stop.iter()
            .any(|s| !s.is_empty() && self.text.contains(s.as_str()))
    }

    /// The answer, cut before the first stop string.
    pub(crate) fn final_text(&self, stop: &[String]) -> String {
        let cut = stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
            .unwrap_or(self.text.len());
        self.text[..cut].to_string()
    }
}

/// The prompts of a JSONL file: `{"prompt": TEXT}` or `{"messages": [{"role", "content"}]}` per
/// line, a bad line named by its number.
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>> {
    distill_files::input::regular_file(path)?;
    let file = std::fs::File::open(path).map_err(crate::error::io(path))?;
    let mut prompts = vec![];
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(crate::error::io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let p: Prompt = serde_json::from_str(&line).map_err(|e| {
            Error::Invalid(format!(
                "{} line {}: expected {{\"prompt\": TEXT}} or {{\"messages\": [{{\"role\", \"content\"}}]}} ({e})",
                path.display(),
                i + 1
            ))
        })?;
        prompts.push(p);
    }
    if prompts.is_empty() {
        return Err(Error::Invalid(format!("{}: no prompts", path.display())));
    }
    Ok(prompts)
}
