//! Assembling the effective configuration from a config directory.
//!
//! Precedence, lowest first: built-in preset of the profile kind < `profiles/<id>.yaml` <
//! `klp/klp_settings.yaml` (as `federation.klp`) < `agents/<name>.yaml` (as `agents.<name>`)
//! < federation snapshots (`federation/config/<scope>.yaml`, only their scopes' paths, see
//! [`crate::federation`]) < `system.env` < `secrets.env` (secret fields only) < process environment (`KOS_...`).
//! Environment keys map to paths by lower-casing and splitting on `__`:
//! `KOS_FEDERATION__KLP__ENABLED=true` sets `federation.klp.enabled`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::de::{from_node, struct_fields};
use crate::diag::{Diagnostic, Diagnostics, did_you_mean};
use crate::envfile::{EnvEntry, parse_env_file};
use crate::model::{Config, ProfileKind, SECRET_PATHS, Secret};
use crate::snapshot::{SnapshotId, canonical_json};
use crate::tree::{Location, Node, Value, parse_yaml};
use crate::validate::{Capabilities, validate};

/// Environment variables that steer the node rather than set a config path.
pub const RESERVED_ENV: &[&str] = &["KOS_HOME", "KOS_PROFILE", "KOS_LOG", "KOS_LOG_FORMAT"];

pub const SYSTEM_ENV: &str = "system.env";
pub const SECRETS_ENV: &str = "secrets.env";
pub const KLP_SETTINGS: &str = "klp/klp_settings.yaml";
pub const PEERS_LIST: &str = "klp/peers.list";
pub const PROFILES_DIR: &str = "profiles";
pub const AGENTS_DIR: &str = "agents";
pub const PLUGINS_DIR: &str = "plugins";

/// The built-in preset (and `kos init` template) of a profile kind.
pub fn preset(kind: ProfileKind) -> &'static str {
    match kind {
        ProfileKind::Standalone => include_str!("../presets/standalone.yaml"),
        ProfileKind::DeveloperNode => include_str!("../presets/developer_node.yaml"),
        ProfileKind::FederationNode => include_str!("../presets/federation_node.yaml"),
        ProfileKind::Enterprise => include_str!("../presets/enterprise.yaml"),
        ProfileKind::Edge => include_str!("../presets/edge.yaml"),
    }
}

/// What a load needs besides the files: the process environment and what this build supports.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Process environment; only `KOS_...` variables are read.
    pub env: BTreeMap<String, String>,
    pub capabilities: Capabilities,
    /// Overrides the active profile id (otherwise `KOS_PROFILE` from the environment, then
    /// from `system.env`, then the only profile in `profiles/`).
    pub profile: Option<String>,
}

impl LoadOptions {
    /// Options reading the real process environment.
    pub fn from_process(capabilities: Capabilities) -> Self {
        let env = std::env::vars()
            .filter(|(k, _)| k.starts_with("KOS_"))
            .collect();
        Self {
            env,
            capabilities,
            profile: None,
        }
    }
}

/// A loaded, valid configuration.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// Profile id (`profiles/<id>.yaml`).
    pub profile_id: String,
    /// The profile document as written.
    pub document: String,
    /// Canonical JSON of the effective configuration (secrets redacted).
    pub canonical: String,
    pub snapshot_id: SnapshotId,
    pub warnings: Vec<Diagnostic>,
    /// Secrets from `secrets.env` that are not config fields (e.g. `OPENAI_API_KEY`), by name.
    pub extra_secrets: BTreeMap<String, Secret>,
    /// The merged tree, for locating values.
    pub tree: Node,
}

/// Every source other than the profile document.
#[derive(Clone, Debug, Default)]
pub struct Overlays {
    /// Accepted federation snapshots, by scope (sorted).
    pub federation: Vec<(String, Node)>,
    pub klp_settings: Option<Node>,
    pub agents: Vec<(String, Node)>,
    pub system_env: Vec<EnvEntry>,
    pub secrets_env: Vec<EnvEntry>,
    pub env: BTreeMap<String, String>,
    /// Problems found while reading the overlays (a malformed `system.env` line, a readable
    /// `secrets.env`). They are reported together with the profile's own.
    pub diagnostics: Vec<Diagnostic>,
}

