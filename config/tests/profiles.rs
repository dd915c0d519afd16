//! Integration tests of profiles, seeds, error locations, overlays and secrets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use kos_config::layout::init_layout;
use kos_config::model::{LlmBackend, LogFormat, PeerDiscovery};
use kos_config::{
    Capabilities, ConfigDir, Diagnostics, LoadOptions, Loaded, Overlays, ProfileKind, Severity,
    assemble, to_yaml,
};
use tempfile::TempDir;

fn pg() -> Capabilities {
    Capabilities {
        postgres: true,
        ..Default::default()
    }
}

fn opts(caps: Capabilities) -> LoadOptions {
    LoadOptions {
        env: BTreeMap::new(),
        capabilities: caps,
        profile: None,
    }
}

fn opts_env(caps: Capabilities, env: &[(&str, &str)]) -> LoadOptions {
    LoadOptions {
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        capabilities: caps,
        profile: None,
    }
}

/// A config directory laid out by `kos init` for `kind`.
fn init(kind: ProfileKind) -> TempDir {
    let tmp = tempfile::tempdir().unwrap();
    init_layout(tmp.path(), kind).unwrap();
    tmp
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn append(root: &Path, rel: &str, text: &str) {
    let mut s = fs::read_to_string(root.join(rel)).unwrap();
    s.push_str(text);
    fs::write(root.join(rel), s).unwrap();
}

fn load(root: &Path, o: &LoadOptions) -> Result<Loaded, Diagnostics> {
    ConfigDir::new(root).load(o)
}

fn errors(d: &Diagnostics) -> Vec<String> {
    d.errors().map(ToString::to_string).collect()
}

fn warnings(ws: &[kos_config::Diagnostic]) -> Vec<String> {
    ws.iter()
        .filter(|w| w.severity == Severity::Warning)
        .map(ToString::to_string)
        .collect()
}

/// Loads `doc` as `profiles/<kind>.yaml` of a freshly initialised directory.
fn load_doc(kind: ProfileKind, doc: &str, caps: Capabilities) -> Result<Loaded, Diagnostics> {
    let tmp = init(kind);
    write(tmp.path(), &ConfigDir::profile_rel(kind.as_str()), doc);
    load(tmp.path(), &opts(caps))
}

fn load_doc_errors(kind: ProfileKind, doc: &str, caps: Capabilities) -> Vec<String> {
    match load_doc(kind, doc, caps) {
        Ok(l) => panic!(
            "expected errors, loaded {} with warnings {:#?}",
            l.snapshot_id, l.warnings
        ),
        Err(d) => errors(&d),
    }
}

// ---------------------------------------------------------------------------------------
// Profiles and `kos init`
// ---------------------------------------------------------------------------------------

#[test]
fn init_lays_out_every_profile_and_show_round_trips() {
    for kind in ProfileKind::VARIANTS {
        let tmp = init(kind);
        let root = tmp.path();
        let profile_rel = format!("profiles/{}.yaml", kind.as_str());
        for f in [
            profile_rel.as_str(),
            "system.env",
            "secrets.env",
            "klp/peers.list",
            "klp/klp_settings.yaml",
        ] {
            assert!(root.join(f).is_file(), "{kind}: {f} missing");
        }
        for d in ["agents", "plugins"] {
            assert!(root.join(d).is_dir(), "{kind}: {d}/ missing");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(root.join("secrets.env"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{kind}: secrets.env mode {mode:o}");
        }
        let system_env = fs::read_to_string(root.join("system.env")).unwrap();
        assert!(
            system_env.contains(&format!("KOS_PROFILE={}\n", kind.as_str())),
            "{system_env}"
        );

        let loaded =
            load(root, &opts(pg())).unwrap_or_else(|d| panic!("{kind} does not load:\n{d}"));
        assert_eq!(loaded.profile_id, kind.as_str());
        assert_eq!(loaded.config.profile, kind);
        assert_eq!(
            loaded.document,
            fs::read_to_string(root.join(&profile_rel)).unwrap()
        );
        // Agent files are written for every offered service, and they load.
        for s in &loaded.config.services {
            assert!(
                root.join(format!("agents/{s}.yaml")).is_file(),
                "{kind}: agents/{s}.yaml missing"
            );
            assert!(
                loaded.config.agents.contains_key(s.as_str()),
                "{kind}: agent {s} not loaded"
            );
        }

        // `kos config show` output, fed back as a profile, is the same configuration.
        let shown = to_yaml(&loaded.config);
        let again = assemble(
            kind.as_str(),
            &shown,
            "show.yaml",
            &Overlays::default(),
            &pg(),
        )
        .unwrap_or_else(|d| panic!("{kind}: show output does not load:\n{d}\n{shown}"));
        assert_eq!(
            again.snapshot_id, loaded.snapshot_id,
            "{kind}: show round trip changed the config\n{shown}"
        );
        assert_eq!(again.canonical, loaded.canonical);
        assert_eq!(again.config, loaded.config);

        // Without the `postgres` feature only the SQLite profiles validate.
        match (kind, load(root, &opts(Capabilities::default()))) {
            (ProfileKind::Standalone | ProfileKind::Edge, Ok(_)) => {}
            (ProfileKind::Standalone | ProfileKind::Edge, Err(d)) => {
                panic!("{kind} needs no feature, yet:\n{d}")
            }
            (_, Ok(_)) => panic!("{kind} loaded without the postgres feature"),
            (_, Err(d)) => {
                let errs = errors(&d);
                assert_eq!(errs.len(), 1, "{errs:#?}");
                assert!(
                    errs[0].contains("storage.database: PostgreSQL is not in this build"),
                    "{errs:#?}"
                );
                assert!(errs[0].contains("`postgres` cargo feature"), "{errs:#?}");
                assert!(errs[0].starts_with(&format!("{profile_rel}:")), "{errs:#?}");
            }
        }

        // Running init again keeps what exists, including a modified profile.
        let edited = format!("{}\n# edited by hand\n", loaded.document);
        fs::write(root.join(&profile_rel), &edited).unwrap();
        let report = init_layout(root, kind).unwrap();
        assert!(report.created.is_empty(), "{kind}: {report:?}");
        assert!(report.kept.contains(&profile_rel), "{kind}: {report:?}");
        for f in [
            "system.env",
            "secrets.env",
            "klp/peers.list",
            "klp/klp_settings.yaml",
        ] {
            assert!(
                report.kept.iter().any(|k| k == f),
                "{kind}: {f} not kept: {report:?}"
            );
        }
        assert_eq!(fs::read_to_string(root.join(&profile_rel)).unwrap(), edited);
    }
}

#[test]
fn init_report_lists_created_files() {
    let tmp = tempfile::tempdir().unwrap();
    let report = init_layout(tmp.path(), ProfileKind::FederationNode).unwrap();
    for f in [
        "profiles/federation_node.yaml",
        "system.env",
        "secrets.env",
        "klp/peers.list",
        "klp/klp_settings.yaml",
        "agents/translatorAgent.yaml",
        "agents/synthesizerAgent.yaml",
        "agents/schedulerAgent.yaml",
        "agents/moderatorAgent.yaml",
    ] {
        assert!(
            report.created.iter().any(|c| c == f),
            "{f} not created: {report:?}"
        );
    }
    assert!(report.kept.is_empty());
    // A second profile in the same directory: system.env is kept, with a note saying how
    // to switch.
    let report = init_layout(tmp.path(), ProfileKind::Edge).unwrap();
    assert!(
        report.created.contains(&"profiles/edge.yaml".to_string()),
        "{report:?}"
    );
    assert!(report.kept.contains(&"system.env".to_string()));
    assert!(
        report.notes.iter().any(|n| n.contains("KOS_PROFILE=edge")),
        "{report:?}"
    );
    // system.env still selects federation_node; the option overrides it.
    let l = load(tmp.path(), &opts(pg())).unwrap();
    assert_eq!(l.profile_id, "federation_node");
    let l = load(
        tmp.path(),
        &LoadOptions {
            profile: Some("edge".into()),
            ..opts(pg())
        },
    )
    .unwrap();
    assert_eq!(l.config.profile, ProfileKind::Edge);
    let l = load(tmp.path(), &opts_env(pg(), &[("KOS_PROFILE", "edge")])).unwrap();
    assert_eq!(l.profile_id, "edge");
    // The agent files of federation_node are there, but edge offers no services.
    let agents: Vec<&str> = l
        .warnings
        .iter()
        .filter(|w| w.path.starts_with("agents."))
        .inspect(|w| assert!(w.message.contains("is not listed in `services`"), "{w}"))
        .map(|w| w.path.as_str())
        .collect();
    assert_eq!(
        agents,
        [
            "agents.moderatorAgent",
            "agents.schedulerAgent",
            "agents.synthesizerAgent",
            "agents.translatorAgent"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// The seed examples
// ---------------------------------------------------------------------------------------

fn seed(name: &str) -> Result<Loaded, Diagnostics> {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/seeds")
            .join(format!("{name}.yaml")),
    )
    .unwrap();
    let text = if matches!(name, "bootstrap" | "gitops") {
        format!("profile: standalone\n{text}")
    } else {
        text
    };
    assemble(
        name,
        &text,
        &format!("seeds/{name}.yaml"),
        &Overlays::default(),
        &pg(),
    )
}

fn assert_no_schema_errors(name: &str, diags: &[String]) {
    for d in diags {
        for bad in [
            "unknown key",
            "unknown value",
            "expected ",
            "not a duration",
            "not a retention",
            "invalid",
        ] {
            assert!(!d.contains(bad), "{name}: schema error: {d}");
        }
    }
}

#[test]
fn seed_standalone_only_chroma_is_refused() {
    let d = seed("standalone").unwrap_err();
    let all: Vec<String> = d.0.iter().map(ToString::to_string).collect();
    assert_no_schema_errors("standalone", &all);
    assert_eq!(
        errors(&d),
        [
            "seeds/standalone.yaml:28:9: vector.type: `chroma` is not supported by kOS node; use `qdrant` (server) or `embedded` (in-process)"
        ]
    );
    assert_eq!(
        warnings(&d.0),
        [
            "seeds/standalone.yaml:24:16: warning: messaging.persistence: `indexeddb` is a browser store; the node keeps events in its database"
        ]
    );
}

#[test]
fn seed_developer_node_needs_qdrant_and_redis() {
    let d = seed("developer_node").unwrap_err();
    let all: Vec<String> = d.0.iter().map(ToString::to_string).collect();
    assert_no_schema_errors("developer_node", &all);
    assert_eq!(
        errors(&d),
        [
            "seeds/developer_node.yaml:24:11: storage.vector: Qdrant is not in this build: it was compiled without the `qdrant` cargo feature",
            "seeds/developer_node.yaml:24:11: vector.url: `storage.vector` selects Qdrant, which needs `vector.url` (http://...)",
            "seeds/developer_node.yaml:30:8: messaging.bus: Redis is not in this build: it was compiled without the `redis` cargo feature",
            "seeds/developer_node.yaml:30:8: redis.url: `messaging.bus` selects Redis, which needs `redis.url` (redis://...)",
        ]
    );
    // With every backend in the build and the two URLs set, the seed is valid.
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seeds/developer_node.yaml"),
    )
    .unwrap();
    let text =
        format!("{text}vector:\n  url: http://qdrant:6334\nredis:\n  url: redis://redis:6379/0\n");
    assemble(
        "developer_node",
        &text,
        "d.yaml",
        &Overlays::default(),
        &Capabilities::ALL,
    )
    .unwrap();
}

#[test]
fn seed_federation_node_refuses_weaviate_redis_cluster_and_mqtt() {
    let d = seed("federation_node").unwrap_err();
    let all: Vec<String> = d.0.iter().map(ToString::to_string).collect();
    assert_no_schema_errors("federation_node", &all);
    assert_eq!(
        errors(&d),
        [
            "seeds/federation_node.yaml:28:11: storage.vector: `weaviate` is not supported by kOS node; use `qdrant` (server) or `embedded` (in-process)",
            "seeds/federation_node.yaml:34:18: message_bus.redis_cluster: Redis Cluster is not supported; point `redis.url` at one Redis server",
            "seeds/federation_node.yaml:35:11: message_bus.pubsub: MQTT is not supported by kOS node; use `redis` or `none`",
        ]
    );
}

#[test]
fn seeds_enterprise_bootstrap_gitops_are_valid() {
    let l = seed("enterprise").unwrap_or_else(|d| panic!("{d}"));
    let ws = warnings(&l.warnings);
    assert_no_schema_errors("enterprise", &ws);
    let paths: Vec<&str> = l.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "orchestration.kubernetes",
            "orchestration.autoscale",
            "monitoring.logs",
            "monitoring.alerting",
            "auth.ldap",
            "auth.saml",
            "backup.s3_bucket"
        ],
        "{ws:#?}"
    );
    assert!(
        ws[0].starts_with("seeds/enterprise.yaml:7:15: warning: orchestration.kubernetes:"),
        "{ws:#?}"
    );
    assert_eq!(
        l.config.plugins.enabled,
        [
            "audit_log",
            "compliance_checker",
            "data_governance",
            "security_scanner"
        ]
    );

    let l = seed("bootstrap").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        warnings(&l.warnings),
        [
            "seeds/bootstrap.yaml:4:11: warning: bootstrap.method: zero-touch provisioning is not implemented; this setting has no effect"
        ]
    );
    assert_eq!(
        l.config.bootstrap.enrollment_server.as_deref(),
        Some("https://provision.kos.example.com")
    );

    let l = seed("gitops").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        warnings(&l.warnings),
        [
            "seeds/gitops.yaml:4:15: warning: gitops.repository: GitOps sync is not implemented; apply changes through the config API"
        ]
    );
    assert_eq!(
        l.config.gitops.sync_interval.get(),
        std::time::Duration::from_secs(300)
    );
    assert_eq!(l.config.gitops.branch, "production");
}

