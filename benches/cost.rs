//! What a proxied MCP call costs, side by side with nginx: `cargo bench -p keygate-benches --bench cost`.
//!
//! One upstream MCP server (a hyper server in this binary: a ~200-byte `tools/call` POST gets a
//! ~1 KiB JSON answer, a GET gets an SSE stream that sends one event and then stays silent; it
//! answers 401 unless the request carries the static credential a proxy injects) and, in front
//! of it, one proxy at a time, each its own process so that its CPU and memory can be read from
//! `/proc`:
//!
//! - **nginx** (Debian's package): `proxy_pass` to an upstream block with keep-alive, the
//!   credential set with `proxy_set_header Authorization`, `proxy_buffering off`, one worker;
//! - **a bare hyper forwarder** (this binary again): the floor for any proxy built on hyper;
//! - **keygate pass-through** (`/apps/{id}/mcp/{slug}`) and **aggregated** (`/apps/{id}/mcp`,
//!   tool `{slug}_echo`), each with trace events on and off: the real release `keygate` binary
//!   on SQLite, seeded through its own CLI and management API (an owner, a service account, an
//!   application, a `server_token` integration) with an agent token from its OAuth flow;
//! - **keygate pass-through exporting spans** over OTLP http/protobuf to a sink in this binary
//!   (every POST answered 200), against the same route with export off.
//!
//! The proxy runs pinned to core 1 (`taskset`); the load generator and the upstream share core
//! 0. For each proxy, in every round:
//!
//! - **CPU per call**: the proxy's utime + stime (`/proc/PID/stat`, every nginx process) over a
//!   saturating run, divided by the requests completed in it;
//! - **saturated req/s**, by `wrk -t1 -c32` — a C event loop spends less of core 0 per request
//!   than any client this binary could run, which leaves the upstream room to keep up; `busy`
//!   is the proxy's CPU over the run's wall time (below ~95 % the proxy was not the limit);
//! - **added p50/p99** at a fixed 2,000 requests/s (open loop: each request is timed from the
//!   moment it was due, so a stall counts against every request it delayed; wrk is closed loop
//!   and would hide those), minus the direct connection's in the same round;
//! - **memory per idle SSE stream**: resident memory growth over a baseline of 100 streams,
//!   divided by the further streams held open through the proxy (one connection each);
//! - **trace bytes per event** (keygate with trace events on): growth of the SQLite files over
//!   the process's life, divided by `keygate_trace_events_written_total`.
//!
//! Rounds (default 3) run every proxy in turn, starting one further along each round, so the
//! machine's drift hits all of them; the table shows medians and each figure as a ratio to
//! nginx's median in the same run. The direct connection's row is the baseline: its CPU and
//! memory are the upstream's own. `benches/setup.sh` installs nginx and wrk (the benchmark runs
//! it when one is missing); `KEYGATE_BIN` names a prebuilt `keygate`, else the benchmark builds
//! it with `cargo build --release -p keygate --bin keygate`. Settings: `KEYGATE_BENCH_ROUNDS`
//! (3), `KEYGATE_BENCH_SECS` (saturation seconds, 5), `KEYGATE_BENCH_RATE` (2000),
//! `KEYGATE_BENCH_RATE_SECS` (5), `KEYGATE_BENCH_STREAMS` (2000), `KEYGATE_BENCH_SECTIONS`
//! (which figures to measure, comma-separated: `cpu` — CPU per call, req/s and busy —,
//! `latency`, `memory`, `trace`; all by default; a figure left out shows as `—`, and the 1 s
//! warm-up runs whatever is selected, so that memory is read from a gateway that has served
//! calls), `KEYGATE_BENCH_PERF` (a directory: each proxy's saturation run is also recorded
//! with `perf record`, into `{name}.data` there — read it with `perf report -i FILE --sort
//! dso,sym` — and its system calls and context switches per call are printed; sampling costs
//! the proxy CPU, so that run's figures are not comparable). Arguments select proxies by name
//! (`nginx`, `hyper`, `keygate-pass`, `keygate-agg`, `otel`; the direct baseline always runs):
//! `KEYGATE_BENCH_SECTIONS=memory cargo bench -p keygate-benches --bench cost -- nginx hyper
//! keygate-pass` measures only memory per idle stream.

#![allow(clippy::print_stdout)] // a benchmark's report is its output

/// The allocator the `keygate` binary uses (this binary is also the hyper forwarder).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::Digest;

/// The credential every proxy injects toward the upstream (which refuses anything else).
const CREDENTIAL: &str = "bench-upstream-credential-7f3a9c2e";
/// Core of the proxy under test; the load generator and the upstream use core 0.
const PROXY_CORE: &str = "1";
const LOAD_CORE: &str = "0";
/// Concurrent connections of the saturating load.
const CONNECTIONS: usize = 32;
/// Idle streams opened before the memory baseline is read.
const STREAM_BASELINE: usize = 100;
/// The owner the benchmark signs in as to obtain an agent token.
const OWNER: &str = "owner@bench.example";
const PASSWORD: &str = "correct horse battery staple";
const REDIRECT_URI: &str = "http://localhost:3000/callback";

fn main() {
    match std::env::var("KEYGATE_BENCH_ROLE").as_deref() {
        Ok("upstream") => serve_role(upstream_role()),
        Ok("forwarder") => serve_role(forwarder_role()),
        Ok("otlp-sink") => serve_role(otlp_sink_role()),
        _ => bench(),
    }
}

// ---------------------------------------------------------------------------------------------
// The helper processes: each prints its address on one line and runs until stdin closes.

/// Runs a role's server on a runtime sized by the cores it may use (one, under `taskset`).
fn serve_role(listening: impl Future<Output = String> + Send + 'static) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let addr = listening.await;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{addr}").unwrap();
        out.flush().unwrap();
        drop(out);
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink);
        })
        .await
        .unwrap();
    });
    rt.shutdown_background();
}

type UpBody = BoxBody<Bytes, Infallible>;

/// Accepts connections on `listener` and serves each over HTTP/1.1 with `handle`.
fn accept_loop<F, Fut, B>(listener: tokio::net::TcpListener, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(handle))
                    .await;
            });
        }
    });
}

