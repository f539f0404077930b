//! Memory held per idle SSE stream, run with `cargo bench -p keygate-benches --bench idle_streams`.
//!
//! The gateway runs in its own process (this binary re-executed with `KEYGATE_BENCH_ROLE=gateway`)
//! so its resident memory can be read from `/proc`. This process is the upstream — an MCP
//! server whose `GET` stream sends one event and then stays open — and the client, which opens
//! `KEYGATE_BENCH_STREAMS` (default 9,000) pass-through GET streams, one connection each, waits
//! for each stream's first event, and leaves them idle. The report is the gateway's resident
//! memory per stream over a warm baseline of 100 streams (budget: ≤ 32 KiB each), beside
//! the same measure for this process's upstream side as the direct reference.
//!
//! Each stream costs the gateway two sockets; a process here may hold at most `ulimit -n`
//! descriptors (20,000 on the reference machine, which cannot be raised), so the default stays
//! under 10,000 streams.

#![allow(clippy::print_stdout)] // a benchmark's report is its output

/// The allocator the `keygate` binary uses (this binary is also the measured gateway).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::convert::Infallible;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::routing::get;
use futures_util::stream;
use http_body_util::{BodyExt, Empty};
use keygate_core::model::Role;
use keygate_test_support::world::AppClient;
use keygate_test_support::{Backend, TestGateway};
use serde_json::{Value, json};

const BASELINE: usize = 100;

#[tokio::main]
async fn main() {
    if std::env::var("KEYGATE_BENCH_ROLE").as_deref() == Ok("gateway") {
        return gateway().await;
    }
    let streams: usize = std::env::var("KEYGATE_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9_000)
        .max(BASELINE + 1);
    let upstream = upstream().await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("KEYGATE_BENCH_ROLE", "gateway")
        .env("KEYGATE_BENCH_UPSTREAM", &upstream)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the gateway process");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let setup: Value = serde_json::from_str(&line).expect("gateway setup line");
    let url = setup["url"].as_str().unwrap().to_owned();
    let token = setup["token"].as_str().unwrap().to_owned();
    let gateway_pid = child.id();

    println!("keygate idle SSE streams — {streams} pass-through GET streams, one connection each");
    let mut held = Vec::with_capacity(streams);
    open(&url, &token, BASELINE, &mut held).await;
    settle().await;
    let (gw0, up0) = (rss_kib(gateway_pid), rss_kib(std::process::id()));
    let started = Instant::now();
    open(&url, &token, streams - BASELINE, &mut held).await;
    let opened = started.elapsed();
    settle().await;
    let (gw1, up1) = (rss_kib(gateway_pid), rss_kib(std::process::id()));
    let n = (streams - BASELINE) as f64;
    let per_gateway = (gw1 - gw0) as f64 / n;
    let per_local = (up1 - up0) as f64 / n;
    println!(
        "opened {} more streams in {:.1} s; every stream received its first event",
        streams - BASELINE,
        opened.as_secs_f64()
    );
    println!(
        "gateway process   RSS {gw0} KiB → {gw1} KiB   {per_gateway:.1} KiB per stream (budget 32)"
    );
    println!(
        "upstream + client RSS {up0} KiB → {up1} KiB   {per_local:.1} KiB per stream (direct reference, both ends)"
    );
    println!("gateway / reference ratio: {:.2}", per_gateway / per_local);
    drop(held);
    drop(child.stdin.take());
    let _ = child.wait();
}

/// Lets allocations and kernel accounting settle before a reading.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

type Held = (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    hyper::body::Incoming,
);

/// Opens `count` streams, 200 at a time, and keeps each after its first event.
async fn open(url: &str, token: &str, count: usize, held: &mut Vec<Held>) {
    let uri: hyper::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let mut left = count;
    while left > 0 {
        let batch = left.min(200);
        left -= batch;
        let tasks: Vec<_> = (0..batch)
            .map(|_| {
                let (addr, uri, token) = (addr.clone(), uri.clone(), token.to_owned());
                tokio::spawn(async move {
                    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
                    let (mut send, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                            .await
                            .unwrap();
                    tokio::spawn(conn);
                    let req = hyper::Request::get(uri)
                        .header("host", addr)
                        .header("accept", "text/event-stream")
                        .header("authorization", format!("Bearer {token}"))
                        .body(Empty::new())
                        .unwrap();
                    let resp = send.send_request(req).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    let mut body = resp.into_body();
                    let first = body.frame().await.unwrap().unwrap();
                    assert!(first.data_ref().is_some_and(|d| d.starts_with(b"id: 1")));
                    (send, body)
                })
            })
            .collect();
        for t in tasks {
            held.push(t.await.unwrap());
        }
    }
}

/// An MCP server whose GET stream sends one event, then stays open and silent.
async fn upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/mcp",
        get(|| async {
            let first = stream::once(async {
                Ok::<_, Infallible>(Bytes::from_static(
                    b"id: 1\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n",
                ))
            });
            let body = Body::from_stream(futures_util::StreamExt::chain(first, stream::pending()));
            ([("content-type", "text/event-stream")], body)
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The gateway process: a real gateway on SQLite with one application, one integration (the
/// upstream) and a user's token; prints them as one JSON line, runs until stdin closes.
async fn gateway() {
    let upstream = std::env::var("KEYGATE_BENCH_UPSTREAM").unwrap();
    let gw = TestGateway::start_with(Backend::Sqlite, |c| {
        c.outbound.allowed_private_hosts = vec!["127.0.0.1".into()];
        c.database.max_connections = Some(4);
    })
    .await;
    let admin = gw.admin_token().await;
    let app = gw
        .create_application(&admin, "Bench", AppClient::Public)
        .await;
    let app: keygate_core::ApplicationId =
        app["application"]["id"].as_str().unwrap().parse().unwrap();
    gw.attach_integration(&admin, app, json!({"name": "Idle", "url": upstream}))
        .await;
    let user = gw
        .store
        .create_user(gw.org, "bench@example.com", Role::Member, None)
        .await
        .unwrap()
        .id;
    let resource = format!("{}/apps/{app}/mcp", gw.url);
    let token = gw.user_token(user, app, &resource).await;
    let line = json!({"url": format!("{resource}/idle"), "token": token});
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
    drop(out);
    // Until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    })
    .await
    .unwrap();
}