/// A config directory (`$KOS_HOME`, default `~/.kos`).
#[derive(Clone, Debug)]
pub struct ConfigDir {
    root: PathBuf,
}

fn io_diag(path: &str, e: &io::Error) -> Diagnostic {
    Diagnostic::error(
        Location::whole(path.to_string()),
        "",
        format!("cannot read: {e}"),
    )
}

/// Profile ids are file names: lowercase letters, digits, `_` and `-`, at most 64.
pub fn check_profile_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(format!(
            "`{id}` is not a valid profile id (1-64 of a-z, 0-9, `_`, `-`)"
        ));
    }
    Ok(())
}

impl ConfigDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn profile_rel(id: &str) -> String {
        format!("{PROFILES_DIR}/{id}.yaml")
    }

    pub fn profile_path(&self, id: &str) -> PathBuf {
        self.root.join(Self::profile_rel(id))
    }

    /// Profile ids found in `profiles/`, sorted.
    pub fn list_profiles(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        let dir = self.root.join(PROFILES_DIR);
        if !dir.exists() {
            return Ok(ids);
        }
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".yaml")
                && check_profile_id(id).is_ok()
            {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn read_optional(&self, rel: &str) -> Result<Option<String>, Diagnostic> {
        match crate::tree::read_source(&self.root.join(rel)) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_diag(rel, &e)),
        }
    }

    /// Reads every overlay source of this directory.
    pub fn read_overlays(&self, env: &BTreeMap<String, String>) -> Overlays {
        let mut diags = Diagnostics::default();
        let mut ov = Overlays {
            env: env.clone(),
            ..Overlays::default()
        };
        for (rel, target) in [(SYSTEM_ENV, 0), (SECRETS_ENV, 1)] {
            match self.read_optional(rel) {
                Ok(Some(text)) => {
                    let (entries, errs) = parse_env_file(&text, rel);
                    diags.extend(errs);
                    if target == 0 {
                        ov.system_env = entries
                    } else {
                        ov.secrets_env = entries
                    }
                }
                Ok(None) => {}
                Err(d) => diags.push(d),
            }
        }
        if let Some(w) = secrets_permission_warning(&self.root.join(SECRETS_ENV)) {
            diags.push(w);
        }
        match self.read_optional(KLP_SETTINGS) {
            Ok(Some(text)) => match parse_yaml(&text, KLP_SETTINGS) {
                Ok(n) => ov.klp_settings = Some(n),
                Err(e) => diags.extend(e),
            },
            Ok(None) => {}
            Err(d) => diags.push(d),
        }
        for scope in crate::federation::SCOPES {
            let rel = crate::federation::scope_file(scope.name);
            match self.read_optional(&rel) {
                Ok(Some(text)) => match crate::federation::check_content(scope.name, &text, &rel) {
                    Ok(n) => ov.federation.push((scope.name.to_string(), n)),
                    Err(e) => diags.extend(e.0),
                },
                Ok(None) => {}
                Err(d) => diags.push(d),
            }
        }
        let agents_dir = self.root.join(AGENTS_DIR);
        if agents_dir.is_dir() {
            let mut files: Vec<String> = match fs::read_dir(&agents_dir) {
                Ok(rd) => rd
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
                    .collect(),
                Err(e) => {
                    diags.push(io_diag(AGENTS_DIR, &e));
                    Vec::new()
                }
            };
            files.sort();
            for name in files {
                let rel = format!("{AGENTS_DIR}/{name}");
                let stem = name
                    .trim_end_matches(".yaml")
                    .trim_end_matches(".yml")
                    .to_string();
                match self.read_optional(&rel) {
                    Ok(Some(text)) => match parse_yaml(&text, &rel) {
                        Ok(n) => ov.agents.push((stem, n)),
                        Err(e) => diags.extend(e),
                    },
                    Ok(None) => {}
                    Err(d) => diags.push(d),
                }
            }
        }
        ov.diagnostics = diags.0;
        ov
    }

    /// The profile id to load: explicit option, `KOS_PROFILE` in the environment, then in
    /// `system.env`, then the only profile present.
    pub fn active_profile_id(
        &self,
        opts: &LoadOptions,
        ov: &Overlays,
    ) -> Result<String, Diagnostic> {
        let (id, loc) = if let Some(p) = &opts.profile {
            (p.clone(), Location::whole("--profile"))
        } else if let Some(p) = opts.env.get("KOS_PROFILE") {
            (
                p.clone(),
                Location::whole("environment variable KOS_PROFILE"),
            )
        } else if let Some(e) = ov.system_env.iter().find(|e| e.key == "KOS_PROFILE") {
            (e.value.clone(), e.loc.clone())
        } else {
            let ids = self
                .list_profiles()
                .map_err(|e| io_diag(PROFILES_DIR, &e))?;
            match ids.as_slice() {
                [one] => (one.clone(), Location::whole(PROFILES_DIR)),
                [] => {
                    return Err(Diagnostic::error(
                        Location::whole(self.root.display().to_string()),
                        "",
                        "no profile found in profiles/; run `kos init --profile <name>`",
                    ));
                }
                _ => {
                    return Err(Diagnostic::error(
                        Location::whole(SYSTEM_ENV),
                        "",
                        format!(
                            "several profiles ({}) and no KOS_PROFILE to choose one",
                            ids.join(", ")
                        ),
                    ));
                }
            }
        };
        check_profile_id(&id).map_err(|m| Diagnostic::error(loc.clone(), "", m))?;
        if !self.profile_path(&id).exists() {
            return Err(Diagnostic::error(
                loc,
                "",
                format!(
                    "profile `{id}` not found: {} does not exist",
                    Self::profile_rel(&id)
                ),
            ));
        }
        Ok(id)
    }

    /// Loads and validates the active profile with all overlays.
    pub fn load(&self, opts: &LoadOptions) -> Result<Loaded, Diagnostics> {
        let ov = self.read_overlays(&opts.env);
        let with_overlay_problems = |d: Diagnostic| {
            let mut all = Diagnostics(ov.diagnostics.clone());
            all.push(d);
            all
        };
        let id = self
            .active_profile_id(opts, &ov)
            .map_err(with_overlay_problems)?;
        let rel = Self::profile_rel(&id);
        let text = crate::tree::read_source(&self.profile_path(&id))
            .map_err(|e| with_overlay_problems(io_diag(&rel, &e)))?;
        assemble(&id, &text, &rel, &ov, &opts.capabilities)
    }

    /// Validates a candidate profile document as if it were `profiles/<id>.yaml`, with this
    /// directory's overlays.
    pub fn load_candidate(
        &self,
        opts: &LoadOptions,
        id: &str,
        text: &str,
        source: &str,
    ) -> Result<Loaded, Diagnostics> {
        let ov = self.read_overlays(&opts.env);
        assemble(id, text, source, &ov, &opts.capabilities)
    }

    /// Loads the active profile as if the federation snapshot of `scope` were `tree` (from
    /// [`crate::federation::check_content`]): what a node checks before accepting one.
    pub fn load_with_federation(
        &self,
        opts: &LoadOptions,
        scope: &str,
        tree: Node,
    ) -> Result<Loaded, Diagnostics> {
        let mut ov = self.read_overlays(&opts.env);
        ov.federation.retain(|(s, _)| s != scope);
        ov.federation.push((scope.to_string(), tree));
        ov.federation.sort_by(|a, b| a.0.cmp(&b.0));
        let id = self
            .active_profile_id(opts, &ov)
            .map_err(|d| Diagnostics(vec![d]))?;
        let rel = Self::profile_rel(&id);
        let text = crate::tree::read_source(&self.profile_path(&id))
            .map_err(|e| Diagnostics(vec![io_diag(&rel, &e)]))?;
        assemble(&id, &text, &rel, &ov, &opts.capabilities)
    }
}