/// The upstream MCP server; prints its MCP URL.
async fn upstream_role() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let expected = HeaderValue::from_str(&format!("Bearer {CREDENTIAL}")).unwrap();
    accept_loop(listener, move |req| upstream_answer(req, expected.clone()));
    url
}

/// One upstream exchange: 401 without the injected credential, an idle SSE stream for a GET,
/// else the JSON-RPC answer to the POSTed message.
async fn upstream_answer(
    req: Request<Incoming>,
    expected: HeaderValue,
) -> Result<Response<UpBody>, Infallible> {
    if req.headers().get(AUTHORIZATION) != Some(&expected) {
        return Ok(plain(StatusCode::UNAUTHORIZED, ""));
    }
    match *req.method() {
        Method::GET => Ok(idle_event_stream()),
        Method::POST => {
            let Ok(body) = http_body_util::Limited::new(req.into_body(), 64 * 1024)
                .collect()
                .await
            else {
                return Ok(plain(StatusCode::BAD_REQUEST, ""));
            };
            let Ok(msg) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
                return Ok(plain(StatusCode::BAD_REQUEST, ""));
            };
            Ok(jsonrpc_answer(&msg))
        }
        _ => Ok(plain(StatusCode::OK, "")),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<UpBody> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *resp.status_mut() = status;
    resp
}

/// An SSE stream that sends one event, then stays open and silent.
fn idle_event_stream() -> Response<UpBody> {
    let first = futures_util::stream::once(async {
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(
            b"id: 1\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"data\":\"hi\"}}\n\n",
        )))
    });
    let body = BodyExt::boxed(StreamBody::new(
        first.chain(futures_util::stream::pending()),
    ));
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp
}

/// The answer to one JSON-RPC message; a `tools/call` gets about 1 KiB.
fn jsonrpc_answer(msg: &Value) -> Response<UpBody> {
    let Some(id) = msg.get("id") else {
        return plain(StatusCode::ACCEPTED, ""); // a notification
    };
    let result = match msg["method"].as_str() {
        Some("initialize") => json!({"protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}}, "serverInfo": {"name": "bench", "version": "1"}}),
        Some("tools/list") => json!({"tools": [{"name": "echo", "description": "Echoes.",
            "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}}}]}),
        Some("tools/call") => json!({"content": [{"type": "text", "text": answer_text()}],
            "isError": false}),
        _ => json!({}),
    };
    let body = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "result": result})).unwrap();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The text of a `tools/call` answer: with the JSON around it, about 1 KiB.
fn answer_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        "The quick brown fox jumps over the lazy dog; "
            .repeat(21)
            .trim_end()
            .to_owned()
    })
}

/// The bare hyper forwarder: every request to the upstream with the credential set, answers
/// streamed back; prints its address.
async fn forwarder_role() -> String {
    let upstream: hyper::Uri = std::env::var("KEYGATE_BENCH_UPSTREAM")
        .expect("KEYGATE_BENCH_UPSTREAM")
        .parse()
        .unwrap();
    let authority = upstream.authority().unwrap().clone();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let credential = HeaderValue::from_str(&format!("Bearer {CREDENTIAL}")).unwrap();
    let host = HeaderValue::from_str(authority.as_str()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    accept_loop(listener, move |req: Request<Incoming>| {
        let (client, credential, host, authority) = (
            client.clone(),
            credential.clone(),
            host.clone(),
            authority.clone(),
        );
        async move {
            let (mut parts, body) = req.into_parts();
            let path = parts.uri.path_and_query().cloned();
            let mut uri = hyper::http::uri::Parts::default();
            uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
            uri.authority = Some(authority);
            uri.path_and_query = path;
            parts.uri = hyper::Uri::from_parts(uri).unwrap();
            parts.headers.insert(AUTHORIZATION, credential);
            parts.headers.insert(HOST, host);
            let resp: Response<BoxBody<Bytes, hyper::Error>> =
                match client.request(Request::from_parts(parts, body)).await {
                    Ok(resp) => resp.map(BodyExt::boxed),
                    Err(_) => {
                        let mut r =
                            Response::new(Empty::new().map_err(|never| match never {}).boxed());
                        *r.status_mut() = StatusCode::BAD_GATEWAY;
                        r
                    }
                };
            Ok::<_, Infallible>(resp)
        }
    });
    addr
}

/// An OTLP/HTTP collector that accepts every export with 200 and counts them (`GET /stats`:
/// `requests bytes`); prints its base URL.
async fn otlp_sink_role() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    accept_loop(listener, move |req: Request<Incoming>| {
        let counts = counts.clone();
        async move {
            if req.method() == Method::GET {
                let text = format!(
                    "{} {}",
                    counts.0.load(Ordering::Relaxed),
                    counts.1.load(Ordering::Relaxed)
                );
                return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)).boxed()));
            }
            let len = match req.into_body().collect().await {
                Ok(b) => b.to_bytes().len() as u64,
                Err(_) => 0,
            };
            counts.0.fetch_add(1, Ordering::Relaxed);
            counts.1.fetch_add(len, Ordering::Relaxed);
            // An empty ExportTraceServiceResponse: zero bytes of protobuf.
            let mut resp = Response::new(Full::new(Bytes::new()).boxed());
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            );
            Ok(resp)
        }
    });
    url
}

// ---------------------------------------------------------------------------------------------
// Processes this benchmark starts, and what /proc says about them.

/// A process this benchmark started; stopped (and reaped) when dropped.
struct Proc {
    child: Option<Child>,
    name: String,
    /// The signal that stops it gracefully; `None`: closing its stdin does.
    signal: Option<&'static str>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Stops the process (gracefully, then by force after 15 s) and waits for it.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        match self.signal {
            Some(sig) => {
                let _ = Command::new("kill")
                    .args([format!("-{sig}"), child.id().to_string()])
                    .status();
            }
            None => drop(child.stdin.take()),
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop within 15 s; killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// This binary in `role`, pinned to `core`; returns it and the line it printed.
fn spawn_role(role: &str, core: &str, env: &[(&str, &str)]) -> (Proc, String) {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", core])
        .arg(std::env::current_exe().unwrap())
        .env("KEYGATE_BENCH_ROLE", role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start a helper process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        !line.is_empty(),
        "the {role} process exited before listening"
    );
    let proc = Proc {
        child: Some(child),
        name: role.to_owned(),
        signal: None,
    };
    (proc, line.trim().to_owned())
}

/// Ticks of CPU time per second (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output();
        out.ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of the processes, in seconds.
fn cpu_secs(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
            // The fields after the command name, which may hold spaces, in parentheses.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            // Fields 14 and 15 of stat(5); `rest` starts at field 3.
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        })
        .sum();
    ticks as f64 / clock_ticks()
}

