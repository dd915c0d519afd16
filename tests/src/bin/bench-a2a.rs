//! A2A agent runtime benchmark (issue 12): in-process nodes on 127.0.0.1 (port 0, standalone
//! profile on SQLite, local JWT auth, the built-in `echo` agent), one keep-alive `reqwest`
//! client, warm-up rounds before every measurement. Measures
//!
//! 1. **send → completed**: blocking `POST /a2a/echo/message:send` (short text, fresh
//!    `messageId`) and the JSON-RPC binding's `SendMessage`, against a plain axum JSON
//!    endpoint in this process (`POST /echo`: parse a JSON body, answer JSON), interleaved;
//! 2. **SSE**: `POST /a2a/echo/message:stream`, from the send to the first complete event
//!    (`\n\n`) and to the last one;
//! 3. **remote over KLP**: node A → node B's echo (`/a2a/peers/<B>/echo/message:send`, two
//!    federation nodes admitted to each other) against the same send local on B;
//! 4. **load**: 64 concurrent clients (64 principals) sending blocking sends for 10 s;
//! 5. **memory per open stream**: N `SubscribeToTask` streams held open on long-running echo
//!    tasks, process RSS before and after, against the same number of idle SSE streams to the
//!    plain axum server (client side and a bare server side: the baseline);
//!
//! and, to explain the figures, the SQLite writes of one echo task made directly through the
//! node's `TaskStore` (create, three saves, the lease release).
//!
//! `cargo run --release -p kos-tests --bin bench-a2a` (optional arguments: the number of
//! streams for 5, default 500; the load duration in seconds, default 10). Prints Markdown
//! tables for BENCHMARKS.md.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt as _;
use kos_config::ProfileKind;
use kos_node::auth::Role;
use kos_node::auth::local::mint_named;
use kos_node::daemon::{NodeOptions, RunningNode, start};
use kos_tests::a2a::{replace_sections, send_body};
use kos_tests::fed::{Member, layout, start_listed, wait_until};
use reqwest::{Client, Response};
use serde_json::{Value, json};

const WARMUP: usize = 200;
const ROUNDS: usize = 1000;
const SSE_ROUNDS: usize = 500;
const REMOTE_ROUNDS: usize = 500;
const STORE_ROUNDS: usize = 300;
const CLIENTS: usize = 64;

/// mean, p50, p99 in ms.
fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p = |q: f64| ms(v[((v.len() as f64 - 1.0) * q).round() as usize]);
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    (mean, p(0.5), p(0.99))
}

fn row(what: &str, v: Vec<Duration>) -> f64 {
    let n = v.len();
    let (mean, p50, p99) = stats(v);
    println!("| {what} | {n} | {mean:.2} ms | {p50:.2} ms | {p99:.2} ms |");
    p50
}

fn header() {
    println!("| what | n | mean | p50 | p99 |");
    println!("|---|---|---|---|---|");
}

/// `VmRSS` of this process, in bytes.
fn rss() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// A unique message id.
fn mid(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("bench-{tag}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// The standalone profile with local JWT, room for the load (connections, per-principal
/// turns) and echo with long turns for the subscriptions.
fn standalone(dir: &Path) -> Result<()> {
    kos_config::layout::init_layout(dir, ProfileKind::Standalone)?;
    let path = dir.join("profiles/standalone.yaml");
    replace_sections(
        &path,
        &["auth:", "api:", "a2a:"],
        "auth:\n  jwt: enabled\napi:\n  max_connections: 4096\n  max_connections_per_ip: 4096\n\
         a2a:\n  max_tasks_per_principal: 1024\n",
    )?;
    std::fs::write(dir.join("agents/echo.yaml"), ECHO)?;
    Ok(())
}

const ECHO: &str =
    "enabled: true\nmax_concurrent_tasks: 1024\ntask_timeout: 300s\nsettings:\n  long_wait: 120s\n";

fn token(node: &RunningNode, dir: &Path, sub: &str) -> Result<String> {
    let config = node.state.config.current().config.clone();
    let id = node.state.identity.id().to_string();
    mint_named(
        dir,
        &config,
        &id,
        sub,
        Role::Agent,
        Duration::from_secs(3600),
    )?
    .context("local tokens are enabled")
}

async fn post(http: &Client, url: &str, token: &str, body: &Value) -> Result<Response> {
    let r = http
        .post(url)
        .bearer_auth(token)
        .header("A2A-Version", "1.0")
        .json(body)
        .send()
        .await?;
    ensure!(r.status().is_success(), "{url}: {}", r.status());
    Ok(r)
}

/// A blocking REST send; checks that the task completed.
async fn send(http: &Client, url: &str, token: &str) -> Result<Duration> {
    let body = send_body(&mid("rest"), "hello, echo");
    let t = Instant::now();
    let v: Value = post(http, url, token, &body).await?.json().await?;
    let d = t.elapsed();
    ensure!(
        v["task"]["status"]["state"] == "TASK_STATE_COMPLETED",
        "not completed: {v}"
    );
    Ok(d)
}

async fn send_rpc(http: &Client, url: &str, token: &str) -> Result<Duration> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "SendMessage",
                      "params": send_body(&mid("rpc"), "hello, echo")});
    let t = Instant::now();
    let v: Value = post(http, url, token, &body).await?.json().await?;
    let d = t.elapsed();
    ensure!(
        v["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED",
        "not completed: {v}"
    );
    Ok(d)
}

