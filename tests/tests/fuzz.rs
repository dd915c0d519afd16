#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fuzz targets for every decoder of untrusted input, on stable Rust with proptest.
//!
//! Each `fuzz_<target>` test runs its target in a child process (this test binary again,
//! for that one test) under `prlimit --data` (memory) and `--cpu` (a stuck decoder), for
//! `KOS_FUZZ_SECONDS` (default 3) of generated inputs, and prints one line:
//! `fuzz <target>: <runs> runs in <s> s, corpus <n> seeds`. Inputs are the committed seeds
//! (`tests/fuzz-corpus/<target>/`) mutated (bit flips, interesting bytes, truncations,
//! removals, insertions of dictionary tokens, splices of seeds), random bytes, and for YAML
//! generated documents with anchors and aliases (including alias chains that expand
//! exponentially). A panic is shrunk and reported with the smallest input found; a child
//! that dies (allocation failure under the memory limit, stack overflow, CPU limit) is
//! re-run in replay mode to recover the input it died on. Longer locally:
//!
//! ```text
//! KOS_FUZZ_SECONDS=600 cargo test -p kos-tests --test fuzz -- --nocapture
//! KOS_FUZZ_SEED=<seed from a failure> cargo test -p kos-tests --test fuzz fuzz_<target>
//! ```
//!
//! `KOS_FUZZ_MEM_MB` changes the memory limit (default 1024). The generated seeds (signed
//! messages, ops, tokens) are checked by `corpus_is_current`; `KOS_FUZZ_BLESS=1` rewrites
//! them.

