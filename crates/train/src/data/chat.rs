//! Conversations for chat distillation: JSONL files of `{"messages": [{"role", "content"}, …]}`
//! (or `{"prompt", "completion"}` pairs, a user turn and the assistant's answer), one
//! conversation per line, each a [`Document`] whose turns the run renders through the chat
//! template; or prompts (`{"messages": [...]}` ending in a user turn, or `{"prompt": TEXT}`)
//! for the teacher to answer.

use std::path::Path;

use serde::Deserialize;

use super::documents::{read, DataError, Document, Turn};

/// A line of a chat JSONL file.
#[derive(Deserialize)]
#[serde(untagged)]
enum ChatLine {
    Messages { messages: Vec<Turn> },
    Pair { prompt: String, completion: String },
    Prompt { prompt: String },
}

/// What a chat file holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holds {
    /// Conversations with at least one assistant turn (what the loss counts).
    Conversations,
    /// Prompts ending in a user turn, for the teacher to answer.
    Prompts,
}

/// Roles a conversation may hold.
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Reads the conversations of `path`, one per line (blank lines skipped), each checked: known
/// roles, no empty content, at least one assistant turn (what the loss is counted on).
pub fn read_conversations(path: &Path) -> Result<Vec<Document>, DataError> {
    read_chat(path, Holds::Conversations)
}

/// Reads the prompts of `path`, one per line (blank lines skipped), each checked: known roles,
/// no empty content, a user turn last (what the teacher answers).
pub fn read_prompts(path: &Path) -> Result<Vec<Document>, DataError> {
    read_chat(path, Holds::Prompts)
}

fn read_chat(path: &Path, holds: Holds) -> Result<Vec<Document>, DataError> {
    let text = read(path)?;
    let mut docs = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| DataError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let turns = match serde_json::from_str::<ChatLine>(line) {
            Ok(ChatLine::Messages { messages }) => messages,
            Ok(ChatLine::Pair { prompt, completion }) => vec![
                turn("user", prompt),
                turn("assistant", completion),
            ],
            Ok(ChatLine::Prompt { prompt }) => vec![turn("user", prompt)],
            Err(e) => {
                return Err(bad(format!(
                    "expected {{\"messages\": [{{\"role\", \"content\"}}, …]}}, {{\"prompt\", \"completion\"}} or {{\"prompt\"}}: {e}"
                )))
            }
        };
        check_turns(&turns, holds).map_err(bad)?;
        docs.push(Document {
            id: format!("{}:{}", path.display(), i + 1),
            text: turns
                .iter()
                .map(|t| t.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            turns: Some(turns),
        });
    }
    if docs.is_empty() {
        return Err(DataError::File {
            path: path.to_path_buf(),
            msg: "no conversations".into(),
        });
    }
    Ok(docs)
}

fn turn(role: &str, content: String) -> Turn {
    Turn {
        role: role.into(),
        content,
        cut: false,
    }
}

/// Refuses a conversation the loss could not be counted on, a prompt the teacher could not
/// answer, or what a template should not see.
fn check_turns(turns: &[Turn], holds: Holds) -> Result<(), String> {
    for (i, t) in turns.iter().enumerate() {
        if !ROLES.contains(&t.role.as_str()) {
            return Err(format!(
                "message {i}: unknown role `{}` (roles: {})",
                t.role,
                ROLES.join(", ")
            ));
        }
        if t.content.trim().is_empty() {
            return Err(format!("message {i} ({}): empty content", t.role));
        }
    }
    match holds {
        Holds::Conversations if !turns.iter().any(|t| t.role == "assistant") => Err(
            "no assistant turn: nothing to train on (prompts for the teacher to answer are `kind: prompts`)"
                .into(),
        ),
        Holds::Prompts if turns.last().is_some_and(|t| t.role != "user") => Err(format!(
            "the last message is the {}'s: a prompt ends with the user's turn, which the teacher answers",
            turns.last().map_or("", |t| t.role.as_str())
        )),
        Holds::Prompts if turns.is_empty() => Err("no messages".into()),
        _ => Ok(()),
    }
}