async fn plain_send(http: &Client, url: &str) -> Result<Duration> {
    let body = send_body(&mid("plain"), "hello, echo");
    let t = Instant::now();
    let r = http.post(url).json(&body).send().await?;
    ensure!(r.status().is_success(), "plain: {}", r.status());
    let v: Value = r.json().await?;
    let d = t.elapsed();
    ensure!(v["message"]["messageId"].is_string(), "plain: {v}");
    Ok(d)
}

/// Reads an SSE response until its first complete event; returns the bytes read.
async fn first_event(r: &mut Response) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    while let Some(c) = r.chunk().await? {
        buf.extend_from_slice(&c);
        if buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(buf);
        }
    }
    bail!("the stream ended before its first event")
}

/// A streaming send: time to the first complete event and to the last one, and the events.
async fn stream(http: &Client, url: &str, token: &str) -> Result<(Duration, Duration, usize)> {
    let body = send_body(&mid("sse"), "hello, echo");
    let t = Instant::now();
    let mut r = post(http, url, token, &body).await?;
    let mut buf = first_event(&mut r).await?;
    let first = t.elapsed();
    let mut last = first;
    let mut seen = buf.windows(2).filter(|w| *w == b"\n\n").count();
    while let Some(c) = r.chunk().await? {
        buf.extend_from_slice(&c);
        let n = buf.windows(2).filter(|w| *w == b"\n\n").count();
        if n > seen {
            seen = n;
            last = t.elapsed();
        }
    }
    let text = String::from_utf8_lossy(&buf);
    ensure!(
        text.contains("TASK_STATE_COMPLETED"),
        "the stream did not end with the completed task: {text}"
    );
    Ok((first, last, seen))
}