/// Resident memory of the processes, in KiB.
fn rss_kib(pids: &[u32]) -> i64 {
    pids.iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
                .expect("VmRSS in /proc status")
        })
        .sum()
}

/// `pid` and its child processes (nginx's workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        if rest.split(' ').nth(1) == Some(&pid.to_string()) {
            pids.push(child);
        }
    }
    pids
}

/// A TCP port free right now on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `addr` (10 s at most).
fn wait_listening(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// The proxies under test.

#[derive(Clone, Copy, PartialEq)]
enum Route {
    Pass,
    Aggregated,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Direct,
    Nginx,
    Forwarder,
    Keygate {
        route: Route,
        tracing: bool,
        otel: bool,
    },
}

struct Target {
    name: &'static str,
    /// The name arguments select it by.
    key: &'static str,
    kind: Kind,
}

const TARGETS: &[Target] = &[
    Target {
        name: "direct (baseline)",
        key: "direct",
        kind: Kind::Direct,
    },
    Target {
        name: "nginx",
        key: "nginx",
        kind: Kind::Nginx,
    },
    Target {
        name: "hyper forwarder",
        key: "hyper",
        kind: Kind::Forwarder,
    },
    Target {
        name: "keygate pass, trace on",
        key: "keygate-pass",
        kind: Kind::Keygate {
            route: Route::Pass,
            tracing: true,
            otel: false,
        },
    },
    Target {
        name: "keygate pass, trace off",
        key: "keygate-pass",
        kind: Kind::Keygate {
            route: Route::Pass,
            tracing: false,
            otel: false,
        },
    },
    Target {
        name: "keygate agg, trace on",
        key: "keygate-agg",
        kind: Kind::Keygate {
            route: Route::Aggregated,
            tracing: true,
            otel: false,
        },
    },
    Target {
        name: "keygate agg, trace off",
        key: "keygate-agg",
        kind: Kind::Keygate {
            route: Route::Aggregated,
            tracing: false,
            otel: false,
        },
    },
    Target {
        name: "keygate pass, OTLP on",
        key: "otel",
        kind: Kind::Keygate {
            route: Route::Pass,
            tracing: true,
            otel: true,
        },
    },
];

/// What every run needs: the upstream, the sink, the seeded keygate data and the settings.
struct Bench {
    upstream_url: String,
    otlp_url: String,
    keygate: Option<Seeded>,
    work: tempfile::TempDir,
    saturation_secs: u64,
    rate: u64,
    rate_secs: u64,
    streams: usize,
    sections: Sections,
    /// Where to write a `perf record` of each proxy's saturation run (`KEYGATE_BENCH_PERF`).
    perf_dir: Option<PathBuf>,
}

/// Which figures a run measures (`KEYGATE_BENCH_SECTIONS`).
#[derive(Clone, Copy)]
struct Sections {
    /// CPU per call, saturated req/s and busy (the saturating wrk run).
    cpu: bool,
    /// Added p50/p99 at the fixed rate.
    latency: bool,
    /// Memory per idle SSE stream.
    memory: bool,
    /// Trace bytes per event.
    trace: bool,
}

impl Sections {
    /// From `KEYGATE_BENCH_SECTIONS` (comma-separated names); all when unset or empty.
    fn from_env() -> Self {
        let names = std::env::var("KEYGATE_BENCH_SECTIONS").unwrap_or_default();
        let names: Vec<&str> = names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        for n in &names {
            assert!(
                ["cpu", "latency", "memory", "trace"].contains(n),
                "KEYGATE_BENCH_SECTIONS: unknown section {n:?} (cpu, latency, memory, trace)"
            );
        }
        let on = |name: &str| names.is_empty() || names.contains(&name);
        Self {
            cpu: on("cpu"),
            latency: on("latency"),
            memory: on("memory"),
            trace: on("trace"),
        }
    }
}

/// A keygate data directory with everything a call needs, and how to reach it.
struct Seeded {
    bin: PathBuf,
    data_dir: PathBuf,
    port: u16,
    app: String,
    slug: String,
    token: String,
}

/// A proxy running for one round: where to send calls, and which processes are the proxy.
struct Running {
    procs: Vec<Proc>,
    /// The processes whose CPU and memory are the proxy's (the upstream's, for direct).
    pids: Vec<u32>,
    url: String,
    headers: Vec<(String, String)>,
    /// The keygate data directory, for trace bytes.
    trace_db: Option<PathBuf>,
    metrics_url: Option<String>,
}

/// One round's figures for one proxy.
#[derive(Default, Clone)]
struct Figures {
    cpu_us: Option<f64>,
    rps: Option<f64>,
    busy: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    kib_per_stream: Option<f64>,
    trace_bytes: Option<f64>,
}

impl Bench {
    /// Starts `t` (pinned to the proxy core) and waits until it answers.
    async fn start(&self, t: &Target, upstream_pid: u32) -> Running {
        match t.kind {
            Kind::Direct => Running {
                procs: Vec::new(),
                pids: vec![upstream_pid],
                url: self.upstream_url.clone(),
                headers: vec![("authorization".into(), format!("Bearer {CREDENTIAL}"))],
                trace_db: None,
                metrics_url: None,
            },
            Kind::Nginx => self.start_nginx(),
            Kind::Forwarder => {
                let (proc, addr) = spawn_role(
                    "forwarder",
                    PROXY_CORE,
                    &[("KEYGATE_BENCH_UPSTREAM", &self.upstream_url)],
                );
                Running {
                    pids: vec![proc.pid()],
                    procs: vec![proc],
                    url: format!("http://{addr}/mcp"),
                    headers: Vec::new(),
                    trace_db: None,
                    metrics_url: None,
                }
            }
            Kind::Keygate {
                route,
                tracing,
                otel,
            } => self.start_keygate(route, tracing, otel).await,
        }
    }

    fn start_nginx(&self) -> Running {
        let dir = self.work.path().join("nginx");
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let port = free_port();
        let upstream: hyper::Uri = self.upstream_url.parse().unwrap();
        let conf = nginx_conf(port, upstream.authority().unwrap().as_str());
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let nginx = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = Command::new("taskset")
            .args(["-c", PROXY_CORE, nginx, "-p"])
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx (benches/setup.sh installs it)");
        let proc = Proc {
            child: Some(child),
            name: "nginx".into(),
            signal: Some("TERM"),
        };
        let addr = format!("127.0.0.1:{port}");
        wait_listening(&addr, "nginx");
        // The master listens before it forks its worker.
        let deadline = Instant::now() + Duration::from_secs(10);
        let pids = loop {
            let pids = with_children(proc.pid());
            if pids.len() > 1 {
                break pids;
            }
            assert!(Instant::now() < deadline, "nginx started no worker");
            std::thread::sleep(Duration::from_millis(20));
        };
        Running {
            pids,
            procs: vec![proc],
            url: format!("http://{addr}/mcp"),
            headers: Vec::new(),
            trace_db: None,
            metrics_url: None,
        }
    }

    async fn start_keygate(&self, route: Route, tracing: bool, otel: bool) -> Running {
        let s = self.keygate.as_ref().expect("keygate seeded");
        let log = std::fs::File::create(self.work.path().join("keygate-serve.log")).unwrap();
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", PROXY_CORE])
            .arg(&s.bin)
            .arg("--data-dir")
            .arg(&s.data_dir)
            .arg("serve")
            .envs(keygate_env(s.port))
            .env("KEYGATE_TRACES_ENABLED", tracing.to_string())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if otel {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &self.otlp_url);
        }
        let proc = Proc {
            child: Some(cmd.spawn().expect("start keygate")),
            name: "keygate".into(),
            signal: Some("TERM"),
        };
        let base = format!("http://127.0.0.1:{}", s.port);
        wait_healthy(&base).await;
        let app_url = format!("{base}/apps/{}/mcp", s.app);
        let mut headers = vec![("authorization".into(), format!("Bearer {}", s.token))];
        let url = match route {
            Route::Pass => format!("{app_url}/{}", s.slug),
            Route::Aggregated => {
                let session = mcp_session(&app_url, &s.token).await;
                headers.push(("mcp-session-id".into(), session));
                app_url
            }
        };
        Running {
            pids: vec![proc.pid()],
            procs: vec![proc],
            url,
            headers,
            trace_db: tracing.then(|| s.data_dir.clone()),
            metrics_url: Some(format!("{base}/metrics")),
        }
    }

    /// The `tools/call` body for `t` (the aggregated route names the tool `{slug}_echo`).
    fn call_body(&self, t: &Target) -> String {
        let tool = match t.kind {
            Kind::Keygate {
                route: Route::Aggregated,
                ..
            } => format!("{}_echo", self.keygate.as_ref().unwrap().slug),
            _ => "echo".into(),
        };
        // About 200 bytes, as an agent's small tool call is.
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool,
            "arguments": {"message": "Summarise the open issues in the tracker for this week, briefly."},
            "_meta": {"progressToken": "p-1"}}})
        .to_string()
    }

    /// Every figure of one round for `t`.
    async fn measure(&self, t: &Target, upstream_pid: u32) -> Figures {
        let mut run = self.start(t, upstream_pid).await;
        let body = self.call_body(t);
        let script = self.work.path().join("wrk.lua");
        std::fs::write(&script, wrk_script(&body, &run.headers)).unwrap();
        let written_before = match &run.metrics_url {
            Some(m) => trace_events_written(m).await,
            None => 0.0,
        };
        let db_before = run.trace_db.as_deref().map(sqlite_bytes);
        let mut figures = Figures::default();
        // Warm-up: connection pools, caches, the allocator's arenas.
        wrk(&script, &run.url, 1);
        if self.sections.cpu {
            let cpu0 = cpu_secs(&run.pids);
            let wall = Instant::now();
            let perf = self
                .perf_dir
                .as_deref()
                .map(|dir| perf_record(dir, t.name, &run.pids, self.saturation_secs));
            let (requests, secs) = wrk(&script, &run.url, self.saturation_secs);
            let wall = wall.elapsed().as_secs_f64();
            if let Some((mut record, mut stat, counts)) = perf {
                let _ = record.wait();
                let _ = stat.wait();
                print_perf_counts(t.name, &counts, requests);
            }
            let cpu = cpu_secs(&run.pids) - cpu0;
            figures.cpu_us = Some(cpu * 1e6 / requests as f64);
            figures.rps = Some(requests as f64 / secs);
            figures.busy = Some(cpu / wall);
        }
        if self.sections.latency {
            let latencies = self.fixed_rate(&run.url, &run.headers, &body).await;
            figures.p50_ms = Some(percentile(&latencies, 0.50));
            figures.p99_ms = Some(percentile(&latencies, 0.99));
        }
        if self.sections.memory {
            figures.kib_per_stream = match self.idle_streams(&run).await {
                Ok(k) => Some(k),
                Err(e) => {
                    eprintln!("{}: idle streams: {e}", t.name);
                    None
                }
            };
        }
        if let (true, Some(db), Some(m), Some(before)) = (
            self.sections.trace,
            run.trace_db.clone(),
            run.metrics_url.clone(),
            db_before,
        ) {
            let events = settled_trace_events(&m).await - written_before;
            for p in &mut run.procs {
                p.stop();
            }
            if events > 0.0 {
                figures.trace_bytes = Some((sqlite_bytes(&db) - before) as f64 / events);
            }
        }
        drop(run);
        figures
    }

    /// Latencies (ms, sorted) of calls started at `rate`/s for `rate_secs`, each timed from the
    /// moment it was due.
    async fn fixed_rate(&self, url: &str, headers: &[(String, String)], body: &str) -> Vec<f64> {
        let period = Duration::from_nanos(1_000_000_000 / self.rate);
        let n = self.rate * self.rate_secs;
        let body = Bytes::from(body.to_owned());
        // A client of its own: pooled connections to a proxy of an earlier run are gone.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        // A short warm-up at the same rate opens the connections the rate needs.
        for warm in [true, false] {
            let n = if warm { self.rate / 4 } else { n };
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let due = tick.tick().await;
                let req = post(url, headers, body.clone());
                let client = http.clone();
                tasks.push(tokio::spawn(async move {
                    let resp = client.request(req).await.expect("a call at the fixed rate");
                    assert!(
                        resp.status().is_success(),
                        "a call answered {}",
                        resp.status()
                    );
                    resp.into_body().collect().await.expect("an answer body");
                    due.elapsed()
                }));
            }
            let mut out = Vec::with_capacity(tasks.len());
            for task in tasks {
                out.push(task.await.unwrap().as_secs_f64() * 1e3);
            }
            if !warm {
                out.sort_by(f64::total_cmp);
                return out;
            }
        }
        unreachable!()
    }

    /// KiB of resident memory per idle SSE stream held open through the proxy.
    async fn idle_streams(&self, run: &Running) -> Result<f64, String> {
        let mut held = Vec::with_capacity(self.streams);
        open_streams(&run.url, &run.headers, STREAM_BASELINE, &mut held).await?;
        settle().await;
        let before = rss_kib(&run.pids);
        open_streams(
            &run.url,
            &run.headers,
            self.streams - STREAM_BASELINE,
            &mut held,
        )
        .await?;
        settle().await;
        let after = rss_kib(&run.pids);
        drop(held);
        Ok((after - before) as f64 / (self.streams - STREAM_BASELINE) as f64)
    }
}

