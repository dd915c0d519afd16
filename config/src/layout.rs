//! `kos init`: the config directory layout of the seed.
//!
//! ```text
//! <dir>/
//! ├── profiles/<profile>.yaml   the profile (from the built-in preset)
//! ├── system.env                KOS_PROFILE and other non-secret overrides
//! ├── secrets.env               secrets only (mode 0600)
//! ├── klp/peers.list            approved federation peers
//! ├── klp/klp_settings.yaml     KLP settings (override `federation.klp`)
//! ├── agents/<agent>.yaml       one file per offered agent service
//! ├── plugins/                  plugin configurations
//! └── state/                    snapshots and history (created by the node)
//! ```
//! The identity key (`identity.key`) is created by the node, which owns key handling.
//! Nothing that exists is overwritten.

use std::fs;
use std::io;
use std::path::Path;

use crate::envfile::render_line;
use crate::load::{
    AGENTS_DIR, ConfigDir, KLP_SETTINGS, Overlays, PEERS_LIST, PLUGINS_DIR, SECRETS_ENV,
    SYSTEM_ENV, assemble, preset,
};
use crate::model::ProfileKind;
use crate::snapshot::atomic_write;
use crate::validate::Capabilities;

/// What `init` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitReport {
    pub created: Vec<String>,
    pub kept: Vec<String>,
    pub notes: Vec<String>,
}

const PEERS_HEADER: &str = "\
# Approved federation peers, one per line:
#   <peer-id> [multiaddr ...] [# label]
# e.g.
#   12D3KooWRbw6Q5BQuGD4nHbEg1cM2Hcz9yxQ1NQVSkKbeR5JixB5 /ip4/192.0.2.10/tcp/4001 # alice's node
# Blank lines and lines starting with # are ignored.
";

const SECRETS_HEADER: &str = "\
# Secrets for this node. Keep this file mode 0600; it is never logged or shown.
# Config secrets use KOS_ names, e.g.:
#   KOS_DATABASE__PASSWORD=...
#   KOS_REDIS__PASSWORD=...
#   KOS_VECTOR__API_KEY=...
#   KOS_AUTH__JWT_SECRET=...
# Other names (e.g. OPENAI_API_KEY=...) are kept for agents.
";

fn write_new(
    root: &Path,
    rel: &str,
    content: &str,
    mode: u32,
    report: &mut InitReport,
) -> io::Result<()> {
    let path = root.join(rel);
    if path.exists() {
        report.kept.push(rel.to_string());
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    atomic_write(&path, content.as_bytes(), Some(mode), &mut |_| {})?;
    report.created.push(rel.to_string());
    Ok(())
}

/// Lays out a config directory for `kind`. Existing files are kept as they are.
pub fn init_layout(root: &Path, kind: ProfileKind) -> io::Result<InitReport> {
    let mut report = InitReport::default();
    fs::create_dir_all(root)?;
    for d in [AGENTS_DIR, PLUGINS_DIR, "klp", crate::load::PROFILES_DIR] {
        fs::create_dir_all(root.join(d))?;
    }
    let profile_rel = ConfigDir::profile_rel(kind.as_str());
    write_new(root, &profile_rel, preset(kind), 0o644, &mut report)?;

    let system_env = format!(
        "# Non-secret settings of this node, as KOS_<SECTION>__<KEY>=value (see docs/CONFIG.md).\n# They override the profile; the process environment overrides them.\n{}\n",
        render_line("KOS_PROFILE", kind.as_str())
    );
    let had_system_env = root.join(SYSTEM_ENV).exists();
    write_new(root, SYSTEM_ENV, &system_env, 0o644, &mut report)?;
    if had_system_env {
        report.notes.push(format!(
            "{SYSTEM_ENV} was kept; set KOS_PROFILE={} there to run the `{}` profile",
            kind.as_str(),
            kind.as_str()
        ));
    }
    write_new(root, SECRETS_ENV, SECRETS_HEADER, 0o600, &mut report)?;
    write_new(root, PEERS_LIST, PEERS_HEADER, 0o644, &mut report)?;

    // KLP settings and agent files come from the preset itself.
    let loaded = assemble(
        kind.as_str(),
        preset(kind),
        &profile_rel,
        &Overlays::default(),
        &Capabilities::ALL,
    )
    .map_err(|d| io::Error::other(format!("built-in preset is invalid:\n{d}")))?;
    let klp = yaml_serde::to_string(&loaded.config.federation.klp).map_err(io::Error::other)?;
    let klp_text = format!(
        "# Kind Link Protocol settings. These keys override `federation.klp` in the profile.\n{klp}"
    );
    write_new(root, KLP_SETTINGS, &klp_text, 0o644, &mut report)?;
    for service in &loaded.config.services {
        let agent = crate::model::AgentConfig::default();
        let text = format!(
            "# Settings of the {service} agent service (see docs/CONFIG.md, `agents`).\n{}",
            yaml_serde::to_string(&agent).map_err(io::Error::other)?
        );
        write_new(
            root,
            &format!("{AGENTS_DIR}/{service}.yaml"),
            &text,
            0o644,
            &mut report,
        )?;
    }
    Ok(report)
}