use std::collections::hash_map::RandomState;
use std::fmt::Debug;
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use kos_config::model::{Config, JwtAlgorithm, Toggle};
use kos_config::{Capabilities, Overlays, Secret};
use kos_map_protocol::fedlog::{Genesis, Log, Op, OpBody, OpHash, UnsignedOp};
use kos_map_protocol::{
    GoodbyeReason, Manifest, MapMessage, NodeId, ReplayGuard, Skill, VersionRange,
};
use kos_node::auth::Authenticator;
use kos_node::fedsync::{
    ConfigStatus, Gossip, MAX_STATUS_ERROR_LEN, MAX_STATUS_ERRORS, StatusKind, SyncRequest,
    SyncResponse, TAG_OP, TAG_STATUS, decode_status,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::{BoxedStrategy, ValueTree};
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
use serde_bytes::ByteBuf;

const DEFAULT_SECONDS: f64 = 3.0;
const DEFAULT_MEM_MB: u64 = 1024;
/// Extra CPU seconds a child may use beyond its fuzzing time (start, shrinking).
const CPU_SLACK_SECS: u64 = 60;
/// Time spent shrinking a failing input at most.
const SHRINK_BUDGET: Duration = Duration::from_secs(20);
/// MAP seeds are sealed at this time, and opened as if it were now.
const MAP_NOW: u64 = 1_700_000_000_000;
/// Local tokens of the JWT seeds expire in 2100.
const JWT_EXP: u64 = 4_102_444_800;
const HS256_SECRET: &str = "fuzz-hs256-secret-of-at-least-32-bytes-0123456789";

// --- the targets ---------------------------------------------------------------------------

#[test]
fn fuzz_yaml_tree() {
    entry("yaml_tree");
}

#[test]
fn fuzz_config_profile() {
    entry("config_profile");
}

#[test]
fn fuzz_federation_snapshot() {
    entry("federation_snapshot");
}

#[test]
fn fuzz_env_file() {
    entry("env_file");
}

#[test]
fn fuzz_peers_list() {
    entry("peers_list");
}

#[test]
fn fuzz_node_id() {
    entry("node_id");
}

#[test]
fn fuzz_map_open() {
    entry("map_open");
}

#[test]
fn fuzz_fedlog_op() {
    entry("fedlog_op");
}

#[test]
fn fuzz_sync_request() {
    entry("sync_request");
}

#[test]
fn fuzz_sync_response() {
    entry("sync_response");
}

#[test]
fn fuzz_gossip() {
    entry("gossip");
}

#[test]
fn fuzz_jwt() {
    entry("jwt");
}

/// The child's work for one target: its seeds, its input generator and its checks.
fn child_main(target: &str) {
    let seeds = corpus(target);
    let n = seeds.len();
    match target {
        "yaml_tree" => fuzz(target, n, yaml_inputs(seeds), |text: &String| {
            let _ = kos_config::tree::parse_yaml(text, "fuzz.yaml");
        }),
        "config_profile" => fuzz(target, n, profile_inputs(seeds), |text: &String| {
            let _ = kos_config::assemble(
                "fuzz",
                text,
                "profiles/fuzz.yaml",
                &Overlays::default(),
                &Capabilities::ALL,
            );
        }),
        "federation_snapshot" => {
            let scopes: Vec<&str> = kos_config::federation::SCOPES
                .iter()
                .map(|s| s.name)
                .chain(["", "nope"])
                .collect();
            let strategy = (prop::sample::select(scopes), text_inputs(seeds, YAML_DICT));
            fuzz(target, n, strategy, |(scope, text): &(&str, String)| {
                federation_snapshot(scope, text);
            });
        }
        "env_file" => {
            let strategy = (text_inputs(seeds, ENV_DICT), any::<String>());
            fuzz(target, n, strategy, |(text, value): &(String, String)| {
                let _ = kos_config::envfile::parse_env_file(text, "system.env");
                // What `render_line` writes reads back as the same value.
                let line = kos_config::envfile::render_line("KEY", value);
                let (entries, errors) = kos_config::envfile::parse_env_file(&line, "x");
                assert!(errors.is_empty(), "{line:?} does not parse: {errors:?}");
                assert_eq!(entries.len(), 1, "{line:?}");
                assert_eq!(&entries[0].value, value, "{line:?}");
            });
        }
        "peers_list" => fuzz(
            target,
            n,
            text_inputs(seeds, PEERS_DICT),
            |text: &String| {
                peers_list(text);
            },
        ),
        "node_id" => fuzz(
            target,
            n,
            byte_inputs(seeds, ID_DICT, 128),
            |b: &Vec<u8>| {
                let text = String::from_utf8_lossy(b);
                if let Ok(id) = text.parse::<NodeId>() {
                    assert_eq!(id.to_string().parse::<NodeId>().ok(), Some(id));
                }
                if let Ok(id) = NodeId::from_bytes(b) {
                    assert_eq!(NodeId::from_bytes(&id.to_bytes()).ok(), Some(id));
                }
                if let Ok(h) = text.parse::<OpHash>() {
                    assert_eq!(h.to_string().parse::<OpHash>().ok(), Some(h));
                }
            },
        ),
        "map_open" => {
            let valid: Vec<MapMessage> = map_seed_messages();
            let peer = node(1);
            fuzz(
                target,
                n,
                byte_inputs(seeds, CBOR_DICT, 4096),
                move |b: &Vec<u8>| {
                    let got =
                        kos_map_protocol::open(b, &peer, MAP_NOW, &mut ReplayGuard::default());
                    // A signature covers the body: whatever opens is one of the signed messages.
                    if let Ok(msg) = got {
                        assert!(valid.contains(&msg), "forged message opened: {msg:?}");
                    }
                },
            );
        }
        "fedlog_op" => {
            let (log, ops) = fedlog_seed_ops();
            fuzz(
                target,
                n,
                byte_inputs(seeds, CBOR_DICT, 4096),
                move |b: &Vec<u8>| {
                    fedlog_op(&log, &ops, b);
                },
            );
        }
        "sync_request" => fuzz(
            target,
            n,
            byte_inputs(seeds, CBOR_DICT, 4096),
            |b: &Vec<u8>| {
                if let Ok(r) = SyncRequest::decode(b) {
                    // What the answering side does with it.
                    let _: Vec<[u8; 32]> = r
                        .heads
                        .iter()
                        .filter_map(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
                        .collect();
                }
            },
        ),
        "sync_response" => {
            let (log, ops) = fedlog_seed_ops();
            fuzz(
                target,
                n,
                byte_inputs(seeds, CBOR_DICT, 4096),
                move |b: &Vec<u8>| {
                    if let Ok(r) = SyncResponse::decode(b) {
                        for op in &r.ops {
                            fedlog_op(&log, &ops, op);
                        }
                    }
                },
            );
        }
        "gossip" => {
            let (log, ops) = fedlog_seed_ops();
            fuzz(
                target,
                n,
                byte_inputs(seeds, GOSSIP_DICT, 4096),
                // What the sync actor does with a gossip message: the envelope first.
                move |b: &Vec<u8>| match Gossip::decode(b) {
                    Ok(Gossip::Op(rest)) => fedlog_op(&log, &ops, &rest),
                    Ok(Gossip::Status { op, status: st }) => {
                        assert_eq!(st.op.parse::<OpHash>().ok(), Some(op));
                        assert!(st.errors.len() <= MAX_STATUS_ERRORS);
                        assert!(st.errors.iter().all(|e| e.len() <= MAX_STATUS_ERROR_LEN));
                    }
                    Err(_) => {}
                },
            );
        }
        "jwt" => {
            let dir = tempfile::tempdir().unwrap();
            let auths = jwt_authenticators(dir.path());
            let valid = jwt_valid_tokens();
            fuzz(
                target,
                n,
                text_inputs(seeds, JWT_DICT),
                move |token: &String| {
                    let _ = jsonwebtoken::decode_header(token);
                    for a in &auths {
                        let got = futures::executor::block_on(a.authenticate(token));
                        // Only the seeds signed with the configured keys are accepted.
                        if got.is_ok() {
                            assert!(valid.contains(token), "forged token accepted: {token:?}");
                        }
                    }
                },
            );
        }
        other => panic!("unknown fuzz target {other}"),
    }
}

fn federation_snapshot(scope: &str, text: &str) {
    // What a node does with a published snapshot: check it against its scope, then load
    // the configuration with it.
    if let Ok(tree) = kos_config::federation::check_content(scope, text, "snapshot") {
        let ov = Overlays {
            federation: vec![(scope.to_string(), tree)],
            ..Overlays::default()
        };
        let profile = kos_config::preset(kos_config::ProfileKind::FederationNode);
        let _ = kos_config::assemble(
            "federation_node",
            profile,
            "profiles/federation_node.yaml",
            &ov,
            &Capabilities::ALL,
        );
    }
}

fn peers_list(text: &str) {
    let Ok(file) = kos_klp::peers::parse_peers_file(text) else {
        return;
    };
    // The node rewrites the managed section; the operator's section stays as it was.
    let rewritten = kos_klp::peers::replace_managed(text, "");
    let again = kos_klp::peers::parse_peers_file(&rewritten)
        .unwrap_or_else(|e| panic!("rewritten list {rewritten:?} does not parse: {e:?}"));
    assert_eq!(again.local, file.local, "{rewritten:?}");
    assert_eq!(again.blocked, file.blocked, "{rewritten:?}");
    assert!(again.managed.is_empty());
}

fn fedlog_op(log: &Log, valid: &[Op], bytes: &[u8]) {
    if let Ok(op) = Op::decode(bytes) {
        assert_eq!(
            op.encode(),
            bytes,
            "decode accepted a non-canonical encoding"
        );
        // Signatures cover the canonical bytes: whatever verifies is one of the signed ops.
        if op.verify_signatures().is_ok() {
            assert!(valid.contains(&op), "forged op verifies: {op:?}");
        }
        let _ = log.check(&op);
    }
    if let Ok(u) = UnsignedOp::decode(bytes) {
        assert_eq!(u.canonical_bytes(), bytes);
    }
}

// --- seeds that are generated (signed, hence deterministic but not hand-written) ----------

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn node(seed: u8) -> NodeId {
    NodeId::from_public_key(key(seed).verifying_key())
}

fn manifest(seed: u8, nonce: u8) -> Manifest {
    Manifest {
        protocol_versions: VersionRange { min: 1, max: 2 },
        skills: vec![Skill::new("summarize", "Summarizer", "1.2.0")],
        listen_addrs: vec!["/ip4/127.0.0.1/udp/4001/quic-v1".into()],
        ..Manifest::new(
            node(seed),
            "fuzz-node",
            "0.1.0",
            "federated",
            MAP_NOW,
            [nonce; 16],
        )
    }
}

fn map_seed_messages() -> Vec<MapMessage> {
    vec![
        MapMessage::Hello(manifest(1, 1)),
        MapMessage::Welcome {
            manifest: manifest(1, 2),
            version: 1,
        },
        MapMessage::goodbye(node(1), GoodbyeReason::Blocked, "bye", MAP_NOW, [3; 16]),
    ]
}

/// A log of one admin (key 11, threshold 1) and the ops the seeds hold, in order.
fn fedlog_seed_ops() -> (Log, Vec<Op>) {
    let admin = key(11);
    let mut log = Log::new(Genesis {
        admins: vec![node(11)],
        threshold: 1,
    })
    .unwrap();
    let bodies = vec![
        OpBody::ApprovePeer {
            peer: node(1),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            label: Some("alice".into()),
        },
        OpBody::RevokePeer {
            peer: node(1),
            reason: "gone".into(),
        },
        OpBody::AddAdmin { admin: node(12) },
        OpBody::PublishConfig {
            snapshot_id: "ab".repeat(32),
            scope: "monitoring".into(),
            content: "monitoring:\n  metrics: [prometheus]\n".into(),
        },
        OpBody::RemoveAdmin { admin: node(12) },
    ];
    let mut ops = Vec::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let op = log.new_op(&admin, body, MAP_NOW + i as u64);
        log.insert(op.clone()).unwrap();
        ops.push(op);
    }
    (log, ops)
}

fn jwt_node_id() -> String {
    node(1).to_string()
}

fn write_token_key(dir: &Path) {
    let path = kos_node::auth::local::TokenKey::path(dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let pem = key(7).to_pkcs8_pem(LineEnding::LF).unwrap();
    std::fs::write(&path, pem.as_bytes()).unwrap();
}

/// The two local configurations: EdDSA with the token key, HS256 with a secret.
fn jwt_authenticators(dir: &Path) -> Vec<Authenticator> {
    write_token_key(dir);
    let mut eddsa = Config::default();
    eddsa.auth.jwt = Toggle::Enabled;
    eddsa.auth.jwt_algorithm = JwtAlgorithm::Eddsa;
    let mut hs = eddsa.clone();
    hs.auth.jwt_algorithm = JwtAlgorithm::Hs256;
    hs.auth.jwt_secret = Some(Secret::new(HS256_SECRET));
    [eddsa, hs]
        .iter()
        .map(|c| Authenticator::new(c, &jwt_node_id(), dir).unwrap())
        .collect()
}

fn jwt_claims(exp: u64) -> kos_node::auth::LocalClaims {
    let issuer = kos_node::auth::local::local_issuer(&jwt_node_id());
    kos_node::auth::LocalClaims {
        iss: issuer.clone(),
        aud: issuer,
        sub: "fuzz".into(),
        exp,
        iat: 1_700_000_000,
        nbf: 1_700_000_000,
        jti: "00112233445566778899aabb".into(),
        role: kos_node::auth::Role::Admin,
    }
}

fn eddsa_token(exp: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    write_token_key(dir.path());
    let k = kos_node::auth::local::TokenKey::load_or_create(dir.path()).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(k.kid());
    let pem = key(7).to_pkcs8_pem(LineEnding::LF).unwrap();
    let ek = jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&h, &jwt_claims(exp), &ek).unwrap()
}

fn hs256_token(exp: u64) -> String {
    let h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let ek = jsonwebtoken::EncodingKey::from_secret(HS256_SECRET.as_bytes());
    jsonwebtoken::encode(&h, &jwt_claims(exp), &ek).unwrap()
}

/// The seeds that verify.
fn jwt_valid_tokens() -> Vec<String> {
    vec![eddsa_token(JWT_EXP), hs256_token(JWT_EXP)]
}

fn b64(v: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

/// Every generated seed: (target, file name, bytes).
fn generated_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, msg) in ["hello", "welcome", "goodbye"]
        .into_iter()
        .zip(map_seed_messages())
    {
        let sealed = kos_map_protocol::seal(&msg, &key(1)).unwrap();
        out.push(("map_open", format!("gen-{name}.cbor"), sealed));
    }
    let (log, ops) = fedlog_seed_ops();
    let names = ["approve", "revoke", "add-admin", "publish", "remove-admin"];
    for (name, op) in names.iter().zip(&ops) {
        out.push(("fedlog_op", format!("gen-{name}.cbor"), op.encode()));
    }
    out.push((
        "fedlog_op",
        "gen-draft.cbor".into(),
        ops[0].unsigned.canonical_bytes(),
    ));
    let genesis = ByteBuf::from(log.genesis_id().to_vec());
    let hashes: Vec<ByteBuf> = ops
        .iter()
        .map(|o| ByteBuf::from(o.hash().0.to_vec()))
        .collect();
    let requests = [
        ("empty", Vec::new(), None),
        ("heads", hashes[..2].to_vec(), None),
        (
            "paged",
            hashes[..1].to_vec(),
            Some((3u64, hashes[2].clone())),
        ),
    ];
    for (name, heads, after) in requests {
        let r = SyncRequest {
            genesis: genesis.clone(),
            heads,
            after,
        };
        out.push(("sync_request", format!("gen-{name}.cbor"), cbor(&r)));
    }
    let answers = [
        ("empty", Vec::new(), false),
        ("one", vec![ops[0].encode()], true),
        ("all", ops.iter().map(Op::encode).collect(), false),
    ];
    for (name, page, more) in answers {
        let r = SyncResponse {
            genesis: genesis.clone(),
            ops: page.into_iter().map(ByteBuf::from).collect(),
            more,
        };
        out.push(("sync_response", format!("gen-{name}.cbor"), cbor(&r)));
    }
    out.push((
        "gossip",
        "gen-op.bin".into(),
        [&[TAG_OP][..], &ops[3].encode()].concat(),
    ));
    for (name, kind, errors) in [
        ("ack", StatusKind::Ack, vec![]),
        (
            "nack",
            StatusKind::Nack,
            vec!["a: bad value é".to_string(); 3],
        ),
    ] {
        let st = ConfigStatus {
            op: ops[3].hash().to_string(),
            scope: "monitoring".into(),
            snapshot_id: "ab".repeat(32),
            status: kind,
            errors,
            at_ms: MAP_NOW,
        };
        let json = serde_json::to_vec(&st).unwrap();
        out.push((
            "gossip",
            format!("gen-{name}.bin"),
            [&[TAG_STATUS][..], &json].concat(),
        ));
    }
    let tokens = [
        ("eddsa", eddsa_token(JWT_EXP)),
        ("eddsa-expired", eddsa_token(1_700_000_100)),
        ("hs256", hs256_token(JWT_EXP)),
        (
            "none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(&serde_json::to_vec(&jwt_claims(JWT_EXP)).unwrap())
            ),
        ),
        (
            "unknown-alg",
            format!("{}.e30.c2ln", b64(br#"{"alg":"HS1","kid":"k"}"#)),
        ),
        (
            "rs256-kid",
            format!(
                "{}.e30.c2ln",
                b64(br#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#)
            ),
        ),
    ];
    for (name, t) in tokens {
        out.push(("jwt", format!("gen-{name}.txt"), t.into_bytes()));
    }
    let peers = format!(
        "# approved peers\n{a} /ip4/127.0.0.1/tcp/4001 /ip4/127.0.0.1/udp/4001/quic-v1 # alice\n\
         {b} /dns4/example.org/tcp/4001/p2p/{b}\n!{c} # blocked: spam\n\n{m}\n{d} /ip6/::1/tcp/4001 # approved by the federation\n# revoked: {c}\n",
        a = node(1),
        b = node(2),
        c = node(3),
        d = node(4),
        m = kos_klp::peers::MANAGED_MARKER,
    );
    out.push(("peers_list", "gen-peers.list".into(), peers.into_bytes()));
    out.push((
        "node_id",
        "gen-id.txt".into(),
        node(1).to_string().into_bytes(),
    ));
    out.push(("node_id", "gen-id.bin".into(), node(2).to_bytes().to_vec()));
    out.push((
        "node_id",
        "gen-op-hash.txt".into(),
        ops[0].hash().to_string().into_bytes(),
    ));
    out
}

/// The generated seeds on disk are the ones this code makes (`KOS_FUZZ_BLESS=1` rewrites
/// them), so a change of an encoding shows up here, not as a silently weaker corpus.
#[test]
fn corpus_is_current() {
    let bless = std::env::var("KOS_FUZZ_BLESS").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for (target, name, bytes) in generated_seeds() {
        let path = corpus_dir(target).join(&name);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated seeds (rerun with KOS_FUZZ_BLESS=1): {stale:?}"
    );
    for target in TARGETS {
        assert!(!corpus(target).is_empty(), "{target} has no seeds");
    }
    // The seeds are valid inputs, so mutations start deep inside the decoders.
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    for seed in corpus("yaml_tree") {
        kos_config::tree::parse_yaml(&text(&seed), "seed").unwrap();
    }
    for seed in corpus("config_profile") {
        let t = text(&seed);
        kos_config::assemble("x", &t, "x", &Overlays::default(), &Capabilities::ALL).unwrap();
    }
    for entry in std::fs::read_dir(corpus_dir("federation_snapshot")).unwrap() {
        let path = entry.unwrap().path();
        let scope = path.file_stem().unwrap().to_str().unwrap().to_string();
        let content = std::fs::read_to_string(&path).unwrap();
        kos_config::federation::check_content(&scope, &content, "seed").unwrap();
    }
    for seed in corpus("env_file") {
        let (_, errors) = kos_config::envfile::parse_env_file(&text(&seed), "seed");
        assert!(errors.is_empty(), "{errors:?}");
    }
    let peers = kos_klp::peers::parse_peers_file(&text(&corpus("peers_list")[0])).unwrap();
    assert_eq!(
        (peers.local.len(), peers.blocked.len(), peers.managed.len()),
        (2, 1, 1)
    );
    for seed in corpus("map_open") {
        kos_map_protocol::open(&seed, &node(1), MAP_NOW, &mut ReplayGuard::default()).unwrap();
    }
    let (log, ops) = fedlog_seed_ops();
    for op in &ops {
        assert_eq!(Op::decode(&op.encode()).as_ref(), Ok(op));
        assert!(log.contains(&op.hash()));
    }
    for seed in corpus("sync_request") {
        SyncRequest::decode(&seed).unwrap();
    }
    for seed in corpus("sync_response") {
        for op in SyncResponse::decode(&seed).unwrap().ops {
            Op::decode(&op).unwrap();
        }
    }
    for seed in corpus("gossip") {
        match seed.split_first() {
            Some((&TAG_OP, rest)) => drop(Op::decode(rest).unwrap()),
            Some((&TAG_STATUS, rest)) => drop(decode_status(rest).unwrap()),
            _ => panic!("untagged gossip seed"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let auths = jwt_authenticators(dir.path());
    let valid = jwt_valid_tokens();
    for seed in corpus("jwt") {
        let token = text(&seed);
        let accepted = auths
            .iter()
            .filter(|a| futures::executor::block_on(a.authenticate(&token)).is_ok())
            .count();
        assert_eq!(accepted, usize::from(valid.contains(&token)), "{token}");
    }
}

const TARGETS: [&str; 12] = [
    "yaml_tree",
    "config_profile",
    "federation_snapshot",
    "env_file",
    "peers_list",
    "node_id",
    "map_open",
    "fedlog_op",
    "sync_request",
    "sync_response",
    "gossip",
    "jwt",
];

// --- input generators ----------------------------------------------------------------------

const YAML_DICT: &[&[u8]] = &[
    b"&a ",
    b"*a",
    b"&b ",
    b"*b",
    b"<<: ",
    b"- ",
    b"? ",
    b": ",
    b"{",
    b"}",
    b"[",
    b"]",
    b", ",
    b"!!str ",
    b"!!map ",
    b"!<tag:x> ",
    b"---\n",
    b"...\n",
    b"\t",
    b"|\n",
    b">-\n",
    b"'",
    b"\"",
    b"# c\n",
    b"%YAML 1.2\n",
    b"%TAG ! tag:x:\n",
    b"\n  ",
    b"\n",
    b"~",
    b"null",
    b"0x",
    b"1e9",
    b"\\u0000",
    b"\r\n",
    b"\xef\xbb\xbf",
    b"${HOME}",
    b"profile: ",
    b"enterprise",
];

const ENV_DICT: &[&[u8]] = &[
    b"=",
    b"\"",
    b"'",
    b"\\",
    b"\\n",
    b"\\\"",
    b"export ",
    b" #",
    b"#",
    b"\n",
    b"\r",
    b"KOS_",
    b"__",
    b" ",
    b"\t",
    b"\xc3\xa9",
];

const PEERS_DICT: &[&[u8]] = &[
    b"!", b"#", b" ", b"\n", b"/ip4/", b"/ip6/", b"/dns4/", b"/tcp/", b"/udp/", b"/quic-v1",
    b"/p2p/", b"/p2p/12D3KooW", b"12D3KooW", b"::1", b"127.0.0.1", b"4001", b"65536",
    b"# ==== federation-approved peers: written by kos from the federation log; edit above this line ====",
    b"\r\n", b"\xe2\x80\x8b",
];

const ID_DICT: &[&[u8]] = &[
    b"12D3KooW",
    b"1",
    b"z",
    b"0",
    b"O",
    b"l",
    b"\x00\x24\x08\x01\x12\x20",
    b"\x00",
    b"ff",
];

/// CBOR heads that claim huge or odd lengths, and the field names of the formats.
const CBOR_DICT: &[&[u8]] = &[
    b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x7b\x00\x00\x00\x10\x00\x00\x00\x00",
    b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xbb\x00\x00\x01\x00\x00\x00\x00\x00",
    b"\x5f",
    b"\x7f",
    b"\x9f",
    b"\xbf",
    b"\xff",
    b"\xc0",
    b"\xd8\x18",
    b"\xf9\x7e\x00",
    b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00",
    b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81",
    b"\x64body",
    b"\x69signature",
    b"\x66author",
    b"\x67parents",
    b"\x65heads",
    b"\x63ops",
    b"\x64more",
    b"\x65after",
    b"\x67genesis",
];

const GOSSIP_DICT: &[&[u8]] = &[
    b"\x01",
    b"\x02",
    b"{\"op\":\"",
    b"\"errors\":[",
    b"\"status\":\"nack\"",
    b"\"at_ms\":18446744073709551615",
    b"\xe2\x82\xac",
    b"\\ud800",
    b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",
];

const JWT_DICT: &[&[u8]] = &[
    b".",
    b"..",
    b"eyJ",
    b"e30",
    b"=",
    b"+",
    b"/",
    b"-",
    b"_",
    b"eyJhbGciOiJub25lIn0",
    b"eyJhbGciOiJFZERTQSJ9",
    b"eyJhbGciOiJIUzI1NiJ9",
    b"eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ",
    b"\xf0\x9f\x98\x80",
    b" ",
];

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Interesting(Index, u8),
    Truncate(Index),
    Remove(Index, u8),
    Token(Index, Index),
    Splice(Index, Index, Index, u16),
    Repeat(Index, u8, u8),
}

const INTERESTING: [u8; 10] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x18, 0x19, 0x1a, 0x1b, 0x1f];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Interesting(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1..32u8).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::Token(i, t)),
        (any::<Index>(), any::<Index>(), any::<Index>(), 1..512u16)
            .prop_map(|(i, s, f, n)| Mutation::Splice(i, s, f, n)),
        (any::<Index>(), 1..64u8, 2..64u8).prop_map(|(i, n, k)| Mutation::Repeat(i, n, k)),
    ]
}

