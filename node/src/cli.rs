//! The `kos` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use kos_config::diff::{diff_json, render};
use kos_config::{ConfigDir, LoadOptions, Overlays, ProfileKind, assemble};
use serde_json::json;

use crate::daemon::{NodeOptions, capabilities, ensure_home};
use crate::identity::Identity;
use crate::telemetry::{self, LogFormat};

/// kOS node: a federated peer-to-peer node that hosts AI agent services.
#[derive(Debug, Parser)]
#[command(name = "kos", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Config directory [default: $KOS_HOME, else ~/.kos]
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node. On first run, creates the config directory with the standalone profile
    /// and a new identity, then serves the HTTP API (default http://127.0.0.1:7420) until
    /// Ctrl-C or SIGTERM. SIGHUP reloads the configuration from disk.
    Run(RunArgs),
    /// Lay out a config directory for a profile (never overwrites existing files or the key).
    Init(InitArgs),
    /// Print this node's id (libp2p PeerId form) and public key.
    Id {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate, show and compare configurations.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Log format [default: logging.format from the profile]
    #[arg(long, env = "KOS_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Bind the API here instead of `api.listen` (loopback only for now)
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Deployment profile to lay out
    #[arg(long, value_parser = parse_kind, default_value = "standalone")]
    profile: ProfileKind,
}

