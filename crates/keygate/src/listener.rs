//! The listener: accepts client connections and serves each with hyper, under the limits that
//! keep slow, silent, idle and surplus sockets from holding the gateway's descriptors.
//!
//! - **Header timeout** (`server.header_read_timeout_secs`): a new connection must deliver a
//!   request's complete headers within it; on a kept-alive connection the clock starts at the
//!   next request's first byte. A slow or silent client is disconnected.
//! - **Idle timeout** (`server.idle_timeout_secs`): a connection with no request in flight and
//!   no byte of the next one is closed after it.
//! - **Connection cap** (`server.max_connections`, by default derived from the open-files
//!   limit, whose soft value is raised to the hard one at start): at the cap the oldest idle
//!   connection is closed to make room, so a flood of idle sockets only displaces idle
//!   sockets. When every connection is busy, a small reserve of [`HEALTH_RESERVE`] slots serves
//!   `/healthz` and `/readyz` only (one request each, header timeout at most 2 s) and anything
//!   else past it is answered `503` and closed at once. Either event is logged, at most every
//!   [`LOG_EVERY`].
//! - **TLS** (when [`Tls`] is given): the handshake must finish within its timeout (and the
//!   header timeout, which runs from the accept); the decrypted stream is what hyper and the
//!   clocks see, and ALPN `h2` marks the connection as HTTP/2 at once.
//! - **Unread request bodies** (HTTP/1.1): a handler that answers before it has read the whole
//!   request body (a 401 before the upload, a 413) leaves unread bytes on the connection, and
//!   hyper then closes it without warning; a client reusing the kept-alive connection would meet
//!   a reset. Such an answer says `Connection: close` instead, so the client opens a fresh
//!   connection for its next request ([`BodyRead`] notes which request's body reached its end).
//! - **Shutdown**: accepting stops; idle connections close at once, requests in flight are
//!   answered (a POST's streamed answer included), and an SSE stream opened by a `GET` ends at
//!   its next event boundary (cleanly: the chunked body or HTTP/2 stream is terminated), so a
//!   client's open stream does not hold the process.
//!
//! **Memory of an idle connection** (a client's open event stream spends its life idle): the
//! protocol is known before hyper reads a byte — ALPN on TLS; on plain TCP the first bytes,
//! peeked without taking them (the HTTP/2 preface, or anything else for HTTP/1.1) — and the
//! connection is served by that protocol's own hyper connection, in an allocation of its own
//! size. hyper-util's `auto` connection, which finds the protocol by reading the first bytes
//! itself, is left for the clients it cannot be told of (TLS without ALPN, a preface arriving
//! in pieces): its enum is as large as its HTTP/2 state for every HTTP/1.1 connection, and the
//! 24 bytes it hands back first make hyper grow the connection's 8 KiB read buffer to 16 KiB,
//! held for the connection's life.
//!
//! One reaper task per listener watches the clocks: every [`Limits::tick`] it wakes the
//! connections whose deadline passed (or that were chosen to make room), and those close. A
//! connection's own task waits only on hyper and that one wake-up, so a request costs no timer
//! and no extra poll. Requests in flight (until their response body ends) hold no clock; the
//! socket wrapper [`Watched`] notes the first byte of a kept-alive connection's next request.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use keygate_core::config::Config;
use keygate_core::wire::sse::Boundary;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::ServiceExt;

use crate::tls::Tls;

/// Connections past the cap that may still reach `/healthz` and `/readyz`.
pub const HEALTH_RESERVE: usize = 16;
/// Descriptors kept back from the derived cap: the listener, logs, files, DNS, the runtime.
const FD_RESERVE: u64 = 64;
/// Cap-reached log lines are at most this frequent.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// The longest a reserved (health) connection may take to send its headers.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// After shutdown began, how long an SSE answer caught in the middle of an event may take to
/// finish that event before it is ended anyway.
const FINISH_EVENT: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface (RFC 9113, section 3.4): what a client speaking HTTP/2 from
/// its first byte sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
content-type: text/plain\r\ncontent-length: 25\r\nretry-after: 1\r\n\r\ntoo many open connections";