#[cfg(unix)]
fn secrets_permission_warning(path: &Path) -> Option<Diagnostic> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        Diagnostic::warning(
            Location::whole(SECRETS_ENV),
            "",
            format!(
                "readable by other users (mode {:o}); run `chmod 600 {SECRETS_ENV}`",
                mode & 0o777
            ),
        )
    })
}

#[cfg(not(unix))]
fn secrets_permission_warning(_: &Path) -> Option<Diagnostic> {
    None
}

fn env_path(key: &str, tree: &Node) -> Vec<String> {
    let mut node = Some(tree);
    let mut out = Vec::new();
    for seg in key.trim_start_matches("KOS_").split("__") {
        let lower = seg.to_ascii_lowercase();
        // Match an existing key case-insensitively so camelCase agent names work.
        let name = match node.map(|n| &n.value) {
            Some(Value::Map(entries)) => entries
                .iter()
                .find(|e| e.key.eq_ignore_ascii_case(&lower))
                .map(|e| e.key.clone())
                .unwrap_or(lower),
            _ => lower,
        };
        node = node.and_then(|n| n.get(&name));
        out.push(name);
    }
    out
}

/// Builds the effective configuration from a profile document and overlays, and validates it.
pub fn assemble(
    id: &str,
    text: &str,
    source: &str,
    ov: &Overlays,
    caps: &Capabilities,
) -> Result<Loaded, Diagnostics> {
    let mut diags = Diagnostics(ov.diagnostics.clone());
    let doc = parse_yaml(text, source).map_err(Diagnostics)?;
    if !matches!(doc.value, Value::Map(_) | Value::Null) {
        return Err(Diagnostics(vec![Diagnostic::error(
            doc.loc.clone(),
            "",
            "a profile must be a YAML mapping",
        )]));
    }
    let src: Arc<str> = Arc::from(source);
    let kind = match doc.get("profile").map(|n| (n, n.as_str())) {
        Some((_, Some(k))) => k.parse::<ProfileKind>().unwrap_or_default(),
        Some(_) => ProfileKind::default(),
        None => {
            diags.push(Diagnostic::error(
                Location::new(&src, 1, 1),
                "profile",
                format!(
                    "missing required key `profile`; expected one of: {}",
                    ProfileKind::ALL.join(", ")
                ),
            ));
            ProfileKind::default()
        }
    };
    let preset_name = format!("<built-in {} preset>", kind.as_str());
    let mut tree = parse_yaml(preset(kind), &preset_name).map_err(Diagnostics)?;
    tree.overlay(doc);

    if let Some(klp) = &ov.klp_settings {
        if matches!(klp.value, Value::Map(_)) {
            if let Some(base) = tree.at_path("federation.klp") {
                warn_overridden(base, klp, "federation.klp", &mut diags);
            }
            tree.set_path(&["federation".into(), "klp".into()], klp.clone());
        } else if !matches!(klp.value, Value::Null) {
            diags.push(Diagnostic::error(
                klp.loc.clone(),
                "",
                "klp_settings.yaml must be a mapping of KLP settings",
            ));
        }
    }
    for (name, node) in &ov.agents {
        tree.set_path(&["agents".into(), name.clone()], node.clone());
    }
    // Federation snapshots own their scopes' sections: above the node's files, below the
    // environment (see `crate::federation`).
    for (_, node) in &ov.federation {
        tree.overlay(node.clone());
    }

    let top_fields = struct_fields::<Config>();
    let mut extra_secrets = BTreeMap::new();
    let env_entries = ov.env.iter().map(|(k, v)| EnvEntry {
        key: k.clone(),
        value: v.clone(),
        loc: Location::whole(format!("environment variable {k}")),
    });
    for (origin, entry) in ov
        .system_env
        .iter()
        .cloned()
        .map(|e| (SYSTEM_ENV, e))
        .chain(ov.secrets_env.iter().cloned().map(|e| (SECRETS_ENV, e)))
        .chain(env_entries.map(|e| ("env", e)))
    {
        let Some(rest) = entry.key.strip_prefix("KOS_") else {
            if origin == SECRETS_ENV {
                extra_secrets.insert(entry.key.clone(), Secret::new(entry.value.clone()));
            }
            continue;
        };
        if RESERVED_ENV.contains(&entry.key.as_str()) || entry.key.starts_with("KOS_TEST_") {
            continue;
        }
        let path = env_path(&entry.key, &tree);
        let dotted = path.join(".");
        let top = path.first().map(String::as_str).unwrap_or_default();
        if !top_fields.contains(&top) {
            let mut msg = format!(
                "`{}` does not name a config key (`{}`)",
                entry.key,
                rest.to_ascii_lowercase()
            );
            if let Some(s) = did_you_mean(top, top_fields.iter().copied()) {
                msg.push_str(&format!("; did you mean KOS_{}?", s.to_ascii_uppercase()));
            }
            // The process environment is shared with other programs: warn only.
            diags.push(if origin == "env" {
                Diagnostic::warning(entry.loc.clone(), "", msg)
            } else {
                Diagnostic::error(entry.loc.clone(), "", msg)
            });
            continue;
        }
        let is_secret = SECRET_PATHS.contains(&dotted.as_str());
        if origin == SECRETS_ENV && !is_secret {
            diags.push(Diagnostic::error(
                entry.loc.clone(),
                &dotted,
                format!(
                    "`{}` is not a secret; set it in {SYSTEM_ENV} or the profile",
                    entry.key
                ),
            ));
            continue;
        }
        tree.set_path(&path, Node::plain(entry.value, entry.loc));
    }

    // Secrets may come only from secrets.env or the process environment.
    for p in SECRET_PATHS {
        if let Some(n) = tree.at_path(p) {
            let s = &n.loc.source;
            let from_secret_source =
                s.as_ref() == SECRETS_ENV || s.starts_with("environment variable");
            if !from_secret_source && !matches!(n.value, Value::Null) {
                diags.push(Diagnostic::error(
                    n.loc.clone(),
                    *p,
                    format!(
                        "is a secret: set KOS_{} in {SECRETS_ENV} or the environment, not here",
                        p.replace('.', "__").to_ascii_uppercase()
                    ),
                ));
            }
        }
    }

    let (config, de_diags) = from_node::<Config>(&tree);
    diags.extend(de_diags);
    let Some(config) = config else {
        diags.sort();
        return Err(diags);
    };
    // Cross-field rules run even when the schema pass found errors, so the user sees every
    // problem at once; a rule finding on a path that already has an error (whose value is then
    // a placeholder) is dropped as noise.
    let errored: Vec<String> = diags
        .errors()
        .map(|d| d.path.clone())
        .filter(|p| !p.is_empty())
        .collect();
    let mut rules = Diagnostics::default();
    validate(&config, &tree, caps, &mut rules);
    let related = |a: &str, b: &str| {
        a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}."))
    };
    diags.extend(
        rules
            .0
            .into_iter()
            .filter(|d| !errored.iter().any(|e| related(&d.path, e))),
    );
    diags.sort();
    if diags.has_errors() {
        return Err(diags);
    }
    // The tree is kept only to locate values; it must not carry secret values (`Loaded` is
    // `Debug`).
    for p in SECRET_PATHS {
        if let Some(loc) = tree
            .at_path(p)
            .filter(|n| !matches!(n.value, Value::Null))
            .map(|n| n.loc.clone())
        {
            let keys: Vec<String> = p.split('.').map(str::to_string).collect();
            tree.set_path(&keys, Node::plain(crate::model::REDACTED, loc));
        }
    }
    let canonical = canonical_json(&config);
    Ok(Loaded {
        snapshot_id: SnapshotId::of(&canonical),
        canonical,
        config,
        profile_id: id.to_string(),
        document: text.to_string(),
        warnings: diags.0,
        extra_secrets,
        tree,
    })
}

/// Warns when a value the user wrote in the profile is replaced by a different value from an
/// overlay file, naming both places.
fn warn_overridden(base: &Node, top: &Node, path: &str, diags: &mut Diagnostics) {
    match (&base.value, &top.value) {
        (Value::Map(_), Value::Map(entries)) => {
            for e in entries {
                if let Some(b) = base.get(&e.key) {
                    warn_overridden(b, &e.value, &format!("{path}.{}", e.key), diags);
                }
            }
        }
        _ => {
            if base.loc.source.starts_with("<built-in") || same_value(base, top) {
                return;
            }
            diags.push(Diagnostic::warning(
                base.loc.clone(),
                path,
                format!(
                    "overridden by {} (KLP settings live in {KLP_SETTINGS})",
                    top.loc
                ),
            ));
        }
    }
}

/// Equality of values, ignoring where they came from.
fn same_value(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Null, Value::Null) => true,
        (Value::Scalar(x), Value::Scalar(y)) => x.text == y.text,
        (Value::Seq(x), Value::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|e| b.get(&e.key).is_some_and(|v| same_value(&e.value, v)))
        }
        _ => false,
    }
}
