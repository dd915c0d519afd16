//! The module layers of `kos-node` (docs/ARCHITECTURE.md, "Invariants"): a module uses only
//! modules of a lower layer, so dependencies point one way and nothing imports the
//! composition root (`daemon`) but the command line. Checked on the sources, like the grep
//! the architecture document gives.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Layer of each top-level module of `node/src`. Foundations (0) may use each other; above
/// them a module uses only lower layers (and itself).
fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "auth" | "backoff" | "bus" | "cache" | "identity" | "metrics" | "node_client"
        | "runfile" | "store" | "telemetry" | "vector" => 0,
        "runtime" => 1,
        "a2a" | "fedsync" => 2,
        "api" | "federation" => 3,
        "daemon" => 4,
        "testnet" => 5,
        "cli" => 6,
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules a source text names as `crate::x` (comments removed; a group
/// `crate::{..}` may span lines, as rustfmt wraps it).
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    {
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // The first path segment of each top-level item of the group (nested groups
                // such as `api::{A, B}` count as one item).
                let (mut depth, mut item) = (0usize, String::new());
                let mut items = Vec::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                        _ => item.push(c),
                    }
                }
                items.push(item);
                for item in items {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn modules_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = top.trim_end_matches(".rs");
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(own) = layer(module) else {
            violations.push(format!(
                "{}: module `{module}` has no layer in node/tests/layers.rs",
                rel.display()
            ));
            continue;
        };
        checked += 1;
        for used in uses(&std::fs::read_to_string(f).unwrap()) {
            if used == module {
                continue;
            }
            match layer(&used) {
                Some(l) if l < own || (l == 0 && own == 0) => {}
                Some(l) => violations.push(format!(
                    "{}: `{module}` (layer {own}) uses `crate::{used}` (layer {l})",
                    rel.display()
                )),
                None => violations.push(format!(
                    "{}: uses `crate::{used}`, which has no layer",
                    rel.display()
                )),
            }
        }
    }
    assert!(checked > 20, "only {checked} files checked");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_plain_uses_but_not_comments() {
    let text = "use crate::{api::X, store};\nlet x = crate::daemon::f();\n// crate::cli\n\
                use crate::{\n    fedsync::{Y, Z},\n    runtime, // crate::testnet\n};\n";
    let got: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(got, ["api", "daemon", "fedsync", "runtime", "store"]);
}
