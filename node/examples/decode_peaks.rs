//! Peak memory of decoding the worst input of each kind the node accepts (issue 10: a
//! ceiling on what a request or federation message can make the node allocate, not only on
//! its size on the wire). Figures go to "Resource ceilings" in docs/ARCHITECTURE.md.
//!
//! `cargo run --release -p kos-node --example decode_peaks` runs every case, each in its own
//! child process; one case: `... --example decode_peaks -- json-value-zeros`.
//!
//! A child builds its input first (exact capacity, so no freed memory is left for the
//! decoder to reuse unseen), resets the kernel's peak-RSS mark (`/proc/self/clear_refs`),
//! decodes, and reports VmHWM − VmRSS-before: the resident memory the decoding added at its
//! peak, including what it freed before returning.

use std::process::Command;

use ed25519_dalek::SigningKey;
use kos_config::{ConfigDir, LoadOptions, ProfileKind};
use kos_map_protocol::NodeId;
use kos_map_protocol::fedlog::{Op, OpBody, UnsignedOp};
use kos_node::vector::Point;
use serde::Deserialize;
use serde_bytes::ByteBuf;

const MIB: usize = 1024 * 1024;

/// Every case: name, input size, what it is.
const CASES: &[(&str, &str)] = &[
    (
        "json-value-zeros",
        "1 MiB `[0,0,...]` into serde_json::Value (peers/call `body`)",
    ),
    (
        "json-value-arrays",
        "1 MiB `[[],[],...]` into serde_json::Value",
    ),
    (
        "json-value-objects",
        "1 MiB `[{},{},...]` into serde_json::Value",
    ),
    (
        "json-value-keys",
        "1 MiB `{\"0\":0,\"1\":0,...}` into serde_json::Value",
    ),
    (
        "json-strings",
        "1 MiB `{\"addrs\":[\"\",\"\",...]}` into a Vec<String> field (approve)",
    ),
    (
        "json-points-empty",
        "1 MiB `{\"points\":[{\"id\":0,\"vector\":[]},...]}` (vectors upsert)",
    ),
    (
        "json-points-payload",
        "1 MiB one point whose payload is `{\"a\":[0,0,...]}`",
    ),
    (
        "yaml-flow-seq",
        "1 MiB YAML `a: [x,x,...]` through load_candidate (node cap)",
    ),
    (
        "yaml-unknown-keys",
        "1 MiB YAML of unknown top-level keys through load_candidate",
    ),
    (
        "yaml-many-agents",
        "1 MiB YAML `agents: {a0: {}, ...}` through load_candidate (names refused by validation)",
    ),
    (
        "yaml-long-scalar",
        "1 MiB YAML with one 1 MiB scalar through load_candidate",
    ),
    (
        "cbor-bytebufs",
        "1 MiB CBOR array of empty byte strings into Vec<ByteBuf> (old sync answer)",
    ),
    (
        "op-decode-addrs",
        "256 KiB fedlog op whose approve_peer addrs are empty strings",
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(case) = args.get(1) {
        child(case);
        return;
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("current_exe: {e}")));
    println!("| case | input | peak added | × input |");
    println!("|---|---|---|---|");
    for (case, what) in CASES {
        let out = Command::new(&exe)
            .arg(case)
            .output()
            .unwrap_or_else(|e| fail(&format!("{case}: {e}")));
        if !out.status.success() {
            fail(&format!(
                "{case} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let mut it = line.split_whitespace();
        let input: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let peak: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        println!(
            "| {case}: {what} | {:.0} KiB | {:.1} MiB | {:.1} |",
            input / 1024.0,
            peak / MIB as f64,
            peak / input
        );
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(1)
}

fn status_kib(field: &str) -> usize {
    let s = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_else(|e| fail(&format!("/proc/self/status: {e}")));
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| fail(&format!("no {field} in /proc/self/status")))
}

/// A JSON or YAML text of `len` bytes: `head`, `item` repeated (joined by `sep`), `tail`.
fn repeated(len: usize, head: &str, item: &str, sep: &str, tail: &str) -> String {
    let mut s = String::with_capacity(len);
    s.push_str(head);
    let mut first = true;
    while s.len() + sep.len() + item.len() + tail.len() <= len {
        if !first {
            s.push_str(sep);
        }
        s.push_str(item);
        first = false;
    }
    s.push_str(tail);
    s
}

enum Input {
    Text(String),
    Bytes(Vec<u8>),
}

impl Input {
    fn len(&self) -> usize {
        match self {
            Input::Text(t) => t.len(),
            Input::Bytes(b) => b.len(),
        }
    }
}

fn input(case: &str) -> Input {
    match case {
        "json-value-zeros" => Input::Text(repeated(MIB, "[", "0", ",", "]")),
        "json-value-arrays" => Input::Text(repeated(MIB, "[", "[]", ",", "]")),
        "json-value-objects" => Input::Text(repeated(MIB, "[", "{}", ",", "]")),
        "json-value-keys" => {
            let mut s = String::with_capacity(MIB);
            s.push('{');
            let mut i = 0u64;
            loop {
                let item = format!("\"{i}\":0");
                if s.len() + item.len() + 2 > MIB {
                    break;
                }
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&item);
                i += 1;
            }
            s.push('}');
            Input::Text(s)
        }
        "json-strings" => Input::Text(repeated(MIB, "{\"addrs\":[", "\"\"", ",", "]}")),
        "json-points-empty" => Input::Text(repeated(
            MIB,
            "{\"points\":[",
            "{\"id\":0,\"vector\":[]}",
            ",",
            "]}",
        )),
        "json-points-payload" => Input::Text(repeated(
            MIB,
            "{\"points\":[{\"id\":0,\"vector\":[1],\"payload\":{\"a\":[",
            "0",
            ",",
            "]}}]}",
        )),
        "yaml-flow-seq" => Input::Text(repeated(MIB, "profile: standalone\na: [", "x", ",", "]\n")),
        "yaml-unknown-keys" => {
            let mut s = String::with_capacity(MIB);
            s.push_str("profile: standalone\n");
            let mut i = 0u64;
            loop {
                // Long keys: as many as fit in 1 MiB stay under the tree's node cap, so each
                // one becomes its own "unknown key" error.
                let item = format!("k{i:018}: 0\n");
                if s.len() + item.len() > MIB {
                    break;
                }
                s.push_str(&item);
                i += 1;
            }
            Input::Text(s)
        }
        "yaml-many-agents" => {
            // Under the tree's node cap (two nodes an agent), each agent a default one in the
            // typed model and in the canonical JSON.
            let mut s = String::with_capacity(MIB);
            s.push_str("profile: standalone\nagents:\n");
            let mut i = 0u64;
            while i < 49_000 {
                let item = format!("  a{i:012}: {{}}\n");
                if s.len() + item.len() > MIB {
                    break;
                }
                s.push_str(&item);
                i += 1;
            }
            Input::Text(s)
        }
        "yaml-long-scalar" => Input::Text(repeated(
            MIB - 64,
            "profile: standalone\nnode:\n  name: ",
            "x",
            "",
            "\n",
        )),
        "cbor-bytebufs" => {
            let n = MIB - 9;
            let mut b = Vec::with_capacity(MIB);
            b.push(0x9a); // array, 4-byte length
            b.extend_from_slice(&(n as u32).to_be_bytes());
            b.extend(std::iter::repeat_n(0x40, n));
            Input::Bytes(b)
        }
        "op-decode-addrs" => {
            let key = SigningKey::from_bytes(&[7; 32]);
            let author = NodeId::from_public_key(key.verifying_key());
            let op = |n| Op {
                unsigned: UnsignedOp {
                    author,
                    seq: 1,
                    lamport: 1,
                    parents: Vec::new(),
                    timestamp_ms: 1_700_000_000_000,
                    body: OpBody::ApprovePeer {
                        peer: author,
                        addrs: vec![String::new(); n],
                        label: None,
                    },
                },
                signatures: Vec::new(),
            };
            let fixed = op(0).encode().len() + 5;
            Input::Bytes(op(kos_map_protocol::fedlog::MAX_OP_BYTES - fixed).encode())
        }
        other => fail(&format!("unknown case {other}")),
    }
}

#[derive(Deserialize)]
struct Addrs {
    #[allow(dead_code)]
    addrs: Vec<String>,
}

#[derive(Deserialize)]
struct Points {
    #[allow(dead_code)]
    points: Vec<Point>,
}

fn child(case: &str) {
    let inp = input(case);
    let size = inp.len();
    // For the YAML cases: a config directory to load into, laid out before measuring.
    let dir = tempdir_for(case);
    std::fs::write("/proc/self/clear_refs", "5")
        .unwrap_or_else(|e| fail(&format!("cannot reset the peak RSS mark: {e}")));
    let before = status_kib("VmRSS:");
    let ok = decode(case, &inp, dir.as_ref());
    let peak = status_kib("VmHWM:");
    drop(inp);
    if let Some(d) = dir {
        let _ = std::fs::remove_dir_all(d.root());
    }
    eprintln!("{case}: decoded: {ok}");
    println!("{size} {}", (peak.saturating_sub(before)) * 1024);
}

fn tempdir_for(case: &str) -> Option<ConfigDir> {
    if !case.starts_with("yaml-") {
        return None;
    }
    let root = std::env::temp_dir().join(format!("kos-decode-peaks-{}", std::process::id()));
    kos_config::layout::init_layout(&root, ProfileKind::Standalone)
        .unwrap_or_else(|e| fail(&format!("layout: {e}")));
    Some(ConfigDir::new(root))
}

/// Decodes as the node does; returns whether the input was accepted (the peak counts either way).
fn decode(case: &str, inp: &Input, dir: Option<&ConfigDir>) -> bool {
    match (case, inp) {
        (c, Input::Text(t)) if c.starts_with("json-value") => {
            serde_json::from_str::<serde_json::Value>(t).is_ok()
        }
        ("json-strings", Input::Text(t)) => serde_json::from_str::<Addrs>(t).is_ok(),
        (c, Input::Text(t)) if c.starts_with("json-points") => {
            serde_json::from_str::<Points>(t).is_ok()
        }
        (_, Input::Text(t)) => {
            let Some(dir) = dir else { return false };
            let opts = LoadOptions::default();
            let r = dir.load_candidate(&opts, "standalone", t, "request body");
            // What the API then renders: every error as problem+json.
            match r {
                Ok(_) => true,
                Err(d) => {
                    let p = kos_node::api::problem::Problem::invalid_config(&d);
                    let body = serde_json::to_vec(&p.extra).unwrap_or_default();
                    eprintln!(
                        "{case}: {} errors rendered in {} bytes",
                        d.errors().count(),
                        body.len()
                    );
                    false
                }
            }
        }
        ("cbor-bytebufs", Input::Bytes(b)) => {
            ciborium::from_reader::<Vec<ByteBuf>, _>(b.as_slice()).is_ok()
        }
        ("op-decode-addrs", Input::Bytes(b)) => Op::decode(b).is_ok(),
        _ => false,
    }
}