fn mutate(mut b: Vec<u8>, muts: &[Mutation], seeds: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    for m in muts {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
        match m {
            Mutation::Flip(i, bit) if !b.is_empty() => {
                let p = i.index(b.len());
                b[p] ^= 1 << bit;
            }
            Mutation::Set(i, v) if !b.is_empty() => {
                let p = i.index(b.len());
                b[p] = *v;
            }
            Mutation::Interesting(i, v) if !b.is_empty() => {
                let p = i.index(b.len());
                b[p] = INTERESTING[usize::from(*v) % INTERESTING.len()];
            }
            Mutation::Truncate(i) => {
                let p = at(i, b.len());
                b.truncate(p);
            }
            Mutation::Remove(i, n) if !b.is_empty() => {
                let p = i.index(b.len());
                let end = (p + usize::from(*n)).min(b.len());
                b.drain(p..end);
            }
            Mutation::Token(i, t) => {
                let p = at(i, b.len());
                let tok = dict[t.index(dict.len())];
                b.splice(p..p, tok.iter().copied());
            }
            Mutation::Splice(i, s, f, n) => {
                let other = &seeds[s.index(seeds.len())];
                if !other.is_empty() {
                    let from = f.index(other.len());
                    let end = (from + usize::from(*n)).min(other.len());
                    let p = at(i, b.len());
                    b.splice(p..p, other[from..end].iter().copied());
                }
            }
            Mutation::Repeat(i, n, k) if !b.is_empty() => {
                let p = i.index(b.len());
                let end = (p + usize::from(*n)).min(b.len());
                let chunk = b[p..end].to_vec();
                for _ in 1..*k {
                    b.splice(end..end, chunk.iter().copied());
                }
            }
            _ => {}
        }
    }
    b
}