// ---------------------------------------------------------------------------------------
// Error locations
// ---------------------------------------------------------------------------------------

const SA: ProfileKind = ProfileKind::Standalone;

#[test]
fn broken_yaml_is_located() {
    let errs = load_doc_errors(
        SA,
        "profile: standalone\nllms: [ollama, vllm\nlogging:\n  level: info\n",
        pg(),
    );
    assert_eq!(
        errs,
        ["profiles/standalone.yaml:3:8: invalid YAML: illegal placement of ':' indicator"]
    );
    let errs = load_doc_errors(
        SA,
        "profile: standalone\nlogging:\n  level: info\n level: debug\n",
        pg(),
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("profiles/standalone.yaml:4:") && errs[0].contains("invalid YAML"),
        "{errs:#?}"
    );
    let errs = load_doc_errors(
        SA,
        "profile: standalone\nlogging:\n  level: info\nlogging: {}\n",
        pg(),
    );
    assert_eq!(
        errs,
        ["profiles/standalone.yaml:4:1: duplicate key `logging` (first defined at line 2)"]
    );
}

#[test]
fn unknown_key_has_did_you_mean() {
    let errs = load_doc_errors(
        SA,
        "profile: standalone\napi:\n  lisen: 127.0.0.1:7421\n",
        pg(),
    );
    assert_eq!(
        errs,
        ["profiles/standalone.yaml:3:3: api.lisen: unknown key `lisen` (did you mean `listen`?)"]
    );
    let errs = load_doc_errors(SA, "profile: standalone\nzzz: 1\n", pg());
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with(
            "profiles/standalone.yaml:2:1: zzz: unknown key `zzz`; expected one of: profile, "
        ),
        "{errs:#?}"
    );
}