/// The connection limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// How often the reaper looks: often enough that a connection closes within a quarter of
    /// its timeout (at most a second) after it.
    fn tick(&self) -> Duration {
        (self.header_read.min(self.idle) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// The configured limits, after raising the open-files soft limit to the hard one (logged).
    pub fn from_config(config: &Config) -> Self {
        let derived = derived_cap(raise_open_files_limit(), config.max_connections());
        let max_connections = match config.server.max_connections {
            Some(n) => {
                if n as usize > derived {
                    tracing::warn!(
                        max_connections = n,
                        open_files_allow = derived,
                        "server.max_connections is above what the open-files limit allows"
                    );
                }
                n as usize
            }
            None => derived,
        };
        Self {
            header_read: Duration::from_secs(config.header_read_timeout_secs()),
            idle: Duration::from_secs(config.idle_timeout_secs()),
            max_connections,
        }
    }
}

/// Raises the soft open-files limit to the hard one; returns the soft limit in force.
pub fn raise_open_files_limit() -> u64 {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => {
            if before.as_ref().is_ok_and(|b| *b != now) {
                tracing::info!(
                    from = before.unwrap_or(0),
                    to = now,
                    "raised the open-files limit to its hard limit"
                );
            }
            now
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            before.unwrap_or(1024)
        }
    }
}