/// The plain endpoints: `POST /echo` (JSON in, JSON out), `GET /sse` (one event, then an
/// idle stream) and `GET /sse-late` (headers at once, one event 2 ms later, as a streaming
/// send's first event comes after the agent's first update). `nodelay`: set `TCP_NODELAY` on
/// the accepted sockets (the node's API does not).
async fn plain_server(nodelay: bool) -> Result<std::net::SocketAddr> {
    use axum::response::sse::{Event, Sse};
    use axum::serve::ListenerExt as _;
    let app = axum::Router::new()
        .route(
            "/echo",
            axum::routing::post(|axum::Json(v): axum::Json<Value>| async move {
                axum::Json(json!({"message": v["message"], "status": "ok"}))
            }),
        )
        .route(
            "/sse",
            axum::routing::get(|| async {
                let s = futures::stream::once(async {
                    Ok::<_, std::convert::Infallible>(Event::default().data("{\"hello\":1}"))
                })
                .chain(futures::stream::pending());
                Sse::new(s)
            }),
        )
        .route(
            "/sse-late",
            axum::routing::get(|| async {
                let s = futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Ok::<_, std::convert::Infallible>(Event::default().data("{\"hello\":1}"))
                });
                Sse::new(s)
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    if nodelay {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    } else {
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    Ok(addr)
}

/// `GET /sse-late`: the time to its event.
async fn late_event(http: &Client, url: &str) -> Result<Duration> {
    let t = Instant::now();
    let mut r = http.get(url).send().await?;
    first_event(&mut r).await?;
    let d = t.elapsed();
    while r.chunk().await?.is_some() {}
    Ok(d)
}

fn client() -> Result<Client> {
    Ok(Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(600))
        .build()?)
}

async fn local(streams: usize, load_secs: u64) -> Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("node");
    standalone(&dir)?;
    let node = start(NodeOptions::local(dir.clone())).await?;
    let base = format!("http://{}", node.addr);
    let plain = format!("http://{}/echo", plain_server(false).await?);
    let plain_nodelay = plain_server(true).await?;
    let http = client()?;
    let tok = token(&node, &dir, "alice")?;
    let rest = format!("{base}/a2a/echo/message:send");
    let rpc = format!("{base}/a2a/echo/jsonrpc");
    let sse = format!("{base}/a2a/echo/message:stream");

    // 1. Round trips, interleaved.
    for _ in 0..WARMUP {
        plain_send(&http, &plain).await?;
        send(&http, &rest, &tok).await?;
        send_rpc(&http, &rpc, &tok).await?;
    }
    let (mut p, mut r, mut j) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        p.push(plain_send(&http, &plain).await?);
        r.push(send(&http, &rest, &tok).await?);
        j.push(send_rpc(&http, &rpc, &tok).await?);
    }
    println!("\n### 1. Send → completed round trip (sequential, one keep-alive connection)\n");
    header();
    let p50_plain = row("plain axum `POST /echo` (JSON in, JSON out)", p);
    let p50_rest = row("echo, HTTP+JSON `message:send` (blocking)", r);
    row("echo, JSON-RPC `SendMessage` (blocking)", j);
    println!(
        "\necho p50 / plain p50 = {:.1}× (target ≤ 1.5×)",
        p50_rest / p50_plain
    );

    // 2. SSE.
    for _ in 0..WARMUP / 2 {
        stream(&http, &sse, &tok).await?;
    }
    let (mut first, mut last, mut events) = (Vec::new(), Vec::new(), 0);
    for _ in 0..SSE_ROUNDS {
        let (f, l, n) = stream(&http, &sse, &tok).await?;
        first.push(f);
        last.push(l);
        events = n;
    }
    println!("\n### 2. SSE `message:stream` ({events} events per stream)\n");
    header();
    row("send → first complete event", first);
    row("send → last event", last);
    // The same shape without the node: headers first, the event 2 ms later.
    let late = format!("{}-late", plain.replace("/echo", "/sse"));
    let late_nodelay = format!("http://{plain_nodelay}/sse-late");
    for _ in 0..20 {
        late_event(&http, &late).await?;
        late_event(&http, &late_nodelay).await?;
    }
    let (mut l, mut ln) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        l.push(late_event(&http, &late).await?);
        ln.push(late_event(&http, &late_nodelay).await?);
    }
    row(
        "plain axum SSE, event 2 ms after the headers, default socket",
        l,
    );
    row("the same with `TCP_NODELAY` on the server's sockets", ln);

    // Where the time goes: the SQLite writes of one echo task, through the node's store.
    store_writes(&node).await?;

    // 4. Load.
    load(&node, &dir, &http, &base, &plain, load_secs).await?;

    // 5. Memory per open stream.
    memory(&node, &http, &base, &tok, streams, &plain).await?;

    drop(http);
    tokio::time::timeout(Duration::from_secs(30), node.stop())
        .await
        .context("the node did not stop")??;
    Ok(())
}