#[test]
fn wrong_type_is_located() {
    let errs = load_doc_errors(
        SA,
        "profile: standalone\napi:\n  max_body_bytes: lots\n",
        pg(),
    );
    // The rule "must be at least 1024" is not repeated about the placeholder value.
    assert_eq!(
        errs,
        [
            "profiles/standalone.yaml:3:19: api.max_body_bytes: expected an integer between 0 and 4294967295, found `lots`"
        ]
    );
}

#[test]
fn unknown_enum_value_has_hint() {
    let errs = load_doc_errors(
        SA,
        "profile: standalone\nstorage:\n  database: postgress\n",
        pg(),
    );
    assert_eq!(
        errs,
        [
            "profiles/standalone.yaml:3:13: storage.database: unknown value `postgress`; expected one of: sqlite, postgresql (did you mean `postgresql`?)"
        ]
    );
}

#[test]
fn cross_field_rules_are_located() {
    // In a directory laid out by `kos init`, klp/klp_settings.yaml holds every KLP key and so
    // shadows `federation.klp` of the profile: without it, the profile's value counts.
    let doc = "profile: standalone\nfederation:\n  klp:\n    enabled: true\n";
    load_doc(SA, doc, pg()).unwrap();
    let tmp = init(SA);
    fs::remove_file(tmp.path().join("klp/klp_settings.yaml")).unwrap();
    write(tmp.path(), "profiles/standalone.yaml", doc);
    let errs = errors(&load(tmp.path(), &opts(pg())).unwrap_err());
    assert_eq!(
        errs,
        [
            "profiles/standalone.yaml:4:14: federation.klp.enabled: the standalone profile runs without peers; KLP must be disabled (use federation_node to federate)"
        ]
    );

    let errs = load_doc_errors(
        ProfileKind::FederationNode,
        "profile: federation_node\nauth:\n  jwt: disabled\n",
        pg(),
    );
    assert_eq!(
        errs,
        [
            "profiles/federation_node.yaml:3:8: auth.jwt: the federation_node profile requires JWT authentication (`jwt: enabled`)"
        ]
    );

    let errs = load_doc_errors(
        ProfileKind::Enterprise,
        "profile: enterprise\nstorage:\n  database: sqlite\n",
        pg(),
    );
    assert_eq!(
        errs,
        [
            "profiles/enterprise.yaml:3:13: storage.database: the enterprise profile requires PostgreSQL (`storage.database: postgresql`)"
        ]
    );
}

