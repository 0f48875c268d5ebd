//! E-mail messages to model text: RFC 822 parsing, MIME parts and charsets by `mail-parser`;
//! here only the choice of what to keep (Subject, text parts, HTML parts as text) and the
//! accounting of what could not be decoded.

use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::{MessageParser, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

/// What of a message becomes model text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailOptions {
    /// Put `Subject: ...` first.
    #[serde(default = "yes")]
    pub subject: bool,
    /// Keep HTML parts (converted to text) when a message has no plain-text body.
    #[serde(default = "yes")]
    pub html: bool,
    /// Characters kept per message before tokenising (long bodies are cut at a word
    /// boundary; tokenising megabytes of HTML only to truncate it is wasted work).
    #[serde(default = "d_chars")]
    pub max_chars: usize,
}
fn yes() -> bool {
    true
}
fn d_chars() -> usize {
    16_384
}

impl Default for EmailOptions {
    fn default() -> Self {
        Self {
            subject: true,
            html: true,
            max_chars: d_chars(),
        }
    }
}

/// Text of one message, with what was odd about it.
#[derive(Clone, Debug, PartialEq)]
pub struct EmailText {
    pub text: String,
    /// Charsets named by the message that no decoder knows; those parts were decoded as
    /// UTF-8 with replacement characters.
    pub unknown_charsets: Vec<String>,
}

/// Why a message yields no text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Undecodable {
    #[error("binary data, not a message (NUL bytes)")]
    Binary,
    #[error("not an RFC 822 message (no header fields)")]
    NoHeaders,
    #[error("no subject and no text part")]
    NoText,
}

fn is_utf8_label(cs: &str) -> bool {
    matches!(
        cs.to_ascii_lowercase().as_str(),
        "utf-8" | "utf8" | "unicode-1-1-utf-8" | "x-unicode20utf8" | "unicode-2-0-utf-8"
    )
}

/// Extracts the model text of a raw message.
pub fn email_text(raw: &[u8], opts: &EmailOptions) -> Result<EmailText, Undecodable> {
    if raw.contains(&0) {
        return Err(Undecodable::Binary);
    }
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or(Undecodable::NoHeaders)?;
    if msg.parts.first().is_none_or(|p| p.headers.is_empty()) {
        return Err(Undecodable::NoHeaders);
    }
    let mut unknown_charsets = vec![];
    let mut text = String::new();
    if opts.subject {
        if let Some(s) = msg.subject() {
            text.push_str("Subject: ");
            text.push_str(s.trim());
            text.push_str("\n\n");
        }
    }
    let mut bodies = 0;
    let plain = msg.text_body_count();
    let use_html = opts.html && msg.html_body_count() > 0;
    let n = if plain > 0 || !use_html {
        plain
    } else {
        msg.html_body_count()
    };
    for i in 0..n {
        let part = if plain > 0 {
            msg.text_part(i as u32)
        } else {
            msg.html_part(i as u32)
        };
        let Some(part) = part else { continue };
        if let Some(cs) = part.content_type().and_then(|c| c.attribute("charset")) {
            if charset_decoder(cs.as_bytes()).is_none() && !is_utf8_label(cs) {
                unknown_charsets.push(cs.to_string());
            }
        }
        let body = match &part.body {
            // Much 2000s-era spam declares HTML as text/plain; read it as the HTML it is.
            PartType::Text(t) if opts.html && looks_like_html(t) => html_to_text(t),
            PartType::Text(t) => t.to_string(),
            PartType::Html(h) if opts.html => html_to_text(h),
            _ => continue,
        };
        if !body.trim().is_empty() {
            if bodies > 0 {
                text.push_str("\n\n");
            }
            text.push_str(body.trim());
            bodies += 1;
        }
        if text.len() > opts.max_chars {
            break;
        }
    }
    if text.trim().is_empty() {
        return Err(Undecodable::NoText);
    }
    Ok(EmailText {
        text: cut_at_word(text, opts.max_chars),
        unknown_charsets,
    })
}

/// HTML to text by `mail-parser`; when that yields nothing (it skips an unclosed `<head>` to
/// the end), the markup itself is kept rather than losing the message.
fn html_to_text(html: &str) -> String {
    let text = mail_parser::decoders::html::html_to_text(html);
    if text.trim().is_empty() {
        html.to_string()
    } else {
        text
    }
}

/// Whether a text part is an HTML document in disguise: it opens an `<html>`, `<body>` or
/// `<table>` element near its start.
fn looks_like_html(text: &str) -> bool {
    let mut end = text.len().min(2048);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = text[..end].to_ascii_lowercase();
    ["<html", "<body", "<table"]
        .iter()
        .any(|t| head.contains(t))
}

