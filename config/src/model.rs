//! The typed configuration model.
//!
//! Every field that the four seed profiles use is here, plus the `edge` profile and the
//! node's own sections (`node`, `api`, `logging`, `redis`, `agents`). Every struct rejects
//! unknown keys. Where the seeds spell the same setting two ways, both spellings are accepted
//! and must agree (see `docs/CONFIG.md`, "Seed compatibility").

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration as StdDuration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::de::soft;

/// The top-level document of a profile file (`profiles/<id>.yaml`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Which deployment profile this document describes; drives defaults and rules.
    pub profile: ProfileKind,
    pub deployment_mode: DeploymentMode,
    pub node: NodeSection,
    pub api: ApiSection,
    pub logging: Logging,
    pub llms: Vec<LlmBackend>,
    pub media_generation: Vec<MediaBackend>,
    pub security: Security,
    pub messaging: Messaging,
    pub message_bus: MessageBus,
    pub storage: Storage,
    pub database: Database,
    pub vector: Vector,
    pub redis: Redis,
    pub orchestrator: Orchestrator,
    pub plugins: Plugins,
    pub federation: Federation,
    pub auth: Auth,
    pub services: Vec<AgentService>,
    pub agents: BTreeMap<String, AgentConfig>,
    /// The A2A runtime that serves the agents (`/a2a/<agent>/...`).
    pub a2a: A2a,
    pub orchestration: Orchestration,
    pub monitoring: Monitoring,
    pub backup: Backup,
    pub bootstrap: Bootstrap,
    pub gitops: GitOps,
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $s:literal),+ $(,)? } default $def:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $variant),+
        }
        impl Default for $name {
            fn default() -> Self { Self::$def }
        }
        impl $name {
            /// The spelling used in YAML.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $s),+ }
            }
            /// Every accepted spelling.
            pub const ALL: &'static [&'static str] = &[$($s),+];
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$variant),)+
                    _ => Err(format!("unknown value `{s}`; expected one of: {}", Self::ALL.join(", "))),
                }
            }
        }
    };
}

string_enum!(
    /// The five deployment profiles.
    ProfileKind {
        Standalone => "standalone",
        DeveloperNode => "developer_node",
        FederationNode => "federation_node",
        Enterprise => "enterprise",
        Edge => "edge",
    } default Standalone
);

impl ProfileKind {
    pub const VARIANTS: [ProfileKind; 5] = [
        Self::Standalone,
        Self::DeveloperNode,
        Self::FederationNode,
        Self::Enterprise,
        Self::Edge,
    ];

    /// The deployment mode a profile runs in.
    pub fn deployment_mode(self) -> DeploymentMode {
        match self {
            Self::Standalone => DeploymentMode::LocalStandalone,
            Self::DeveloperNode | Self::FederationNode => DeploymentMode::FullNode,
            Self::Enterprise => DeploymentMode::Clustered,
            Self::Edge => DeploymentMode::Embedded,
        }
    }
}

string_enum!(DeploymentMode {
    LocalStandalone => "local_standalone",
    FullNode => "full_node",
    Clustered => "clustered",
    Embedded => "embedded",
} default LocalStandalone);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Human-readable node name shown to peers; defaults to the host name.
    pub name: Option<String>,
}

/// The HTTP API (kConfigD and, later, agent services).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    /// Address the HTTP API binds to. Loopback only until authentication is configured.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Per-request time limit.
    pub request_timeout: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: u32,
    /// Most HTTP connections open at once (over it, new ones wait in the kernel's backlog,
    /// or are closed with TLS).
    pub max_connections: u32,
    /// Most HTTP connections open at once from one source address (over it, closed).
    pub max_connections_per_ip: u32,
    /// How long shutdown waits for in-flight requests before giving up.
    pub shutdown_grace: Duration,
    /// Serve HTTPS with this certificate and key (PEM files, relative to the config directory).
    pub tls: Option<Tls>,
    /// Who may read `/metrics`: `none` (anyone who can reach it) or a role.
    pub metrics_auth: MetricsAuth,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: String,
    pub key: String,
}