#[test]
fn non_loopback_api_needs_auth() {
    let doc = "profile: standalone\napi:\n  listen: 0.0.0.0:7420\n";
    let errs = load_doc_errors(SA, doc, pg());
    assert_eq!(
        errs,
        [
            "profiles/standalone.yaml:3:11: api.listen: binding the API to non-loopback address 0.0.0.0 needs authentication, which this build does not have; use 127.0.0.1 or ::1"
        ]
    );
    let with_auth = Capabilities {
        api_auth: true,
        ..pg()
    };
    // A build with authentication still needs it configured.
    let errs = load_doc_errors(SA, doc, with_auth);
    assert!(errs[0].starts_with("profiles/standalone.yaml:3:11: api.listen: binding the API to non-loopback address 0.0.0.0 needs authentication: set `auth.jwt: enabled`"), "{errs:?}");
    // With local tokens it loads, and warns that bearer tokens would cross the network in clear text.
    let l = load_doc(
        SA,
        "profile: standalone\napi:\n  listen: 0.0.0.0:7420\nauth:\n  jwt: enabled\n",
        with_auth,
    )
    .unwrap();
    assert_eq!(l.config.api.listen.to_string(), "0.0.0.0:7420");
    assert!(
        warnings(&l.warnings)
            .iter()
            .any(|w| w.contains("plain HTTP")),
        "{:?}",
        l.warnings
    );
    let l = load_doc(
        SA,
        "profile: standalone\napi:\n  listen: 0.0.0.0:7420\n  tls: {cert: tls/cert.pem, key: tls/key.pem}\nauth:\n  jwt: enabled\n",
        with_auth,
    )
    .unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    load_doc(
        SA,
        "profile: standalone\napi:\n  listen: '[::1]:7420'\n",
        pg(),
    )
    .unwrap();
}

#[test]
fn every_problem_is_reported_in_one_load() {
    let doc = "\
profile: standalone
logging:
  level: loud
  formt: json
api:
  listen: localhost:7420
  request_timeout: soon
llms: [ollama, gpt]
auth:
  jwt:
    enabled: true
services: [translatorAgent, translatorAgent]
federation:
  klp:
    enabled: true
";
    let tmp = init(SA);
    fs::remove_file(tmp.path().join("klp/klp_settings.yaml")).unwrap();
    write(tmp.path(), "profiles/standalone.yaml", doc);
    let errs = errors(&load(tmp.path(), &opts(pg())).unwrap_err());
    let p = "profiles/standalone.yaml";
    let expected = [
        format!(
            "{p}:3:10: logging.level: `loud` is not a log level; expected one of: trace, debug, info, warn, error, off"
        ),
        format!("{p}:4:3: logging.formt: unknown key `formt` (did you mean `format`?)"),
        format!("{p}:6:11: api.listen: "),
        format!("{p}:7:20: api.request_timeout: `soon` is not a duration"),
        format!(
            "{p}:8:16: llms[1]: unknown value `gpt`; expected one of: ollama, vllm, a1111, openai_compatible"
        ),
        format!("{p}:11:5: auth.jwt: invalid type: map, expected a boolean or a string"),
        format!("{p}:12:29: services[1]: `translatorAgent` is listed twice"),
        format!("{p}:15:14: federation.klp.enabled: the standalone profile runs without peers"),
    ];
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
    for (e, x) in errs.iter().zip(&expected) {
        assert!(e.starts_with(x.as_str()), "expected `{x}…`, got\n{errs:#?}");
    }
    assert!(errs[2].contains("`localhost:7420`"), "{errs:#?}");
    let lines: std::collections::BTreeSet<&str> =
        errs.iter().map(|e| e.split(':').nth(1).unwrap()).collect();
    assert!(lines.len() >= 4);
}

#[test]
fn profile_kind_problems() {
    let errs = load_doc_errors(SA, "profile: standalon\n", pg());
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("profiles/standalone.yaml:1:10: profile: unknown value `standalon`;")
            && errs[0].contains("did you mean `standalone`"),
        "{errs:#?}"
    );
    let errs = load_doc_errors(SA, "logging:\n  level: info\n", pg());
    assert_eq!(
        errs,
        [
            "profiles/standalone.yaml:1:1: profile: missing required key `profile`; expected one of: standalone, developer_node, federation_node, enterprise, edge"
        ]
    );
    let errs = load_doc_errors(
        SA,
        "profile: standalone\ndeployment_mode: clustered\n",
        pg(),
    );
    assert_eq!(
        errs,
        [
            "profiles/standalone.yaml:2:18: deployment_mode: profile `standalone` runs in deployment mode `local_standalone`, not `clustered`"
        ]
    );
    let errs = load_doc_errors(SA, "- a\n- b\n", pg());
    assert_eq!(
        errs,
        ["profiles/standalone.yaml:1:1: a profile must be a YAML mapping"]
    );
}

// ---------------------------------------------------------------------------------------
// Overlays
// ---------------------------------------------------------------------------------------

#[test]
fn env_precedence() {
    let tmp = init(SA);
    let root = tmp.path();
    assert_eq!(
        load(root, &opts(pg())).unwrap().config.logging.level.0,
        "info"
    );

    append(
        root,
        "system.env",
        "KOS_LOGGING__LEVEL=debug\nKOS_LOGGING__FORMAT=json\n",
    );
    let l = load(root, &opts(pg())).unwrap();
    assert_eq!(l.config.logging.level.0, "debug");
    assert_eq!(l.config.logging.format, LogFormat::Json);
    assert_eq!(l.tree.locate("logging.level").to_string(), "system.env:4:1");

    let l = load(root, &opts_env(pg(), &[("KOS_LOGGING__LEVEL", "warn")])).unwrap();
    assert_eq!(l.config.logging.level.0, "warn");
    assert_eq!(l.config.logging.format, LogFormat::Json);
    assert_eq!(
        l.tree.locate("logging.level").to_string(),
        "environment variable KOS_LOGGING__LEVEL"
    );
    assert!(l.warnings.is_empty(), "{:#?}", l.warnings);

    // Reserved and test variables are not config keys.
    let l = load(
        root,
        &opts_env(
            pg(),
            &[
                ("KOS_HOME", "/x"),
                ("KOS_LOG", "debug"),
                ("KOS_TEST_X", "1"),
                ("PATH", "/bin"),
            ],
        ),
    )
    .unwrap();
    assert!(l.warnings.is_empty(), "{:#?}", l.warnings);
}