/// The environment of every `keygate` process of the benchmark.
fn keygate_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("KEYGATE_LISTEN", format!("127.0.0.1:{port}")),
        // The upstream and the OTLP sink are on loopback.
        ("KEYGATE_OUTBOUND_ALLOWED_PRIVATE_HOSTS", "127.0.0.1".into()),
        // One agent token serves the whole run.
        ("KEYGATE_AUTH_ACCESS_TOKEN_TTL_SECS", "86400".into()),
    ]
}

fn nginx_conf(port: u16, upstream: &str) -> String {
    format!(
        r#"worker_processes 1;
worker_rlimit_nofile 20000;
error_log logs/error.log warn;
pid logs/nginx.pid;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    client_body_temp_path logs/client_body;
    proxy_temp_path logs/proxy;
    upstream mcp {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mcp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {CREDENTIAL}";
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"#
    )
}

/// The Lua script that makes wrk send `body` with `headers` and print its totals.
fn wrk_script(body: &str, headers: &[(String, String)]) -> String {
    let mut s = String::from("wrk.method = \"POST\"\n");
    s += &format!("wrk.body = [==[{body}]==]\n");
    s += "wrk.headers[\"Content-Type\"] = \"application/json\"\n";
    s += "wrk.headers[\"Accept\"] = \"application/json, text/event-stream\"\n";
    for (k, v) in headers {
        s += &format!("wrk.headers[\"{k}\"] = [==[{v}]==]\n");
    }
    s += r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("KGRESULT %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"#;
    s
}

/// Starts `perf record` (flat samples, 2 kHz) of `pids` for `secs`, into `dir/{name}.data`
/// (slugged; the last round's profile of each proxy is the one kept), and `perf stat` of their
/// system calls and context switches, into the file returned.
fn perf_record(dir: &Path, name: &str, pids: &[u32], secs: u64) -> (Child, Child, PathBuf) {
    std::fs::create_dir_all(dir).expect("KEYGATE_BENCH_PERF directory");
    let file: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let pids = pids.join(",");
    let secs = secs.to_string();
    let record = Command::new("perf")
        .args(["record", "-q", "-F", "2000", "-o"])
        .arg(dir.join(format!("{file}.data")))
        .args(["-p", &pids, "--", "sleep", &secs])
        .stdout(Stdio::null())
        .spawn()
        .expect("run perf (KEYGATE_BENCH_PERF)");
    let counts = dir.join(format!("{file}.counts"));
    let stat = Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "raw_syscalls:sys_enter,context-switches",
            "-o",
        ])
        .arg(&counts)
        .args(["-p", &pids, "--", "sleep", &secs])
        .stdout(Stdio::null())
        .spawn()
        .expect("run perf (KEYGATE_BENCH_PERF)");
    (record, stat, counts)
}