string_enum!(MetricsAuth { None => "none", Viewer => "viewer" } default None);

/// The documented default API address.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7420";

/// A socket address, reported through [`soft`] so that a bad one does not end the load.
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    let r = s.trim().parse::<SocketAddr>().map_err(|e| {
        format!("`{s}` is not an IP address and port ({e}); write e.g. 127.0.0.1:7420")
    });
    soft(r, || ApiSection::default().listen)
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            max_connections: 512,
            max_connections_per_ip: 64,
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            metrics_auth: MetricsAuth::None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Logging {
    /// `tracing` filter directive, e.g. `info` or `kos_node=debug,info`. Hot-reloadable.
    pub level: LogLevel,
    pub format: LogFormat,
}

string_enum!(LogFormat { Text => "text", Json => "json" } default Text);

/// A validated `tracing` filter directive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLevel(pub String);

impl Default for LogLevel {
    fn default() -> Self {
        Self("info".into())
    }
}

impl Serialize for LogLevel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        soft(parse_log_level(&s).map(LogLevel), LogLevel::default)
    }
}

fn parse_log_level(s: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let s = s.trim();
    if s.is_empty() {
        return Err("expected a log level (trace, debug, info, warn, error, off)".into());
    }
    for part in s.split(',') {
        let level = part.rsplit('=').next().unwrap_or("").trim();
        let target = if part.contains('=') {
            part.split('=').next().unwrap_or("")
        } else {
            ""
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{level}` is not a log level; expected one of: {}",
                LEVELS.join(", ")
            ));
        }
        if !target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
        {
            return Err(format!("`{target}` is not a valid log target"));
        }
    }
    Ok(s.to_string())
}

string_enum!(LlmBackend {
    Ollama => "ollama",
    Vllm => "vllm",
    A1111 => "a1111",
    OpenaiCompatible => "openai_compatible",
} default Ollama);

string_enum!(MediaBackend {
    Comfyui => "comfyui",
    StableDiffusion => "stable_diffusion",
    Replicate => "replicate",
    A1111 => "a1111",
} default Comfyui);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    pub vault: VaultKind,
    pub auto_lock: bool,
    pub biometric: Requirement,
    pub encryption: Encryption,
}

string_enum!(VaultKind { Local => "local", None => "none" } default Local);
string_enum!(Encryption { Aes256 => "aes256", None => "none" } default Aes256);

/// Messaging: the node's event bus.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Messaging {
    /// Event bus backend (`memory` in-process, `redis` for server profiles).
    pub bus: Option<BusKind>,
    /// Seed spelling of `bus` (standalone profile); must agree with `bus` when both are set.
    #[serde(rename = "type")]
    pub type_: Option<BusKind>,
    pub encryption: MessagingEncryption,
    pub persistence: Persistence,
    /// Message protocol spoken between agents.
    pub protocol: MessageProtocol,
    pub debug_logging: bool,
}

impl Messaging {
    /// The effective bus backend.
    pub fn effective_bus(&self) -> BusKind {
        self.bus.or(self.type_).unwrap_or_default()
    }
}

string_enum!(BusKind { Memory => "memory", Redis => "redis" } default Memory);
string_enum!(MessagingEncryption { LocalOnly => "local_only", Tls => "tls", None => "none" } default LocalOnly);
string_enum!(
    /// Where bus messages persist. `indexeddb` is the seed's browser store; accepted so the
    /// seed loads, but a node persists through its database (a warning says so).
    Persistence { None => "none", Database => "database", Indexeddb => "indexeddb" } default None
);
string_enum!(MessageProtocol { MapV1 => "MAPv1" } default MapV1);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessageBus {
    pub redis_cluster: bool,
    pub pubsub: PubSub,
    pub federation_bridge: FederationBridge,
}

string_enum!(PubSub { None => "none", Redis => "redis", Mqtt => "mqtt" } default None);
string_enum!(FederationBridge { None => "none", Klp => "klp" } default None);

/// Backend choice in short form (`storage.database: postgresql`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    pub database: Option<DatabaseKind>,
    pub vector: Option<VectorKind>,
    pub cache: Option<CacheKind>,
    pub replication: Toggle,
}

string_enum!(DatabaseKind { Sqlite => "sqlite", Postgresql => "postgresql" } default Sqlite);
string_enum!(
    /// Vector stores. `embedded` is the in-process engine; `chroma` and `weaviate` appear in
    /// the seeds and load, but kOS node does not support them (validation says so).
    VectorKind { None => "none", Embedded => "embedded", Qdrant => "qdrant", Chroma => "chroma", Weaviate => "weaviate" } default None
);
string_enum!(CacheKind { None => "none", Memory => "memory", Redis => "redis" } default None);

/// Database details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    /// Seed spelling of `storage.database`; must agree with it when both are set.
    #[serde(rename = "type")]
    pub type_: Option<DatabaseKind>,
    /// SQLite: directory of the database file, relative to the config directory (`~` expands).
    pub location: String,
    /// PostgreSQL: connection URL without the password (`postgres://user@host:5432/db`).
    pub url: Option<String>,
    /// PostgreSQL password. Secret: only from `secrets.env` or the environment.
    pub password: Option<Secret>,
    pub max_connections: u32,
    pub min_connections: u32,
    pub connect_timeout: Duration,
}

impl Default for Database {
    fn default() -> Self {
        Self {
            type_: None,
            location: "data".into(),
            url: None,
            password: None,
            max_connections: 10,
            min_connections: 0,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Vector {
    /// Seed spelling of `storage.vector`; must agree with it when both are set.
    #[serde(rename = "type")]
    pub type_: Option<VectorKind>,
    pub storage: VectorStorage,
    /// Qdrant server URL (gRPC), e.g. `http://qdrant:6334`.
    pub url: Option<String>,
    /// Qdrant API key. Secret.
    pub api_key: Option<Secret>,
}

string_enum!(VectorStorage { LocalFilesystem => "local_filesystem", Memory => "memory" } default LocalFilesystem);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Redis {
    /// `redis://host:6379/0`, without the password.
    pub url: Option<String>,
    /// Secret.
    pub password: Option<Secret>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Orchestrator {
    pub enabled: bool,
    pub service_mesh: bool,
}

/// Plugin settings. The seeds write this section two ways: a mapping of development
/// switches (developer_node) or a list of plugin names (enterprise). Both load; the list
/// form is `enabled`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Plugins {
    pub dev_mode: bool,
    pub logger: PluginLogger,
    pub hot_reload: bool,
    pub enabled: Vec<String>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PluginsMap {
    dev_mode: bool,
    logger: PluginLogger,
    hot_reload: bool,
    enabled: Vec<String>,
}

impl<'de> Deserialize<'de> for Plugins {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Plugins;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of plugin names or a mapping of plugin settings")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Plugins, A::Error> {
                let mut enabled = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    enabled.push(name);
                }
                Ok(Plugins {
                    enabled,
                    ..Plugins::default()
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Plugins, A::Error> {
                let m = PluginsMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Plugins {
                    dev_mode: m.dev_mode,
                    logger: m.logger,
                    hot_reload: m.hot_reload,
                    enabled: m.enabled,
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<Plugins, E> {
                Ok(Plugins::default())
            }
        }
        d.deserialize_struct(
            crate::de::SEQ_OR_MAP,
            &["dev_mode", "logger", "hot_reload", "enabled"],
            V,
        )
    }
}

string_enum!(PluginLogger { Quiet => "quiet", Normal => "normal", Verbose => "verbose" } default Normal);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Federation {
    pub klp: Klp,
}

/// KLP settings. Also read from `klp/klp_settings.yaml`, which overrides the profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Klp {
    pub enabled: bool,
    pub public_registry: bool,
    pub handshake_required: bool,
    pub peer_discovery: PeerDiscovery,
    /// libp2p multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs (with `/p2p/<peer id>`) dialed at start.
    pub bootstrap: Vec<String>,
    /// Federation name: nodes of one federation share it (it is part of the kademlia and
    /// gossip protocol names).
    pub network: String,
    /// Network interfaces DNS-SD uses (names such as `eth0`); empty means all.
    pub discovery_interfaces: Vec<String>,
    /// A connection that has not finished the MAP handshake within this time is closed.
    pub handshake_timeout: Duration,
    /// Most established connections (approved peers do not count against it).
    pub max_connections: u32,
    /// Roles this node grants to API calls that peers make over KLP. A peer is identified by
    /// its MAP-verified node id, never by a token.
    pub remote_roles: RemoteRoles,
    /// Federation admin keys (node-id form, `12D3KooW...`, from `kos admin keygen`): only ops
    /// signed by them change the federation's approved peers and shared configuration.
    /// Empty: no federation sync (peers.list alone decides).
    pub admins: Vec<String>,
    /// How many admin signatures a change of the admin set needs (1..=admins).
    pub admin_threshold: u32,
    /// How often the node compares op-logs with a connected peer (anti-entropy); it also
    /// does on every admission.
    pub sync_interval: Duration,
}

/// Which role a peer's calls over KLP get: `peers.<peer id>`, else `default` (`null`: none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteRoles {
    pub default: Option<Role>,
    pub peers: BTreeMap<String, Role>,
}

impl RemoteRoles {
    /// The role for a peer id, if any.
    pub fn role_of(&self, peer: &str) -> Option<Role> {
        self.peers.get(peer).copied().or(self.default)
    }
}

impl Default for Klp {
    fn default() -> Self {
        Self {
            enabled: false,
            public_registry: false,
            handshake_required: true,
            peer_discovery: PeerDiscovery::None,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            network: "kos".into(),
            discovery_interfaces: Vec::new(),
            handshake_timeout: Duration::from_secs(5),
            max_connections: 256,
            remote_roles: RemoteRoles::default(),
            admins: Vec::new(),
            admin_threshold: 1,
            sync_interval: Duration::from_secs(10),
        }
    }
}

string_enum!(PeerDiscovery { DnsSd => "dns_sd", None => "none" } default None);

/// Authentication of API callers.
///
/// Local tokens (`kos token create`) are signed with the node's token key (EdDSA, the
/// default) or with `jwt_secret` (HS256). OIDC bearer tokens come from `oidc`. With neither
/// configured the API is open and may bind loopback only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// Local JWTs (`kos token create`).
    pub jwt: Toggle,
    /// How local tokens are signed: `eddsa` (token key in `auth/token.key`) or `hs256`
    /// (`jwt_secret`, at least 32 bytes).
    pub jwt_algorithm: JwtAlgorithm,
    /// Clock tolerance for `exp` and `nbf`.
    pub token_leeway: Duration,
    /// OpenID Connect: `optional`/`required`/`disabled` (the seeds' spelling) or a mapping
    /// with the provider.
    pub oidc: Oidc,
    pub session_timeout: Duration,
    pub ldap: bool,
    pub saml: Requirement,
    pub rbac: Toggle,
    pub audit_logging: AuditLogging,
    /// HS256 signing secret for local tokens. Secret.
    pub jwt_secret: Option<Secret>,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            jwt: Toggle::Disabled,
            jwt_algorithm: JwtAlgorithm::Eddsa,
            token_leeway: Duration::from_secs(30),
            oidc: Oidc::default(),
            session_timeout: Duration::from_secs(24 * 3600),
            ldap: false,
            saml: Requirement::Disabled,
            rbac: Toggle::Disabled,
            audit_logging: AuditLogging::Basic,
            jwt_secret: None,
        }
    }
}

impl Auth {
    /// Whether any way of authenticating callers is configured.
    pub fn configured(&self) -> bool {
        self.jwt.is_enabled() || self.oidc.active()
    }
}

string_enum!(JwtAlgorithm { Eddsa => "eddsa", Hs256 => "hs256" } default Eddsa);

string_enum!(
    /// API roles, each including the ones before it: viewer reads; agent also calls agent
    /// services as a machine; operator also runs agent tasks and operates peers; admin also
    /// changes configuration and approves peers.
    Role { Viewer => "viewer", Agent => "agent", Operator => "operator", Admin => "admin" } default Viewer
);

string_enum!(
    /// Signature algorithms accepted from an OIDC provider. HMAC and `none` are never
    /// accepted for OIDC tokens.
    OidcAlgorithm {
        Rs256 => "RS256", Rs384 => "RS384", Rs512 => "RS512",
        Ps256 => "PS256", Ps384 => "PS384", Ps512 => "PS512",
        Es256 => "ES256", Es384 => "ES384", EdDsa => "EdDSA",
    } default Rs256
);

/// An OpenID Connect provider whose tokens the node accepts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Oidc {
    /// `required`, `optional` or `disabled`. The node accepts OIDC tokens when this is not
    /// `disabled` and an issuer is set.
    pub mode: Requirement,
    /// Issuer URL (`https://`; `http://` only for a loopback host).
    pub issuer: Option<String>,
    /// Expected `aud` (usually the client id).
    pub audience: Option<String>,
    /// Dotted path of the claim that lists the caller's roles (`roles`, `realm_access.roles`).
    pub roles_claim: String,
    /// Provider role → kOS role; the highest mapped role wins.
    pub role_map: BTreeMap<String, Role>,
    /// Role of a valid token without a mapped role (`null`: refuse such tokens).
    pub default_role: Option<Role>,
    pub algorithms: Vec<OidcAlgorithm>,
    /// At most one JWKS fetch per this interval for tokens with an unknown `kid`.
    pub jwks_refresh_cooldown: Duration,
}

impl Default for Oidc {
    fn default() -> Self {
        Self {
            mode: Requirement::Disabled,
            issuer: None,
            audience: None,
            roles_claim: "roles".into(),
            role_map: BTreeMap::new(),
            default_role: Some(Role::Viewer),
            algorithms: vec![OidcAlgorithm::Rs256],
            jwks_refresh_cooldown: Duration::from_secs(30),
        }
    }
}

impl Oidc {
    pub fn active(&self) -> bool {
        self.mode != Requirement::Disabled && self.issuer.is_some()
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct OidcMap {
    mode: Option<Requirement>,
    issuer: Option<String>,
    audience: Option<String>,
    roles_claim: Option<String>,
    role_map: BTreeMap<String, Role>,
    /// Missing: the default (`viewer`); `null`: `Some(None)`, refuse unmapped tokens.
    /// (A plain `Option<Option<_>>` reads `null` as missing.)
    #[serde(deserialize_with = "present")]
    default_role: Option<Option<Role>>,
    algorithms: Option<Vec<OidcAlgorithm>>,
    jwks_refresh_cooldown: Option<Duration>,
}

/// For an `Option<T>` field of a struct with `#[serde(default)]`: a key that is present is
/// `Some`, even when its value is `null` (which `T = Option<_>` reads as `None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl<'de> Deserialize<'de> for Oidc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Oidc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("required, optional, disabled, or a mapping with the OIDC provider")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Oidc, E> {
                let mode = match v {
                    "required" | "enabled" | "true" => Ok(Requirement::Required),
                    "optional" => Ok(Requirement::Optional),
                    "disabled" | "false" => Ok(Requirement::Disabled),
                    other => Err(format!(
                        "unknown value `{other}`; expected required, optional, disabled or a mapping"
                    )),
                };
                soft(
                    mode.map(|mode| Oidc {
                        mode,
                        ..Oidc::default()
                    }),
                    Oidc::default,
                )
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Oidc, E> {
                self.visit_str(if v { "required" } else { "disabled" })
            }
            fn visit_unit<E: de::Error>(self) -> Result<Oidc, E> {
                Ok(Oidc::default())
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Oidc, A::Error> {
                let m = OidcMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let d = Oidc::default();
                Ok(Oidc {
                    // A provider mapping without `mode` means the provider is in use.
                    mode: m.mode.unwrap_or(Requirement::Optional),
                    issuer: m.issuer,
                    audience: m.audience,
                    roles_claim: m.roles_claim.unwrap_or(d.roles_claim),
                    role_map: m.role_map,
                    default_role: m.default_role.unwrap_or(d.default_role),
                    algorithms: m.algorithms.unwrap_or(d.algorithms),
                    jwks_refresh_cooldown: m
                        .jwks_refresh_cooldown
                        .unwrap_or(d.jwks_refresh_cooldown),
                })
            }
        }
        d.deserialize_struct(
            crate::de::SCALAR_OR_MAP,
            &[
                "mode",
                "issuer",
                "audience",
                "roles_claim",
                "role_map",
                "default_role",
                "algorithms",
                "jwks_refresh_cooldown",
            ],
            V,
        )
    }
}

string_enum!(AuditLogging { None => "none", Basic => "basic", Comprehensive => "comprehensive" } default Basic);

string_enum!(
    /// Agent services a node can offer (names as in the seeds).
    AgentService {
        Translator => "translatorAgent",
        Synthesizer => "synthesizerAgent",
        Scheduler => "schedulerAgent",
        Moderator => "moderatorAgent",
    } default Translator
);

/// Agents for tests and conformance runs, built into the node and served when
/// `agents.<id>.enabled` (never offered to peers through `services`).
pub const TEST_AGENTS: &[&str] = &["echo"];

/// Per-agent settings, one file per agent in `agents/<name>.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    pub enabled: bool,
    pub max_concurrent_tasks: u32,
    pub task_timeout: Duration,
    /// Agent-specific settings, passed to the agent as they are.
    pub settings: BTreeMap<String, serde_json::Value>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrent_tasks: 4,
            task_timeout: Duration::from_secs(60),
            settings: BTreeMap::new(),
        }
    }
}