/// Pseudo-random bytes from a seed (generating long inputs byte by byte through proptest
/// is slow; this is xorshift, enough for noise).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Seeds verbatim, seeds mutated, random bytes, and dictionary tokens strung together.
fn byte_inputs(
    seeds: Vec<Vec<u8>>,
    dict: &'static [&'static [u8]],
    max_noise: usize,
) -> BoxedStrategy<Vec<u8>> {
    let seeds = Arc::new(seeds);
    let n = seeds.len();
    let s1 = seeds.clone();
    let s2 = seeds.clone();
    let s3 = seeds;
    prop_oneof![
        1 => (0..n).prop_map(move |i| s1[i].clone()),
        12 => (0..n, prop::collection::vec(mutation(), 1..8))
            .prop_map(move |(i, m)| mutate(s2[i].clone(), &m, &s2, dict)),
        2 => (any::<u64>(), 0..max_noise).prop_map(|(s, len)| noise(s, len)),
        2 => (prop::collection::vec(any::<Index>(), 0..40), 0..n, any::<Index>())
            .prop_map(move |(toks, i, cut)| {
                let mut b: Vec<u8> = toks.iter().flat_map(|t| dict[t.index(dict.len())].iter().copied()).collect();
                let seed = &s3[i];
                b.extend_from_slice(&seed[..cut.index(seed.len() + 1)]);
                b
            }),
    ]
    .boxed()
}