/// Prints what `perf stat` counted (CSV: value first, event third) per request.
fn print_perf_counts(name: &str, counts: &Path, requests: u64) {
    let text = std::fs::read_to_string(counts).unwrap_or_default();
    let per_call: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let value: f64 = fields.first()?.parse().ok()?;
            Some(format!("{:.2} {}", value / requests as f64, fields.get(2)?))
        })
        .collect();
    println!("perf: {name}: per call {}", per_call.join(", "));
}

/// Runs wrk (pinned to the load core) for `secs`; the requests it completed and the seconds
/// they took. Panics on any answer other than 2xx.
fn wrk(script: &Path, url: &str, secs: u64) -> (u64, f64) {
    let out = Command::new("taskset")
        .args(["-c", LOAD_CORE, "wrk", "-t1"])
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "10s", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .expect("run wrk (benches/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("KGRESULT "))
        .unwrap_or_else(|| panic!("wrk printed no result: {text}"));
    let n: Vec<u64> = line.split(' ').map(|v| v.parse().unwrap()).collect();
    let (requests, micros) = (n[0], n[1]);
    let (connect, read, write, status, timeout) = (n[2], n[3], n[4], n[5], n[6]);
    assert_eq!(status, 0, "{url}: {status} answers were not 2xx");
    if connect + read + write + timeout > 0 {
        eprintln!(
            "{url}: wrk socket errors: connect {connect}, read {read}, write {write}, timeout {timeout}"
        );
    }
    (requests, micros as f64 / 1e6)
}

fn post(url: &str, headers: &[(String, String)], body: Bytes) -> Request<Full<Bytes>> {
    let mut req = Request::post(url)
        .header(CONTENT_TYPE, "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.body(Full::new(body)).unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Lets allocations and kernel accounting settle before a memory reading.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

type Held = (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    Incoming,
);

/// Opens `count` GET streams to `url`, 200 at a time, one connection each, and keeps each once
/// its first event has arrived.
async fn open_streams(
    url: &str,
    headers: &[(String, String)],
    count: usize,
    held: &mut Vec<Held>,
) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let mut left = count;
    while left > 0 {
        let batch = left.min(200);
        left -= batch;
        let tasks: Vec<_> = (0..batch)
            .map(|_| {
                let (addr, uri, headers) = (addr.clone(), uri.clone(), headers.to_vec());
                tokio::spawn(async move { open_stream(&addr, uri, &headers).await })
            })
            .collect();
        for t in tasks {
            held.push(t.await.unwrap()?);
        }
    }
    Ok(())
}

async fn open_stream(
    addr: &str,
    uri: hyper::Uri,
    headers: &[(String, String)],
) -> Result<Held, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::get(uri)
        .header(HOST, addr)
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = send
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .map_err(|e| format!("GET: {e}"))?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let text = resp.into_body().collect().await.map(|b| b.to_bytes());
        return Err(format!("GET answered {status}: {text:?}"));
    }
    let mut body = resp.into_body();
    loop {
        let frame = body
            .frame()
            .await
            .ok_or("the stream ended before its first event")?
            .map_err(|e| format!("stream: {e}"))?;
        if frame
            .data_ref()
            .is_some_and(|d| d.windows(5).any(|w| w == b"data:"))
        {
            return Ok((send, body));
        }
    }
}

