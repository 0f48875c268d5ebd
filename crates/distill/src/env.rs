//! `${NAME}` and `${NAME:-default}` in run files, replaced from the environment.

use crate::error::{Error, Result};

/// Replaces `${NAME}` and `${NAME:-default}` (a default starting with `~/` is under `$HOME`);
/// an unset variable without a default is an error naming the line.
pub fn expand_env(text: &str) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                return Err(Error::Job(format!("line {}: unterminated `${{`", n + 1)));
            };
            let inner = &rest[start + 2..start + end];
            let (name, default) = match inner.split_once(":-") {
                Some((a, b)) => (a, Some(b)),
                None => (inner, None),
            };
            let value = match (std::env::var(name).ok().filter(|v| !v.is_empty()), default) {
                (Some(v), _) => v,
                (None, Some(d)) => match (d.strip_prefix("~/"), std::env::var("HOME")) {
                    (Some(rest), Ok(home)) => format!("{home}/{rest}"),
                    _ => d.to_string(),
                },
                (None, None) => {
                    return Err(Error::Job(format!(
                        "line {}: environment variable `{name}` is not set",
                        n + 1
                    )))
                }
            };
            out.push_str(&value);
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_expand() {
        std::env::set_var("DISTILL_TEST_ASSETS", "/assets");
        let t = expand_env("a: ${DISTILL_TEST_ASSETS}/x\nb: ${DISTILL_TEST_UNSET:-/d}/y").unwrap();
        assert_eq!(t, "a: /assets/x\nb: /d/y\n");
        let e = expand_env("ok: 1\nb: ${DISTILL_TEST_UNSET}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("DISTILL_TEST_UNSET"),
            "{e}"
        );
    }
}