/// Cuts `text` to at most `max` bytes, at a whitespace boundary when there is one.
pub(crate) fn cut_at_word(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if let Some(ws) = text[..end].rfind(char::is_whitespace) {
        if ws > max / 2 {
            end = ws;
        }
    }
    text.truncate(end);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_and_plain_text_are_kept() {
        let raw = b"From: a@b.c\r\nSubject: Cheap =?utf-8?q?m=C3=A9ds?=\r\n\r\nBuy now.\r\n";
        let t = email_text(raw, &EmailOptions::default()).unwrap();
        assert_eq!(t.text, "Subject: Cheap m\u{e9}ds\n\nBuy now.");
        let no_subject = EmailOptions {
            subject: false,
            ..Default::default()
        };
        assert_eq!(email_text(raw, &no_subject).unwrap().text, "Buy now.");
    }

    #[test]
    fn html_only_messages_become_text_and_charsets_are_decoded() {
        let raw = "From: a@b.c\nSubject: x\nContent-Type: text/html; charset=iso-8859-1\n\n<html><body><p>Caf\u{e9} <b>open</b></p></body></html>\n";
        // The body is Latin-1 on the wire.
        let bytes: Vec<u8> = raw.chars().map(|c| c as u32 as u8).collect();
        let t = email_text(&bytes, &EmailOptions::default()).unwrap();
        assert!(
            t.text.contains("Caf\u{e9}") && t.text.contains("open"),
            "{}",
            t.text
        );
        assert!(!t.text.contains("<b>"), "{}", t.text);
        assert!(t.unknown_charsets.is_empty());
        let no_html = EmailOptions {
            html: false,
            subject: false,
            ..Default::default()
        };
        assert_eq!(email_text(&bytes, &no_html), Err(Undecodable::NoText));
    }

    #[test]
    fn multipart_alternative_prefers_the_plain_part() {
        let raw = b"From: a@b.c\nSubject: s\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"XX\"\n\n--XX\nContent-Type: text/plain\n\nplain words\n--XX\nContent-Type: text/html\n\n<p>html words</p>\n--XX--\n";
        let t = email_text(raw, &EmailOptions::default()).unwrap();
        assert!(
            t.text.contains("plain words") && !t.text.contains("html words"),
            "{}",
            t.text
        );
    }

    #[test]
    fn unknown_charset_and_broken_mime_are_reported_not_fatal() {
        let raw =
            b"From: a@b.c\nSubject: s\nContent-Type: text/plain; charset=x-klingon-42\n\nqapla\n";
        let t = email_text(raw, &EmailOptions::default()).unwrap();
        assert_eq!(t.unknown_charsets, vec!["x-klingon-42".to_string()]);
        assert!(t.text.contains("qapla"));
        // A multipart message whose boundary never appears still yields its subject.
        let broken = b"From: a@b.c\nSubject: broken\nContent-Type: multipart/mixed; boundary=\"nope\"\n\nno parts here\n";
        let t = email_text(broken, &EmailOptions::default()).unwrap();
        assert!(t.text.starts_with("Subject: broken"), "{}", t.text);
    }

    #[test]
    fn binary_and_headerless_input_is_undecodable() {
        assert_eq!(
            email_text(b"\x7fELF\x02\x01\x01\x00\x00", &EmailOptions::default()),
            Err(Undecodable::Binary)
        );
        assert!(email_text(b"", &EmailOptions::default()).is_err());
    }

    #[test]
    fn html_declared_as_plain_text_is_read_as_html() {
        let raw = b"From: a@b.c\nSubject: s\nContent-Type: text/plain\n\n<HTML><BODY><P>Win <B>big</B> now</P></BODY></HTML>\n";
        let t = email_text(raw, &EmailOptions::default()).unwrap();
        assert!(
            t.text.contains("Win") && t.text.contains("big") && !t.text.contains("<B>"),
            "{}",
            t.text
        );
        // A plain message that merely mentions a tag further down is left alone.
        let raw = b"From: a@b.c\nSubject: s\n\nUse a <b> tag for bold.\n";
        assert!(email_text(raw, &EmailOptions::default())
            .unwrap()
            .text
            .contains("<b> tag"));
    }

    #[test]
    fn long_text_is_cut_at_a_word() {
        let t = cut_at_word("aaa bbb ccc ddd".into(), 10);
        assert_eq!(t, "aaa bbb");
        let t = cut_at_word("\u{e9}\u{e9}\u{e9}".into(), 3);
        assert_eq!(t, "\u{e9}");
    }
}
