//! Differences between two effective configurations, path by path.

use serde::Serialize;
use serde_json::Value;

use crate::model::{Reload, section_reload};

/// One difference. `from`/`to` are absent for added/removed paths.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub path: String,
    pub op: ChangeOp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    Added,
    Removed,
    Changed,
}

/// Compares two JSON documents; mappings are compared key by key, anything else as a whole
/// (a list that changed is one change). Sorted by path.
pub fn diff_json(a: &Value, b: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk("", a, b, &mut out);
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<Change>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = join(path, k);
                match (x.get(k), y.get(k)) {
                    (Some(l), Some(r)) => walk(&p, l, r, out),
                    (Some(l), None) => out.push(Change {
                        path: p,
                        op: ChangeOp::Removed,
                        from: Some(l.clone()),
                        to: None,
                    }),
                    (None, Some(r)) => out.push(Change {
                        path: p,
                        op: ChangeOp::Added,
                        from: None,
                        to: Some(r.clone()),
                    }),
                    (None, None) => {}
                }
            }
        }
        _ if a == b => {}
        _ => out.push(Change {
            path: path.to_string(),
            op: ChangeOp::Changed,
            from: Some(a.clone()),
            to: Some(b.clone()),
        }),
    }
}

/// The top-level sections that the changes touch, split into those that take effect at
/// once and those that need a restart (each sorted, without repeats).
pub fn split_sections(changes: &[Change]) -> (Vec<String>, Vec<String>) {
    let mut sections: Vec<String> = changes
        .iter()
        .map(|c| {
            c.path
                .split(['.', '['])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    sections.sort();
    sections.dedup();
    sections
        .into_iter()
        .partition(|s| section_reload(s) == Reload::Live)
}

/// Renders changes as lines for a terminal: `~ path: old -> new`, `+ path: new`, `- path: old`.
pub fn render(changes: &[Change]) -> String {
    let mut s = String::new();
    for c in changes {
        let v = |v: &Option<Value>| v.as_ref().map(Value::to_string).unwrap_or_default();
        match c.op {
            ChangeOp::Changed => {
                s.push_str(&format!("~ {}: {} -> {}\n", c.path, v(&c.from), v(&c.to)))
            }
            ChangeOp::Added => s.push_str(&format!("+ {}: {}\n", c.path, v(&c.to))),
            ChangeOp::Removed => s.push_str(&format!("- {}: {}\n", c.path, v(&c.from))),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diffs_by_path() {
        let a = json!({"a": {"b": 1, "c": [1]}, "d": true});
        let b = json!({"a": {"b": 2, "c": [1]}, "e": "x"});
        let d = diff_json(&a, &b);
        let paths: Vec<_> = d.iter().map(|c| (c.path.as_str(), c.op)).collect();
        assert_eq!(
            paths,
            vec![
                ("a.b", ChangeOp::Changed),
                ("d", ChangeOp::Removed),
                ("e", ChangeOp::Added)
            ]
        );
        assert_eq!(render(&d), "~ a.b: 1 -> 2\n- d: true\n+ e: \"x\"\n");
    }
}