#[test]
fn env_value_errors_name_the_line() {
    let tmp = init(SA);
    write(
        tmp.path(),
        "system.env",
        "# comment\nKOS_PROFILE=standalone\n\n  KOS_API__MAX_BODY_BYTES=lots\nexport KOS_LOGGING__LEVEL=loud\n",
    );
    let errs = errors(&load(tmp.path(), &opts(pg())).unwrap_err());
    assert_eq!(
        errs,
        [
            "system.env:4:3: api.max_body_bytes: expected an integer between 0 and 4294967295, found `lots`",
            "system.env:5:8: logging.level: `loud` is not a log level; expected one of: trace, debug, info, warn, error, off",
        ]
    );
    // A value that is wrong only by the rules is located in system.env too.
    write(
        tmp.path(),
        "system.env",
        "KOS_PROFILE=standalone\nKOS_FEDERATION__KLP__ENABLED=true\n",
    );
    let errs = errors(&load(tmp.path(), &opts(pg())).unwrap_err());
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with(
            "system.env:2:1: federation.klp.enabled: the standalone profile runs without peers"
        ),
        "{errs:#?}"
    );
    // A process environment value is named by its variable.
    let errs = errors(
        &load(
            tmp.path(),
            &opts_env(pg(), &[("KOS_API__LISTEN", "0.0.0.0:80")]),
        )
        .unwrap_err(),
    );
    assert!(
        errs.iter().any(|e| e.starts_with("environment variable KOS_API__LISTEN: api.listen: binding the API to non-loopback address")),
        "{errs:#?}"
    );
    // A malformed line.
    write(
        tmp.path(),
        "system.env",
        "KOS_PROFILE=standalone\nnot a line\n",
    );
    let errs = errors(&load(tmp.path(), &opts(pg())).unwrap_err());
    assert_eq!(
        errs,
        ["system.env:2:1: expected KEY=value, found `not a line`"]
    );
}

#[test]
fn misspelt_env_key_is_an_error_in_system_env_but_a_warning_in_the_environment() {
    let tmp = init(SA);
    append(tmp.path(), "system.env", "KOS_LOGING__LEVEL=debug\n");
    let errs = errors(&load(tmp.path(), &opts(pg())).unwrap_err());
    assert_eq!(
        errs,
        [
            "system.env:4:1: `KOS_LOGING__LEVEL` does not name a config key (`loging__level`); did you mean KOS_LOGGING?"
        ]
    );

    let tmp = init(SA);
    let l = load(
        tmp.path(),
        &opts_env(pg(), &[("KOS_LOGING__LEVEL", "debug")]),
    )
    .unwrap();
    assert_eq!(l.config.logging.level.0, "info");
    assert_eq!(
        warnings(&l.warnings),
        [
            "environment variable KOS_LOGING__LEVEL: warning: `KOS_LOGING__LEVEL` does not name a config key (`loging__level`); did you mean KOS_LOGGING?"
        ]
    );
    // A misspelt key below a known section is an error wherever it comes from.
    let errs = errors(
        &load(
            tmp.path(),
            &opts_env(pg(), &[("KOS_LOGGING__LEVL", "debug")]),
        )
        .unwrap_err(),
    );
    assert_eq!(
        errs,
        [
            "environment variable KOS_LOGGING__LEVL: logging.levl: unknown key `levl` (did you mean `level`?)"
        ]
    );
}

#[test]
fn klp_settings_override_the_profile() {
    let tmp = init(ProfileKind::FederationNode);
    let l = load(tmp.path(), &opts(pg())).unwrap();
    assert_eq!(
        l.config.federation.klp.listen,
        ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
    );
    assert_eq!(l.config.federation.klp.peer_discovery, PeerDiscovery::DnsSd);
    write(
        tmp.path(),
        "klp/klp_settings.yaml",
        "# mine\nenabled: true\npeer_discovery: none\nlisten:\n  - /ip4/0.0.0.0/tcp/4999\nbootstrap:\n  - /ip4/192.0.2.1/tcp/4001/p2p/12D3KooWRbw6Q5BQuGD4nHbEg1cM2Hcz9yxQ1NQVSkKbeR5JixB5\n",
    );
    let l = load(tmp.path(), &opts(pg())).unwrap();
    assert_eq!(l.config.federation.klp.listen, ["/ip4/0.0.0.0/tcp/4999"]);
    assert_eq!(l.config.federation.klp.peer_discovery, PeerDiscovery::None);
    assert_eq!(l.config.federation.klp.bootstrap.len(), 1);
    // Keys absent from klp_settings.yaml keep the profile's value.
    write(
        tmp.path(),
        "klp/klp_settings.yaml",
        "peer_discovery: none\n",
    );
    let l = load(tmp.path(), &opts(pg())).unwrap();
    assert!(l.config.federation.klp.enabled);
    assert_eq!(l.config.federation.klp.listen.len(), 2);
    // Problems in it are located in it.
    write(
        tmp.path(),
        "klp/klp_settings.yaml",
        "enabled: true\nbootstrap:\n  - /ip4/192.0.2.1/tcp/4001\n  - nowhere\n",
    );
    let errs = errors(&load(tmp.path(), &opts(pg())).unwrap_err());
    assert_eq!(
        errs,
        [
            "klp/klp_settings.yaml:3:5: federation.klp.bootstrap[0]: a bootstrap address must end in /p2p/<peer id>",
            "klp/klp_settings.yaml:4:5: federation.klp.bootstrap[1]: `nowhere` is not a multiaddr (e.g. /ip4/0.0.0.0/tcp/4001)",
        ]
    );
    write(tmp.path(), "klp/klp_settings.yaml", "enabled: false\n");
    let errs = errors(&load(tmp.path(), &opts(pg())).unwrap_err());
    assert_eq!(
        errs,
        [
            "klp/klp_settings.yaml:1:10: federation.klp.enabled: the federation_node profile requires KLP enabled",
            "profiles/federation_node.yaml:61:22: message_bus.federation_bridge: bridging the bus over KLP needs `federation.klp.enabled: true`",
        ]
    );
}