fn text_inputs(seeds: Vec<Vec<u8>>, dict: &'static [&'static [u8]]) -> BoxedStrategy<String> {
    byte_inputs(seeds, dict, 2048)
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
        .boxed()
}

/// A YAML value in flow style with anchors `&aN` and aliases `*aN`.
fn yaml_flow() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        "[a-z]{1,8}",
        "[0-9]{1,6}",
        Just("~".to_string()),
        Just("\"q\\u00e9\"".to_string()),
        (0..4u8).prop_map(|i| format!("*a{i}")),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z]{1,6}", inner.clone()), 0..6).prop_map(|kv| {
                let items: Vec<String> = kv.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", items.join(", "))
            }),
            (0..4u8, inner).prop_map(|(i, v)| format!("&a{i} {v}")),
        ]
    })
}

/// A block mapping of flow values, keys from `keys`.
fn yaml_doc(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(keys), yaml_flow()), 1..8).prop_map(|kv| {
        kv.iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect::<String>()
    })
}

/// Anchors that each alias the previous one `fanout` times: the document is small, its
/// expansion is `fanout ^ levels` nodes ("billion laughs").
fn alias_chain() -> impl Strategy<Value = String> {
    (1..12usize, 2..12usize, any::<bool>()).prop_map(|(levels, fanout, block)| {
        let mut doc = String::from("a0: &a0 [x, y]\n");
        for l in 1..levels {
            let refs = vec![format!("*a{}", l - 1); fanout];
            if block {
                doc.push_str(&format!("a{l}: &a{l}\n"));
                for r in refs {
                    doc.push_str(&format!("  - {r}\n"));
                }
            } else {
                doc.push_str(&format!("a{l}: &a{l} [{}]\n", refs.join(", ")));
            }
        }
        doc
    })
}