/// The A2A v1.0 runtime serving the node's agents (docs/CONFIG.md, `a2a`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct A2a {
    /// Public base URL written into agent cards (`https://node.example`). Unset: each card
    /// is built from the request's `Host` header and the API's scheme.
    pub public_url: Option<String>,
    /// The agent behind the node's own card (`/.well-known/agent-card.json`). Unset: the
    /// first enabled agent by id.
    pub default_agent: Option<String>,
    /// Agent turns running at once for one principal (user or peer); over it, 429.
    pub max_tasks_per_principal: u32,
    /// Terminal tasks are deleted this long after their last change.
    pub retention: Duration,
    /// Largest part (text, bytes, url or data as JSON).
    pub max_part_bytes: u32,
    /// Most parts in one message or artifact.
    pub max_parts: u32,
    /// Messages kept in a task's history (the oldest go first).
    pub max_history: u32,
    /// Largest artifact (all its chunks together).
    pub max_artifact_bytes: u32,
    /// Push notifications.
    pub push: A2aPush,
}

impl Default for A2a {
    fn default() -> Self {
        Self {
            public_url: None,
            default_agent: None,
            max_tasks_per_principal: 8,
            retention: Duration::from_secs(7 * 24 * 3600),
            max_part_bytes: 1 << 20,
            max_parts: 64,
            max_history: 100,
            max_artifact_bytes: 4 << 20,
            push: A2aPush::default(),
        }
    }
}