#[test]
fn agent_files() {
    let tmp = init(SA);
    write(
        tmp.path(),
        "agents/schedulerAgent.yaml",
        "max_concurrent_tasks: 9\n",
    );
    let l = load(tmp.path(), &opts(pg())).unwrap();
    assert_eq!(l.config.agents["schedulerAgent"].max_concurrent_tasks, 9);

    write(tmp.path(), "agents/translatorAgnet.yaml", "enabled: true\n");
    let errs = errors(&load(tmp.path(), &opts(pg())).unwrap_err());
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("agents/translatorAgnet.yaml:1:1: agents.translatorAgnet: `translatorAgnet` is not an agent service;"), "{errs:#?}");
    assert!(
        errs[0].ends_with("(did you mean `translatorAgent`?)"),
        "{errs:#?}"
    );
    fs::remove_file(tmp.path().join("agents/translatorAgnet.yaml")).unwrap();

    write(
        tmp.path(),
        "agents/synthesizerAgent.yaml",
        "enabled: true\nmax_concurent_tasks: 0\n",
    );
    let l = load(tmp.path(), &opts(pg())).unwrap_err();
    assert_eq!(
        errors(&l),
        [
            "agents/synthesizerAgent.yaml:2:1: agents.synthesizerAgent.max_concurent_tasks: unknown key `max_concurent_tasks` (did you mean `max_concurrent_tasks`?)"
        ]
    );
    write(
        tmp.path(),
        "agents/synthesizerAgent.yaml",
        "enabled: true\n",
    );
    let l = load(tmp.path(), &opts(pg())).unwrap();
    assert_eq!(
        warnings(&l.warnings),
        [
            "agents/synthesizerAgent.yaml:1:1: warning: agents.synthesizerAgent: configured, but `synthesizerAgent` is not listed in `services`, so the node does not offer it"
        ]
    );
}

#[test]
fn env_lists_are_comma_separated() {
    let tmp = init(SA);
    let l = load(tmp.path(), &opts_env(pg(), &[("KOS_LLMS", "ollama,vllm")])).unwrap();
    assert_eq!(l.config.llms, [LlmBackend::Ollama, LlmBackend::Vllm]);
    append(
        tmp.path(),
        "system.env",
        "KOS_LLMS= vllm , openai_compatible,\n",
    );
    let l = load(tmp.path(), &opts(pg())).unwrap();
    assert_eq!(
        l.config.llms,
        [LlmBackend::Vllm, LlmBackend::OpenaiCompatible]
    );
    let errs =
        errors(&load(tmp.path(), &opts_env(pg(), &[("KOS_LLMS", "ollama,gtp")])).unwrap_err());
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("environment variable KOS_LLMS: llms[1]: unknown value `gtp`"),
        "{errs:#?}"
    );
    // Environment names match agent names case-insensitively.
    let l = load(
        tmp.path(),
        &opts_env(
            pg(),
            &[("KOS_AGENTS__SCHEDULERAGENT__MAX_CONCURRENT_TASKS", "7")],
        ),
    )
    .unwrap();
    assert_eq!(l.config.agents["schedulerAgent"].max_concurrent_tasks, 7);
}

// ---------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------