/// Bytes of keygate's SQLite files (the database and its write-ahead log).
fn sqlite_bytes(data_dir: &Path) -> u64 {
    ["keygate.db", "keygate.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data_dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// `keygate_trace_events_written_total` from the gateway's `/metrics`.
async fn trace_events_written(metrics_url: &str) -> f64 {
    let text = reqwest::get(metrics_url)
        .await
        .and_then(|r| r.error_for_status())
        .expect("/metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("keygate_trace_events_written_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The written-events count once the trace queue has drained (two equal readings).
async fn settled_trace_events(metrics_url: &str) -> f64 {
    let mut last = trace_events_written(metrics_url).await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = trace_events_written(metrics_url).await;
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

// ---------------------------------------------------------------------------------------------
// keygate: the binary, its data, an agent token.

/// The release `keygate` binary: `KEYGATE_BIN`, else built now.
fn keygate_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("KEYGATE_BIN") {
        return bin.into();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "building the release keygate binary (cargo build --release -p keygate --bin keygate)"
    );
    let out = Command::new(cargo)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args([
            "build",
            "--release",
            "-p",
            "keygate",
            "--bin",
            "keygate",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo");
    assert!(out.status.success(), "building keygate failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "keygate")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo named the keygate executable")
}

/// Runs a local `keygate` command on `data_dir` with `stdin`; its standard output as JSON.
fn keygate_cli(bin: &Path, data_dir: &Path, args: &[&str], stdin: &str) -> Value {
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run keygate");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "keygate {args:?} failed");
    serde_json::from_slice(&out.stdout).expect("keygate printed JSON")
}

async fn wait_healthy(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "keygate did not start at {base}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A keygate data directory with an owner, an application and a `server_token` integration
/// for the upstream, and an agent token for the application (through its own OAuth flow).
async fn seed_keygate(bin: PathBuf, work: &Path, upstream_url: &str) -> Seeded {
    let data_dir = work.join("keygate-data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let owner = keygate_cli(
        &bin,
        &data_dir,
        &["user", "add", OWNER, "--role", "owner", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(owner["user"]["id"].is_string(), "user add: {owner}");
    let sa = keygate_cli(
        &bin,
        &data_dir,
        &["service-account", "create", "--name", "bench"],
        "",
    );
    let port = free_port();
    let log = std::fs::File::create(work.join("keygate-seed.log")).unwrap();
    let child = Command::new(&bin)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("serve")
        .envs(keygate_env(port))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start keygate");
    let mut gateway = Proc {
        child: Some(child),
        name: "keygate".into(),
        signal: Some("TERM"),
    };
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    let http = reqwest::Client::new();
    let mgmt: Value = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth(
            sa["credentials"]["clientId"].as_str().unwrap(),
            sa["credentials"]["clientSecret"].as_str(),
        )
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "management:all"),
            ("audience", &format!("{base}/api/v1")),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mgmt = mgmt["access_token"].as_str().expect("a management token");
    let api = |method: reqwest::Method, path: &str, body: Value| {
        http.request(method, format!("{base}/api/v1{path}"))
            .bearer_auth(mgmt)
            .json(&body)
            .send()
    };
    let app: Value = api(
        reqwest::Method::POST,
        "/applications",
        json!({"name": "Bench", "oauth": {"type": "public", "redirectUris": [REDIRECT_URI]}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let app_id = app["application"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("create application: {app}"))
        .to_owned();
    let client_id = app["application"]["oauth"]["clientId"]
        .as_str()
        .unwrap()
        .to_owned();
    let integ: Value = api(
        reqwest::Method::POST,
        "/integrations",
        json!({"name": "Bench upstream", "url": upstream_url, "authMode": "server_token",
            "serverToken": CREDENTIAL}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let integ_id = integ["integration"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("create integration: {integ}"));
    let slug = integ["integration"]["slug"].as_str().unwrap().to_owned();
    let attached = api(
        reqwest::Method::POST,
        &format!("/applications/{app_id}/integrations/{integ_id}"),
        Value::Null,
    )
    .await
    .unwrap();
    assert!(attached.status().is_success(), "attach: {attached:?}");
    let resource = format!("{base}/apps/{app_id}/mcp");
    let token = agent_token(&base, &client_id, &resource).await;
    gateway.stop();
    Seeded {
        bin,
        data_dir,
        port,
        app: app_id,
        slug,
        token,
    }
}

/// The owner's token for `resource`, by the authorization-code flow with PKCE: sign in and
/// approve consent as a browser would, then redeem the code.
async fn agent_token(base: &str, client_id: &str, resource: &str) -> String {
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid_bytes());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let mut authorize = url::Url::parse(&format!("{base}/oauth2/authorize")).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", "bench")
        .append_pair("resource", resource);
    let login = redirect(browser.get(authorize.as_str()).send().await.unwrap(), base);
    let (action, mut fields) = post_form(&browser, &login).await;
    fields.push(("email".into(), OWNER.into()));
    fields.push(("password".into(), PASSWORD.into()));
    let consent = redirect(
        browser.post(&action).form(&fields).send().await.unwrap(),
        base,
    );
    let (action, mut fields) = post_form(&browser, &consent).await;
    fields.push(("approve".into(), "1".into()));
    let back = redirect(
        browser.post(&action).form(&fields).send().await.unwrap(),
        base,
    );
    let back = url::Url::parse(&back).unwrap();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {back}"));
    let token: Value = browser
        .post(format!("{base}/oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", client_id),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &verifier),
            ("resource", resource),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    token["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {token}"))
        .to_owned()
}

/// 32 random bytes (two v4 UUIDs' worth), for the PKCE verifier.
fn uuid_bytes() -> Vec<u8> {
    [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
        .iter()
        .flat_map(|u| *u.as_bytes())
        .collect()
}

/// The absolute target of a redirect answer.
fn redirect(resp: reqwest::Response, base: &str) -> String {
    assert!(
        resp.status().is_redirection(),
        "{} answered {}, not a redirect",
        resp.url(),
        resp.status()
    );
    let loc = resp.headers()["location"].to_str().unwrap();
    url::Url::parse(base)
        .unwrap()
        .join(loc)
        .unwrap()
        .to_string()
}

/// The page's POST form: its absolute action and its hidden fields.
async fn post_form(browser: &reqwest::Client, page: &str) -> (String, Vec<(String, String)>) {
    let html = browser
        .get(page)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let form_at = html
        .find("<form")
        .unwrap_or_else(|| panic!("no form on {page}"));
    let form = &html[form_at
        ..html[form_at..]
            .find("</form>")
            .map_or(html.len(), |e| form_at + e)];
    let action = attr(&form[..form.find('>').unwrap()], "action").unwrap_or_default();
    let action = url::Url::parse(page).unwrap().join(&action).unwrap();
    let fields = form
        .split("<input")
        .skip(1)
        .map(|tag| &tag[..tag.find('>').unwrap_or(tag.len())])
        .filter(|tag| attr(tag, "type").as_deref() == Some("hidden"))
        .filter_map(|tag| Some((attr(tag, "name")?, attr(tag, "value").unwrap_or_default())))
        .collect();
    (action.to_string(), fields)
}

/// An HTML attribute's (double-quoted) value, entities decoded.
fn attr(tag: &str, name: &str) -> Option<String> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let value = &tag[at..at + tag[at..].find('"')?];
    Some(
        value
            .replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// An initialized MCP session on the aggregated route; its id.
async fn mcp_session(url: &str, token: &str) -> String {
    let http = reqwest::Client::new();
    let init = http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert!(
        init.status().is_success(),
        "initialize answered {}",
        init.status()
    );
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let done = http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    assert!(
        done.status().is_success(),
        "notifications/initialized answered {}",
        done.status()
    );
    session
}

// ---------------------------------------------------------------------------------------------
// The run and its report.

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Installs nginx and wrk through `benches/setup.sh` when either is missing.
fn ensure_tools() {
    let have = |cmd: &str| {
        Command::new("sh")
            .args([
                "-c",
                &format!("command -v {cmd} || test -x /usr/sbin/{cmd}"),
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ["nginx", "wrk", "taskset"].iter().all(|c| have(c)) {
        return;
    }
    let status = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/setup.sh"))
        .status()
        .expect("run benches/setup.sh");
    assert!(status.success(), "benches/setup.sh failed");
}

fn bench() {
    // The client side (this process, its runtime's threads included) on the load core.
    let pinned = Command::new("taskset")
        .args(["-a", "-p", "-c", LOAD_CORE, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    assert!(
        pinned.is_ok_and(|s| s.success()),
        "taskset could not pin the benchmark to core {LOAD_CORE}"
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let selected: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let targets: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| {
            t.kind == Kind::Direct || selected.is_empty() || selected.iter().any(|s| s == t.key)
        })
        .collect();
    ensure_tools();
    let rounds: usize = env_num("KEYGATE_BENCH_ROUNDS", 3).max(1);
    let streams: usize = env_num("KEYGATE_BENCH_STREAMS", 2_000).max(STREAM_BASELINE + 1);
    let work = tempfile::tempdir().unwrap();
    let (upstream, upstream_url) = spawn_role("upstream", LOAD_CORE, &[]);
    let (sink, otlp_url) = spawn_role("otlp-sink", LOAD_CORE, &[]);
    let needs_keygate = targets
        .iter()
        .any(|t| matches!(t.kind, Kind::Keygate { .. }));
    let keygate = if needs_keygate {
        Some(seed_keygate(keygate_binary(), work.path(), &upstream_url).await)
    } else {
        None
    };
    let bench = Bench {
        upstream_url,
        otlp_url,
        keygate,
        work,
        saturation_secs: env_num("KEYGATE_BENCH_SECS", 5),
        rate: env_num("KEYGATE_BENCH_RATE", 2_000),
        rate_secs: env_num("KEYGATE_BENCH_RATE_SECS", 5),
        streams,
        sections: Sections::from_env(),
        perf_dir: std::env::var_os("KEYGATE_BENCH_PERF").map(PathBuf::from),
    };
    println!(
        "keygate cost benchmark: {rounds} rounds; proxy on core {PROXY_CORE}, wrk -t1 -c{CONNECTIONS} \
         and the upstream on core {LOAD_CORE}; saturation {} s, latency at {} req/s for {} s, \
         {streams} idle SSE streams",
        bench.saturation_secs, bench.rate, bench.rate_secs
    );
    println!(
        "{:<24} {:>9} {:>9} {:>6} {:>8} {:>8} {:>9} {:>8}",
        "round: proxy", "CPU µs", "req/s", "busy", "p50 ms", "p99 ms", "KiB/strm", "B/event"
    );
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for i in 0..targets.len() {
            // Each round starts one further along, so drift does not always hit the same proxy.
            let k = (i + round) % targets.len();
            let f = bench.measure(targets[k], upstream.pid()).await;
            println!(
                "{:<24} {:>9} {:>9} {:>6} {:>8} {:>8} {:>9} {:>8}",
                format!("{}: {}", round + 1, targets[k].name),
                opt(f.cpu_us, 1),
                opt(f.rps, 0),
                percent(f.busy, 5),
                opt(f.p50_ms, 3),
                opt(f.p99_ms, 3),
                opt(f.kib_per_stream, 1),
                opt(f.trace_bytes, 0),
            );
            results[k].push(f);
        }
    }
    let sink_stats = reqwest::get(format!("{}/stats", bench.otlp_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    report(&targets, &results, rounds, &sink_stats);
    drop(sink);
    drop(upstream);
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.decimals$}"))
}

/// A fraction as a percentage (`busy`), right-aligned in `width` before the sign.
fn percent(v: Option<f64>, width: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{:>width$.0}%", v * 100.0))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Medians over the rounds of each figure of one proxy.
struct Medians {
    cpu_us: Option<f64>,
    rps: Option<f64>,
    busy: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    kib_per_stream: Option<f64>,
    trace_bytes: Option<f64>,
}

fn medians(rounds: &[Figures]) -> Medians {
    let o = |f: fn(&Figures) -> Option<f64>| median(rounds.iter().filter_map(f).collect());
    Medians {
        cpu_us: o(|f| f.cpu_us),
        rps: o(|f| f.rps),
        busy: o(|f| f.busy),
        p50_ms: o(|f| f.p50_ms),
        p99_ms: o(|f| f.p99_ms),
        kib_per_stream: o(|f| f.kib_per_stream),
        trace_bytes: o(|f| f.trace_bytes),
    }
}

fn report(targets: &[&Target], results: &[Vec<Figures>], rounds: usize, sink_stats: &str) {
    let meds: Vec<Medians> = results.iter().map(|r| medians(r)).collect();
    let find = |kind: Kind| targets.iter().position(|t| t.kind == kind);
    let direct = &meds[find(Kind::Direct).unwrap()];
    let nginx = find(Kind::Nginx).map(|i| &meds[i]);
    // Added latency: the proxy's percentile over the direct connection's (medians of rounds).
    let minus = |v: Option<f64>, base: Option<f64>| Some(v? - base?);
    let added = |m: &Medians| {
        (
            minus(m.p50_ms, direct.p50_ms),
            minus(m.p99_ms, direct.p99_ms),
        )
    };
    let signed = |v: Option<f64>| v.map_or_else(|| "—".into(), |v| format!("{v:+.3}"));
    let ratio = |v: Option<f64>, base: Option<f64>| match (v, base) {
        (Some(v), Some(b)) if b.abs() > f64::EPSILON => format!("{:.2}×", v / b),
        _ => "—".into(),
    };
    println!();
    println!(
        "median of {rounds} rounds; ×nginx = the figure ÷ nginx's in this run; +p50/+p99 = over the direct connection"
    );
    println!(
        "{:<24} {:>8} {:>7} {:>8} {:>7} {:>5} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7}",
        "",
        "CPU µs",
        "×nginx",
        "req/s",
        "×nginx",
        "busy",
        "+p50 ms",
        "×nginx",
        "+p99 ms",
        "×nginx",
        "KiB/strm",
        "×nginx",
        "B/event"
    );
    for (t, m) in targets.iter().zip(&meds) {
        let (a50, a99) = added(m);
        let is_direct = t.kind == Kind::Direct;
        let (n50, n99) = nginx.map_or((None, None), &added);
        println!(
            "{:<24} {:>8} {:>7} {:>8} {:>7} {:>5} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7}",
            t.name,
            opt(m.cpu_us, 1),
            ratio(m.cpu_us, nginx.and_then(|n| n.cpu_us)),
            opt(m.rps, 0),
            ratio(m.rps, nginx.and_then(|n| n.rps)),
            percent(m.busy, 4),
            if is_direct {
                opt(m.p50_ms, 3)
            } else {
                signed(a50)
            },
            if is_direct {
                "—".into()
            } else {
                ratio(a50, n50)
            },
            if is_direct {
                opt(m.p99_ms, 3)
            } else {
                signed(a99)
            },
            if is_direct {
                "—".into()
            } else {
                ratio(a99, n99)
            },
            opt(m.kib_per_stream, 1),
            ratio(m.kib_per_stream, nginx.and_then(|n| n.kib_per_stream)),
            opt(m.trace_bytes, 0),
        );
    }
    println!(
        "direct: CPU and memory are the upstream's own (it shares core {LOAD_CORE} with wrk); its \
         p50/p99 are absolute. busy = the proxy's CPU ÷ wall time while saturated."
    );
    let pass_on = Kind::Keygate {
        route: Route::Pass,
        tracing: true,
        otel: false,
    };
    let agg_on = Kind::Keygate {
        route: Route::Aggregated,
        tracing: true,
        otel: false,
    };
    let otel_on = Kind::Keygate {
        route: Route::Pass,
        tracing: true,
        otel: true,
    };
    let pass = find(pass_on).map(|i| &meds[i]);
    if let (Some(p), Some(n)) = (pass, nginx) {
        println!(
            "goal (issue 17): pass-through with tracing on ≤ 1.0× nginx — CPU per call {}, memory per idle stream {}",
            ratio(p.cpu_us, n.cpu_us),
            ratio(p.kib_per_stream, n.kib_per_stream)
        );
    }
    if let (Some(p), Some(fw)) = (pass, find(Kind::Forwarder).map(|i| &meds[i])) {
        println!(
            "goal: saturated throughput ≥ 0.9× the hyper forwarder — pass-through {}",
            ratio(p.rps, fw.rps)
        );
    }
    if let (Some(p), Some(a)) = (pass, find(agg_on).map(|i| &meds[i])) {
        println!(
            "goal: aggregated ≤ 1.2× pass-through CPU per call — {}",
            ratio(a.cpu_us, p.cpu_us)
        );
    }
    if let Some(b) = pass.and_then(|p| p.trace_bytes) {
        println!("goal: ≤ 200 bytes per trace event on disk (SQLite) — {b:.0}");
    }
    if let (Some(p), Some(o)) = (pass, find(otel_on).map(|i| &meds[i])) {
        let pct = |on: Option<f64>, off: Option<f64>| match (on, off) {
            (Some(on), Some(off)) => format!("{:+.1} %", (on / off - 1.0) * 100.0),
            _ => "—".into(),
        };
        println!(
            "OpenTelemetry export on vs off (pass-through, tracing on; budget ≤ 5 %): CPU per call {}, \
             p50 at {} req/s {}, p99 {}; the sink received {} export requests ({} bytes)",
            pct(o.cpu_us, p.cpu_us),
            env_num("KEYGATE_BENCH_RATE", 2_000u64),
            pct(o.p50_ms, p.p50_ms),
            pct(o.p99_ms, p.p99_ms),
            sink_stats.split(' ').next().unwrap_or("?"),
            sink_stats.split(' ').nth(1).unwrap_or("?"),
        );
    }
}
