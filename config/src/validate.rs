//! Cross-field rules: what a profile requires, what this build supports, what is unsafe.

use std::collections::BTreeSet;

use crate::diag::{Diagnostic, Diagnostics, did_you_mean};
use crate::model::*;
use crate::tree::Node;

/// What this build of kOS node can run (from its cargo features). A backend the build lacks
/// is rejected at validation, naming the feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// cargo feature `postgres`: the PostgreSQL store.
    pub postgres: bool,
    /// cargo feature `redis`: the Redis event bus and cache.
    pub redis: bool,
    /// cargo feature `qdrant`: the Qdrant server client.
    pub qdrant: bool,
    /// The in-process vector engine.
    pub embedded_vector: bool,
    /// API authentication (needed to bind the API beyond loopback).
    pub api_auth: bool,
}

impl Capabilities {
    /// Everything on (for tests of the rules that do not concern capabilities).
    pub const ALL: Capabilities = Capabilities {
        postgres: true,
        redis: true,
        qdrant: true,
        embedded_vector: true,
        api_auth: true,
    };
}

struct Ctx<'a> {
    tree: &'a Node,
    out: &'a mut Diagnostics,
}

impl Ctx<'_> {
    fn error(&mut self, path: &str, msg: impl Into<String>) {
        let loc = self.tree.locate(path).clone();
        self.out.push(Diagnostic::error(loc, path, msg));
    }

    /// An error about `path`, located at `at` (for a missing key, the setting that needs it).
    fn error_at(&mut self, at: &str, path: &str, msg: impl Into<String>) {
        let loc = self.tree.locate(at).clone();
        self.out.push(Diagnostic::error(loc, path, msg));
    }

    /// Whether the value at `path` was set by the user (not only by the built-in preset).
    fn user_set(&self, path: &str) -> bool {
        self.tree.at_path(path).is_some_and(|n| {
            n.value != crate::tree::Value::Null && !n.loc.source.starts_with("<built-in")
        })
    }

    fn warn(&mut self, path: &str, msg: impl Into<String>) {
        let loc = self.tree.locate(path).clone();
        self.out.push(Diagnostic::warning(loc, path, msg));
    }

    /// Path of whichever spelling the user set (for locating), the short form first.
    fn set_path(&self, a: &'static str, b: &'static str) -> &'static str {
        if self.user_set(b) && !self.user_set(a) {
            b
        } else {
            a
        }
    }
}