#[test]
fn secrets_come_only_from_secrets_env_and_never_show() {
    let tmp = init(SA);
    append(
        tmp.path(),
        "secrets.env",
        "KOS_DATABASE__PASSWORD=s3cret\nOPENAI_API_KEY=sk-abc123\n",
    );
    let l = load(tmp.path(), &opts(pg())).unwrap();
    assert!(l.warnings.is_empty(), "{:#?}", l.warnings);
    assert_eq!(
        l.config.database.password.as_ref().unwrap().expose(),
        "s3cret"
    );
    assert_eq!(
        l.extra_secrets.keys().collect::<Vec<_>>(),
        ["OPENAI_API_KEY"]
    );
    assert_eq!(l.extra_secrets["OPENAI_API_KEY"].expose(), "sk-abc123");
    let shown = to_yaml(&l.config);
    for out in [
        &shown,
        &l.canonical,
        &format!("{l:?}"),
        &format!("{:?}", l.config),
    ] {
        assert!(
            !out.contains("s3cret") && !out.contains("sk-abc123"),
            "secret leaked:\n{out}"
        );
    }
    assert!(shown.contains("password: <redacted>"), "{shown}");
    assert!(
        l.canonical.contains(r#""password":"<redacted>""#),
        "{}",
        l.canonical
    );
    // The snapshot id depends on whether a secret is set, not on its value.
    write(tmp.path(), "secrets.env", "KOS_DATABASE__PASSWORD=other\n");
    assert_eq!(
        load(tmp.path(), &opts(pg())).unwrap().snapshot_id,
        l.snapshot_id
    );
    // The process environment may carry secrets too.
    write(tmp.path(), "secrets.env", "");
    let l2 = load(
        tmp.path(),
        &opts_env(pg(), &[("KOS_DATABASE__PASSWORD", "s3cret")]),
    )
    .unwrap();
    assert_eq!(
        l2.config.database.password.as_ref().unwrap().expose(),
        "s3cret"
    );
    assert_eq!(l2.snapshot_id, l.snapshot_id);
}

#[test]
fn secrets_elsewhere_are_errors() {
    let tmp = init(SA);
    append(tmp.path(), "system.env", "KOS_DATABASE__PASSWORD=s3cret\n");
    let d = load(tmp.path(), &opts(pg())).unwrap_err();
    assert_eq!(
        errors(&d),
        [
            "system.env:4:1: database.password: is a secret: set KOS_DATABASE__PASSWORD in secrets.env or the environment, not here"
        ]
    );
    assert!(!d.to_string().contains("s3cret"));

    let errs = load_doc_errors(SA, "profile: standalone\ndatabase:\n  password: x\n", pg());
    assert_eq!(
        errs,
        [
            "profiles/standalone.yaml:3:13: database.password: is a secret: set KOS_DATABASE__PASSWORD in secrets.env or the environment, not here"
        ]
    );
    let errs = load_doc_errors(SA, "profile: standalone\nauth:\n  jwt_secret: x\n", pg());
    assert_eq!(
        errs,
        [
            "profiles/standalone.yaml:3:15: auth.jwt_secret: is a secret: set KOS_AUTH__JWT_SECRET in secrets.env or the environment, not here"
        ]
    );

    let tmp = init(SA);
    append(tmp.path(), "secrets.env", "KOS_LOGGING__LEVEL=debug\n");
    let errs = errors(&load(tmp.path(), &opts(pg())).unwrap_err());
    let line = fs::read_to_string(tmp.path().join("secrets.env"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(
        errs,
        [format!(
            "secrets.env:{line}:1: logging.level: `KOS_LOGGING__LEVEL` is not a secret; set it in system.env or the profile"
        )]
    );
}

#[test]
fn password_in_url_is_an_error() {
    let doc =
        "profile: developer_node\ndatabase:\n  url: postgres://kos:hunter2@db.example:5432/kos\n";
    let d = load_doc(ProfileKind::DeveloperNode, doc, pg()).unwrap_err();
    assert_eq!(
        errors(&d),
        [
            "profiles/developer_node.yaml:3:8: database.url: the URL contains a password; remove it and set KOS_DATABASE__PASSWORD in secrets.env"
        ]
    );
    assert!(!d.to_string().contains("hunter2"));
    // Without a password the same URL is fine.
    load_doc(
        ProfileKind::DeveloperNode,
        "profile: developer_node\ndatabase:\n  url: postgres://kos@db.example:5432/kos\n",
        pg(),
    )
    .unwrap();
}

#[cfg(unix)]
#[test]
fn readable_secrets_env_warns() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = init(SA);
    let l = load(tmp.path(), &opts(pg())).unwrap();
    assert!(l.warnings.is_empty(), "{:#?}", l.warnings);
    fs::set_permissions(
        tmp.path().join("secrets.env"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let l = load(tmp.path(), &opts(pg())).unwrap();
    assert_eq!(
        warnings(&l.warnings),
        ["secrets.env: warning: readable by other users (mode 644); run `chmod 600 secrets.env`"]
    );
}

#[test]
fn a_list_where_a_mapping_belongs_is_an_error() {
    let e = load_doc_errors(
        ProfileKind::Standalone,
        "profile: standalone\nlogging: [debug, json]\n",
        Capabilities::default(),
    );
    assert_eq!(
        e,
        vec![
            "profiles/standalone.yaml:2:10: logging: expected a mapping, found a list".to_string()
        ]
    );
    // The list form stays valid where the seeds use it.
    assert!(
        load_doc(
            ProfileKind::Enterprise,
            "profile: enterprise\nplugins: [audit_log]\n",
            pg()
        )
        .is_ok()
    );
}

#[test]
fn a_bad_value_is_reported_once() {
    let e = load_doc_errors(
        ProfileKind::Enterprise,
        "profile: enterprise\nbackup:\n  retention: [1]\n",
        pg(),
    );
    assert_eq!(
        e,
        vec![
            "profiles/enterprise.yaml:3:14: backup.retention: expected a string, found a list"
                .to_string()
        ]
    );
}

#[test]
fn a_bad_env_line_does_not_hide_profile_errors() {
    let dir = init(ProfileKind::Standalone);
    append(dir.path(), "system.env", "this is not an assignment\n");
    write(
        dir.path(),
        "profiles/standalone.yaml",
        "profile: standalone\napi:\n  lisen: 1\n",
    );
    let e = errors(&load(dir.path(), &opts(Capabilities::default())).unwrap_err());
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e.iter()
            .any(|m| m.starts_with("system.env:") && m.contains("expected KEY=value")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("profiles/standalone.yaml:3:3: api.lisen")),
        "{e:#?}"
    );
}

#[test]
fn fresh_federation_node_has_no_override_warnings() {
    let dir = init(ProfileKind::FederationNode);
    let l = load(dir.path(), &opts(pg())).unwrap();
    assert!(
        warnings(&l.warnings)
            .iter()
            .all(|w| !w.contains("overridden")),
        "{:#?}",
        l.warnings
    );
    // A different value in the profile is overridden, and the node says where.
    let p = "profiles/federation_node.yaml";
    let text = std::fs::read_to_string(dir.path().join(p)).unwrap();
    write(
        dir.path(),
        p,
        &text.replace("peer_discovery: dns_sd", "peer_discovery: none"),
    );
    let l = load(dir.path(), &opts(pg())).unwrap();
    let w = warnings(&l.warnings);
    assert!(
        w.iter()
            .any(|w| w
                .contains("federation.klp.peer_discovery: overridden by klp/klp_settings.yaml:")),
        "{w:#?}"
    );
}

#[test]
fn dns_sd_needs_a_tcp_listener() {
    let dir = init(ProfileKind::FederationNode);
    write(
        dir.path(),
        "klp/klp_settings.yaml",
        "enabled: true\npeer_discovery: dns_sd\nlisten: [/ip4/0.0.0.0/udp/4001/quic-v1]\n",
    );
    let e = errors(&load(dir.path(), &opts(pg())).unwrap_err());
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].starts_with("klp/klp_settings.yaml:2:17: federation.klp.peer_discovery: DNS-SD advertises a TCP port"), "{e:#?}");
}

#[test]
fn klp_needs_a_listen_address() {
    let dir = init(ProfileKind::FederationNode);
    write(
        dir.path(),
        "klp/klp_settings.yaml",
        "enabled: true\nlisten: []\n",
    );
    let e = errors(&load(dir.path(), &opts(pg())).unwrap_err());
    assert_eq!(
        e,
        vec!["klp/klp_settings.yaml:1:10: federation.klp.listen: KLP needs at least one listen address (e.g. /ip4/0.0.0.0/tcp/4001)".to_string()]
    );
}

#[test]
fn auth_settings() {
    let caps = Capabilities {
        api_auth: true,
        ..pg()
    };
    // The seeds' scalar spelling still loads.
    let l = load_doc(SA, "profile: standalone\nauth:\n  oidc: disabled\n", caps).unwrap();
    assert!(!l.config.auth.oidc.active());
    // A provider mapping.
    let doc = "profile: standalone\nauth:\n  oidc:\n    issuer: https://idp.example.org/realms/kos\n    audience: kos\n    role_map: {kos-admins: admin}\n    algorithms: [RS256, ES256]\n";
    let l = load_doc(SA, doc, caps).unwrap();
    let o = &l.config.auth.oidc;
    assert!(o.active());
    assert_eq!(o.role_map["kos-admins"], kos_config::model::Role::Admin);
    // `show` output round-trips.
    let shown = kos_config::to_yaml(&l.config);
    let again = kos_config::assemble(
        "x",
        &shown,
        "show.yaml",
        &kos_config::Overlays::default(),
        &caps,
    )
    .unwrap();
    assert_eq!(again.snapshot_id, l.snapshot_id);
    assert_eq!(o.default_role, Some(kos_config::model::Role::Viewer));
    // `default_role: null` refuses unmapped tokens: it is not the default, and it survives
    // `show` (issue 10: it used to read as missing, i.e. viewer).
    let doc = "profile: standalone\nauth:\n  oidc:\n    issuer: https://idp.example.org/realms/kos\n    audience: kos\n    default_role: null\n";
    let l = load_doc(SA, doc, caps).unwrap();
    assert_eq!(l.config.auth.oidc.default_role, None);
    let shown = kos_config::to_yaml(&l.config);
    assert!(shown.contains("default_role: null"), "{shown}");
    let again = kos_config::assemble(
        "x",
        &shown,
        "show.yaml",
        &kos_config::Overlays::default(),
        &caps,
    )
    .unwrap();
    assert_eq!(again.config.auth.oidc.default_role, None);
    assert_eq!(again.snapshot_id, l.snapshot_id);
    // `~` is null too; a named role still works.
    let doc = "profile: standalone\nauth:\n  oidc: {issuer: 'https://idp.example.org', audience: kos, default_role: ~}\n";
    assert_eq!(
        load_doc(SA, doc, caps)
            .unwrap()
            .config
            .auth
            .oidc
            .default_role,
        None
    );
    let doc = "profile: standalone\nauth:\n  oidc: {issuer: 'https://idp.example.org', audience: kos, default_role: operator}\n";
    assert_eq!(
        load_doc(SA, doc, caps)
            .unwrap()
            .config
            .auth
            .oidc
            .default_role,
        Some(kos_config::model::Role::Operator)
    );
    // Every other optional setting whose default is not null must keep an explicit null too.
    // `federation.klp.remote_roles.default` defaults to none already; `null` stays none.
    let doc = "profile: standalone\nfederation:\n  klp:\n    remote_roles: {default: null}\n";
    assert_eq!(
        load_doc(SA, doc, caps)
            .unwrap()
            .config
            .federation
            .klp
            .remote_roles
            .default,
        None
    );
    // Errors, all at once and located.
    let doc = "profile: standalone\nauth:\n  jwt: enabled\n  jwt_algorithm: hs256\n  oidc:\n    issuer: http://idp.example.org\n    algoritms: [HS256]\n    algorithms: [HS256]\n";
    let e = load_doc_errors(SA, doc, caps);
    assert!(
        e.iter().any(|m| m.starts_with(
            "profiles/standalone.yaml:4:18: auth.jwt_algorithm: hs256 needs a secret"
        )),
        "{e:#?}"
    );
    assert!(e.iter().any(|m| m.starts_with("profiles/standalone.yaml:6:13: auth.oidc.issuer: `http://idp.example.org`: an OIDC issuer must use https")), "{e:#?}");
    assert!(
        e.iter().any(|m| m
            .contains("auth.oidc.algoritms: unknown key `algoritms` (did you mean `algorithms`?)")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("auth.oidc.algorithms[0]: unknown value `HS256`")),
        "{e:#?}"
    );
    assert!(e.iter().any(|m| m.contains("auth.oidc.audience: an OIDC provider needs the expected audience")), "{e:#?}");
    // http is fine on a loopback issuer (a local provider).
    load_doc(SA, "profile: standalone\nauth:\n  oidc: {issuer: 'http://127.0.0.1:8080/openid', audience: x}\n", caps).unwrap();
    let e = load_doc_errors(SA, "profile: standalone\nauth:\n  oidc: required\n", caps);
    assert!(
        e[0].contains("OIDC is required but no provider is configured"),
        "{e:#?}"
    );
}

/// Issue 10: a document with thousands of problems lists at most `MAX_DIAGNOSTICS` of them
/// and one error saying more were found (a 1 MiB body of unknown keys used to cost ~100 MiB
/// of diagnostics and an 18 MB answer), and such a document still fails. The same cap holds
/// for a federation snapshot's out-of-scope paths.
#[test]
fn problems_are_listed_up_to_a_cap() {
    use kos_config::diag::MAX_DIAGNOSTICS;
    let mut doc = String::from("profile: standalone\n");
    for i in 0..5000 {
        doc.push_str(&format!("unknown{i}: 1\n"));
    }
    let errs = load_doc_errors(ProfileKind::Standalone, &doc, pg());
    assert_eq!(errs.len(), MAX_DIAGNOSTICS + 1, "{:?}", &errs[..3]);
    assert_eq!(
        errs.iter()
            .filter(|e| e.contains("too many problems: only the first 1000 are listed"))
            .count(),
        1
    );
    assert_eq!(
        errs.iter().filter(|e| e.contains("unknown key")).count(),
        MAX_DIAGNOSTICS
    );

    let mut content = String::from("");
    for i in 0..5000 {
        content.push_str(&format!("outside{i}: 1\n"));
    }
    let d = kos_config::federation::check_content("monitoring", &content, "snapshot").unwrap_err();
    assert_eq!(d.0.len(), MAX_DIAGNOSTICS + 1);
    assert!(d.0.iter().all(|d| d.is_error()));
}