const TOP_KEYS: &[&str] = &[
    "profile",
    "node",
    "api",
    "logging",
    "federation",
    "auth",
    "services",
    "storage",
    "database",
    "messaging",
    "monitoring",
    "llms",
    "agents",
    "x",
];

fn yaml_inputs(seeds: Vec<Vec<u8>>) -> BoxedStrategy<String> {
    prop_oneof![
        6 => text_inputs(seeds, YAML_DICT),
        2 => yaml_doc(TOP_KEYS),
        1 => alias_chain(),
    ]
    .boxed()
}

fn profile_inputs(seeds: Vec<Vec<u8>>) -> BoxedStrategy<String> {
    let kinds = kos_config::ProfileKind::ALL.to_vec();
    prop_oneof![
        6 => text_inputs(seeds, YAML_DICT),
        2 => (prop::sample::select(kinds), yaml_doc(TOP_KEYS))
            .prop_map(|(k, doc)| format!("profile: {k}\n{doc}")),
    ]
    .boxed()
}

// --- the harness ---------------------------------------------------------------------------

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let Ok(dir) = std::fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn random_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// What a child reports for the last failing input.
static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

/// Runs `check` on generated inputs until the time is up (child side). Writes the index of
/// the input being checked to `KOS_FUZZ_PROGRESS` before each check, so a child that dies
/// can be replayed; in replay mode (`KOS_FUZZ_REPLAY=<index>`) only generates, and writes
/// input `<index>` to `KOS_FUZZ_REPLAY_OUT`.
fn fuzz<S: Strategy>(target: &str, seeds: usize, strategy: S, check: impl Fn(&S::Value))
where
    S::Value: Debug,
{
    let seed: u64 = env_var("KOS_FUZZ_SEED").parse().unwrap();
    let secs = env_f64("KOS_FUZZ_SECONDS", DEFAULT_SECONDS);
    let mut rng_seed = [0u8; 32];
    rng_seed[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &rng_seed);
    let mut runner = TestRunner::new_with_rng(RunnerConfig::default(), rng);
    let replay: Option<u64> = std::env::var("KOS_FUZZ_REPLAY")
        .ok()
        .map(|v| v.parse().unwrap());
    let progress = std::fs::File::create(env_var("KOS_FUZZ_PROGRESS")).unwrap();
    std::panic::set_hook(Box::new(|info| {
        *PANIC_MESSAGE.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.to_string());
    }));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut runs: u64 = 0;
    while replay.is_some() || Instant::now() < deadline {
        let mut tree = strategy.new_tree(&mut runner).unwrap();
        if let Some(index) = replay {
            if runs == index {
                let out = env_var("KOS_FUZZ_REPLAY_OUT");
                std::fs::write(out, format!("{:?}", tree.current())).unwrap();
                return;
            }
            runs += 1;
            continue;
        }
        progress.write_at(&runs.to_le_bytes(), 0).unwrap();
        let input = tree.current();
        let fails = |v: &S::Value| catch_unwind(AssertUnwindSafe(|| check(v))).is_err();
        if fails(&input) {
            let first = PANIC_MESSAGE.lock().unwrap().clone();
            let minimal = shrink(&mut tree, fails);
            let message = PANIC_MESSAGE.lock().unwrap().clone().or(first);
            let _ = std::panic::take_hook();
            panic!(
                "fuzz {target}: FAILED on run {runs} (KOS_FUZZ_SEED={seed}): {}\nsmallest input: {minimal:?}",
                message.unwrap_or_default()
            );
        }
        runs += 1;
    }
    let _ = std::panic::take_hook();
    println!(
        "fuzz {target}: {runs} runs in {:.1} s, corpus {seeds} seeds",
        start.elapsed().as_secs_f64()
    );
}

