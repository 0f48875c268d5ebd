//! Conversations for chat distillation: JSONL files of `{"messages": [{"role", "content"}, …]}`
//! (or `{"prompt", "completion"}` pairs, a user turn and the assistant's answer), one
//! conversation per line, each a [`Document`] whose turns the run renders through the chat
//! template.

use std::path::Path;

use serde::Deserialize;

use super::documents::{read, DataError, Document, Turn};

/// A line of a chat JSONL file.
#[derive(Deserialize)]
#[serde(untagged)]
enum ChatLine {
    Messages { messages: Vec<Turn> },
    Pair { prompt: String, completion: String },
}

/// Roles a conversation may hold.
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Reads the conversations of `path`, one per line (blank lines skipped), each checked: known
/// roles, no empty content, at least one assistant turn (what the loss is counted on).
pub fn read_conversations(path: &Path) -> Result<Vec<Document>, DataError> {
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
                Turn {
                    role: "user".into(),
                    content: prompt,
                },
                Turn {
                    role: "assistant".into(),
                    content: completion,
                },
            ],
            Err(e) => {
                return Err(bad(format!(
                    "expected {{\"messages\": [{{\"role\", \"content\"}}, …]}} or {{\"prompt\", \"completion\"}}: {e}"
                )))
            }
        };
        check_turns(&turns).map_err(bad)?;
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

/// Refuses a conversation the loss could not be counted on or a template should not see.
fn check_turns(turns: &[Turn]) -> Result<(), String> {
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
    if !turns.iter().any(|t| t.role == "assistant") {
        return Err("no assistant turn: nothing to train on".into());
    }
    Ok(())
}
