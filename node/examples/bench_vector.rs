//! Benchmark of the embedded vector engine (issue 6).
//!
//! `cargo run --release -p kos-node --example bench_vector` runs 1k, 10k and 100k points of
//! 384 dimensions (cosine), each size in its own child process so that memory figures do not
//! mix. One size: `... --example bench_vector -- 10000`.
//!
//! Per size: upsert throughput into a new SQLite file (batches of 1000, one fsynced
//! transaction each) and the file size after close; then, in a fresh process, reopen time
//! (loading every vector into memory), the resident memory that adds, and search latency (top
//! 10, 200 random queries) without a filter and with a filter matching 10% of the points.

use std::time::{Duration, Instant};

use kos_node::vector::embedded::{EmbeddedStore, SQLITE_FILE};
use kos_node::vector::{
    CollectionSpec, Condition, Distance, Filter, MatchValue, Point, Query, VectorStore,
};
use serde_json::json;

const DIM: usize = 384;
const BATCH: usize = 1000;
const QUERIES: usize = 200;

/// xorshift64*: reproducible data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn vector(&mut self) -> Vec<f32> {
        (0..DIM).map(|_| self.unit()).collect()
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

async fn latencies(store: &dyn VectorStore, rng: &mut Rng, filter: Filter) -> (f64, f64) {
    let mut times = Vec::with_capacity(QUERIES);
    for _ in 0..QUERIES {
        let q = Query {
            vector: rng.vector(),
            limit: 10,
            filter: filter.clone(),
        };
        let t = Instant::now();
        let r = store.search("bench", &q).await.map_err(|e| e.to_string());
        times.push(t.elapsed());
        assert!(
            matches!(r, Ok(ref v) if v.len() == 10),
            "search failed: {r:?}"
        );
    }
    times.sort();
    (pct(&times, 0.5), pct(&times, 0.99))
}

fn points(n: usize, rng: &mut Rng) -> Vec<Point> {
    (0..n as u64)
        .map(|i| Point {
            id: i,
            vector: rng.vector(),
            payload: json!({"bucket": i % 10, "title": format!("document {i}")})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        })
        .collect()
}

/// Writes `n` points into a new file, then measures reading in a fresh process (so that the
/// memory of the write phase does not count).
async fn write(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(SQLITE_FILE);
    let mut rng = Rng(0x5EED ^ n as u64);
    let points = points(n, &mut rng);
    let store = EmbeddedStore::open(&path).await?;
    store
        .create_collection(&CollectionSpec {
            name: "bench".into(),
            dimension: DIM as u32,
            distance: Distance::Cosine,
        })
        .await?;
    let t = Instant::now();
    for chunk in points.chunks(BATCH) {
        store.upsert("bench", chunk).await?;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    store.close().await;
    drop(store);
    let file = std::fs::metadata(&path)?.len()
        + std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["read", &n.to_string(), &path.display().to_string()])
        .arg(format!("{rate:.0}"))
        .arg(format!("{:.1}", file as f64 / 1048576.0))
        .status()?;
    if !status.success() {
        return Err(format!("the read phase failed: {status}").into());
    }
    Ok(())
}

async fn read(
    n: usize,
    path: &str,
    rate: &str,
    file: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = Rng(0xFEED ^ n as u64);
    let rss_before = rss_kib();
    let t = Instant::now();
    let store = EmbeddedStore::open(std::path::Path::new(path)).await?;
    let reopen = t.elapsed();
    let rss_after = rss_kib();
    let (p50, p99) = latencies(&store, &mut rng, Filter::default()).await;
    let filter = Filter {
        must: vec![Condition {
            key: "bucket".into(),
            value: MatchValue::Integer(3),
        }],
    };
    let (fp50, fp99) = latencies(&store, &mut rng, filter).await;
    println!(
        "| {n} | {rate} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1} | {file} |",
        reopen.as_secs_f64(),
        p50 / 1000.0,
        p99 / 1000.0,
        fp50 / 1000.0,
        fp99 / 1000.0,
        store.vector_bytes() as f64 / 1048576.0,
        rss_after.saturating_sub(rss_before) as f64 / 1024.0,
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [n] => return write(n.parse()?).await,
        [cmd, n, path, rate, file] if cmd == "read" => {
            return read(n.parse()?, path, rate, file).await;
        }
        [] => {}
        _ => return Err("usage: bench_vector [POINTS]".into()),
    }
    println!(
        "| points | upsert points/s | reopen s | search p50 ms | search p99 ms | filtered p50 ms | filtered p99 ms | vectors MiB | RSS growth at reopen MiB | file MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    for n in [1_000, 10_000, 100_000] {
        let status = std::process::Command::new(&exe)
            .arg(n.to_string())
            .status()?;
        if !status.success() {
            return Err(format!("the {n}-point run failed: {status}").into());
        }
    }
    Ok(())
}
