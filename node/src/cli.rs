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
    /// Create API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the approved peers in klp/peers.list (a running node applies changes at once).
    #[command(subcommand)]
    Peers(PeersCommand),
    /// Federation admin keys.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The federation log: approvals, revocations, admins and shared config, signed by admins.
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Run a local multi-node federation (processes on loopback, ports picked by the
    /// kernel, or containers with --docker). `--dir` is the testnet directory here
    /// [default: ./kos-testnet].
    #[command(subcommand)]
    Testnet(TestnetCommand),
    /// Ask a node's `/readyz` (container health checks). Exit 0 when it answers 200, 1 when
    /// it is not ready or does not answer.
    Health(HealthArgs),
}

#[derive(Debug, Args)]
struct HealthArgs {
    /// URL to ask [default: /readyz on this node's api.listen, a wildcard address asked
    /// on loopback, https when api.tls is set]
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// Do not verify the server's TLS certificate (a self-signed node certificate; the probe
    /// sends no credentials).
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a local token (signed with the node's token key, or HS256 with auth.jwt_secret).
    /// Prints only the token, so it can go straight into a variable.
    Create {
        /// viewer (read), agent, operator (agent tasks, peers), admin (config, approvals)
        #[arg(long, value_parser = parse_role)]
        role: crate::auth::Role,
        /// Lifetime, e.g. 1h, 24h, 30d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// Who the token is for (the `sub` claim).
        #[arg(long, default_value = "operator")]
        sub: String,
    },
}

fn parse_role(s: &str) -> Result<crate::auth::Role, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
enum PeersCommand {
    /// List the approved peers, with live state when the node is running.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a peer (or change its addresses and label).
    Add {
        /// Peer id (12D3KooW...).
        id: String,
        /// Address to dial (repeatable), e.g. /ip4/192.0.2.10/tcp/4001.
        #[arg(long = "addr", value_name = "MULTIADDR")]
        addrs: Vec<String>,
        /// A label for people.
        #[arg(long)]
        label: Option<String>,
    },
    /// Remove a peer; a running node disconnects it.
    Remove {
        /// Peer id.
        id: String,
    },
    /// Approve a peer federation-wide: an op signed with this node's admin key, which every
    /// node of the federation applies (the node must be running).
    Approve {
        /// Peer id (12D3KooW...).
        id: String,
        /// Address to dial (repeatable).
        #[arg(long = "addr", value_name = "MULTIADDR")]
        addrs: Vec<String>,
        /// A label for people.
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke a peer federation-wide: every node disconnects it.
    Revoke {
        /// Peer id.
        id: String,
        /// Why (kept in the log).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a federation admin key (ed25519, PKCS#8 PEM, mode 0600) and print its admin id,
    /// which goes into `federation.klp.admins` on every node. Never overwrites.
    Keygen {
        /// Where to write the key [default: <dir>/federation/admin.key, which the node uses
        /// to sign the ops its API creates]
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum FederationCommand {
    /// The op log of the running node: each op with author, time and validity.
    Log {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Admins, approved and revoked peers, published configuration.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add or remove a federation admin (needs `admin_threshold` admin signatures).
    Admin {
        #[arg(value_parser = ["add", "remove"])]
        action: String,
        /// The admin id (from `kos admin keygen`).
        admin: String,
        /// Admin key files to sign with, the first one as author (repeatable). Without
        /// `--key`, the node signs with its own admin key alone.
        #[arg(long = "key", value_name = "FILE")]
        keys: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TestnetCommand {
    /// Generate N nodes, start them, wait until all admit each other, print a table. A failed
    /// `up` stops everything it started.
    Up {
        /// Number of nodes (at most 256; 32 with --docker).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// How long to wait for full admission once every node is ready (each node has 120 s
        /// to become ready before that).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: std::time::Duration,
        /// Run each node in a container on a private Docker network instead of as a local
        /// process (needs the node image: deploy/local-images.sh or `docker build`).
        #[arg(long)]
        docker: bool,
        /// The node image for --docker.
        #[arg(long, default_value = "kos-node:latest", requires = "docker")]
        image: String,
        /// Create a federation admin key in node 1 (federation/admin.key) and pin it in
        /// `admins` on every node, so `kos peers approve|revoke` and `kos config publish` run
        /// against node 1 act on the whole testnet.
        #[arg(long)]
        admin: bool,
    },
    /// Show each node of the testnet and how many peers it admitted.
    Status,
    /// Stop the processes (or remove the containers and network) `up` started.
    Down {
        /// Also delete the node directories (Docker: the volumes).
        #[arg(long)]
        clean: bool,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
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
    /// Also create a self-signed TLS certificate for development (tls/cert.pem, tls/key.pem)
    /// and point api.tls at it.
    #[arg(long)]
    tls_self_signed: bool,
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
    /// Publish a configuration snapshot to the federation (a YAML file holding only the
    /// scope's sections); every node validates it and answers ACK or NACK
    /// (`GET /api/config/status`). The node must be running and hold an admin key.
    Publish {
        /// The snapshot file (not with --rollback).
        #[arg(required_unless_present = "rollback")]
        file: Option<PathBuf>,
        /// agents, llms, monitoring or klp.
        #[arg(long)]
        scope: String,
        /// Publish again an earlier snapshot of the scope, by id.
        #[arg(long, value_name = "SNAPSHOT_ID", conflicts_with = "file")]
        rollback: Option<String>,
        /// Publish even if this node's configuration would not validate with it.
        #[arg(long)]
        force: bool,
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

/// Writes CLI output to standard output. When the reader has gone away (a closed pipe, as
/// in `kos federation status | head`), the process exits at once with status 0 and says
/// nothing: the output was not wanted any more. Any other write error is reported on
/// standard error and ends the process with status 1.
pub fn out(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let r = o
        .write_fmt(args)
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) });
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("kos: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = cli.dir.clone().unwrap_or_else(default_home);
    let testnet_dir = cli
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("kos-testnet"));
    match cli.command {
        Command::Run(args) => exit(run(&dir, args)),
        Command::Init(args) => exit(init(&dir, args.profile, args.tls_self_signed)),
        Command::Id { json } => exit(id(&dir, json)),
        Command::Config(ConfigCommand::Validate { dir: d, json }) => {
            validate(d.as_deref().unwrap_or(&dir), json)
        }
        Command::Config(ConfigCommand::Show { json, profile }) => exit(show(&dir, json, profile)),
        Command::Config(ConfigCommand::Diff { a, b, json }) => diff(&a, &b, json),
        Command::Config(ConfigCommand::History { json }) => exit(history(&dir, json)),
        Command::Token(TokenCommand::Create { role, ttl, sub }) => {
            exit(token_create(&dir, role, ttl, &sub))
        }
        Command::Peers(PeersCommand::List { json }) => exit(peers_list(&dir, json)),
        Command::Peers(PeersCommand::Add { id, addrs, label }) => {
            exit(peers_add(&dir, &id, addrs, label))
        }
        Command::Peers(PeersCommand::Remove { id }) => exit(peers_remove(&dir, &id)),
        Command::Peers(PeersCommand::Approve { id, addrs, label }) => exit(
            node_post(
                &dir,
                &format!("/api/peers/{id}/approve"),
                &json!({"addrs": addrs, "label": label}),
            )
            .map(|v| outln!("approved {id} (op {})", v["op"].as_str().unwrap_or("?"))),
        ),
        Command::Peers(PeersCommand::Revoke { id, reason }) => exit(
            node_post(
                &dir,
                &format!("/api/peers/{id}/revoke"),
                &json!({"reason": reason}),
            )
            .map(|v| outln!("revoked {id} (op {})", v["op"].as_str().unwrap_or("?"))),
        ),
        Command::Admin(AdminCommand::Keygen { out }) => exit(admin_keygen(&dir, out)),
        Command::Federation(FederationCommand::Log { json }) => exit(federation_log(&dir, json)),
        Command::Federation(FederationCommand::Status { json }) => {
            exit(federation_status(&dir, json))
        }
        Command::Federation(FederationCommand::Admin {
            action,
            admin,
            keys,
        }) => exit(federation_admin(&dir, &action, &admin, &keys)),
        Command::Config(ConfigCommand::Publish {
            file,
            scope,
            rollback,
            force,
        }) => exit(config_publish(&dir, file, &scope, rollback, force)),
        Command::Testnet(TestnetCommand::Up {
            nodes,
            timeout,
            docker,
            image,
            admin,
        }) => {
            let opts = crate::testnet::UpOptions {
                nodes,
                timeout,
                admin,
            };
            exit(if docker {
                crate::testnet::docker::Docker::new(&image)
                    .and_then(|b| crate::testnet::up(&testnet_dir, b, opts))
            } else {
                crate::testnet::process::Processes::new()
                    .and_then(|b| crate::testnet::up(&testnet_dir, b, opts))
            })
        }
        // The state file names the backend.
        Command::Testnet(TestnetCommand::Status) => exit(crate::testnet::status(&testnet_dir)),
        Command::Testnet(TestnetCommand::Down { clean }) => {
            exit(crate::testnet::down(&testnet_dir, clean))
        }
        Command::Health(args) => exit(health(&dir, args)),
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

fn init(dir: &Path, kind: ProfileKind, tls_self_signed: bool) -> Result<()> {
    let report = kos_config::layout::init_layout(dir, kind)
        .with_context(|| format!("initializing {}", dir.display()))?;
    let (identity, created) = Identity::load_or_create(dir)?;
    let token_key_existed = crate::auth::local::TokenKey::path(dir).exists();
    crate::auth::local::TokenKey::load_or_create(dir)?;
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
    writeln!(
        out,
        "  {} {}",
        if token_key_existed {
            "kept   "
        } else {
            "created"
        },
        crate::auth::local::TOKEN_KEY_FILE
    )?;
    for n in &report.notes {
        writeln!(out, "note: {n}")?;
    }
    if tls_self_signed {
        match self_signed_tls(dir)? {
            true => writeln!(
                out,
                "  created tls/cert.pem, tls/key.pem (self-signed, for development) and set api.tls in system.env"
            )?,
            false => writeln!(out, "  kept    tls/cert.pem (exists)")?,
        }
    }
    writeln!(out, "node id: {}", identity.id())?;
    Ok(())
}

fn id(dir: &Path, as_json: bool) -> Result<()> {
    let identity = Identity::load(dir)
        .with_context(|| format!("no identity in {}; run `kos init` first", dir.display()))?;
    if as_json {
        outln!(
            "{}",
            json!({"peer_id": identity.id().to_string(), "public_key": identity.public_key_hex(), "key_type": "ed25519"})
        );
    } else {
        outln!("peer id:    {}", identity.id());
        outln!("public key: ed25519 {}", identity.public_key_hex());
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
    let mut result = ConfigDir::new(dir).load(&opts);
    // peers.list is part of a node's configuration too.
    if let Err(errors) = crate::federation::read_peers_list(dir) {
        let diags = errors.into_iter().map(|e| {
            let (loc, msg) = e.split_once(": ").unwrap_or((&e, ""));
            let (file, line) = loc.rsplit_once(':').unwrap_or((loc, "0"));
            let loc = kos_config::tree::Location {
                source: file.into(),
                line: line.parse().unwrap_or(0),
                column: if line == "0" { 0 } else { 1 },
            };
            kos_config::Diagnostic::error(loc, "", msg)
        });
        result = match result {
            Ok(l) => Err(kos_config::Diagnostics(
                l.warnings.into_iter().chain(diags).collect(),
            )),
            Err(mut d) => {
                d.extend(diags);
                Err(d)
            }
        };
    }
    match (result, as_json) {
        (Ok(l), true) => {
            outln!(
                "{}",
                json!({"valid": true, "profile_id": l.profile_id, "snapshot_id": l.snapshot_id, "warnings": l.warnings})
            );
            ExitCode::SUCCESS
        }
        (Ok(l), false) => {
            print_diags(&kos_config::Diagnostics(l.warnings.clone()));
            outln!(
                "{}: profile `{}` is valid (snapshot {})",
                dir.display(),
                l.profile_id,
                l.snapshot_id.short()
            );
            ExitCode::SUCCESS
        }
        (Err(d), true) => {
            outln!(
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
        outln!(
            "{}",
            json!({"profile_id": l.profile_id, "snapshot_id": l.snapshot_id, "config": effective, "other_secrets": secrets})
        );
    } else {
        outln!("# profile: {}  snapshot: {}", l.profile_id, l.snapshot_id);
        if !l.extra_secrets.is_empty() {
            let names: Vec<&str> = l.extra_secrets.keys().map(String::as_str).collect();
            outln!(
                "# other secrets in secrets.env (values hidden): {}",
                names.join(", ")
            );
        }
        out!("{}", kos_config::to_yaml(&l.config));
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
        outln!(
            "{}",
            json!({"from": la.snapshot_id, "to": lb.snapshot_id, "changes": changes})
        );
    } else {
        out!("{}", render(&changes));
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
        outln!("{}", serde_json::to_string(&entries)?);
        return Ok(());
    }
    for e in entries {
        let target = e
            .target
            .as_ref()
            .map(|t| format!(" -> {}", t.short()))
            .or_else(|| {
                e.federation.as_ref().map(|f| {
                    format!(
                        " {}@{}",
                        f.scope,
                        &f.snapshot_id[..f.snapshot_id.len().min(12)]
                    )
                })
            })
            .unwrap_or_default();
        outln!(
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

fn peers_path(dir: &Path) -> PathBuf {
    dir.join(kos_config::load::PEERS_LIST)
}

fn peers_list(dir: &Path, as_json: bool) -> Result<()> {
    let file =
        crate::fedsync::read_peers_file(dir).map_err(|e| anyhow::anyhow!("{}", e.join("\n")))?;
    // The operator's entries, then the federation's approvals the node wrote below the
    // marker (those the operator did not also list).
    let mut entries: Vec<(&kos_klp::peers::PeerEntry, &str)> =
        file.local.iter().map(|e| (e, "operator")).collect();
    for m in &file.managed {
        if !file.local.iter().any(|e| e.id == m.id) {
            entries.push((m, "federation"));
        }
    }
    // Live state from the running node, if there is one.
    let live: Option<serde_json::Value> = ConfigDir::new(dir)
        .load(&LoadOptions::from_process(capabilities()))
        .ok()
        .and_then(|l| {
            let token = cli_token(dir, &l.config, crate::auth::Role::Viewer)
                .ok()
                .flatten();
            let endpoint = crate::node_client::Endpoint::of_config(dir, &l.config).ok()?;
            crate::node_client::NodeClient::new(endpoint, std::time::Duration::from_secs(2))
                .ok()?
                .get_json("/api/peers", token.as_deref())
                .ok()
        });
    let state_of = |id: &str| -> String {
        live.as_ref()
            .and_then(|v| v["peers"].as_array())
            .and_then(|ps| ps.iter().find(|p| p["id"] == id))
            .map(|p| {
                let st = p["state"].as_str().unwrap_or("?").to_string();
                if p["connected"] == true || st == "disconnected" {
                    st
                } else {
                    format!("{st} (not connected)")
                }
            })
            .unwrap_or_else(|| {
                if live.is_some() {
                    "unknown".into()
                } else {
                    "-".into()
                }
            })
    };
    if as_json {
        let rows: Vec<serde_json::Value> = entries
            .iter()
            .map(|(e, source)| json!({"id": e.id.to_string(), "addrs": e.addrs, "label": e.label, "source": source, "state": state_of(&e.id.to_string())}))
            .collect();
        outln!("{}", json!({"node_running": live.is_some(), "peers": rows}));
        return Ok(());
    }
    if entries.is_empty() {
        outln!("no approved peers in {}", peers_path(dir).display());
    }
    for (e, source) in &entries {
        let id = e.id.to_string();
        outln!(
            "{id}  {:<24} {:<10} {}  {}",
            state_of(&id),
            source,
            e.label.as_deref().unwrap_or(""),
            e.addrs.join(" ")
        );
    }
    if live.is_none() {
        outln!("(the node is not running, or its API did not answer: no live state)");
    }
    Ok(())
}

fn write_peers(dir: &Path, text: &str) -> Result<()> {
    let path = peers_path(dir);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    kos_config::snapshot::atomic_write(&path, text.as_bytes(), None, &mut |_| {})
        .with_context(|| format!("writing {}", path.display()))
}

fn peers_add(dir: &Path, id: &str, addrs: Vec<String>, label: Option<String>) -> Result<()> {
    let node: kos_klp::NodeId = id
        .parse()
        .map_err(|e| anyhow::anyhow!("`{id}` is not a peer id: {e}"))?;
    let addrs = addrs
        .iter()
        .map(|a| kos_klp::peers::check_addr(a, &node).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    if label.as_deref().is_some_and(|l| l.contains('\n')) {
        anyhow::bail!("a label is one line");
    }
    let text = std::fs::read_to_string(peers_path(dir)).unwrap_or_default();
    crate::federation::read_peers_list(dir)
        .map_err(|e| anyhow::anyhow!("fix peers.list first:\n{}", e.join("\n")))?;
    let entry = kos_klp::PeerEntry {
        id: node,
        addrs,
        label,
        line: 0,
    };
    write_peers(dir, &kos_klp::peers::upsert_entry(&text, &entry))?;
    outln!("approved {node}");
    Ok(())
}

fn peers_remove(dir: &Path, id: &str) -> Result<()> {
    let node: kos_klp::NodeId = id
        .parse()
        .map_err(|e| anyhow::anyhow!("`{id}` is not a peer id: {e}"))?;
    let text = std::fs::read_to_string(peers_path(dir))
        .with_context(|| format!("reading {}", peers_path(dir).display()))?;
    let Some(new) = kos_klp::peers::remove_entry(&text, &node) else {
        anyhow::bail!("{node} is not in {}", peers_path(dir).display());
    };
    write_peers(dir, &new)?;
    outln!("removed {node}");
    Ok(())
}

/// A short-lived token for the node of `dir`, minted with its token key (see
/// `auth::local::mint_for_dir`); `None` when the node uses no local tokens.
pub(crate) fn cli_token(
    dir: &Path,
    config: &kos_config::Config,
    role: crate::auth::Role,
) -> Result<Option<String>> {
    let id = Identity::load(dir)?.id().to_string();
    crate::auth::local::mint_for_dir(dir, config, &id, role, std::time::Duration::from_secs(60))
}

/// Calls the API of the running node of `dir` as admin (a 60-second token from its key).
fn node_request(
    dir: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value> {
    let l = ConfigDir::new(dir)
        .load(&LoadOptions::from_process(capabilities()))
        .map_err(|d| anyhow::anyhow!("invalid configuration:\n{d}"))?;
    let token = cli_token(dir, &l.config, crate::auth::Role::Admin)?;
    let endpoint = crate::node_client::Endpoint::of_config(dir, &l.config)?;
    let client = crate::node_client::NodeClient::new(endpoint, std::time::Duration::from_secs(10))?;
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .with_context(|| format!("`{method}` is not an HTTP method"))?;
    client
        .request_json(method, path, token.as_deref(), body)
        .with_context(|| format!("asking the node at {} (is it running?)", client.base()))
}

fn node_post(dir: &Path, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
    node_request(dir, "POST", path, Some(body))
}

fn admin_keygen(dir: &Path, out: Option<PathBuf>) -> Result<()> {
    let path = out.unwrap_or_else(|| dir.join(crate::fedsync::ADMIN_KEY_FILE));
    let id = crate::fedsync::create_admin_key(&path)?;
    outln!("admin key: {}", path.display());
    outln!("admin id:  {id}");
    outln!(
        "Add the admin id to `admins:` in klp/klp_settings.yaml on every node of the federation."
    );
    Ok(())
}

fn ms_to_time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn federation_log(dir: &Path, as_json: bool) -> Result<()> {
    let v = node_request(dir, "GET", "/api/federation/log", None)?;
    if as_json {
        outln!("{v}");
        return Ok(());
    }
    let ops = v["ops"].as_array().cloned().unwrap_or_default();
    if ops.is_empty() {
        outln!("the federation log is empty");
    }
    for op in ops {
        let hash = op["hash"].as_str().unwrap_or("");
        let author = op["author"].as_str().unwrap_or("");
        outln!(
            "{}  {:<12}  {}  lamport {:<4} {:<15} {}  [{}]",
            ms_to_time(op["timestamp_ms"].as_u64().unwrap_or(0)),
            hash.get(..12).unwrap_or(hash),
            author.get(..16).unwrap_or(author),
            op["lamport"],
            op["kind"].as_str().unwrap_or(""),
            op["summary"].as_str().unwrap_or(""),
            op["validity"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

fn federation_status(dir: &Path, as_json: bool) -> Result<()> {
    let v = node_request(dir, "GET", "/api/federation", None)?;
    if as_json {
        outln!("{v}");
        return Ok(());
    }
    if v["enabled"] != true {
        outln!("federation sync is off (no admins in federation.klp.admins)");
        return Ok(());
    }
    outln!(
        "admins (threshold {}): {}",
        v["threshold"],
        v["admins"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    if let Some(a) = v["local_admin"].as_str() {
        outln!("this node signs as admin {a}");
    }
    outln!("ops: {}, pending: {}", v["ops"], v["pending"]);
    for p in v["approved"].as_array().into_iter().flatten() {
        outln!(
            "approved {}  {}{}",
            p["id"].as_str().unwrap_or(""),
            p["label"].as_str().unwrap_or(""),
            if p["blocked_locally"] == true {
                "  (blocked locally)"
            } else {
                ""
            }
        );
    }
    for p in v["revoked"].as_array().into_iter().flatten() {
        outln!(
            "revoked  {}  {}",
            p["id"].as_str().unwrap_or(""),
            p["reason"].as_str().unwrap_or("")
        );
    }
    for c in v["config"].as_array().into_iter().flatten() {
        outln!(
            "config   {:<10} {}  {}",
            c["scope"].as_str().unwrap_or(""),
            c["snapshot_id"]
                .as_str()
                .unwrap_or("")
                .get(..12)
                .unwrap_or(""),
            c["status"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn federation_admin(dir: &Path, action: &str, admin: &str, keys: &[PathBuf]) -> Result<()> {
    use base64::Engine as _;
    let action = format!("{action}_admin");
    if keys.is_empty() {
        let v = node_post(
            dir,
            "/api/federation/admins",
            &json!({"action": action, "admin": admin}),
        )?;
        outln!("{action} {admin} (op {})", v["op"].as_str().unwrap_or("?"));
        return Ok(());
    }
    let signing: Vec<ed25519_dalek::SigningKey> = keys
        .iter()
        .map(|k| crate::fedsync::load_admin_key(k))
        .collect::<Result<_>>()?;
    let author = kos_klp::NodeId::from_public_key(signing[0].verifying_key());
    let d = node_post(
        dir,
        "/api/federation/draft",
        &json!({"author": author.to_string(), "action": action, "admin": admin}),
    )?;
    let draft = base64::engine::general_purpose::STANDARD
        .decode(d["draft"].as_str().unwrap_or(""))
        .context("the node's draft is not base64")?;
    let unsigned = crate::fedsync::decode_draft(&draft).context("the node's draft")?;
    // Sign only what was asked for: a compromised node must not get another body signed.
    let target: kos_klp::NodeId = admin
        .parse()
        .map_err(|e| anyhow::anyhow!("`{admin}` is not an admin id: {e}"))?;
    let expected = if action == "add_admin" {
        kos_map_protocol::fedlog::OpBody::AddAdmin { admin: target }
    } else {
        kos_map_protocol::fedlog::OpBody::RemoveAdmin { admin: target }
    };
    if unsigned.author != author || unsigned.body != expected {
        anyhow::bail!("the node's draft is not the operation asked for; nothing was signed");
    }
    let mut op =
        kos_map_protocol::fedlog::Op::sign(unsigned, &signing[0]).context("signing the draft")?;
    for k in &signing[1..] {
        op.cosign(k);
    }
    let v = node_post(
        dir,
        "/api/federation/ops",
        &json!({"op": base64::engine::general_purpose::STANDARD.encode(op.encode())}),
    )?;
    outln!(
        "{action} {admin}, signed by {} admin(s) (op {})",
        signing.len(),
        v["op"].as_str().unwrap_or("?")
    );
    Ok(())
}

fn config_publish(
    dir: &Path,
    file: Option<PathBuf>,
    scope: &str,
    rollback: Option<String>,
    force: bool,
) -> Result<()> {
    let v = match (file, rollback) {
        (_, Some(id)) => node_post(
            dir,
            "/api/config/publish/rollback",
            &json!({"scope": scope, "snapshot_id": id}),
        )?,
        (Some(f), None) => {
            let content =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            // Check the scope here first, so errors name the file.
            kos_config::federation::check_content(scope, &content, &f.display().to_string())
                .map_err(|d| anyhow::anyhow!("{d}"))?;
            node_post(
                dir,
                "/api/config/publish",
                &json!({"scope": scope, "content": content, "force": force}),
            )?
        }
        (None, None) => anyhow::bail!("give a snapshot FILE or --rollback SNAPSHOT_ID"),
    };
    outln!(
        "published `{scope}` snapshot {} (op {}); see `GET /api/config/status` for ACKs",
        v["snapshot_id"].as_str().unwrap_or("?"),
        v["op"].as_str().unwrap_or("?")
    );
    Ok(())
}

fn token_create(
    dir: &Path,
    role: crate::auth::Role,
    ttl: std::time::Duration,
    sub: &str,
) -> Result<()> {
    let l = ConfigDir::new(dir)
        .load(&LoadOptions::from_process(capabilities()))
        .map_err(|d| anyhow::anyhow!("invalid configuration:\n{d}"))?;
    if !l.config.auth.jwt.is_enabled() {
        anyhow::bail!("local tokens are disabled: set `auth.jwt: enabled` in the profile first");
    }
    if ttl.is_zero() || ttl > std::time::Duration::from_secs(366 * 24 * 3600) {
        anyhow::bail!("--ttl must be between 1s and 366d");
    }
    let id = Identity::load(dir)?.id().to_string();
    let token =
        crate::auth::local::mint_named(dir, &l.config, &id, sub, role, ttl)?.unwrap_or_default();
    outln!("{token}");
    Ok(())
}

/// How `kos health` reaches the node: `--url` as given, or the node's own endpoint from its
/// effective `api.listen` and `api.tls` (trusting its certificate file).
fn health_endpoint(
    dir: &Path,
    url: Option<String>,
) -> Result<(crate::node_client::Endpoint, String)> {
    use crate::node_client::Endpoint;
    let Some(url) = url else {
        let l = ConfigDir::new(dir)
            .load(&LoadOptions::from_process(capabilities()))
            .map_err(|d| anyhow::anyhow!("invalid configuration (pass --url):\n{d}"))?;
        return Ok((Endpoint::of_config(dir, &l.config)?, "/readyz".into()));
    };
    let parsed = reqwest::Url::parse(&url).with_context(|| format!("`{url}` is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        anyhow::bail!("`{url}`: only http and https URLs can be asked");
    }
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let mut base = parsed;
    base.set_path("/");
    base.set_query(None);
    Ok((
        Endpoint {
            base,
            cert_pem: None,
        },
        path,
    ))
}

fn health(dir: &Path, args: HealthArgs) -> Result<()> {
    let (endpoint, path) = health_endpoint(dir, args.url)?;
    let client = crate::node_client::NodeClient::with_options(
        endpoint,
        args.timeout,
        crate::node_client::Options {
            accept_invalid_certs: args.insecure,
            max_response: 4096,
        },
    )?;
    let url = client
        .base()
        .join(&path)
        .map(|u| u.to_string())
        .unwrap_or(path.clone());
    let (status, body) = client
        .request(reqwest::Method::GET, &path, None, None)
        .map_err(|e| anyhow::anyhow!("{url}: no answer ({e:#})"))?;
    if status != reqwest::StatusCode::OK {
        anyhow::bail!("{url}: HTTP {status}: {}", body.trim());
    }
    outln!("{url}: {}", body.trim());
    Ok(())
}

/// Writes a self-signed certificate for localhost and 127.0.0.1 and points api.tls at it
/// (in system.env). Never overwrites. Returns whether it created the files.
fn self_signed_tls(dir: &Path) -> Result<bool> {
    let cert_path = dir.join("tls/cert.pem");
    if cert_path.exists() {
        return Ok(false);
    }
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    std::fs::create_dir_all(dir.join("tls"))?;
    kos_config::snapshot::atomic_write(
        &dir.join("tls/key.pem"),
        ck.signing_key.serialize_pem().as_bytes(),
        Some(0o600),
        &mut |_| {},
    )?;
    kos_config::snapshot::atomic_write(&cert_path, ck.cert.pem().as_bytes(), None, &mut |_| {})?;
    let env_path = dir.join(kos_config::load::SYSTEM_ENV);
    let mut env = std::fs::read_to_string(&env_path).unwrap_or_default();
    if !env.contains("KOS_API__TLS__CERT") {
        if !env.is_empty() && !env.ends_with('\n') {
            env.push('\n');
        }
        env.push_str("# Development TLS from `kos init --tls-self-signed`\nKOS_API__TLS__CERT=tls/cert.pem\nKOS_API__TLS__KEY=tls/key.pem\n");
        kos_config::snapshot::atomic_write(&env_path, env.as_bytes(), None, &mut |_| {})?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
