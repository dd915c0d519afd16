//! Typed, validated configuration of a kOS node.
//!
//! - [`model`]: the typed model of a profile (every seed field, plus the node's own).
//! - [`load`]: assembling the effective configuration from a config directory: built-in
//!   preset < profile file < `klp/klp_settings.yaml` < `agents/*.yaml` < `system.env` <
//!   `secrets.env` < process environment.
//! - [`validate`]: cross-field rules and what this build supports ([`Capabilities`]).
//! - [`snapshot`]: canonical serialization, snapshot ids, history, atomic apply with
//!   compare-and-swap, rollback.
//! - [`layout`]: `kos init`.
//!
//! Every problem is a [`Diagnostic`] naming file, line, column and YAML path, and a load
//! reports all of them at once. This crate depends on no other kOS crate and has no async
//! runtime: it is plain file I/O.

pub mod de;
pub mod diag;
pub mod diff;
pub mod envfile;
pub mod federation;
pub mod layout;
pub mod load;
pub mod model;
pub mod snapshot;
pub mod tree;
pub mod validate;

pub use diag::{Diagnostic, Diagnostics, Severity};
pub use load::{ConfigDir, LoadOptions, Loaded, Overlays, assemble, preset};
pub use model::{Config, ProfileKind, Secret};
pub use snapshot::{ApplyOutcome, SnapshotId, Store, StoreError};
pub use validate::Capabilities;

/// Renders the effective configuration as YAML for people, secrets redacted.
pub fn to_yaml(config: &Config) -> String {
    yaml_serde::to_string(config).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}