/// The writes the host makes for one echo task (create, WORKING, the artifact, COMPLETED,
/// the lease release), made directly on the node's `TaskStore`.
async fn store_writes(node: &RunningNode) -> Result<()> {
    use kos_agents::lifecycle::{AgentUpdate, TaskRecord};
    use kos_agents::limits::Limits;
    use kos_agents::types::{Artifact, Message, Part, Role as ARole, TaskState, Timestamp};
    let store = node
        .state
        .agents
        .as_ref()
        .context("agents are served")?
        .store()
        .clone();
    let limits = Limits::default();
    let now = || Timestamp::from_system_time(std::time::SystemTime::now());
    let mut create = Vec::new();
    let mut saves = Vec::new();
    let mut lease = Vec::new();
    let mut total = Vec::new();
    for i in 0..STORE_ROUNDS + WARMUP / 4 {
        let id = kos_node::a2a::host::new_id();
        let m = mid("store");
        let msg = Message::new(ARole::User, m.clone(), vec![Part::text("hello, echo")]);
        let mut record = TaskRecord::create(id.clone(), "ctx".into(), msg, now(), &limits)?;
        record.set_skill("echo");
        // A live lease, as a turn holds: the sweeper leaves the task alone.
        let until = kos_node::store::now_ms() + 60_000;
        let t0 = Instant::now();
        let seq = match store
            .create("echo", "local:store", &m, &record, &[], until)
            .await?
        {
            kos_node::a2a::store::Created::New(s) => s,
            kos_node::a2a::store::Created::Duplicate(_) => bail!("duplicate"),
        };
        let t1 = Instant::now();
        let mut seq = seq;
        for u in [
            AgentUpdate::Status {
                state: TaskState::Working,
                message: None,
            },
            AgentUpdate::Artifact {
                artifact: Artifact::new("a", vec![Part::text("hello, echo")]),
                append: false,
                last_chunk: true,
            },
            AgentUpdate::Status {
                state: TaskState::Completed,
                message: None,
            },
        ] {
            let events = record.apply(u, now(), &limits)?;
            let row = kos_node::a2a::store::RecordRow::of(&record)?;
            seq = store
                .save("echo", "local:store", seq, &row, &events, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let t2 = Instant::now();
        store.set_lease(&id, 0).await?;
        let t3 = Instant::now();
        if i >= WARMUP / 4 {
            create.push(t1 - t0);
            saves.push((t2 - t1) / 3);
            lease.push(t3 - t2);
            total.push(t3 - t0);
        }
    }
    println!("\n### SQLite writes of one echo task (the node's `TaskStore`, sequential)\n");
    header();
    row("create (message id, task row; one transaction)", create);
    row("save (task row + event; one transaction), each of 3", saves);
    row("lease release (one UPDATE)", lease);
    row("all five writes of a task", total);
    Ok(())
}

async fn load(
    node: &RunningNode,
    dir: &Path,
    http: &Client,
    base: &str,
    plain: &str,
    secs: u64,
) -> Result<()> {
    let tokens: Vec<String> = (0..CLIENTS)
        .map(|i| token(node, dir, &format!("load-{i}")))
        .collect::<Result<_>>()?;
    let url = format!("{base}/a2a/echo/message:send");
    let run = async |secs: u64, plain_only: bool| -> Result<(Vec<Duration>, Duration, u64)> {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let mut jobs = Vec::new();
        for tok in &tokens {
            let (http, url, tok, plain) =
                (http.clone(), url.clone(), tok.clone(), plain.to_owned());
            let (stop, errors) = (stop.clone(), errors.clone());
            jobs.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = if plain_only {
                        plain_send(&http, &plain).await
                    } else {
                        send(&http, &url, &tok).await
                    };
                    match r {
                        Ok(d) => lat.push(d),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("load: {e:#}");
                            }
                        }
                    }
                }
                lat
            }));
        }
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for j in jobs {
            all.extend(j.await?);
        }
        Ok((all, t.elapsed(), errors.load(Ordering::Relaxed)))
    };
    // Warm-up: the connections and the first pages of the tables.
    run(2, false).await?;
    let (lat, took, errors) = run(secs, false).await?;
    let (plat, ptook, perrors) = run(3, true).await?;
    println!(
        "\n### 4. Load: {CLIENTS} concurrent clients ({CLIENTS} principals), blocking sends, SQLite\n"
    );
    println!("| what | duration | completed | errors | per second | mean | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|---|");
    for (what, lat, took, errors) in [
        ("echo `message:send`", lat, took, errors),
        ("plain axum `POST /echo` (reference)", plat, ptook, perrors),
    ] {
        let n = lat.len();
        let (mean, p50, p99) = stats(lat);
        println!(
            "| {what} | {:.1} s | {n} | {errors} | {:.0} | {mean:.2} ms | {p50:.2} ms | {p99:.2} ms |",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }
    Ok(())
}