/// Client connections the gateway may hold within `nofile` descriptors: each may hold an
/// upstream connection too, and the database pool, the health reserve and the process need
/// theirs.
fn derived_cap(nofile: u64, database: u32) -> usize {
    let spare = nofile.saturating_sub(FD_RESERVE + u64::from(database) + HEALTH_RESERVE as u64);
    (spare / 2).max(1) as usize
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown` is
/// cancelled; then stops accepting, lets in-flight requests finish, ends GET event streams at
/// an event boundary, and returns once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) {
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = tls.is_some(),
        max_connections = limits.max_connections,
        header_read_timeout_secs = limits.header_read.as_secs(),
        idle_timeout_secs = limits.idle.as_secs(),
        "serving"
    );
    let server = Arc::new(Server::new(router, limits, tls, shutdown.clone()));
    let reaper = tokio::spawn(server.clone().reap());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((tcp, peer)) => server.admit(tcp, peer),
            Err(e) => {
                // Out of descriptors (or a transient error): back off instead of spinning.
                server.log_cap(|| tracing::error!(error = %e, "accepting a connection failed"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    server.stopping.store(true, Ordering::SeqCst);
    server.wake_all();
    loop {
        let drained = server.drained.notified();
        if server.open.load(Ordering::SeqCst) == 0 && server.reserved.load(Ordering::SeqCst) == 0 {
            break;
        }
        drained.await;
    }
    reaper.abort();
}

/// What the accept loop and the connection tasks share.
struct Server {
    router: Router,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    /// Cancelled when shutdown begins: GET event streams end at their next event boundary.
    shutdown: CancellationToken,
    builders: Builders,
    reserve_builders: Builders,
    /// Open connections, oldest first: what the reaper watches, and (the normal ones) the
    /// candidates to make room at the cap.
    conns: Mutex<BTreeMap<u64, Arc<Activity>>>,
    /// Shutdown has begun: connections finish what is in flight and close.
    stopping: AtomicBool,
    next_id: AtomicU64,
    open: AtomicUsize,
    reserved: AtomicUsize,
    drained: Notify,
    /// When the last cap-reached line was logged, and what happened since.
    last_log: Mutex<Option<Instant>>,
    evicted: AtomicU64,
    refused: AtomicU64,
}

/// The hyper connection builders of one kind of slot, one per protocol.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// For a connection whose protocol is not known before hyper reads it.
    auto: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(keep_alive: bool) -> Self {
        let mut http1 = http1::Builder::new();
        http1.keep_alive(keep_alive);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1().keep_alive(keep_alive);
        Self {
            http1,
            http2: http2::Builder::new(TokioExecutor::new()),
            auto,
        }
    }
}

/// The protocol a connection speaks, as far as it is known before hyper reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    Unknown,
}

impl Protocol {
    /// From the first bytes a client sent (peeked): the HTTP/2 preface, or anything else —
    /// HTTP/1.1. `Unknown` while what came is only the start of the preface, or nothing.
    fn of_first_bytes(first: &[u8]) -> Self {
        let n = first.len().min(H2_PREFACE.len());
        if n == 0 {
            Protocol::Unknown
        } else if first[..n] != H2_PREFACE[..n] {
            Protocol::Http1
        } else if n == H2_PREFACE.len() {
            Protocol::Http2
        } else {
            Protocol::Unknown
        }
    }

    /// From the protocol ALPN settled on a TLS connection (`Unknown` without one).
    fn of_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Unknown,
        }
    }
}

/// The first bytes of a plain-TCP connection, peeked (left for hyper to read), once some came;
/// `Unknown` if the socket ends or fails first (hyper then finds that out itself).
async fn sniff(tcp: &TcpStream) -> Protocol {
    let mut first = [0u8; H2_PREFACE.len()];
    match tcp.peek(&mut first).await {
        Ok(n) => Protocol::of_first_bytes(&first[..n]),
        Err(_) => Protocol::Unknown,
    }
}

/// Which rules a connection is served by.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Normal,
    /// Past the cap: health checks only, one request.
    Reserve,
}

impl Server {
    fn new(
        router: Router,
        limits: Limits,
        tls: Option<Arc<Tls>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            router,
            limits,
            tls,
            shutdown,
            builders: Builders::new(true),
            reserve_builders: Builders::new(false),
            conns: Mutex::default(),
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            drained: Notify::new(),
            last_log: Mutex::new(None),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Takes a new connection: in a free slot, in room made by closing the oldest idle one, in
    /// the health reserve, or not at all.
    fn admit(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        // Streamed responses go out as several writes; Nagle would hold the later ones.
        let _ = tcp.set_nodelay(true);
        let slot = if self.open.load(Ordering::SeqCst) < self.limits.max_connections
            || self.evict_oldest_idle()
        {
            self.open.fetch_add(1, Ordering::SeqCst);
            Slot::Normal
        } else if self.reserved.fetch_add(1, Ordering::SeqCst) < HEALTH_RESERVE {
            self.note_cap(false);
            Slot::Reserve
        } else {
            self.reserved.fetch_sub(1, Ordering::SeqCst);
            self.note_cap(false);
            // Best effort, never waits (a fresh socket's send buffer is empty); the socket
            // closes when dropped. A TLS client could not read a plain answer: it is closed.
            if self.tls.is_none()
                && let Ok(mut tcp) = tcp.into_std()
            {
                let _ = io::Write::write(&mut tcp, REFUSAL);
            }
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut limits = self.limits;
        if slot == Slot::Reserve {
            limits.header_read = limits.header_read.min(RESERVE_HEADER_TIMEOUT);
        }
        let activity = Arc::new(Activity::new(limits, slot));
        self.lock_conns().insert(id, activity.clone());
        let server = self.clone();
        tokio::spawn(async move {
            server.run(tcp, peer, activity).await;
            server.lock_conns().remove(&id);
            match slot {
                Slot::Normal => server.open.fetch_sub(1, Ordering::SeqCst),
                Slot::Reserve => server.reserved.fetch_sub(1, Ordering::SeqCst),
            };
            server.drained.notify_waiters();
        });
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Activity>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every connection whose deadline passed, at each tick, until the process ends.
    async fn reap(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.limits.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            for activity in self.lock_conns().values() {
                if activity.deadline().is_some_and(|at| at <= now) {
                    activity.wake.notify_one();
                }
            }
        }
    }

    /// Wakes every connection (shutdown has begun).
    fn wake_all(&self) {
        for activity in self.lock_conns().values() {
            activity.wake.notify_one();
        }
    }

    /// Marks the oldest connection with nothing in flight for closing; whether there was one.
    fn evict_oldest_idle(&self) -> bool {
        let conns = self.lock_conns();
        let victim = conns
            .values()
            .find(|a| a.slot == Slot::Normal && !a.evict.load(Ordering::SeqCst) && a.evictable());
        let Some(victim) = victim else {
            return false;
        };
        victim.evict.store(true, Ordering::SeqCst);
        victim.wake.notify_one();
        drop(conns);
        self.note_cap(true);
        true
    }

    /// Counts an eviction or a refusal and logs the cap, at most every [`LOG_EVERY`].
    fn note_cap(&self, evicted: bool) {
        let counter = if evicted {
            &self.evicted
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.log_cap(|| {
            tracing::warn!(
                max_connections = self.limits.max_connections,
                idle_closed = self.evicted.swap(0, Ordering::Relaxed),
                refused = self.refused.swap(0, Ordering::Relaxed),
                "connection limit reached: closing idle connections and refusing new ones"
            )
        });
    }

    fn log_cap(&self, log: impl FnOnce()) {
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            log();
        }
    }

    /// Serves one connection (after its TLS handshake, if any) until it ends, times out, is
    /// evicted, or shutdown has drained it.
    async fn run(&self, tcp: TcpStream, peer: SocketAddr, activity: Arc<Activity>) {
        let Some(tls) = &self.tls else {
            let Some(protocol) = self.before_request(&activity, sniff(&tcp)).await else {
                return;
            };
            return self.serve_conn(tcp, protocol, peer, activity).await;
        };
        // Boxed: the handshake's state is large, and gone once it is done.
        let handshake = Box::pin(tokio::time::timeout(
            tls.handshake_timeout,
            tls.acceptor.accept(tcp),
        ));
        let stream = match self.before_request(&activity, handshake).await {
            Some(Ok(Ok(stream))) => stream,
            Some(Ok(Err(e))) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Some(Err(_)) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
            None => return,
        };
        let protocol = Protocol::of_alpn(stream.get_ref().1.alpn_protocol());
        if protocol == Protocol::Http2 {
            activity.h2.store(true, Ordering::SeqCst);
        }
        self.serve_conn(stream, protocol, peer, activity).await
    }

    /// Waits for `work` (the TLS handshake, the first bytes), as long as the connection's
    /// header timeout, eviction and shutdown allow: `None` if one of them came first.
    async fn before_request<T>(
        &self,
        activity: &Activity,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                done = work.as_mut() => return Some(done),
                _ = activity.wake.notified() => {
                    if self.stopping.load(Ordering::SeqCst)
                        || activity.deadline().is_some_and(|at| at <= Instant::now())
                        || activity.evict.load(Ordering::SeqCst)
                    {
                        return None;
                    }
                }
            }
        }
    }

    /// Serves hyper on a connection's (decrypted) stream with the connection of its protocol,
    /// boxed: the connection's task holds a pointer, and the box is the size of that protocol's
    /// connection (not, as an `async fn`'s future would be, of the largest of them).
    fn serve_conn<S>(
        &self,
        stream: S,
        protocol: Protocol,
        peer: SocketAddr,
        activity: Arc<Activity>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let service = RequestService {
            router: self.router.clone(),
            activity: activity.clone(),
            peer,
            health_only: activity.slot == Slot::Reserve,
            shutdown: self.shutdown.clone(),
        };
        // Not boxed: boxing would shrink the slot hyper keeps for a request's future between
        // requests (about 1 KiB per idle connection) at the cost of an allocation and a copy
        // of that future on every request; the request path comes first.
        let service = hyper::service::service_fn(move |req| service.clone().call(req));
        let builders = match activity.slot {
            Slot::Normal => &self.builders,
            Slot::Reserve => &self.reserve_builders,
        };
        match protocol {
            Protocol::Http1 => {
                let conn = builders.http1.serve_connection(io, service);
                Box::pin(self.drive(conn, |c| c.graceful_shutdown(), activity))
            }
            Protocol::Http2 => {
                let conn = builders.http2.serve_connection(io, service);
                Box::pin(self.drive(conn, |c| c.graceful_shutdown(), activity))
            }
            Protocol::Unknown => {
                let conn = builders.auto.serve_connection_with_upgrades(io, service);
                Box::pin(self.drive(conn, |c| c.graceful_shutdown(), activity))
            }
        }
    }

    /// Polls a hyper connection until it ends, times out, is evicted, or shutdown has drained
    /// it (`graceful` begins that).
    async fn drive<C: Future>(&self, conn: C, graceful: fn(Pin<&mut C>), activity: Arc<Activity>) {
        tokio::pin!(conn);
        let mut stopping = false;
        loop {
            if !stopping && self.stopping.load(Ordering::SeqCst) {
                stopping = true;
                graceful(conn.as_mut());
            }
            tokio::select! {
                biased;
                _ = conn.as_mut() => return,
                _ = activity.wake.notified() => {
                    // Timed out, or chosen to make room: nothing is in flight, so dropping the
                    // connection closes it without cutting an answer off.
                    if activity.deadline().is_some_and(|at| at <= Instant::now())
                        || (activity.evict.load(Ordering::SeqCst) && activity.evictable())
                    {
                        return;
                    }
                }
            }
        }
    }
}

/// The per-request half of a connection: counts requests in flight and hands them to the
/// router (the health routes only, for a reserved connection).
#[derive(Clone)]
struct RequestService {
    router: Router,
    activity: Arc<Activity>,
    peer: SocketAddr,
    health_only: bool,
    shutdown: CancellationToken,
}

impl RequestService {
    async fn call(self, req: Request<Incoming>) -> Result<Response<Body>, io::Error> {
        let (guard, number) = InFlight::begin(self.activity);
        // Watched for its end only where hyper would otherwise reset the connection.
        let watched = req.version() == Version::HTTP_11 && has_body(req.headers());
        let mut req = if watched {
            req.map(|inner| {
                Body::new(BodyRead {
                    inner,
                    activity: guard.0.clone(),
                    number,
                })
            })
        } else {
            req.map(Body::new)
        };
        if self.health_only && !matches!(req.uri().path(), "/healthz" | "/readyz") {
            let mut resp = Response::new(Body::from("too many open connections"));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(resp);
        }
        req.extensions_mut().insert(ConnectInfo(self.peer));
        // A GET event stream (MCP's standalone stream, the live tail) carries no answer a
        // request waits for: shutdown may end it. A POST's streamed answer is finished.
        let event_stream_request = req.method() == axum::http::Method::GET;
        let mut resp = match self.router.oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        if watched && guard.0.body_read.load(Ordering::Acquire) != number {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let stream =
            (event_stream_request && is_event_stream(&resp)).then(|| SseEnd::new(&self.shutdown));
        Ok(resp.map(|body| {
            Body::new(Tracked {
                body,
                stream,
                _guard: guard,
            })
        }))
    }
}

/// Whether a request says it has a body (chunked, or a length above zero).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// A request body that notes on its connection when it has been read to the end: the
/// connection's `number`th request.
struct BodyRead {
    inner: Incoming,
    activity: Arc<Activity>,
    number: u64,
}

impl http_body::Body for BodyRead {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.activity
                .body_read
                .store(self.number, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn is_event_stream(resp: &Response<Body>) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// A response body that keeps its request counted as in flight until it ends or is dropped,
/// and, for a GET's SSE stream, ends it at an event boundary once shutdown begins.
struct Tracked {
    body: Body,
    stream: Option<SseEnd>,
    _guard: InFlight,
}

/// How an SSE answer ends at shutdown: where its events stand, and the signal.
struct SseEnd {
    boundary: Boundary,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Shutdown began while an event was half sent: it may finish until then.
    cutoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SseEnd {
    fn new(shutdown: &CancellationToken) -> Self {
        Self {
            boundary: Boundary::default(),
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
            cutoff: None,
        }
    }

    /// Whether the answer should end now, rather than wait for the next frame.
    fn should_end(&mut self, cx: &mut Context<'_>) -> bool {
        if self.cutoff.is_none() {
            if self.shutdown.as_mut().poll(cx).is_pending() {
                return false;
            }
            self.cutoff = Some(Box::pin(tokio::time::sleep(FINISH_EVENT)));
        }
        self.boundary.at_boundary()
            || self
                .cutoff
                .as_mut()
                .is_some_and(|c| c.as_mut().poll(cx).is_ready())
    }
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        // Polling the signal (and the cutoff) here also registers for their wake-up while the
        // body waits for its next event.
        if let Some(stream) = &mut this.stream
            && stream.should_end(cx)
        {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(stream), Poll::Ready(Some(Ok(frame)))) = (&mut this.stream, &polled)
            && let Some(data) = frame.data_ref()
        {
            stream.boundary.feed(data);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One request in flight on a connection.
struct InFlight(Arc<Activity>);

impl InFlight {
    /// Counts a request in: the guard, and the request's number on its connection (from 1).
    fn begin(activity: Arc<Activity>) -> (Self, u64) {
        let number = {
            let mut s = activity.lock();
            s.inflight += 1;
            s.served += 1;
            s.head_started = None;
            s.served
        };
        activity.armed.store(false, Ordering::SeqCst);
        (Self(activity), number)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let idle = {
            let mut s = self.0.lock();
            s.inflight -= 1;
            if s.inflight == 0 {
                s.idle_since = Instant::now();
                s.head_started = None;
            }
            s.inflight == 0
        };
        if idle {
            if !self.0.h2.load(Ordering::SeqCst) {
                self.0.armed.store(true, Ordering::SeqCst);
            }
            // Chosen to make room while busy: it may go now.
            if self.0.evict.load(Ordering::SeqCst) {
                self.0.wake.notify_one();
            }
        }
    }
}

/// What the reaper and the connection's task need to know about it.
struct Activity {
    limits: Limits,
    slot: Slot,
    state: Mutex<ActivityState>,
    /// Set while idle and no byte of a next request has come: the socket wrapper then notes
    /// the first one.
    armed: AtomicBool,
    /// An HTTP/2 connection: frames (pings, settings) arrive while idle; only the idle
    /// timeout applies between requests.
    h2: AtomicBool,
    /// Chosen to make room at the cap.
    evict: AtomicBool,
    /// Any byte has come.
    read_any: AtomicBool,
    /// The last request (by its number) whose body was read to the end.
    body_read: AtomicU64,
    /// Wakes the connection's task: its deadline passed, it was chosen to make room at the
    /// cap, or shutdown began.
    wake: Notify,
}

struct ActivityState {
    inflight: usize,
    /// Requests received so far.
    served: u64,
    /// Since when nothing has been in flight (the accept, or the last response's end).
    idle_since: Instant,
    /// When the next request's first byte came, on a kept-alive connection.
    head_started: Option<Instant>,
}

impl Activity {
    fn new(limits: Limits, slot: Slot) -> Self {
        Self {
            limits,
            slot,
            state: Mutex::new(ActivityState {
                inflight: 0,
                served: 0,
                idle_since: Instant::now(),
                head_started: None,
            }),
            armed: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            evict: AtomicBool::new(false),
            read_any: AtomicBool::new(false),
            body_read: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the connection times out, unless a request starts first; `None` while one is in
    /// flight.
    fn deadline(&self) -> Option<Instant> {
        let limits = &self.limits;
        let s = self.lock();
        if s.inflight > 0 {
            return None;
        }
        Some(match s.head_started {
            _ if s.served == 0 => s.idle_since + limits.header_read,
            Some(t) => t + limits.header_read,
            None => s.idle_since + limits.idle,
        })
    }

    fn evictable(&self) -> bool {
        self.lock().inflight == 0
    }

    /// Bytes arrived on the socket.
    fn on_read(&self, bytes: &[u8]) {
        if !self.read_any.load(Ordering::Relaxed) {
            self.read_any.store(true, Ordering::Relaxed);
            // The HTTP/2 connection preface.
            if bytes.starts_with(b"PRI ") {
                self.h2.store(true, Ordering::SeqCst);
            }
        }
        if !self.armed.load(Ordering::Relaxed) || !self.armed.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut s = self.lock();
        if s.inflight == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
        }
    }
}

/// A client connection's (decrypted) stream that tells its [`Activity`] when bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_http2_from_http1() {
        assert_eq!(Protocol::of_first_bytes(H2_PREFACE), Protocol::Http2);
        assert_eq!(
            Protocol::of_first_bytes(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"),
            Protocol::Http1
        );
        // The start of the preface: it may yet be HTTP/2.
        assert_eq!(Protocol::of_first_bytes(b"PRI * HTTP/2"), Protocol::Unknown);
        assert_eq!(
            Protocol::of_first_bytes(b"POST /mcp HTTP/1.1"),
            Protocol::Http1
        );
        assert_eq!(Protocol::of_first_bytes(b""), Protocol::Unknown);
    }

    #[test]
    fn alpn_names_the_protocol() {
        assert_eq!(Protocol::of_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(Protocol::of_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::of_alpn(None), Protocol::Unknown);
    }

    #[test]
    fn the_derived_cap_leaves_room_for_upstreams_and_the_process() {
        assert_eq!(derived_cap(1024, 10), (1024 - 64 - 10 - 16) / 2);
        assert_eq!(derived_cap(50, 10), 1);
        assert_eq!(derived_cap(1_048_576, 10), (1_048_576 - 90) / 2);
    }
}
