//! Snapshots of the effective configuration, their history, atomic apply and rollback.
//!
//! A snapshot id is the SHA-256 (hex) of the canonical JSON of the effective configuration:
//! keys sorted, no whitespace, secrets replaced by `<redacted>` (secrets never enter a
//! snapshot, so a snapshot can be shown, diffed and shipped to peers).
//!
//! On disk, under `state/` in the config directory:
//! - `snapshots/<id>.json`: immutable record (profile id, the profile document, the effective
//!   config);
//! - `history/<seq>.json`: one file per applied change, never rewritten;
//! - `lock`: an exclusive file lock held for the whole of an apply.
//!
//! Apply order, chosen so that a crash at any point leaves the old or the new configuration:
//! validate → lock → compare-and-swap on the current id → write the snapshot record → write
//! the profile to a temporary file, fsync, rename over the profile (the commit point), fsync
//! the directory → append the history entry. A crash after the commit point but before the
//! history entry is repaired by [`Store::reconcile`] at the next start.
//!
//! A federation snapshot changes the effective configuration through its scope file
//! (`federation/config/<scope>.yaml`), not the profile: [`Store::apply_federation`] follows
//! the same order with that file's write as the commit point, and its entry names the
//! federation source (scope, snapshot, op) besides the new effective snapshot id.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::diag::Diagnostics;
use crate::diff::{Change, diff_json, split_sections};
use crate::load::{ConfigDir, LoadOptions, Loaded};
use crate::model::Config;

/// Content address of an effective configuration: 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SnapshotId(String);

impl SnapshotId {
    pub fn of(canonical: &str) -> Self {
        Self(hex::encode(Sha256::digest(canonical.as_bytes())))
    }

