//! Chat templates, rendered as transformers renders them: the tokenizer's Jinja template
//! (`tokenizer_config.json`'s `chat_template`, or the GGUF's `tokenizer.chat_template`) with
//! `messages`, `add_generation_prompt`, `bos_token` and `eos_token`, transformers'
//! `raise_exception`, and Python's string methods (`.strip()`, `.startswith()`, …) that
//! templates call. A template that loops without end runs out of fuel instead of hanging.

use serde::{Deserialize, Serialize};

use super::LoadedTokenizer;
use crate::error::{Result, TeacherError};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Roles a conversation may hold.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Template instructions one rendering may run: a template that loops or renders without
/// bound stops there with an error.
const FUEL: u64 = 5_000_000;

fn chat_error(msg: String) -> TeacherError {
    TeacherError::Tokenizer {
        source_name: "chat template".into(),
        msg,
    }
}

/// Refuses messages a template should not see: an unknown role or empty content.
pub fn check_messages(messages: &[Message]) -> Result<()> {
    if messages.is_empty() {
        return Err(chat_error(
            "a conversation needs at least one message".into(),
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(chat_error(format!(
                "message {i}: unknown role `{}` (roles: {})",
                m.role,
                ROLES.join(", ")
            )));
        }
        if m.content.trim().is_empty() {
            return Err(chat_error(format!(
                "message {i} ({}): empty content",
                m.role
            )));
        }
    }
    Ok(())
}

impl LoadedTokenizer {
    /// `messages` rendered through the tokenizer's chat template, followed by the opening of
    /// the assistant's turn when `add_generation_prompt`.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        check_messages(messages)?;
        let template = self.chat_template.as_deref().ok_or_else(|| {
            chat_error(
                "this model has no chat template (tokenizer_config.json `chat_template` or GGUF `tokenizer.chat_template`); give one with --chat-template FILE, or prompt it with plain text".into(),
            )
        })?;
        render(
            template,
            messages,
            add_generation_prompt,
            &self.special_text(),
        )
    }

    /// BOS and EOS as text, for templates that write them.
    fn special_text(&self) -> (String, String) {
        let text = |id: Option<u32>| {
            id.and_then(|i| self.tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        (text(self.info.bos_token_id), text(self.info.eos_token_id))
    }
}

/// Renders `template` (Jinja) for `messages`.
pub fn render(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    (bos, eos): &(String, String),
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    let describe = |e: minijinja::Error| {
        let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
        let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
        chat_error(format!("{}{detail}{line}", e.kind()))
    };
    env.add_template("chat", template).map_err(describe)?;
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos,
        eos_token => eos,
    };
    env.get_template("chat")
        .and_then(|t| t.render(ctx))
        .map_err(describe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Vec<Message> {
        vec![Message {
            role: "user".into(),
            content: text.into(),
        }]
    }

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_a_chatml_template_with_its_default_system_prompt() {
        let specials = (String::new(), "<|im_end|>".to_string());
        let got = render(CHATML, &user("Hi"), true, &specials).unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let got = render(CHATML, &user("Hi"), false, &specials).unwrap();
        assert!(got.ends_with("Hi<|im_end|>\n"));
    }

    #[test]
    fn python_string_methods_and_raise_exception_work_as_in_transformers() {
        let specials = ("<bos>".to_string(), "<eos>".to_string());
        let t = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ m['content'] | trim }}|{{ m['content'].strip().upper() }}{% endfor %}";
        assert_eq!(
            render(t, &user(" hi "), false, &specials).unwrap(),
            "<bos>hi|HI"
        );
        let sys = vec![Message {
            role: "system".into(),
            content: "x".into(),
        }];
        let e = render(t, &sys, false, &specials).unwrap_err().to_string();
        assert!(e.contains("no system"), "{e}");
    }

    #[test]
    fn bad_templates_and_messages_are_named() {
        let specials = (String::new(), String::new());
        let e = render(
            "{% for m in messages %}{{ m.content }",
            &user("x"),
            false,
            &specials,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("chat template") && e.contains("line 1"), "{e}");
        // A template that would run 10¹² steps stops at its fuel.
        let endless = "{% for i in range(9999) %}{% for j in range(9999) %}{% for k in range(9999) %}x{% endfor %}{% endfor %}{% endfor %}";
        let e = render(endless, &user("x"), false, &specials)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fuel") || e.contains("out of"), "{e}");
        let e = check_messages(&[Message {
            role: "robot".into(),
            content: "x".into(),
        }])
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown role `robot`"), "{e}");
        let e = check_messages(&user("  ")).unwrap_err().to_string();
        assert!(e.contains("empty content"), "{e}");
    }
}
