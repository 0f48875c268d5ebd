//! A conversation as training data: rendered through the tokenizer's chat template as
//! transformers renders it, tokenised as one text, and each token marked as a target when it
//! lies in an assistant turn (its end-of-turn marker included), so that the loss counts what
//! the assistant says and nothing of the prompt.

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
    let messages: Vec<Message> = turns
        .iter()
        .map(|t| Message {
            role: t.role.clone(),
            content: t.content.clone(),
        })
        .collect();
    let render = |m: &[Message], open: bool| tok.render_chat(m, open).map_err(|e| e.to_string());
    let full = render(&messages, false)?;
    let mut spans = vec![];
    for (i, m) in messages.iter().enumerate() {
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
        spans.push(before.len()..through.len());
    }
    let (ids, offsets) = tok.encode_with_offsets(&full).map_err(|e| e.to_string())?;
    let targets = offsets
        .iter()
        .map(|&(start, _)| spans.iter().any(|s| s.contains(&start)))
        .collect();
    Ok(Rendered { ids, targets })
}
