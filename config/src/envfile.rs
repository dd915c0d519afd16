//! `KEY=value` files (`system.env`, `secrets.env`).
//!
//! Syntax: one `KEY=value` per line, optional `export ` prefix, `#` comments and blank lines.
//! A value may be wrapped in single or double quotes (double quotes understand `\n`, `\"`,
//! `\\`). Keys are `[A-Za-z_][A-Za-z0-9_]*`. Every malformed line is reported.

use std::sync::Arc;

use crate::diag::Diagnostic;
use crate::tree::Location;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvEntry {
    pub key: String,
    pub value: String,
    pub loc: Location,
}

pub fn parse_env_file(text: &str, source: &str) -> (Vec<EnvEntry>, Vec<Diagnostic>) {
    let src: Arc<str> = Arc::from(source);
    let mut out: Vec<EnvEntry> = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i as u32 + 1;
        let trimmed = raw.trim_start();
        let indent = (raw.len() - trimmed.len()) as u32;
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (body, col) = match trimmed.strip_prefix("export ") {
            Some(rest) => (
                rest.trim_start(),
                indent + 1 + (trimmed.len() - rest.trim_start().len()) as u32,
            ),
            None => (trimmed, indent + 1),
        };
        let loc = Location::new(&src, line_no, col);
        let Some((key, value)) = body.split_once('=') else {
            errors.push(Diagnostic::error(
                loc,
                "",
                format!("expected KEY=value, found `{}`", body.trim_end()),
            ));
            continue;
        };
        let key = key.trim_end();
        if key.is_empty()
            || !key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            errors.push(Diagnostic::error(
                loc,
                "",
                format!("`{key}` is not a valid variable name (letters, digits, `_`)"),
            ));
            continue;
        }
        match unquote(value.trim()) {
            Ok(v) => {
                if let Some(prev) = out.iter().find(|e| e.key == key) {
                    errors.push(Diagnostic::error(
                        loc,
                        "",
                        format!("`{key}` is set twice (first at line {})", prev.loc.line),
                    ));
                    continue;
                }
                out.push(EnvEntry {
                    key: key.to_string(),
                    value: v,
                    loc,
                });
            }
            Err(msg) => errors.push(Diagnostic::error(loc, "", format!("{key}: {msg}"))),
        }
    }
    (out, errors)
}

fn unquote(v: &str) -> Result<String, String> {
    if let Some(rest) = v.strip_prefix('"') {
        let Some(inner) = rest.strip_suffix('"') else {
            return Err("unterminated double quote".into());
        };
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some(o) => return Err(format!("unknown escape `\\{o}`")),
                    None => return Err("dangling backslash".into()),
                }
            } else {
                out.push(c);
            }
        }
        Ok(out)
    } else if let Some(rest) = v.strip_prefix('\'') {
        rest.strip_suffix('\'')
            .map(str::to_string)
            .ok_or_else(|| "unterminated single quote".into())
    } else {
        // Unquoted: a trailing ` # comment` is not part of the value.
        let v = match v.find(" #") {
            Some(i) => v[..i].trim_end(),
            None => v,
        };
        Ok(v.to_string())
    }
}

/// Renders one `KEY=value` line, quoting when needed.
pub fn render_line(key: &str, value: &str) -> String {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:@,+=".contains(c))
    {
        format!("{key}={value}")
    } else {
        let escaped = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        format!("{key}=\"{escaped}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_reports_lines() {
        let (e, d) = parse_env_file(
            "# c\nA=1\nexport B = \"x y\"\n\nbad line\n1X=2\nC='q' \nD=v # note\nA=3\n",
            "s.env",
        );
        assert_eq!(e.len(), 4);
        assert_eq!(e[1].value, "x y");
        assert_eq!(e[2].value, "q");
        assert_eq!(e[3].value, "v");
        let msgs: Vec<_> = d.iter().map(ToString::to_string).collect();
        assert_eq!(msgs[0], "s.env:5:1: expected KEY=value, found `bad line`");
        assert!(msgs[1].starts_with("s.env:6:1: `1X` is not a valid variable name"));
        assert_eq!(msgs[2], "s.env:9:1: `A` is set twice (first at line 2)");
    }

    #[test]
    fn render_roundtrips() {
        for v in ["plain", "with space", "q\"uote\\", "multi\nline"] {
            let (e, d) = parse_env_file(&render_line("K", v), "x");
            assert!(d.is_empty());
            assert_eq!(e[0].value, v);
        }
    }
}
