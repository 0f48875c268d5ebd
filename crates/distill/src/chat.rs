//! `distill chat`: a conversation with a model — each user turn added to the history, the
//! whole history rendered through the model's chat template, the answer generated (streamed
//! as it comes) and kept as the assistant's turn. An answer can be stopped midway; what it had
//! said stays in the history, marked as cut.

use distill_models::generate::{Finish, GenerateOptions, Sampling};
use distill_teacher::tokenizer::Message;
use distill_teacher::{LoadOptions, Teacher};

use crate::error::{Error, Result};
use crate::generate::{load_decoder, run_decoder, stop_ids, TextStream};

/// How a session answers.
#[derive(Clone, Debug)]
pub struct ChatOptions {
    /// A system turn at the start of every conversation.
    pub system: Option<String>,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
}

/// One answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub text: String,
    pub tokens: usize,
    /// `eos` (the model ended its turn), `budget` (cut at `max_new_tokens`) or `stopped`
    /// (interrupted).
    pub finish: Finish,
    /// Tokens of the rendered conversation the answer followed.
    pub context_tokens: usize,
}

/// A conversation with one model.
pub struct ChatSession {
    teacher: Teacher,
    source: String,
    opts: ChatOptions,
    history: Vec<Message>,
}

impl ChatSession {
    /// Loads the model at `source` (a GGUF file, a Hugging Face folder, `hf://`, a run folder's
    /// student); refuses an encoder and a model without a chat template.
    pub fn open(source: &str, load: &LoadOptions, opts: ChatOptions) -> Result<Self> {
        let (teacher, spec) = load_decoder(source, load)?;
        if teacher.tokenizer.chat_template.is_none() {
            return Err(Error::Invalid(format!(
                "{spec}: the model has no chat template (tokenizer_config.json `chat_template` or GGUF `tokenizer.chat_template`); talk to it with `distill generate --prompt` instead"
            )));
        }
        if opts.max_new_tokens == 0 {
            return Err(Error::Invalid("max_new_tokens: must be at least 1".into()));
        }
        let mut session = Self {
            teacher,
            source: spec,
            opts,
            history: vec![],
        };
        session.reset();
        Ok(session)
    }

    /// The conversation so far (the system turn first, when there is one).
    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// Starts the conversation again.
    pub fn reset(&mut self) {
        self.history = self
            .opts
            .system
            .iter()
            .map(|s| Message {
                role: "system".into(),
                content: s.clone(),
            })
            .collect();
    }

    /// Answers `user`: `on_text` receives the answer as it grows; `interrupted` is asked after
    /// every token and ends the answer when it says so. The turn and the answer join the
    /// history; a turn that cannot be answered (it renders longer than the context allows)
    /// leaves the history as it was.
    pub fn reply(
        &mut self,
        user: &str,
        on_text: &mut dyn FnMut(&str),
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Reply> {
        self.history.push(Message {
            role: "user".into(),
            content: user.to_string(),
        });
        let answer = self.answer(on_text, interrupted);
        match answer {
            Ok(reply) => {
                self.history.push(Message {
                    role: "assistant".into(),
                    content: reply.text.clone(),
                });
                Ok(reply)
            }
            Err(e) => {
                self.history.pop();
                Err(e)
            }
        }
    }

    fn answer(
        &self,
        on_text: &mut dyn FnMut(&str),
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Reply> {
        let tok = &self.teacher.tokenizer;
        let text = tok.render_chat(&self.history, true)?;
        let ids = tok.encode_continuation(&text)?;
        let opts = GenerateOptions {
            max_new_tokens: self.opts.max_new_tokens,
            sampling: self.opts.sampling.clone(),
            stop_ids: stop_ids(tok),
        };
        let mut stream = TextStream::default();
        let mut on_token = |_: usize, token: u32| {
            let piece = stream.push(token, tok);
            if !piece.is_empty() {
                on_text(&piece);
            }
            interrupted()
        };
        let context_tokens = ids.len();
        let (generations, _) = run_decoder(
            &self.teacher.model,
            &self.source,
            std::slice::from_ref(&ids),
            &opts,
            &mut on_token,
        )?;
        let g = &generations[0];
        Ok(Reply {
            text: stream.final_text(&[]),
            tokens: g.tokens.len(),
            finish: g.finish,
            context_tokens,
        })
    }
}
