//! A conversation as training data: rendered through the tokenizer's chat template as
//! transformers renders it, tokenised as one text, and each token marked as a target when it
//! lies in an assistant turn (its end-of-turn marker included), so that the loss counts what
//! the assistant says and nothing of the prompt. An answer cut short at a token budget ends
//! before its end-of-turn marker: the student is not taught to stop where it was cut.

use distill_teacher::tokenizer::Message;
use distill_teacher::LoadedTokenizer;
use distill_train::data::{Rendered, Turn};

/// `turns` through `tok`'s chat template, with the assistant's tokens marked.
///
/// An assistant turn spans from the end of the conversation before it, rendered with the
/// generation prompt (where the model starts to answer), to the end of the conversation up to
/// it: so the template must render each conversation as a prefix of its continuations, as the
/// common templates do; one that does not is refused, naming the turn.
pub fn render_conversation(turns: &[Turn], tok: &LoadedTokenizer) -> Result<Rendered, String> {
    let messages = messages(turns);
    let cut: Vec<bool> = turns.iter().map(|t| t.cut).collect();
    let render = |m: &[Message], open: bool| tok.render_chat(m, open).map_err(|e| e.to_string());
    let full = render(&messages, false)?;
    let mut spans = vec![];
    for (i, (m, &cut)) in messages.iter().zip(&cut).enumerate() {
        if m.role != "assistant" {
            continue;
        }
        if i == 0 {
            return Err(
                "message 0 is the assistant's: a conversation begins with a system or user turn"
                    .into(),
            );
        }
        let before = render(&messages[..i], true)?;
        let through = render(&messages[..=i], false)?;
        if !through.starts_with(&before) || !full.starts_with(&through) {
            return Err(format!(
                "message {i}: the chat template does not render the conversation up to it as the start of the whole one, so its assistant tokens cannot be located"
            ));
        }
        let end = if cut {
            cut_end(&through, before.len(), &m.content)
                .ok_or_else(|| format!("message {i}: the chat template does not write the cut answer's text as it is, so where it ends cannot be located"))?
        } else {
            through.len()
        };
        spans.push(before.len()..end);
    }
    let (ids, offsets) = tok.encode_with_offsets(&full).map_err(|e| e.to_string())?;
    let targets = offsets
        .iter()
        .map(|&(start, _)| spans.iter().any(|s| s.contains(&start)))
        .collect();
    Ok(Rendered { ids, targets })
}

/// Where a cut answer's text ends in `rendered`, searching from `from` (the answer's start):
/// the template may trim it, so its trimmed text is looked for.
fn cut_end(rendered: &str, from: usize, content: &str) -> Option<usize> {
    let text = content.trim();
    rendered[from..].find(text).map(|at| from + at + text.len())
}

/// The prompt of a conversation: its turns before the last assistant turn (`None` when
/// nothing comes before it).
pub fn prompt_of(turns: &[Turn]) -> Option<Vec<Turn>> {
    let last = turns.iter().rposition(|t| t.role == "assistant")?;
    (last > 0).then(|| turns[..last].to_vec())
}

/// A prompt's turns as the model reads them (through the chat template, ready for the
/// answer), with its last user message as a reader of a samples table sees it.
pub fn eval_prompt(
    turns: &[Turn],
    tok: &LoadedTokenizer,
) -> Result<crate::eval::EvalPrompt, String> {
    let text = tok
        .render_chat(&messages(turns), true)
        .map_err(|e| e.to_string())?;
    let ids = tok.encode_continuation(&text).map_err(|e| e.to_string())?;
    let shown = turns
        .iter()
        .rev()
        .find(|t| t.role == "user")
        .map_or(String::new(), |t| t.content.clone());
    Ok(crate::eval::EvalPrompt { ids, shown })
}

/// A conversation's turns as the chat template reads them.
pub(crate) fn messages(turns: &[Turn]) -> Vec<Message> {
    turns
        .iter()
        .map(|t| Message {
            role: t.role.clone(),
            content: t.content.clone(),
        })
        .collect()
}
