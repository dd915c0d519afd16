//! Helpers of the A2A tests and the A2A bench: profile edits, request bodies, SSE payloads.

use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

/// Drops the top-level sections of a YAML profile whose line starts with one of `names`
/// (e.g. `"auth:"`) and appends `add` in their place.
pub fn replace_sections(path: &Path, names: &[&str], add: &str) -> Result<()> {
    let profile = std::fs::read_to_string(path)?;
    let mut out = String::new();
    let mut skip = false;
    for line in profile.lines() {
        if !line.is_empty() && !line.starts_with([' ', '\t', '#']) {
            skip = names.iter().any(|n| line.starts_with(n));
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    out.push_str(add);
    std::fs::write(path, out)?;
    Ok(())
}

/// A `SendMessageRequest` with one user text part.
pub fn send_body(message_id: &str, text: &str) -> Value {
    json!({"message": {"role": "ROLE_USER", "messageId": message_id, "parts": [{"text": text}]}})
}

/// The `data:` payloads of an SSE body, as JSON, in order; a payload that is not JSON is an
/// error.
pub fn sse_data(text: &str) -> Result<Vec<Value>> {
    text.split("\n\n")
        .filter_map(|ev| {
            let data: Vec<&str> = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            (!data.is_empty()).then(|| Ok(serde_json::from_str(&data.join("\n"))?))
        })
        .collect()
}