/// proptest's shrinking, by hand: simplify while the input still fails, else complicate.
fn shrink<T: ValueTree>(tree: &mut T, fails: impl Fn(&T::Value) -> bool) -> T::Value
where
    T::Value: Debug,
{
    let deadline = Instant::now() + SHRINK_BUDGET;
    let mut smallest = tree.current();
    if !tree.simplify() {
        return smallest;
    }
    while Instant::now() < deadline {
        let v = tree.current();
        if fails(&v) {
            smallest = v;
            if !tree.simplify() {
                break;
            }
        } else if !tree.complicate() {
            break;
        }
    }
    smallest
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// A test's entry point: the fuzzing itself in the child, the supervision in the parent.
fn entry(target: &str) {
    match std::env::var("KOS_FUZZ_CHILD") {
        Ok(child) if child == target => child_main(target),
        Ok(_) => {}
        Err(_) => {
            let seconds = env_f64("KOS_FUZZ_SECONDS", DEFAULT_SECONDS);
            let run = run_child(target, &format!("fuzz_{target}"), seconds, mem_limit());
            let line = run.summary().unwrap_or_else(|| panic!("{}", run.failure()));
            // Straight to the stderr handle: libtest captures `println!` of passing tests.
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }
}

fn mem_limit() -> u64 {
    std::env::var("KOS_FUZZ_MEM_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MEM_MB)
        * 1024
        * 1024
}

#[derive(Debug)]
struct ChildRun {
    target: String,
    seed: u64,
    output: Output,
    /// The input a child that died was checking (from replay), if it died.
    died_on: Option<String>,
}

impl ChildRun {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// The child's `fuzz <target>: ...` line when it succeeded.
    fn summary(&self) -> Option<String> {
        if !self.output.status.success() {
            return None;
        }
        // libtest prints `test <name> ... ` before it on the same line.
        let prefix = format!("fuzz {}: ", self.target);
        self.stdout()
            .lines()
            .find_map(|l| l.find(&prefix).map(|i| l[i..].to_string()))
    }

    fn failure(&self) -> String {
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        let died = match &self.died_on {
            Some(input) => {
                let shown: String = input.chars().take(2000).collect();
                format!("\nit died on this input (replayed): {shown}")
            }
            None => String::new(),
        };
        format!(
            "fuzz {} failed ({}, KOS_FUZZ_SEED={}){died}\n--- child stdout\n{}\n--- child stderr\n{}",
            self.target,
            self.output.status,
            self.seed,
            tail(self.stdout()),
            tail(self.stderr()),
        )
    }
}

/// Runs `test` of this binary as the child for `target`, under the memory and CPU limits.
/// If the child dies without reporting (a signal: allocation failure, stack overflow, CPU
/// limit), runs it again in replay mode to recover the input it was checking.
fn run_child(target: &str, test: &str, seconds: f64, mem_bytes: u64) -> ChildRun {
    let seed = std::env::var("KOS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(random_seed);
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let progress = tmp.join(format!("fuzz-{target}-{}.progress", std::process::id()));
    let exe = std::env::current_exe().unwrap();
    let cpu = seconds.ceil() as u64 + CPU_SLACK_SECS;
    let command = |extra: &[(&str, String)]| {
        let mut c = Command::new("prlimit");
        c.arg(format!("--data={mem_bytes}"))
            .arg(format!("--cpu={cpu}"))
            .arg("--")
            .arg(&exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env("KOS_FUZZ_CHILD", target)
            .env("KOS_FUZZ_SEED", seed.to_string())
            .env("KOS_FUZZ_SECONDS", seconds.to_string())
            .env("KOS_FUZZ_PROGRESS", &progress)
            .env("RUST_BACKTRACE", "0");
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output()
            .unwrap_or_else(|e| panic!("cannot run the fuzz child for {target} (prlimit): {e}"))
    };
    let output = command(&[]);
    let died = {
        use std::os::unix::process::ExitStatusExt as _;
        output.status.signal().is_some()
    };
    let died_on = if died {
        let index = std::fs::read(&progress)
            .ok()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes);
        index.and_then(|i| {
            let out = tmp.join(format!("fuzz-{target}-{seed}-{i}.input"));
            let replay = command(&[
                ("KOS_FUZZ_REPLAY", i.to_string()),
                ("KOS_FUZZ_REPLAY_OUT", out.display().to_string()),
            ]);
            replay
                .status
                .success()
                .then(|| std::fs::read_to_string(&out).ok())
                .flatten()
                .map(|s| format!("{s}\n(saved in {})", out.display()))
        })
    } else {
        None
    };
    let _ = std::fs::remove_file(&progress);
    ChildRun {
        target: target.to_string(),
        seed,
        output,
        died_on,
    }
}

// --- tests of the harness ------------------------------------------------------------------

/// The memory limit the targets run under bites: a child that allocates twice the limit
/// dies with an allocation failure, and one that allocates (and touches) a quarter of it
/// runs.
#[test]
fn harness_memory_limit_bites() {
    match std::env::var("KOS_FUZZ_CHILD").as_deref() {
        Ok("harness_alloc") => {
            let mb: usize = env_var("KOS_FUZZ_ALLOC_MB").parse().unwrap();
            let v = vec![1u8; mb * 1024 * 1024];
            println!("fuzz harness_alloc: allocated {} MiB", v.len() >> 20);
        }
        Ok(_) => {}
        Err(_) => {
            // The limit the targets run under.
            let limit_mb = mem_limit() >> 20;
            let run = |mb: u64| {
                run_child_with(
                    "harness_alloc",
                    "harness_memory_limit_bites",
                    limit_mb,
                    &[("KOS_FUZZ_ALLOC_MB", mb.to_string())],
                )
            };
            let over = run(2 * limit_mb);
            assert!(
                !over.status.success(),
                "allocating twice the limit succeeded: {}",
                String::from_utf8_lossy(&over.stdout)
            );
            let err = String::from_utf8_lossy(&over.stderr);
            assert!(err.contains("memory allocation of"), "{err}");
            let under = run(limit_mb / 4);
            assert!(
                under.status.success(),
                "a quarter of the limit failed: {}",
                String::from_utf8_lossy(&under.stderr)
            );
            let out = String::from_utf8_lossy(&under.stdout);
            assert!(
                out.contains(&format!("allocated {} MiB", limit_mb / 4)),
                "{out}"
            );
        }
    }
}

/// Runs a harness child directly (no fuzz loop), under a memory limit of `mem_mb`.
fn run_child_with(target: &str, test: &str, mem_mb: u64, env: &[(&str, String)]) -> Output {
    let mut c = Command::new("prlimit");
    c.arg(format!("--data={}", mem_mb * 1024 * 1024))
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("KOS_FUZZ_CHILD", target);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A target with a planted bug (panics on any input holding 0xAB) fails, shrunk to the
/// smallest such input; one with a planted crash (aborts on 0xCD) fails too, and the
/// replay recovers an input holding 0xCD.
#[test]
fn harness_finds_planted_bugs() {
    match std::env::var("KOS_FUZZ_CHILD").as_deref() {
        Ok("harness_panic") => fuzz(
            "harness_panic",
            1,
            prop::collection::vec(any::<u8>(), 0..64),
            |b: &Vec<u8>| assert!(!b.contains(&0xAB), "planted bug"),
        ),
        Ok("harness_abort") => fuzz(
            "harness_abort",
            1,
            byte_inputs(vec![b"hello".to_vec()], CBOR_DICT, 64),
            |b: &Vec<u8>| {
                if b.contains(&0xCD) {
                    std::process::abort();
                }
            },
        ),
        Ok(_) => {}
        Err(_) => {
            let run = run_child(
                "harness_panic",
                "harness_finds_planted_bugs",
                30.0,
                mem_limit(),
            );
            assert!(run.summary().is_none(), "the planted bug was not found");
            let out = run.stderr();
            assert!(out.contains("planted bug"), "{}", run.failure());
            // Shrunk to the smallest failing input.
            assert!(out.contains("smallest input: [171]\n"), "{}", run.failure());
            let run = run_child(
                "harness_abort",
                "harness_finds_planted_bugs",
                30.0,
                mem_limit(),
            );
            assert!(run.summary().is_none(), "the planted crash was not found");
            let input = run
                .died_on
                .clone()
                .unwrap_or_else(|| panic!("{}", run.failure()));
            assert!(
                input.starts_with('[') && input.contains("205"),
                "replayed input {input}"
            );
        }
    }
}
