//! Federation configuration snapshots: which sections a federation may set, and how a
//! published snapshot is checked before it becomes an overlay.
//!
//! A federation admin publishes a snapshot for a **scope**: a YAML mapping that may only
//! hold the paths of that scope ([`SCOPES`]). A node that accepts it stores it as
//! `federation/config/<scope>.yaml` (written only by the node) and loads it as an overlay
//! **above the node's files** (profile, `klp/klp_settings.yaml`, `agents/<name>.yaml`) and
//! **below the environment** (`system.env`, `secrets.env`, process environment), for the
//! scope's paths only.
//!
//! - Sections outside every scope (where the node listens and stores data, identity, auth,
//!   TLS, secrets, `remote_roles`) are local: a snapshot can never set them.
//! - Inside a scope the federation's value is the one that runs, so a policy the admins
//!   publish is the same on every node; the node's own files are never rewritten, and an
//!   operator can still pin a value with `system.env` or the environment.
//! - A value the snapshot does not set keeps coming from the node's files.
//! - Every value keeps the file, line and column it came from, which the diff and sources
//!   APIs report as its origin.

use crate::diag::{Diagnostic, Diagnostics};
use crate::tree::{Node, Value, parse_yaml};

/// Directory (under the config directory) of the accepted federation snapshots.
pub const FEDERATION_CONFIG_DIR: &str = "federation/config";

/// A scope and the paths its snapshots may set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    pub name: &'static str,
    pub what: &'static str,
    /// Dotted paths the snapshot may hold (whole subtrees).
    pub paths: &'static [&'static str],
}

/// The scopes a federation may publish. Deliberately absent: anything about where the node
/// listens or stores data, its identity, auth, TLS, secrets and `remote_roles` (which
/// grants API roles): those stay local.
pub const SCOPES: &[Scope] = &[
    Scope {
        name: "agents",
        what: "agent settings (including the moderator's policy) and agent services",
        paths: &["agents", "services"],
    },
    Scope {
        name: "llms",
        what: "model backends",
        paths: &["llms", "media_generation"],
    },
    Scope {
        name: "monitoring",
        what: "monitoring settings",
        paths: &["monitoring"],
    },
    Scope {
        name: "klp",
        what: "safe KLP settings",
        paths: &[
            "federation.klp.handshake_timeout",
            "federation.klp.max_connections",
            "federation.klp.sync_interval",
        ],
    },
];

/// The scope named `name`.
pub fn scope(name: &str) -> Option<&'static Scope> {
    SCOPES.iter().find(|s| s.name == name)
}

/// The file (relative to the config directory) holding the accepted snapshot of `scope`.
pub fn scope_file(scope: &str) -> String {
    format!("{FEDERATION_CONFIG_DIR}/{scope}.yaml")
}

/// Parses a snapshot's `content` for `scope` (named `source` in errors) and checks that it
/// is a mapping holding only the scope's paths. Returns the tree to overlay. Whether the
/// resulting configuration is valid is checked by loading it ([`crate::ConfigDir::load_with_federation`]).
pub fn check_content(scope_name: &str, content: &str, source: &str) -> Result<Node, Diagnostics> {
    let Some(scope) = scope(scope_name) else {
        return Err(Diagnostics(vec![Diagnostic::error(
            crate::tree::Location::whole(source.to_string()),
            "",
            format!(
                "unknown federation scope `{scope_name}`; expected one of: {}",
                SCOPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            ),
        )]));
    };
    let tree = parse_yaml(content, source).map_err(Diagnostics)?;
    let mut diags = Vec::new();
    match &tree.value {
        Value::Map(_) => check_paths(&tree, "", scope, &mut diags),
        _ => diags.push(Diagnostic::error(
            tree.loc.clone(),
            "",
            format!("a `{}` snapshot must be a YAML mapping", scope.name),
        )),
    }
    if diags.is_empty() {
        Ok(tree)
    } else {
        Err(Diagnostics(diags))
    }
}

fn check_paths(node: &Node, prefix: &str, scope: &Scope, diags: &mut Vec<Diagnostic>) {
    let Value::Map(entries) = &node.value else {
        return;
    };
    for e in entries {
        let path = if prefix.is_empty() {
            e.key.clone()
        } else {
            format!("{prefix}.{}", e.key)
        };
        if scope.paths.contains(&path.as_str()) {
            continue;
        }
        let leads_somewhere = scope
            .paths
            .iter()
            .any(|p| p.starts_with(&format!("{path}.")));
        if leads_somewhere && matches!(e.value.value, Value::Map(_)) {
            check_paths(&e.value, &path, scope, diags);
        } else {
            crate::diag::push_capped(
                diags,
                Diagnostic::error(
                    e.key_loc.clone(),
                    path.clone(),
                    format!(
                        "`{path}` is outside the federation scope `{}` ({}), which may set only: {}",
                        scope.name,
                        scope.what,
                        scope.paths.join(", ")
                    ),
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_inside_the_scope_is_accepted() {
        let t = check_content(
            "agents",
            "agents:\n  translatorAgent:\n    enabled: false\n",
            "s",
        )
        .unwrap();
        assert!(t.at_path("agents.translatorAgent.enabled").is_some());
        check_content("klp", "federation:\n  klp:\n    max_connections: 10\n", "s").unwrap();
    }

    #[test]
    fn content_outside_the_scope_is_refused_with_its_line() {
        let e =
            check_content("agents", "agents: {}\ndatabase:\n  url: x\n", "pub.yaml").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("pub.yaml:2:1"), "{text}");
        assert!(
            text.contains("`database` is outside the federation scope `agents`"),
            "{text}"
        );
        let e = check_content("klp", "federation:\n  klp:\n    listen: []\n", "s").unwrap_err();
        assert!(e.to_string().contains("federation.klp.listen"), "{e}");
        let e = check_content("klp", "federation:\n  klp: 3\n", "s").unwrap_err();
        assert!(e.to_string().contains("federation.klp"), "{e}");
    }

    #[test]
    fn unknown_scope_and_non_mapping_are_refused() {
        assert!(
            check_content("secrets", "a: 1", "s")
                .unwrap_err()
                .to_string()
                .contains("unknown federation scope")
        );
        assert!(
            check_content("agents", "- 1", "s")
                .unwrap_err()
                .to_string()
                .contains("must be a YAML mapping")
        );
    }
}