/// Push notifications of task updates to clients' webhooks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct A2aPush {
    /// Serve push notification configs (the cards' `capabilities.pushNotifications`).
    pub enabled: bool,
    /// Allow webhooks on loopback, link-local and private addresses (a node whose clients
    /// live on its own network). Off: such targets are refused (SSRF guard).
    pub allow_private: bool,
    /// Delivery attempts per notification before it is dropped.
    pub max_attempts: u32,
    /// Time limit of one delivery attempt.
    pub timeout: Duration,
}

impl Default for A2aPush {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_private: false,
            max_attempts: 8,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Orchestration {
    pub kubernetes: Toggle,
    pub autoscale: bool,
    pub helm_chart: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Monitoring {
    pub metrics: Vec<MetricsSink>,
    pub logs: Vec<LogSink>,
    pub alerting: Vec<AlertSink>,
}

string_enum!(MetricsSink { Prometheus => "prometheus", Grafana => "grafana" } default Prometheus);
string_enum!(LogSink { Stdout => "stdout", Loki => "loki", Cloudwatch => "cloudwatch" } default Stdout);
string_enum!(AlertSink { Pagerduty => "pagerduty", Slack => "slack", Email => "email" } default Slack);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backup {
    pub s3_bucket: Option<String>,
    pub encryption: BackupEncryption,
    /// How long backups are kept, e.g. `30d`, `7_years`.
    pub retention: Option<Retention>,
    pub schedule: BackupSchedule,
}

string_enum!(BackupEncryption { None => "none", Aes256 => "aes256", Kms => "kms" } default Aes256);
string_enum!(BackupSchedule { Never => "never", Hourly => "hourly", Daily => "daily", Weekly => "weekly" } default Never);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bootstrap {
    pub method: BootstrapMethod,
    pub enrollment_server: Option<String>,
    pub auto_update: bool,
    pub trust_anchor: Option<String>,
}

string_enum!(BootstrapMethod { None => "none", QrCode => "qr_code" } default None);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitOps {
    pub repository: Option<String>,
    pub branch: String,
    pub sync_interval: Duration,
    pub auto_sync: bool,
    pub rollback_limit: u32,
}

impl Default for GitOps {
    fn default() -> Self {
        Self {
            repository: None,
            branch: "main".into(),
            sync_interval: Duration::from_secs(300),
            auto_sync: false,
            rollback_limit: 10,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Leaf types
// ---------------------------------------------------------------------------------------

/// On/off written as `enabled`/`disabled` (the seeds' spelling) or `true`/`false`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Toggle {
    Enabled,
    #[default]
    Disabled,
}

impl Toggle {
    pub fn is_enabled(self) -> bool {
        self == Toggle::Enabled
    }
}

impl Serialize for Toggle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.is_enabled() {
            "enabled"
        } else {
            "disabled"
        })
    }
}

impl<'de> Deserialize<'de> for Toggle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = match BoolOrStr::deserialize(d) {
            Ok(v) => v,
            Err(e) => return soft(Err(e.to_string()), Toggle::default),
        };
        let r = match v {
            BoolOrStr::Bool(true) => Ok(Toggle::Enabled),
            BoolOrStr::Bool(false) => Ok(Toggle::Disabled),
            BoolOrStr::Str(s) => match s.as_str() {
                "enabled" => Ok(Toggle::Enabled),
                "disabled" => Ok(Toggle::Disabled),
                other => Err(format!(
                    "unknown value `{other}`; expected enabled, disabled, true or false"
                )),
            },
        };
        soft(r, Toggle::default)
    }
}