/// Applies every cross-field rule, appending diagnostics.
pub fn validate(c: &Config, tree: &Node, caps: &Capabilities, out: &mut Diagnostics) {
    let mut cx = Ctx { tree, out };
    let kind = c.profile;

    // Deployment mode follows the profile.
    if c.deployment_mode != kind.deployment_mode() {
        cx.error(
            "deployment_mode",
            format!(
                "profile `{kind}` runs in deployment mode `{}`, not `{}`",
                kind.deployment_mode(),
                c.deployment_mode
            ),
        );
    }

    // Two spellings of one setting must agree.
    let database = agree(
        &mut cx,
        "storage.database",
        c.storage.database,
        "database.type",
        c.database.type_,
    );
    let vector = agree(
        &mut cx,
        "storage.vector",
        c.storage.vector,
        "vector.type",
        c.vector.type_,
    );
    let bus = agree(
        &mut cx,
        "messaging.bus",
        c.messaging.bus,
        "messaging.type",
        c.messaging.type_,
    );
    let database = database.unwrap_or(DatabaseKind::Sqlite);
    let vector = vector.unwrap_or(VectorKind::None);
    let bus = bus.unwrap_or(BusKind::Memory);
    let cache = c.storage.cache.unwrap_or(CacheKind::None);
    let db_path = cx.set_path("storage.database", "database.type");
    let vector_path = cx.set_path("storage.vector", "vector.type");
    let bus_path = cx.set_path("messaging.bus", "messaging.type");
    let klp = &c.federation.klp;

    // What each profile requires.
    match kind {
        ProfileKind::Standalone => {
            if klp.enabled {
                cx.error("federation.klp.enabled", "the standalone profile runs without peers; KLP must be disabled (use federation_node to federate)");
            }
            if database != DatabaseKind::Sqlite {
                cx.error(
                    db_path,
                    "the standalone profile uses the embedded SQLite database",
                );
            }
        }
        ProfileKind::Edge => {
            if database != DatabaseKind::Sqlite {
                cx.error(
                    db_path,
                    "the edge profile uses the embedded SQLite database",
                );
            }
            if bus != BusKind::Memory {
                cx.error(bus_path, "the edge profile uses the in-memory bus");
            }
            if cache == CacheKind::Redis {
                cx.error("storage.cache", "the edge profile has no Redis");
            }
            if vector == VectorKind::Qdrant {
                cx.error(
                    vector_path,
                    "the edge profile has no Qdrant server; use `embedded` or `none`",
                );
            }
        }
        ProfileKind::FederationNode => {
            if !klp.enabled {
                cx.error(
                    "federation.klp.enabled",
                    "the federation_node profile requires KLP enabled",
                );
            }
            if !c.auth.jwt.is_enabled() {
                cx.error(
                    "auth.jwt",
                    "the federation_node profile requires JWT authentication (`jwt: enabled`)",
                );
            }
        }
        ProfileKind::Enterprise => {
            if database != DatabaseKind::Postgresql {
                cx.error(
                    db_path,
                    "the enterprise profile requires PostgreSQL (`storage.database: postgresql`)",
                );
            }
            if !c.auth.rbac.is_enabled() {
                cx.error(
                    "auth.rbac",
                    "the enterprise profile requires RBAC (`rbac: enabled`)",
                );
            }
        }
        ProfileKind::DeveloperNode => {}
    }

    // Backends and what this build has.
    match database {
        DatabaseKind::Sqlite => {
            if c.database.location.trim().is_empty() {
                cx.error(
                    "database.location",
                    "SQLite needs a directory for its database file",
                );
            }
        }
        DatabaseKind::Postgresql => {
            if !caps.postgres {
                cx.error(db_path, "PostgreSQL is not in this build: it was compiled without the `postgres` cargo feature");
            }
            check_url(
                &mut cx,
                "database.url",
                c.database.url.as_deref(),
                &["postgres", "postgresql"],
                "PostgreSQL",
                db_path,
            );
        }
    }
    if c.database.max_connections == 0 {
        cx.error("database.max_connections", "must be at least 1");
    } else if c.database.min_connections > c.database.max_connections {
        cx.error(
            "database.min_connections",
            format!(
                "is larger than max_connections ({})",
                c.database.max_connections
            ),
        );
    }

    let uses_redis =
        bus == BusKind::Redis || cache == CacheKind::Redis || c.message_bus.pubsub == PubSub::Redis;
    if uses_redis {
        let path = if bus == BusKind::Redis {
            bus_path
        } else if cache == CacheKind::Redis {
            "storage.cache"
        } else {
            "message_bus.pubsub"
        };
        if !caps.redis {
            cx.error(
                path,
                "Redis is not in this build: it was compiled without the `redis` cargo feature",
            );
        }
        check_url(
            &mut cx,
            "redis.url",
            c.redis.url.as_deref(),
            &["redis", "rediss"],
            "Redis",
            path,
        );
    }
    if c.message_bus.redis_cluster {
        cx.error(
            "message_bus.redis_cluster",
            "Redis Cluster is not supported; point `redis.url` at one Redis server",
        );
    }
    if c.message_bus.pubsub == PubSub::Mqtt {
        cx.error(
            "message_bus.pubsub",
            "MQTT is not supported by kOS node; use `redis` or `none`",
        );
    }
    if c.message_bus.federation_bridge == FederationBridge::Klp && !klp.enabled {
        cx.error(
            "message_bus.federation_bridge",
            "bridging the bus over KLP needs `federation.klp.enabled: true`",
        );
    }

    match vector {
        VectorKind::None => {}
        VectorKind::Embedded => {
            if !caps.embedded_vector {
                cx.error(
                    vector_path,
                    "the in-process vector engine is not in this build",
                );
            }
        }
        VectorKind::Qdrant => {
            if !caps.qdrant {
                cx.error(vector_path, "Qdrant is not in this build: it was compiled without the `qdrant` cargo feature");
            }
            check_url(
                &mut cx,
                "vector.url",
                c.vector.url.as_deref(),
                &["http", "https"],
                "Qdrant",
                vector_path,
            );
        }
        VectorKind::Chroma | VectorKind::Weaviate => {
            cx.error(vector_path, format!("`{vector}` is not supported by kOS node; use `qdrant` (server) or `embedded` (in-process)"));
        }
    }

    // The API.
    let ip = c.api.listen.ip();
    if !ip.is_loopback() {
        if !caps.api_auth {
            cx.error(
                "api.listen",
                format!("binding the API to non-loopback address {ip} needs authentication, which this build does not have; use 127.0.0.1 or ::1"),
            );
        } else if !c.auth.configured() {
            cx.error(
                "api.listen",
                format!("binding the API to non-loopback address {ip} needs authentication: set `auth.jwt: enabled` or an `auth.oidc` provider"),
            );
        } else if c.api.tls.is_none() {
            cx.warn("api.listen", format!("the API on {ip} is plain HTTP: bearer tokens cross the network in clear text; set `api.tls`"));
        }
    }
    if let Some(tls) = &c.api.tls {
        if tls.cert.trim().is_empty() {
            cx.error(
                "api.tls.cert",
                "needs the path of a PEM certificate (chain)",
            );
        }
        if tls.key.trim().is_empty() {
            cx.error("api.tls.key", "needs the path of a PEM private key");
        }
    }
    if c.api.metrics_auth != MetricsAuth::None && !c.auth.configured() {
        cx.error(
            "api.metrics_auth",
            "protecting /metrics needs authentication configured (auth.jwt or auth.oidc)",
        );
    }

    // Authentication.
    let a = &c.auth;
    match (a.jwt.is_enabled(), a.jwt_algorithm, &a.jwt_secret) {
        (true, JwtAlgorithm::Hs256, None) => {
            cx.error(
                "auth.jwt_algorithm",
                "hs256 needs a secret: set KOS_AUTH__JWT_SECRET (at least 32 bytes) in secrets.env",
            );
        }
        (true, JwtAlgorithm::Hs256, Some(secret)) if secret.expose().len() < 32 => {
            cx.error("auth.jwt_secret", "must be at least 32 bytes for HS256");
        }
        (_, JwtAlgorithm::Eddsa, Some(_)) => {
            cx.warn("auth.jwt_secret", "is set but unused: local tokens are signed with the EdDSA token key (`jwt_algorithm: hs256` to use it)");
        }
        _ => {}
    }
    if a.token_leeway.get() > std::time::Duration::from_secs(300) {
        cx.error("auth.token_leeway", "must be at most 5m");
    }
    let o = &a.oidc;
    if o.mode != Requirement::Disabled {
        match &o.issuer {
            None if o.mode == Requirement::Required => {
                cx.error("auth.oidc", "OIDC is required but no provider is configured: set `auth.oidc.issuer` and `auth.oidc.audience`");
            }
            None => cx.warn(
                "auth.oidc",
                "has no effect without a provider (`issuer`, `audience`)",
            ),
            Some(issuer) => {
                if let Err(e) = check_issuer(issuer) {
                    cx.error("auth.oidc.issuer", e);
                }
                if o.audience.as_deref().is_none_or(str::is_empty) {
                    cx.error_at(
                        "auth.oidc.issuer",
                        "auth.oidc.audience",
                        "an OIDC provider needs the expected audience (usually the client id)",
                    );
                }
                if o.algorithms.is_empty() {
                    cx.error("auth.oidc.algorithms", "must list at least one algorithm");
                }
                if o.roles_claim.trim().is_empty() {
                    cx.error("auth.oidc.roles_claim", "must name a claim");
                }
            }
        }
    }

    if c.api.max_connections == 0 {
        cx.error("api.max_connections", "must be at least 1");
    }
    if c.api.max_connections_per_ip == 0 || c.api.max_connections_per_ip > c.api.max_connections {
        cx.error(
            "api.max_connections_per_ip",
            "must be at least 1 and at most api.max_connections",
        );
    }
    if c.api.max_body_bytes < 1024 {
        cx.error("api.max_body_bytes", "must be at least 1024");
    }
    if c.api.request_timeout.get().is_zero() {
        cx.error("api.request_timeout", "must be greater than zero");
    }
    if c.api.shutdown_grace.get() > std::time::Duration::from_secs(600) {
        cx.error("api.shutdown_grace", "must be at most 10m");
    }
    if c.auth.session_timeout.get().is_zero() {
        cx.error("auth.session_timeout", "must be greater than zero");
    }

    // KLP addresses are multiaddrs.
    for (field, list) in [("listen", &klp.listen), ("bootstrap", &klp.bootstrap)] {
        for (i, a) in list.iter().enumerate() {
            if !a.starts_with('/') || a.contains(char::is_whitespace) || a.len() > 512 {
                cx.error(
                    &format!("federation.klp.{field}[{i}]"),
                    format!("`{a}` is not a multiaddr (e.g. /ip4/0.0.0.0/tcp/4001)"),
                );
            }
        }
    }
    if klp.network.is_empty()
        || !klp
            .network
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || klp.network.len() > 64
    {
        cx.error(
            "federation.klp.network",
            "must be 1-64 letters, digits, `-` or `_`",
        );
    }
    let hs = klp.handshake_timeout.get();
    if hs < std::time::Duration::from_millis(500) || hs > std::time::Duration::from_secs(60) {
        cx.error(
            "federation.klp.handshake_timeout",
            "must be between 500ms and 60s",
        );
    }
    if klp.max_connections == 0 {
        cx.error("federation.klp.max_connections", "must be at least 1");
    }
    if klp.enabled
        && klp.peer_discovery == PeerDiscovery::DnsSd
        && !klp.listen.is_empty()
        && !klp.listen.iter().any(|a| a.contains("/tcp/"))
    {
        cx.error(
            "federation.klp.peer_discovery",
            "DNS-SD advertises a TCP port: add a TCP listen address (e.g. /ip4/0.0.0.0/tcp/4001)",
        );
    }
    // (On standalone, enabling KLP is already the error; do not pile on.)
    if klp.enabled && klp.listen.is_empty() && kind != ProfileKind::Standalone {
        cx.error_at(
            "federation.klp.enabled",
            "federation.klp.listen",
            "KLP needs at least one listen address (e.g. /ip4/0.0.0.0/tcp/4001)",
        );
    }
    let looks_like_id = |id: &str| {
        id.len() == 52
            && id.starts_with("12D3KooW")
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() && !"0OIl".contains(c))
    };
    let mut admins = BTreeSet::new();
    for (i, id) in klp.admins.iter().enumerate() {
        if !looks_like_id(id) {
            cx.error(
                &format!("federation.klp.admins[{i}]"),
                format!("`{id}` is not an admin key id (12D3KooW..., 52 characters, from `kos admin keygen`)"),
            );
        } else if !admins.insert(id.as_str()) {
            cx.error(
                &format!("federation.klp.admins[{i}]"),
                format!("`{id}` is listed twice"),
            );
        }
    }
    if !klp.admins.is_empty()
        && (klp.admin_threshold == 0 || klp.admin_threshold as usize > klp.admins.len())
    {
        cx.error(
            "federation.klp.admin_threshold",
            format!(
                "must be between 1 and the number of admins ({})",
                klp.admins.len()
            ),
        );
    }
    let si = klp.sync_interval.get();
    if si < std::time::Duration::from_millis(100) || si > std::time::Duration::from_secs(3600) {
        cx.error(
            "federation.klp.sync_interval",
            "must be between 100ms and 1h",
        );
    }
    for id in klp.remote_roles.peers.keys() {
        if !looks_like_id(id) {
            cx.error(
                &format!("federation.klp.remote_roles.peers.{id}"),
                format!("`{id}` is not a kOS peer id (12D3KooW..., 52 characters)"),
            );
        }
    }
    for (i, a) in klp.bootstrap.iter().enumerate() {
        if a.starts_with('/') && !a.contains("/p2p/") {
            cx.error(
                &format!("federation.klp.bootstrap[{i}]"),
                "a bootstrap address must end in /p2p/<peer id>",
            );
        }
    }

    // The A2A runtime.
    let a = &c.a2a;
    if let Some(u) = &a.public_url {
        let ok = url::Url::parse(u).is_ok_and(|p| {
            matches!(p.scheme(), "http" | "https")
                && p.host_str().is_some()
                && p.query().is_none()
                && p.fragment().is_none()
        });
        if !ok {
            cx.error("a2a.public_url", format!("`{u}` must be an absolute http(s) URL without query or fragment, e.g. https://node.example"));
        }
    }
    if let Some(d) = &a.default_agent
        && !c.agents.get(d).is_some_and(|x| x.enabled)
    {
        cx.error(
            "a2a.default_agent",
            format!("`{d}` is not an enabled agent under `agents`"),
        );
    }
    for (field, v) in [
        ("max_tasks_per_principal", a.max_tasks_per_principal),
        ("max_part_bytes", a.max_part_bytes),
        ("max_parts", a.max_parts),
        ("max_history", a.max_history),
        ("max_artifact_bytes", a.max_artifact_bytes),
        ("push.max_attempts", a.push.max_attempts),
    ] {
        if v == 0 {
            cx.error(&format!("a2a.{field}"), "must be at least 1");
        }
    }
    if a.push.timeout.get().is_zero() {
        cx.error("a2a.push.timeout", "must be longer than 0s");
    }

    // Agent services.
    let mut seen = BTreeSet::new();
    for (i, s) in c.services.iter().enumerate() {
        if !seen.insert(*s) {
            cx.error(&format!("services[{i}]"), format!("`{s}` is listed twice"));
        }
    }
    for (i, s) in c.services.iter().enumerate() {
        if c.agents.get(s.as_str()).is_some_and(|a| !a.enabled) {
            cx.error(
                &format!("services[{i}]"),
                format!("`{s}` is offered, but `agents.{s}.enabled` is false: peers would call a disabled agent"),
            );
        }
    }
    for (name, agent) in &c.agents {
        let path = format!("agents.{name}");
        match name.parse::<AgentService>() {
            // Built-in test agents are served when enabled, never offered to peers.
            Err(_) if crate::model::TEST_AGENTS.contains(&name.as_str()) => {}
            Err(_) => {
                let mut msg = format!(
                    "`{name}` is not an agent service; expected one of: {} (or the test agent {})",
                    AgentService::ALL.join(", "),
                    crate::model::TEST_AGENTS.join(", ")
                );
                if let Some(s) = did_you_mean(name, AgentService::ALL.iter().copied()) {
                    msg.push_str(&format!(" (did you mean `{s}`?)"));
                }
                cx.error(&path, msg);
            }
            Ok(s) if !c.services.contains(&s) && agent.enabled => {
                cx.warn(&path, format!("configured, but `{s}` is not listed in `services`, so the node does not offer it"));
            }
            Ok(_) => {}
        }
        if agent.max_concurrent_tasks == 0 {
            cx.error(
                &format!("{path}.max_concurrent_tasks"),
                "must be at least 1",
            );
        }
    }

    // Operational sections.
    if c.gitops.auto_sync && c.gitops.repository.is_none() {
        cx.error("gitops.auto_sync", "needs `gitops.repository`");
    }
    if c.gitops.sync_interval.get() < std::time::Duration::from_secs(10) {
        cx.error("gitops.sync_interval", "must be at least 10s");
    }
    if c.bootstrap.method == BootstrapMethod::QrCode {
        match c.bootstrap.enrollment_server.as_deref() {
            Some(u) if u.starts_with("https://") => {}
            Some(_) => cx.error("bootstrap.enrollment_server", "must be an https:// URL"),
            None => cx.error(
                "bootstrap.method",
                "`qr_code` needs `bootstrap.enrollment_server`",
            ),
        }
    }
    if c.backup.schedule != BackupSchedule::Never && c.backup.retention.is_none() {
        cx.error(
            "backup.retention",
            "a backup schedule needs a retention period",
        );
    }

    // Settings that load (they appear in the seeds) but that this node does not act on.
    let inert: [(&str, bool, &str); 11] = [
        (
            "messaging.persistence",
            c.messaging.persistence == Persistence::Indexeddb,
            "`indexeddb` is a browser store; the node keeps events in its database",
        ),
        (
            "auth.ldap",
            c.auth.ldap,
            "LDAP is not implemented; this setting has no effect",
        ),
        (
            "auth.saml",
            c.auth.saml != Requirement::Disabled,
            "SAML is not implemented; this setting has no effect",
        ),
        (
            "orchestration.kubernetes",
            c.orchestration.kubernetes.is_enabled(),
            "describes how the node is deployed; the node itself does not act on it",
        ),
        (
            "orchestration.autoscale",
            c.orchestration.autoscale,
            "autoscaling belongs to the orchestrator; the node does not act on it",
        ),
        (
            "orchestrator.service_mesh",
            c.orchestrator.service_mesh,
            "no service mesh is implemented; this setting has no effect",
        ),
        (
            "backup.s3_bucket",
            c.backup.s3_bucket.is_some(),
            "backups to S3 are not implemented; back up the data volume instead",
        ),
        (
            "gitops.repository",
            c.gitops.repository.is_some(),
            "GitOps sync is not implemented; apply changes through the config API",
        ),
        (
            "bootstrap.method",
            c.bootstrap.method != BootstrapMethod::None,
            "zero-touch provisioning is not implemented; this setting has no effect",
        ),
        (
            "monitoring.logs",
            c.monitoring.logs.iter().any(|l| *l != LogSink::Stdout),
            "logs go to stdout; ship them to Loki or CloudWatch with your log collector",
        ),
        (
            "monitoring.alerting",
            !c.monitoring.alerting.is_empty(),
            "alerting is done by your monitoring stack from /metrics; this setting has no effect",
        ),
    ];
    for (path, set, msg) in inert {
        if set {
            cx.warn(path, msg);
        }
    }
}

