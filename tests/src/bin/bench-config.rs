//! Configuration benchmarks: load + validate per profile, apply (with fsync), node start to
//! ready. Prints a Markdown table for BENCHMARKS.md.
//!
//! `cargo run --release -p kos-tests --bin bench-config`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use kos_config::{
    Capabilities, ConfigDir, LoadOptions, Overlays, ProfileKind, Store, assemble, preset,
};

fn pct(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.99))
}

fn row(name: &str, n: usize, v: Vec<Duration>) {
    let (p50, p99) = pct(v);
    println!(
        "| {name} | {n} | {:.1} µs | {:.1} µs |",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
}

fn main() -> Result<()> {
    println!("| what | runs | p50 | p99 |");
    println!("|---|---|---|---|");
    let caps = Capabilities {
        postgres: true,
        ..Capabilities::default()
    };
    for kind in ProfileKind::VARIANTS {
        let n = 2000;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let l = assemble(
                kind.as_str(),
                preset(kind),
                "p.yaml",
                &Overlays::default(),
                &caps,
            );
            v.push(t.elapsed());
            assert!(l.is_ok());
        }
        row(&format!("parse + validate `{kind}` preset"), n, v);
    }

    let dir = tempfile::tempdir()?;
    kos_config::layout::init_layout(dir.path(), ProfileKind::Standalone)?;
    let cd = ConfigDir::new(dir.path());
    let opts = LoadOptions {
        env: BTreeMap::new(),
        capabilities: caps,
        profile: None,
    };
    let n = 2000;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        cd.load(&opts).map_err(|d| anyhow::anyhow!("{d}"))?;
        v.push(t.elapsed());
    }
    row("load a config directory (all overlays)", n, v);

    let store = Store::open(&cd)?;
    store.reconcile(
        &cd.load(&opts).map_err(|d| anyhow::anyhow!("{d}"))?,
        "bench",
    )?;
    let base = preset(ProfileKind::Standalone);
    let n = 200;
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let doc = base.replace(
            "  level: info ",
            if i % 2 == 0 {
                "  level: debug "
            } else {
                "  level: info "
            },
        );
        let t = Instant::now();
        store.apply(&opts, None, &doc, "bench")?;
        v.push(t.elapsed());
    }
    row("apply (validate, CAS, 3 fsynced atomic writes)", n, v);

    let rt = tokio::runtime::Runtime::new()?;
    let n = 20;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let d = tempfile::tempdir()?;
        kos_config::layout::init_layout(d.path(), ProfileKind::Standalone)?;
        let t = Instant::now();
        let node = rt.block_on(kos_node::daemon::start(
            kos_node::daemon::NodeOptions::local(d.path().to_path_buf()),
        ))?;
        v.push(t.elapsed());
        rt.block_on(node.stop())?;
    }
    row("node start to ready (standalone, new SQLite)", n, v);
    Ok(())
}