/// `required`, `optional` or `disabled` (`true` means required, `false` disabled).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Requirement {
    Required,
    Optional,
    #[default]
    Disabled,
}

impl Requirement {
    pub fn as_str(self) -> &'static str {
        match self {
            Requirement::Required => "required",
            Requirement::Optional => "optional",
            Requirement::Disabled => "disabled",
        }
    }
}

impl Serialize for Requirement {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Requirement {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = match BoolOrStr::deserialize(d) {
            Ok(v) => v,
            Err(e) => return soft(Err(e.to_string()), Requirement::default),
        };
        let r = match v {
            BoolOrStr::Bool(true) => Ok(Requirement::Required),
            BoolOrStr::Bool(false) => Ok(Requirement::Disabled),
            BoolOrStr::Str(s) => match s.as_str() {
                "required" | "enabled" => Ok(Requirement::Required),
                "optional" => Ok(Requirement::Optional),
                "disabled" => Ok(Requirement::Disabled),
                other => Err(format!(
                    "unknown value `{other}`; expected required, optional, disabled, true or false"
                )),
            },
        };
        soft(r, Requirement::default)
    }
}

enum BoolOrStr {
    Bool(bool),
    Str(String),
}

impl<'de> Deserialize<'de> for BoolOrStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = BoolOrStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean or a string")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<BoolOrStr, E> {
                Ok(BoolOrStr::Bool(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BoolOrStr, E> {
                Ok(BoolOrStr::Str(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BoolOrStr, E> {
                Ok(BoolOrStr::Str(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<BoolOrStr, E> {
                Ok(BoolOrStr::Str(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<BoolOrStr, E> {
                Ok(BoolOrStr::Str(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<BoolOrStr, E> {
                Ok(BoolOrStr::Str("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written the human way: `30s`, `5m`, `24h`, `7d`, `1h 30m`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub StdDuration);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Self(StdDuration::from_secs(s))
    }

    pub fn get(self) -> StdDuration {
        self.0
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let r = humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 30s, 5m, 24h or 7d"));
        soft(r, Duration::default)
    }
}

/// A retention period: a duration, or `<n>_days|weeks|months|years` as in the seeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention(pub String);

impl Serialize for Retention {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = humantime::parse_duration(&s).is_ok()
            || s.split_once('_').is_some_and(|(n, unit)| {
                n.parse::<u32>().is_ok_and(|n| n > 0)
                    && matches!(
                        unit,
                        "day" | "days" | "week" | "weeks" | "month" | "months" | "year" | "years"
                    )
            });
        let r = if ok {
            Ok(Retention(s.clone()))
        } else {
            Err(format!(
                "`{s}` is not a retention period; write e.g. 30d or 7_years"
            ))
        };
        soft(r, || Retention(String::new()))
    }
}

/// A secret value. It prints and serializes as `<redacted>`; the value is reachable only
/// through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// What a set secret looks like in every output.
pub const REDACTED: &str = "<redacted>";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Dotted paths of every secret field. They may be set only from `secrets.env` or the
/// process environment, never in a profile or `system.env`.
pub const SECRET_PATHS: &[&str] = &[
    "database.password",
    "vector.api_key",
    "redis.password",
    "auth.jwt_secret",
];

/// How a change to a top-level section takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reload {
    /// Applied to the running node at once.
    Live,
    /// Recorded at once, used after the next restart.
    Restart,
}

/// Which sections take effect without a restart. Sections read once at start (listeners,
/// stores, the swarm, authentication) need a restart; the rest are read where they are used.
pub fn section_reload(section: &str) -> Reload {
    match section {
        "logging" | "llms" | "media_generation" | "security" | "services" | "plugins"
        | "monitoring" | "backup" | "bootstrap" | "gitops" | "orchestrator" | "orchestration" => {
            Reload::Live
        }
        _ => Reload::Restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels() {
        assert!(parse_log_level("info").is_ok());
        assert!(parse_log_level("kos_node=debug,warn").is_ok());
        assert!(parse_log_level("loud").is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{REDACTED}\"")
        );
    }
}