fn agree<T: PartialEq + Copy + std::fmt::Display>(
    cx: &mut Ctx<'_>,
    a_path: &str,
    a: Option<T>,
    b_path: &str,
    b: Option<T>,
) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => {
            // The user's spelling beats the preset's; two user values must agree.
            match (cx.user_set(a_path), cx.user_set(b_path)) {
                (false, true) => Some(y),
                (true, false) => Some(x),
                _ => {
                    cx.error(
                        b_path,
                        format!("`{y}` disagrees with `{a_path}: {x}`; set one of them"),
                    );
                    Some(x)
                }
            }
        }
        (x, y) => x.or(y),
    }
}

fn check_url(
    cx: &mut Ctx<'_>,
    path: &str,
    url: Option<&str>,
    schemes: &[&str],
    what: &str,
    needed_by: &str,
) {
    let Some(url) = url else {
        cx.error_at(
            needed_by,
            path,
            format!(
                "`{needed_by}` selects {what}, which needs `{path}` ({}://...)",
                schemes[0]
            ),
        );
        return;
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        cx.error(
            path,
            format!("`{url}` is not a URL; expected {}://...", schemes[0]),
        );
        return;
    };
    if !schemes.contains(&scheme) {
        cx.error(
            path,
            format!(
                "scheme `{scheme}` is not valid for {what}; expected {}",
                schemes.join(" or ")
            ),
        );
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && userinfo.contains(':')
    {
        let secret = format!(
            "KOS_{}",
            path.rsplit_once('.')
                .map_or(path, |p| p.0)
                .to_ascii_uppercase()
        );
        cx.error(
            path,
            format!(
                "the URL contains a password; remove it and set {secret}__PASSWORD in secrets.env"
            ),
        );
    }
    if authority.is_empty() {
        cx.error(path, format!("`{url}` has no host"));
    }
}

/// An OIDC issuer must be https, except on a loopback host (tests, local providers).
fn check_issuer(issuer: &str) -> Result<(), String> {
    let Some((scheme, rest)) = issuer.split_once("://") else {
        return Err(format!("`{issuer}` is not a URL"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host_only = if host.starts_with('[') {
        host.split(']').next().unwrap_or("").trim_start_matches('[')
    } else {
        host.split(':').next().unwrap_or("")
    };
    let loopback = host_only == "localhost"
        || host_only
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match scheme {
        "https" if !host_only.is_empty() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "`{issuer}`: an OIDC issuer must use https (plain http is allowed only on a loopback host)"
        )),
        _ => Err(format!("`{issuer}` is not an https URL")),
    }
}