fn parse_kind(s: &str) -> Result<ProfileKind, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config directory; prints every error with file:line:column. Exit 0 valid, 1 invalid, 2 error.
    Validate {
        /// Config directory [default: --dir]
        dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration (all overlays applied, secrets redacted).
    Show {
        /// Print JSON instead of YAML.
        #[arg(long)]
        json: bool,
        /// Show this profile instead of the active one.
        #[arg(long, value_name = "ID")]
        profile: Option<String>,
    },
    /// Compare two configurations (config directories or profile files).
    /// Exit 0 when identical, 1 when different, 2 on error (like `kubectl diff`).
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the applied snapshots of the config directory, newest first.
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `$KOS_HOME`, else `~/.kos`.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("KOS_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".kos")
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = cli.dir.clone().unwrap_or_else(default_home);
    match cli.command {
        Command::Run(args) => exit(run(&dir, args)),
        Command::Init(args) => exit(init(&dir, args.profile)),
        Command::Id { json } => exit(id(&dir, json)),
        Command::Config(ConfigCommand::Validate { dir: d, json }) => {
            validate(d.as_deref().unwrap_or(&dir), json)
        }
        Command::Config(ConfigCommand::Show { json, profile }) => exit(show(&dir, json, profile)),
        Command::Config(ConfigCommand::Diff { a, b, json }) => diff(&a, &b, json),
        Command::Config(ConfigCommand::History { json }) => exit(history(&dir, json)),
    }
}

fn exit(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path, args: RunArgs) -> Result<()> {
    ensure_home(dir)?;
    let load = LoadOptions::from_process(capabilities());
    // Validate before anything else, and take the log settings from the profile.
    let loaded = ConfigDir::new(dir)
        .load(&load)
        .map_err(|d| anyhow::anyhow!("invalid configuration in {}:\n{d}", dir.display()))?;
    let format = args
        .log_format
        .unwrap_or(match loaded.config.logging.format {
            kos_config::model::LogFormat::Text => LogFormat::Text,
            kos_config::model::LogFormat::Json => LogFormat::Json,
        });
    let reloader = telemetry::init(format, &loaded.config.logging.level.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(crate::daemon::run(NodeOptions {
        dir: dir.to_path_buf(),
        load,
        create_if_missing: true,
        listen_override: args.listen,
        log_reloader: Some(reloader),
    }))
}

fn init(dir: &Path, kind: ProfileKind) -> Result<()> {
    let report = kos_config::layout::init_layout(dir, kind)
        .with_context(|| format!("initializing {}", dir.display()))?;
    let (identity, created) = Identity::load_or_create(dir)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "config directory: {}", dir.display())?;
    for f in &report.created {
        writeln!(out, "  created {f}")?;
    }
    for f in &report.kept {
        writeln!(out, "  kept    {f} (exists)")?;
    }
    writeln!(
        out,
        "  {} {}",
        if created { "created" } else { "kept   " },
        crate::identity::IDENTITY_FILE
    )?;
    for n in &report.notes {
        writeln!(out, "note: {n}")?;
    }
    writeln!(out, "node id: {}", identity.id())?;
    Ok(())
}

fn id(dir: &Path, as_json: bool) -> Result<()> {
    let identity = Identity::load(dir)
        .with_context(|| format!("no identity in {}; run `kos init` first", dir.display()))?;
    if as_json {
        println!(
            "{}",
            json!({"peer_id": identity.id().to_string(), "public_key": identity.public_key_hex(), "key_type": "ed25519"})
        );
    } else {
        println!("peer id:    {}", identity.id());
        println!("public key: ed25519 {}", identity.public_key_hex());
    }
    Ok(())
}

fn print_diags(diags: &kos_config::Diagnostics) {
    let mut err = std::io::stderr().lock();
    for d in &diags.0 {
        let _ = writeln!(err, "{d}");
    }
}

fn validate(dir: &Path, as_json: bool) -> ExitCode {
    let opts = LoadOptions::from_process(capabilities());
    let result = ConfigDir::new(dir).load(&opts);
    match (result, as_json) {
        (Ok(l), true) => {
            println!(
                "{}",
                json!({"valid": true, "profile_id": l.profile_id, "snapshot_id": l.snapshot_id, "warnings": l.warnings})
            );
            ExitCode::SUCCESS
        }
        (Ok(l), false) => {
            print_diags(&kos_config::Diagnostics(l.warnings.clone()));
            println!(
                "{}: profile `{}` is valid (snapshot {})",
                dir.display(),
                l.profile_id,
                l.snapshot_id.short()
            );
            ExitCode::SUCCESS
        }
        (Err(d), true) => {
            println!(
                "{}",
                json!({"valid": false, "errors": d.errors().collect::<Vec<_>>(), "warnings": d.warnings().collect::<Vec<_>>()})
            );
            ExitCode::from(1)
        }
        (Err(d), false) => {
            print_diags(&d);
            let n = d.errors().count();
            eprintln!(
                "{}: {n} error{}",
                dir.display(),
                if n == 1 { "" } else { "s" }
            );
            ExitCode::from(1)
        }
    }
}

fn show(dir: &Path, as_json: bool, profile: Option<String>) -> Result<()> {
    let mut opts = LoadOptions::from_process(capabilities());
    opts.profile = profile;
    let l = ConfigDir::new(dir)
        .load(&opts)
        .map_err(|d| anyhow::anyhow!("invalid configuration:\n{d}"))?;
    if as_json {
        let effective: serde_json::Value = serde_json::from_str(&l.canonical)?;
        let secrets: Vec<&String> = l.extra_secrets.keys().collect();
        println!(
            "{}",
            json!({"profile_id": l.profile_id, "snapshot_id": l.snapshot_id, "config": effective, "other_secrets": secrets})
        );
    } else {
        println!("# profile: {}  snapshot: {}", l.profile_id, l.snapshot_id);
        if !l.extra_secrets.is_empty() {
            let names: Vec<&str> = l.extra_secrets.keys().map(String::as_str).collect();
            println!(
                "# other secrets in secrets.env (values hidden): {}",
                names.join(", ")
            );
        }
        print!("{}", kos_config::to_yaml(&l.config));
    }
    Ok(())
}

/// Loads one side of a diff: a config directory (files only, no process environment) or a
/// single profile file.
fn load_side(p: &Path) -> Result<kos_config::Loaded, String> {
    let caps = capabilities();
    if p.is_dir() {
        ConfigDir::new(p)
            .load(&LoadOptions {
                capabilities: caps,
                ..LoadOptions::default()
            })
            .map_err(|d| d.to_string())
    } else {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let id = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        assemble(
            &id,
            &text,
            &p.display().to_string(),
            &Overlays::default(),
            &caps,
        )
        .map_err(|d| d.to_string())
    }
}

fn diff(a: &Path, b: &Path, as_json: bool) -> ExitCode {
    let (la, lb) = match (load_side(a), load_side(b)) {
        (Ok(x), Ok(y)) => (x, y),
        (ra, rb) => {
            for e in [ra.err(), rb.err()].into_iter().flatten() {
                eprint!("{e}");
            }
            return ExitCode::from(2);
        }
    };
    let va: serde_json::Value = serde_json::from_str(&la.canonical).unwrap_or_default();
    let vb: serde_json::Value = serde_json::from_str(&lb.canonical).unwrap_or_default();
    let changes = diff_json(&va, &vb);
    if as_json {
        println!(
            "{}",
            json!({"from": la.snapshot_id, "to": lb.snapshot_id, "changes": changes})
        );
    } else {
        print!("{}", render(&changes));
    }
    if changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn history(dir: &Path, as_json: bool) -> Result<()> {
    let store = kos_config::Store::open(&ConfigDir::new(dir))?;
    let mut entries = store.history()?;
    entries.reverse();
    if as_json {
        println!("{}", serde_json::to_string(&entries)?);
        return Ok(());
    }
    for e in entries {
        let target = e
            .target
            .as_ref()
            .map(|t| format!(" -> {}", t.short()))
            .unwrap_or_default();
        println!(
            "{:>5}  {}  {}  {:<9}{}  {} by {}",
            e.seq,
            e.at,
            e.id.short(),
            format!("{:?}", e.action).to_lowercase(),
            target,
            e.profile_id,
            e.actor
        );
    }
    Ok(())
}
