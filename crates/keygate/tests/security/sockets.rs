//! Slow and idle sockets: a client that sends its headers a byte at a time, one that sends
//! nothing (in plain HTTP or in a TLS handshake), an idle keep-alive connection, a flood of
//! idle sockets past the connection cap, and a burst of short (some aborted) connections that
//! must leave no descriptor behind.

use std::time::{Duration, Instant};

use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, TestGateway};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits (at most `limit`) for the server to close `sock`: EOF or a reset. Anything the server
/// sent before closing is returned.
async fn closed_within(sock: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn gateway(tweak: impl FnOnce(&mut keygate_core::config::Config)) -> TestGateway {
    TestGateway::start_with(Backend::Sqlite, tweak).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_after_the_header_timeout() {
    let gw = gateway(|c| c.server.header_read_timeout_secs = Some(1)).await;
    let mut sock = TcpStream::connect(gw.local_addr).await.unwrap();
    let (mut rd, mut wr) = sock.split();
    let started = Instant::now();
    let trickle = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let closed = async {
        let mut buf = [0u8; 256];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = closed => {}
        _ = trickle => panic!("a client trickling its headers was never cut off"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut after {:?}",
        started.elapsed()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let gw = gateway(|c| c.server.header_read_timeout_secs = Some(1)).await;
    let mut sock = TcpStream::connect(gw.local_addr).await.unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut sock, Duration::from_secs(4))
            .await
            .is_some(),
        "a connection that sends nothing stays open"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let gw = gateway(|c| {
        c.server.header_read_timeout_secs = Some(30);
        c.server.idle_timeout_secs = Some(1);
    })
    .await;
    let mut sock = TcpStream::connect(gw.local_addr).await.unwrap();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = sock.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    assert!(
        closed_within(&mut sock, Duration::from_secs(4))
            .await
            .is_some(),
        "an idle keep-alive connection stays open"
    );
    assert!(idle_from.elapsed() >= Duration::from_millis(900));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_connection_cap_is_refused_fast_and_health_answers() {
    let gw = gateway(|c| {
        c.server.max_connections = Some(20);
        c.server.header_read_timeout_secs = Some(30);
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(gw.local_addr).await.unwrap());
    }
    // Past the cap, room is made at once: idle sockets are closed, the oldest first.
    let mut refused = 0;
    for sock in idle.iter_mut().take(180) {
        if closed_within(sock, Duration::from_millis(200))
            .await
            .is_some()
        {
            refused += 1;
        }
    }
    assert!(
        refused >= 175,
        "only {refused} of 180 excess idle sockets were closed"
    );
    let started = Instant::now();
    let health = reqwest::Client::new()
        .get(format!("{}/healthz", gw.url))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .expect("/healthz answers while the cap is reached");
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(idle);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_slot_busy_health_still_answers_and_the_rest_is_refused() {
    let gw = gateway(|c| c.server.max_connections = Some(2)).await;
    // Two requests in flight: their bodies never finish arriving.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut sock = TcpStream::connect(gw.local_addr).await.unwrap();
        let head = "POST /oauth2/token HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ngrant_type=";
        sock.write_all(head.as_bytes()).await.unwrap();
        busy.push(sock);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health checks get the reserve");
    let other = client
        .get(format!("{}/api/v1/applications", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 503, "nothing else does");
    // Past the reserve, a socket is answered 503 and closed without waiting for a request.
    let mut reserve = Vec::new();
    for _ in 0..16 {
        reserve.push(TcpStream::connect(gw.local_addr).await.unwrap());
    }
    let mut refused = TcpStream::connect(gw.local_addr).await.unwrap();
    let seen = closed_within(&mut refused, Duration::from_millis(500)).await;
    assert!(seen.expect("refused at once").starts_with("HTTP/1.1 503"));
    drop((busy, reserve));
    gw.stop().await;
}

/// TCP sockets in the kernel's table whose local or remote port is one of `ports`:
/// `(inode, established)` for each. Tests run in parallel in this process, so descriptors are
/// told apart by the ports of the gateway and upstream under test.
fn tcp_sockets(ports: &[u16]) -> Vec<(u64, bool)> {
    let mut found = Vec::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let port = |c: &str| u16::from_str_radix(c.rsplit(':').next().unwrap(), 16).unwrap();
            let (local, remote) = (port(cols[1]), port(cols[2]));
            if ports.contains(&local) || ports.contains(&remote) {
                found.push((cols[9].parse().unwrap(), cols[3] == "01"));
            }
        }
    }
    found
}

/// This process's open descriptors (`/proc/self/fd`) that are TCP sockets on `ports`.
fn open_fds(ports: &[u16]) -> usize {
    let inodes: Vec<u64> = tcp_sockets(ports).into_iter().map(|(i, _)| i).collect();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .filter(|i| inodes.contains(i))
        .count()
}

/// Established TCP connections from this process to `port`: the gateway's pooled upstream
/// sockets (the upstream's own ends have `port` as their local port).
pub fn sockets_to(port: u16) -> usize {
    let mut n = 0;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let remote_port = cols[2].rsplit(':').next().unwrap();
            if cols[3] == "01" && u16::from_str_radix(remote_port, 16) == Ok(port) {
                n += 1;
            }
        }
    }
    n
}

/// Every open descriptor of this process (meaningful when the test runs alone).
fn all_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `count` short connections, `concurrency` at a time, each one MCP request through the
/// pass-through route with `Connection: close`; every tenth is abandoned mid-body.
async fn burst(w: &McpWorld, slug: &str, count: usize, concurrency: usize) {
    let token = w.token(w.alice).await;
    let addr = w.gw.local_addr;
    let path = format!("/apps/{}/mcp/{slug}", w.app);
    let body =
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}})
            .to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let request = std::sync::Arc::new(request);
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for i in 0..count {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let mut sock = TcpStream::connect(addr).await.unwrap();
            if i % 10 == 0 {
                let cut = request.len() - 20;
                let _ = sock.write_all(&request.as_bytes()[..cut]).await;
                return; // dropped mid-request
            }
            sock.write_all(request.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await;
            assert!(
                out.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Waits (at most 10 s) for `check` to hold.
async fn eventually(check: impl Fn() -> bool) -> bool {
    for _ in 0..100 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

async fn world() -> McpWorld {
    McpWorld::start(Backend::Sqlite, AppClient::Public, |c| {
        c.proxy.upstream_idle_timeout_secs = Some(1);
        c.server.header_read_timeout_secs = Some(2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_stay_flat_after_a_burst_of_short_connections() {
    let w = world().await;
    let up = FakeUpstream::start().await;
    let port = url::Url::parse(&up.url).unwrap().port().unwrap();
    let (_, slug) = w.integration(json!({"name": "Up", "url": up.url})).await;
    burst(&w, &slug, 20, 10).await; // warm every lazily built cache and pool
    let ports = [w.gw.local_addr.port(), port];
    assert!(eventually(|| sockets_to(port) == 0).await);
    let fds = open_fds(&ports);
    burst(&w, &slug, 600, 30).await;
    assert!(
        eventually(|| sockets_to(port) == 0).await,
        "{} upstream sockets left open",
        sockets_to(port)
    );
    assert!(
        eventually(|| open_fds(&ports) <= fds).await,
        "{} descriptors before, {} after",
        fds,
        open_fds(&ports)
    );
    w.gw.stop().await;
}

/// The issue's full run: 5,000 short connections, three times. The process's RSS also holds
/// the test's own clients and the allocator's arenas, so memory is judged by the growth of
/// the later runs, once the first has brought everything to its working size; trace recording
/// is off (SQLite's page cache grows with the trace table, up to its bound) and the fake
/// upstream's request log is emptied after each run. Run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn descriptors_and_memory_stay_flat_after_five_thousand_connections() {
    let w = McpWorld::start(Backend::Sqlite, AppClient::Public, |c| {
        c.proxy.upstream_idle_timeout_secs = Some(1);
        c.traces.enabled = Some(false);
    })
    .await;
    let up = FakeUpstream::start().await;
    let port = url::Url::parse(&up.url).unwrap().port().unwrap();
    let (_, slug) = w.integration(json!({"name": "Up", "url": up.url})).await;
    let ports = [w.gw.local_addr.port(), port];
    burst(&w, &slug, 20, 10).await;
    assert!(eventually(|| sockets_to(port) == 0).await);
    let (fds, all) = (open_fds(&ports), all_fds());
    let mut rss = vec![rss_kib()];
    for _ in 0..3 {
        burst(&w, &slug, 5_000, 50).await;
        up.clear_requests(); // the fake's log of every request, not the gateway's memory
        assert!(eventually(|| sockets_to(port) == 0).await);
        assert!(eventually(|| open_fds(&ports) <= fds).await);
        rss.push(rss_kib());
    }
    eprintln!(
        "descriptors {all} → {} ({fds} → {} on the test's ports), RSS KiB after each run {rss:?}",
        all_fds(),
        open_fds(&ports)
    );
    // Measured once (glibc malloc in this process): [27800, 43504, 44196, 49116] KiB, i.e.
    // 16 MiB for the first run (the test's clients, arenas), 5.6 MiB over the next two.
    let later = rss[3].saturating_sub(rss[1]);
    assert!(
        later < 8 * 1024,
        "RSS grew {later} KiB over the second and third runs"
    );
    w.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_in_the_tls_handshake_is_cut_at_its_timeout() {
    let ca = keygate_test_support::tls::TestCa::new();
    let files = ca.issue("gateway", "keygate");
    let gw = TestGateway::start_with_client(
        Backend::Sqlite,
        |c| {
            c.tls.cert_file = Some(files.cert.display().to_string());
            c.tls.key_file = Some(files.key.display().to_string());
            c.tls.handshake_timeout_secs = Some(1);
            let port = c.listen.expect("bound").port();
            c.public_url = Some(format!("https://127.0.0.1:{port}").parse().unwrap());
        },
        ca.client(),
    )
    .await;
    let mut sock = TcpStream::connect(gw.local_addr).await.unwrap();
    let started = Instant::now();
    let sent = closed_within(&mut sock, Duration::from_secs(5)).await;
    assert_eq!(sent.as_deref(), Some(""), "closed, with nothing sent");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    gw.stop().await;
}