async fn memory(
    node: &RunningNode,
    http: &Client,
    base: &str,
    tok: &str,
    n: usize,
    plain: &str,
) -> Result<()> {
    let _ = node;
    // Long-running tasks, created first (their turns are not part of the figure).
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({"message": {"role": "ROLE_USER",
                                      "messageId": format!("test-resubscribe-message-id-{i}"),
                                      "parts": [{"text": "x"}]},
                          "configuration": {"returnImmediately": true}});
        let v: Value = post(http, &format!("{base}/a2a/echo/message:send"), tok, &body)
            .await?
            .json()
            .await?;
        ids.push(v["task"]["id"].as_str().context("task id")?.to_owned());
    }
    // Streams get their own client: its pool is part of the figure, the other one's is not.
    let sc = client()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss()?;
    let t = Instant::now();
    let mut held = Vec::new();
    let mut first = Vec::new();
    for id in &ids {
        let s = Instant::now();
        let mut r = post(
            &sc,
            &format!("{base}/a2a/echo/tasks/{id}:subscribe"),
            tok,
            &json!({}),
        )
        .await?;
        let ev = first_event(&mut r).await?;
        first.push(s.elapsed());
        ensure!(
            String::from_utf8_lossy(&ev).contains("\"task\""),
            "the first event is the task"
        );
        held.push(r);
    }
    let opened = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss()?;
    // The baseline: as many idle SSE streams to the plain axum server, on a third client,
    // opened while the node's streams stay open (nothing freed in between to reuse).
    let bc = client()?;
    let sse = plain.replace("/echo", "/sse");
    let mut idle = Vec::new();
    for _ in 0..n {
        let mut r = bc.get(&sse).send().await?;
        first_event(&mut r).await?;
        idle.push(r);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss()?;
    let per = |d: u64| d as f64 / n as f64;
    let a2a = after.saturating_sub(before);
    let bare = baseline.saturating_sub(after);
    println!(
        "\n### 5. Memory per open `SubscribeToTask` stream ({n} streams on {n} running echo tasks)\n"
    );
    println!("| what | RSS delta | per stream |");
    println!("|---|---|---|");
    println!(
        "| {n} A2A subscriptions (node + client side, same process) | {:.1} MiB | {:.1} KiB |",
        a2a as f64 / 1048576.0,
        per(a2a) / 1024.0
    );
    println!(
        "| {n} idle SSE streams to plain axum (client + bare server side) | {:.1} MiB | {:.1} KiB |",
        bare as f64 / 1048576.0,
        per(bare) / 1024.0
    );
    println!(
        "| difference: the node's cost over a bare SSE stream | {:.1} MiB | {:.1} KiB |",
        (a2a as f64 - bare as f64) / 1048576.0,
        (per(a2a) - per(bare)) / 1024.0
    );
    println!(
        "\nRSS before the subscriptions {:.1} MiB; {n} subscriptions opened in {:.2} s",
        before as f64 / 1048576.0,
        opened.as_secs_f64()
    );
    header();
    row(
        "subscribe → first event (streams already open: 0..N)",
        first,
    );
    drop(idle);
    drop(held);
    Ok(())
}

/// 3. A → B's echo over KLP against B's own.
async fn remote() -> Result<()> {
    let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a_id = layout(a_dir.path(), "a", "")?;
    let b_id = layout(
        b_dir.path(),
        "b",
        &format!("remote_roles:\n  peers:\n    {a_id}: agent\n"),
    )?;
    std::fs::write(b_dir.path().join("agents/echo.yaml"), ECHO)?;
    let members = [
        Member {
            dir: a_dir.path().to_path_buf(),
            id: a_id,
            label: Some("a".into()),
        },
        Member {
            dir: b_dir.path().to_path_buf(),
            id: b_id.clone(),
            label: Some("b".into()),
        },
    ];
    let mut nodes = start_listed(&members).await?.into_iter();
    let (a, _) = nodes.next().context("a")?;
    let (b, _) = nodes.next().context("b")?;
    let klp = a.state.klp.clone().context("klp")?;
    let peer = b_id.clone();
    wait_until("A admits B", Duration::from_secs(30), async || {
        klp.peers().await.unwrap_or_default().iter().any(|p| {
            p.id == peer && p.state == kos_klp::HandshakeState::Admitted && !p.services.is_empty()
        })
    })
    .await;
    let http = client()?;
    let ta = token(&a, a_dir.path(), "alice")?;
    let tb = token(&b, b_dir.path(), "alice")?;
    let via_a = format!("http://{}/a2a/peers/{b_id}/echo/message:send", a.addr);
    let on_b = format!("http://{}/a2a/echo/message:send", b.addr);
    for _ in 0..WARMUP / 2 {
        send(&http, &via_a, &ta).await?;
        send(&http, &on_b, &tb).await?;
    }
    let (mut rem, mut loc) = (Vec::new(), Vec::new());
    for _ in 0..REMOTE_ROUNDS {
        rem.push(send(&http, &via_a, &ta).await?);
        loc.push(send(&http, &on_b, &tb).await?);
    }
    println!("\n### 3. Remote over KLP against local (blocking `message:send`, interleaved)\n");
    header();
    let l = row("local on B: `/a2a/echo/message:send`", loc);
    let r = row("A → B over KLP: `/a2a/peers/<B>/echo/message:send`", rem);
    println!("\nremote adds {:.2} ms at p50 (target ≤ 2 ms)", r - l);
    drop(http);
    for n in [a, b] {
        tokio::time::timeout(Duration::from_secs(30), n.stop())
            .await
            .context("a node did not stop")??;
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let streams: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()
        .context("the number of streams is a number")?
        .unwrap_or(500);
    let load_secs: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()
        .context("the load duration is a number of seconds")?
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "bench-a2a: {} worker threads, release build: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        !cfg!(debug_assertions)
    );
    rt.block_on(local(streams, load_secs))?;
    rt.block_on(remote())?;
    Ok(())
}