    /// Parses an id as given by a user: the full 64 hex digits, optionally quoted (as in an
    /// `If-Match` header) or prefixed with `sha256:`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim().trim_matches('"');
        let t = t.strip_prefix("sha256:").unwrap_or(t);
        if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(Self(t.to_ascii_lowercase()))
        } else {
            Err(format!("`{s}` is not a snapshot id (64 hex digits)"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// First 12 digits, for humans.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The canonical serialization: JSON with sorted keys and no insignificant whitespace.
pub fn canonical_json(config: &Config) -> String {
    // serde_json's Map is a BTreeMap (no `preserve_order`), so keys come out sorted.
    match serde_json::to_value(config) {
        Ok(v) => v.to_string(),
        Err(e) => format!("{{\"error\":\"{e}\"}}"),
    }
}

/// What caused a history entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// First configuration seen in this directory.
    Init,
    /// Applied through the API or CLI.
    Apply,
    /// A rollback to an earlier snapshot.
    Rollback,
    /// The files changed outside kOS (hand edit, environment) and were found at start.
    External,
    /// An apply that crashed after its commit point, completed at start.
    Recovered,
    /// A configuration snapshot published by the federation for one scope (written to
    /// `federation/config/<scope>.yaml` by federation sync), including a rollback op that
    /// publishes an earlier snapshot again.
    Federation,
}

/// Where a [`Action::Federation`] change came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationSource {
    pub scope: String,
    /// The federation's snapshot id: the SHA-256 of the published content (not the id of the
    /// effective configuration).
    pub snapshot_id: String,
    /// The `PublishConfig` op that published it.
    pub op: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub seq: u64,
    pub id: SnapshotId,
    pub previous: Option<SnapshotId>,
    pub profile_id: String,
    pub action: Action,
    /// For a rollback: the snapshot rolled back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<SnapshotId>,
    pub at: String,
    pub actor: String,
    #[serde(default)]
    pub restart_required: Vec<String>,
    /// For a federation snapshot: its scope, snapshot id and op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederationSource>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: SnapshotId,
    pub profile_id: String,
    pub created_at: String,
    /// The profile document exactly as it was applied.
    pub document: String,
    pub effective: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the new configuration is invalid")]
    Invalid(Diagnostics),
    #[error("the configuration on disk is invalid; fix it or apply without If-Match")]
    CurrentInvalid(Diagnostics),
    #[error("the current snapshot is {}, not the expected {expected}", current.as_ref().map_or("unknown".to_string(), |c| c.to_string()))]
    Conflict {
        expected: SnapshotId,
        current: Option<SnapshotId>,
    },
    #[error("no snapshot {0} in the history")]
    NotFound(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: corrupt record: {message}")]
    Corrupt { path: String, message: String },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// The result of an apply or rollback.
#[derive(Clone, Debug)]
pub struct ApplyOutcome {
    pub previous: Option<SnapshotId>,
    pub loaded: Loaded,
    pub entry: HistoryEntry,
    pub changes: Vec<Change>,
    /// Top-level sections that changed and took effect at once.
    pub live: Vec<String>,
    /// Top-level sections that changed and need a restart.
    pub restart_required: Vec<String>,
    /// True when the new snapshot equals the current one (nothing was written).
    pub unchanged: bool,
}

/// Crash-injection points, in order, passed to the hook of [`Store::apply_with_hook`].
pub type Hook<'a> = &'a mut dyn FnMut(&'static str);

/// The snapshot store of one config directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: ConfigDir,
    state: PathBuf,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Store {
    /// Opens (creating if needed) `state/` and removes temporary files left by a crash.
    pub fn open(dir: &ConfigDir) -> Result<Self, StoreError> {
        let state = dir.path("state");
        for sub in ["snapshots", "history"] {
            fs::create_dir_all(state.join(sub))
                .map_err(io_err(format!("creating {}", state.join(sub).display())))?;
        }
        for d in [
            state.join("snapshots"),
            state.join("history"),
            dir.path(crate::load::PROFILES_DIR),
        ] {
            if let Ok(rd) = fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().contains(".tmp.") {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
        Ok(Self {
            dir: dir.clone(),
            state,
        })
    }

    pub fn config_dir(&self) -> &ConfigDir {
        &self.dir
    }

    fn lock(&self) -> Result<File, StoreError> {
        let path = self.state.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening state/lock"))?;
        f.lock().map_err(io_err("locking state/lock"))?;
        Ok(f)
    }

    /// Every history entry, oldest first.
    pub fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        self.entry_names()?
            .iter()
            .map(|n| self.read_entry(n))
            .collect()
    }

    /// History file names, oldest first (zero-padded sequence numbers sort in order).
    fn entry_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = fs::read_dir(self.state.join("history"))
            .map_err(io_err("reading state/history"))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    fn read_entry(&self, name: &str) -> Result<HistoryEntry, StoreError> {
        let p = self.state.join("history").join(name);
        let text = fs::read_to_string(&p).map_err(io_err(format!("reading {}", p.display())))?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: p.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The last history entry, if any (reads only that entry).
    pub fn head(&self) -> Result<Option<HistoryEntry>, StoreError> {
        self.entry_names()?
            .last()
            .map(|n| self.read_entry(n))
            .transpose()
    }

    fn snapshot_path(&self, id: &SnapshotId) -> PathBuf {
        self.state.join("snapshots").join(format!("{id}.json"))
    }

    pub fn snapshot(&self, id: &SnapshotId) -> Result<SnapshotRecord, StoreError> {
        let p = self.snapshot_path(id);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(id.to_string()));
            }
            Err(e) => return Err(io_err(format!("reading {}", p.display()))(e)),
        };
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: p.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Resolves a full id or a unique prefix (at least 6 digits) from the history.
    pub fn resolve(&self, prefix: &str) -> Result<SnapshotId, StoreError> {
        if let Ok(id) = SnapshotId::parse(prefix) {
            return Ok(id);
        }
        let p = prefix.trim().trim_matches('"').to_ascii_lowercase();
        if p.len() < 6 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(StoreError::NotFound(prefix.to_string()));
        }
        let mut ids: Vec<SnapshotId> = self
            .history()?
            .into_iter()
            .map(|e| e.id)
            .filter(|i| i.as_str().starts_with(&p))
            .collect();
        ids.sort();
        ids.dedup();
        match ids.len() {
            1 => Ok(ids.remove(0)),
            _ => Err(StoreError::NotFound(prefix.to_string())),
        }
    }

    fn write_snapshot(&self, loaded: &Loaded, hook: Hook<'_>) -> Result<(), StoreError> {
        let path = self.snapshot_path(&loaded.snapshot_id);
        if path.exists() {
            return Ok(());
        }
        let effective: serde_json::Value =
            serde_json::from_str(&loaded.canonical).unwrap_or(serde_json::Value::Null);
        let rec = SnapshotRecord {
            id: loaded.snapshot_id.clone(),
            profile_id: loaded.profile_id.clone(),
            created_at: now_rfc3339(),
            document: loaded.document.clone(),
            effective,
        };
        let bytes = serde_json::to_vec_pretty(&rec).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        atomic_write(&path, &bytes, None, hook)
            .map_err(io_err(format!("writing {}", path.display())))
    }

    fn append_history(
        &self,
        mut entry: HistoryEntry,
        hook: Hook<'_>,
    ) -> Result<HistoryEntry, StoreError> {
        let last = self.head()?;
        entry.seq = last.map_or(1, |l| l.seq + 1);
        let path = self
            .state
            .join("history")
            .join(format!("{:010}.json", entry.seq));
        let bytes = serde_json::to_vec_pretty(&entry).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        atomic_write(&path, &bytes, None, hook)
            .map_err(io_err(format!("writing {}", path.display())))?;
        Ok(entry)
    }

    /// Makes the history agree with the configuration on disk: if the loaded snapshot is not
    /// the last one recorded, records it (as `init`, `recovered` or `external`). Call at start.
    pub fn reconcile(
        &self,
        loaded: &Loaded,
        actor: &str,
    ) -> Result<Option<HistoryEntry>, StoreError> {
        let _lock = self.lock()?;
        let head = self.head()?;
        if head.as_ref().is_some_and(|h| h.id == loaded.snapshot_id) {
            return Ok(None);
        }
        let action = match &head {
            None => Action::Init,
            Some(_) if self.snapshot_path(&loaded.snapshot_id).exists() => Action::Recovered,
            Some(_) => Action::External,
        };
        self.write_snapshot(loaded, &mut |_| {})?;
        let entry = HistoryEntry {
            seq: 0,
            id: loaded.snapshot_id.clone(),
            previous: head.map(|h| h.id),
            profile_id: loaded.profile_id.clone(),
            action,
            target: None,
            at: now_rfc3339(),
            actor: actor.to_string(),
            restart_required: Vec::new(),
            federation: None,
        };
        self.append_history(entry, &mut |_| {}).map(Some)
    }

    /// Validates `document` as the new active profile and applies it atomically.
    /// `expected`: compare-and-swap on the current snapshot id (HTTP `If-Match`).
    pub fn apply(
        &self,
        opts: &LoadOptions,
        expected: Option<&SnapshotId>,
        document: &str,
        actor: &str,
    ) -> Result<ApplyOutcome, StoreError> {
        self.apply_with_hook(
            opts,
            expected,
            document,
            actor,
            Action::Apply,
            None,
            &mut |_| {},
        )
    }

    /// Restores the profile document of an earlier snapshot (a new history entry).
    pub fn rollback(
        &self,
        opts: &LoadOptions,
        target: &SnapshotId,
        expected: Option<&SnapshotId>,
        actor: &str,
    ) -> Result<ApplyOutcome, StoreError> {
        let rec = self.snapshot(target)?;
        let active = self.active_id(opts)?;
        if rec.profile_id != active {
            return Err(StoreError::Invalid(Diagnostics(vec![
                crate::diag::Diagnostic::error(
                    crate::tree::Location::whole(format!("snapshot {}", target.short())),
                    "",
                    format!(
                        "belongs to profile `{}`, but the active profile is `{active}`",
                        rec.profile_id
                    ),
                ),
            ])));
        }
        self.apply_with_hook(
            opts,
            expected,
            &rec.document,
            actor,
            Action::Rollback,
            Some(target.clone()),
            &mut |_| {},
        )
    }

    fn active_id(&self, opts: &LoadOptions) -> Result<String, StoreError> {
        let ov = self.dir.read_overlays(&opts.env);
        self.dir
            .active_profile_id(opts, &ov)
            .map_err(|d| StoreError::CurrentInvalid(Diagnostics(vec![d])))
    }

    /// [`Store::apply`] with a hook called at each step (for crash tests).
    #[allow(clippy::too_many_arguments)]
    pub fn apply_with_hook(
        &self,
        opts: &LoadOptions,
        expected: Option<&SnapshotId>,
        document: &str,
        actor: &str,
        action: Action,
        target: Option<SnapshotId>,
        hook: Hook<'_>,
    ) -> Result<ApplyOutcome, StoreError> {
        let active = self.active_id(opts)?;
        let source = ConfigDir::profile_rel(&active);
        let candidate = self
            .dir
            .load_candidate(opts, &active, document, &source)
            .map_err(StoreError::Invalid)?;
        hook("validated");

        let _lock = self.lock()?;
        hook("locked");
        let current = self.dir.load(opts);
        let current_id = current.as_ref().ok().map(|l| l.snapshot_id.clone());
        if let Some(exp) = expected
            && current_id.as_ref() != Some(exp)
        {
            return Err(StoreError::Conflict {
                expected: exp.clone(),
                current: current_id,
            });
        }
        let old_effective = current
            .as_ref()
            .ok()
            .and_then(|l| serde_json::from_str(&l.canonical).ok())
            .unwrap_or(serde_json::Value::Null);
        let new_effective: serde_json::Value =
            serde_json::from_str(&candidate.canonical).unwrap_or(serde_json::Value::Null);
        let changes = diff_json(&old_effective, &new_effective);
        let (live, restart_required) = split_sections(&changes);

        let head = self.head()?;
        if current_id.as_ref() == Some(&candidate.snapshot_id)
            && let Some(h) = head.as_ref().filter(|h| h.id == candidate.snapshot_id)
        {
            let entry = h.clone();
            return Ok(ApplyOutcome {
                previous: current_id,
                loaded: candidate,
                entry,
                changes,
                live,
                restart_required,
                unchanged: true,
            });
        }

        self.write_snapshot(&candidate, hook)?;
        hook("snapshot_written");
        let profile_path = self.dir.profile_path(&active);
        atomic_write(&profile_path, document.as_bytes(), None, hook)
            .map_err(io_err(format!("writing {}", profile_path.display())))?;
        hook("committed");
        let entry = HistoryEntry {
            seq: 0,
            id: candidate.snapshot_id.clone(),
            previous: head.map(|h| h.id),
            profile_id: active,
            action,
            target,
            at: now_rfc3339(),
            actor: actor.to_string(),
            restart_required: restart_required.clone(),
            federation: None,
        };
        let entry = self.append_history(entry, hook)?;
        hook("history_written");
        Ok(ApplyOutcome {
            previous: current_id,
            loaded: candidate,
            entry,
            changes,
            live,
            restart_required,
            unchanged: false,
        })
    }
}

/// What [`Store::apply_federation`] committed.
#[derive(Debug)]
pub struct Committed {
    /// The configuration on disk after the commit point.
    pub loaded: Loaded,
    /// The new history entry, or `None` when the effective configuration is the one the
    /// history already ends with. An error here leaves the change in effect (it is on disk);
    /// the next start records it as `recovered`.
    pub entry: Result<Option<HistoryEntry>, StoreError>,
}

impl Store {
    /// Applies a federation snapshot (a file that is not the profile) in the order of
    /// [`Store::apply`]: under the lock, the candidate configuration (validated by the
    /// caller, with the snapshot overlaid) is recorded as a snapshot, `commit` writes the
    /// scope file (the commit point) and returns the configuration then on disk, and a
    /// history entry (action `federation`, with `source`) records it. `Err`: nothing was
    /// committed.
    pub fn apply_federation(
        &self,
        candidate: &Loaded,
        source: FederationSource,
        actor: &str,
        commit: impl FnOnce() -> Result<Loaded, StoreError>,
    ) -> Result<Committed, StoreError> {
        let _lock = self.lock()?;
        self.write_snapshot(candidate, &mut |_| {})?;
        let loaded = commit()?;
        let entry = self.record_federation(&loaded, source, actor);
        Ok(Committed { loaded, entry })
    }

    fn record_federation(
        &self,
        loaded: &Loaded,
        source: FederationSource,
        actor: &str,
    ) -> Result<Option<HistoryEntry>, StoreError> {
        let head = self.head()?;
        if head.as_ref().is_some_and(|h| h.id == loaded.snapshot_id) {
            return Ok(None);
        }
        // The snapshot on disk may differ from the candidate if another file changed
        // meanwhile; its record must exist before the entry naming it.
        self.write_snapshot(loaded, &mut |_| {})?;
        let new_effective: serde_json::Value =
            serde_json::from_str(&loaded.canonical).unwrap_or(serde_json::Value::Null);
        let restart_required = head
            .as_ref()
            .and_then(|h| self.snapshot(&h.id).ok())
            .map(|rec| split_sections(&diff_json(&rec.effective, &new_effective)).1)
            .unwrap_or_default();
        let entry = HistoryEntry {
            seq: 0,
            id: loaded.snapshot_id.clone(),
            previous: head.map(|h| h.id),
            profile_id: loaded.profile_id.clone(),
            action: Action::Federation,
            target: None,
            at: now_rfc3339(),
            actor: actor.to_string(),
            restart_required,
            federation: Some(source),
        };
        self.append_history(entry, &mut |_| {}).map(Some)
    }
}

/// Writes a file so that readers see the old or the new content, never a mix: write a
/// temporary file beside it, fsync, rename over the target, fsync the directory.
/// `mode` sets Unix permissions on the temporary file before any data is written.
pub fn atomic_write(
    path: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    hook: Hook<'_>,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode.unwrap_or(0o644));
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp)?;
    hook("temp_created");
    let half = bytes.len() / 2;
    f.write_all(&bytes[..half])?;
    hook("temp_half_written");
    f.write_all(&bytes[half..])?;
    hook("temp_written");
    f.sync_all()?;
    hook("temp_synced");
    drop(f);
    fs::rename(&tmp, path)?;
    hook("renamed");
    sync_dir(dir)?;
    hook("dir_synced");
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
