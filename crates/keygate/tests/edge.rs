//! The production edge: HTTPS (MCP over HTTP/1.1 and HTTP/2, certificate reload, `__Host-`
//! cookies), the admin listener, and shutdown (open event streams end cleanly; the real binary
//! on SIGTERM). The TLS handshake timeout is an attack test, in `security/sockets.rs`.
//!
//! The listener is the same on either database, so these run on SQLite only (the binary's
//! shutdown test included: its trace queue flushes into whichever store it has).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use keygate_core::config::Config;
use keygate_test_support::fake_upstream::{FakeUpstream, SESSION_ID};
use keygate_test_support::mcp::rpc;
use keygate_test_support::tls::{CertFiles, TestCa};
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, TestGateway};
use reqwest::Version;
use serde_json::{Value, json};

/// TLS on with `files`; the public URL on the loopback address the certificate names.
fn with_tls(config: &mut Config, files: &CertFiles) {
    config.tls.cert_file = Some(files.cert.display().to_string());
    config.tls.key_file = Some(files.key.display().to_string());
    let port = config.listen.expect("bound").port();
    config.public_url = Some(format!("https://127.0.0.1:{port}").parse().unwrap());
}

/// The `data:` payloads of an SSE body, as JSON.
fn sse_data(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

/// Reads a GET event stream until `done` holds for what came so far (5 s at most).
async fn read_until(resp: reqwest::Response, done: impl Fn(&str) -> bool) -> String {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    while !done(&buf) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream is open")
            .expect("a chunk");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    buf
}

/// An MCP session over HTTPS, negotiated as `version` by ALPN: pass-through (initialize, a
/// streamed tool call, the GET stream) and the aggregated endpoint (initialize, tools/list, a
/// routed streamed call, the merged GET stream).
async fn mcp_session_over_https(version: Version) {
    let ca = TestCa::new();
    let files = ca.issue("gateway", "keygate");
    // ALPN: offered h2 and http/1.1, the gateway picks h2; offered http/1.1 alone, that.
    let client = if version == Version::HTTP_11 {
        ca.client().http1_only()
    } else {
        ca.client()
    };
    let w = McpWorld::start_with_client(
        Backend::Sqlite,
        AppClient::Public,
        |c| with_tls(c, &files),
        client,
    )
    .await;
    assert!(w.app_url.starts_with("https://"), "{}", w.app_url);
    let up = FakeUpstream::named("alpha").await;
    let (_, slug) = w.integration(json!({"name": "Alpha", "url": up.url})).await;
    let alice = w.token(w.alice).await;
    let post = |url: String, session: Option<String>, body: Value| {
        let mut req =
            w.gw.http
                .post(url)
                .bearer_auth(&alice)
                .header("accept", "application/json, text/event-stream")
                .json(&body);
        if let Some(s) = session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-06-18");
        }
        req.send()
    };
    let init = rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "t", "version": "1"}}),
    );

    // Pass-through.
    let direct = format!("{}/{slug}", w.app_url);
    let resp = post(direct.clone(), None, init.clone()).await.unwrap();
    assert_eq!(resp.version(), version);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["mcp-session-id"], SESSION_ID);
    let resp = post(
        direct.clone(),
        Some(SESSION_ID.into()),
        rpc(2, "tools/call", json!({"name": "slow"})),
    )
    .await
    .unwrap();
    assert_eq!(resp.version(), version);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2]["id"], 2);
    let resp =
        w.gw.http
            .get(&direct)
            .bearer_auth(&alice)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", SESSION_ID)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.version(), version);
    let text = read_until(resp, |b| !sse_data(b).is_empty()).await;
    assert_eq!(sse_data(&text)[0]["params"]["seq"], 1, "{text}");

    // Aggregated.
    let resp = post(w.app_url.clone(), None, init).await.unwrap();
    assert_eq!(resp.version(), version);
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let tools: Value = post(
        w.app_url.clone(),
        Some(session.clone()),
        rpc(2, "tools/list", json!({})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"alpha_slow"), "{tools}");
    let resp = post(
        w.app_url.clone(),
        Some(session.clone()),
        rpc(3, "tools/call", json!({"name": "alpha_slow"})),
    )
    .await
    .unwrap();
    assert_eq!(resp.version(), version);
    let text = resp.text().await.unwrap();
    let answer = sse_data(&text)
        .into_iter()
        .chain(serde_json::from_str::<Value>(&text).ok())
        .find(|m| m["id"] == 3)
        .unwrap_or_else(|| panic!("no answer to id 3: {text}"));
    assert!(answer["result"].is_object(), "{answer}");
    let resp =
        w.gw.http
            .get(&w.app_url)
            .bearer_auth(&alice)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.version(), version);
    assert_eq!(resp.status(), 200);
    let text = read_until(resp, |b| !sse_data(b).is_empty()).await;
    assert!(sse_data(&text)[0]["params"]["seq"].is_number(), "{text}");
    w.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_session_works_over_https_with_http1() {
    mcp_session_over_https(Version::HTTP_11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_session_works_over_https_with_h2() {
    mcp_session_over_https(Version::HTTP_2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_an_open_h2_event_stream_cleanly() {
    let ca = TestCa::new();
    let files = ca.issue("gateway", "keygate");
    let w = McpWorld::start_with_client(
        Backend::Sqlite,
        AppClient::Public,
        |c| with_tls(c, &files),
        ca.client(),
    )
    .await;
    let up = FakeUpstream::start().await;
    let (_, slug) = w
        .integration(json!({"name": "Stream", "url": up.url}))
        .await;
    let alice = w.token(w.alice).await;
    let resp =
        w.gw.http
            .get(format!("{}/{slug}", w.app_url))
            .bearer_auth(&alice)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    while sse_data(&seen).len() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the first events")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let start = Instant::now();
    let (stopped, rest) = tokio::join!(w.gw.stop(), async move {
        let mut rest = String::new();
        while let Some(chunk) = stream.next().await {
            rest.push_str(&String::from_utf8_lossy(&chunk.expect("a clean end")));
        }
        rest
    });
    let () = stopped;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the stream held shutdown for {:?}",
        start.elapsed()
    );
    assert!(
        rest.is_empty() || rest.ends_with("\n\n"),
        "the stream ended between events: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_browser_cookies_are_host_prefixed_and_secure() {
    let ca = TestCa::new();
    let files = ca.issue("gateway", "keygate");
    let w = McpWorld::start_with_client(
        Backend::Sqlite,
        AppClient::Public,
        |c| with_tls(c, &files),
        ca.client(),
    )
    .await;
    let browser = ca
        .client()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut authorize = url::Url::parse(&format!("{}/oauth2/authorize", w.gw.url)).unwrap();
    authorize.query_pairs_mut().extend_pairs([
        ("response_type", "code"),
        ("client_id", &format!("app_{}", w.app)),
        ("redirect_uri", "http://127.0.0.1/cb"),
        // RFC 7636's example challenge: any well-formed S256 challenge will do here.
        (
            "code_challenge",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ),
        ("code_challenge_method", "S256"),
        ("state", "s"),
        ("resource", &w.app_url),
    ]);
    let resp = browser.get(authorize.as_str()).send().await.unwrap();
    assert_eq!(resp.status(), 303, "{}", resp.text().await.unwrap());
    let login = w.absolute(&keygate_test_support::browser::location(&resp));
    let resp = browser.get(&login).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cookies: Vec<&str> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(!cookies.is_empty(), "the sign-in page sets its CSRF cookie");
    for cookie in cookies {
        assert!(
            cookie.starts_with("__Host-") && cookie.contains("; Secure"),
            "{cookie}"
        );
    }
    w.gw.stop().await;
}

/// The certificate a fresh connection is shown, and whether the request on it succeeded.
async fn presented(client: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let resp = client.get(url).send().await.unwrap();
    let der = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info")
        .to_vec();
    (resp.status().as_u16(), der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_reaches_new_handshakes_while_open_connections_keep_working() {
    let ca = TestCa::new();
    let first = ca.issue("gateway", "first");
    let gw =
        TestGateway::start_with_client(Backend::Sqlite, |c| with_tls(c, &first), ca.client()).await;
    let url = format!("{}/healthz", gw.url);
    // One connection opened before the swap, kept alive in this client's pool.
    let kept = ca.client().tls_info(true).build().unwrap();
    assert_eq!(presented(&kept, &url).await, (200, first.der.clone()));

    let second = ca.issue("gateway", "second");
    assert_eq!(second.cert, first.cert, "the same files, replaced");
    let replaced = Instant::now();
    loop {
        let fresh = ca.client().tls_info(true).build().unwrap();
        let (status, der) = presented(&fresh, &url).await;
        assert_eq!(status, 200);
        if der == second.der {
            break;
        }
        assert_eq!(der, first.der);
        assert!(
            replaced.elapsed() < Duration::from_secs(10),
            "new handshakes still see the old certificate after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection opened before the swap still serves, with the session it made.
    assert_eq!(presented(&kept, &url).await, (200, first.der.clone()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_takes_health_readiness_and_metrics_off_the_public_port() {
    let gw = TestGateway::start_with(Backend::Sqlite, |c| {
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin = gw.admin_url.clone().expect("an admin listener");
    let status = |url: String| {
        let http = gw.http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(status(format!("{admin}{path}")).await, 200, "admin {path}");
        assert_eq!(
            status(format!("{}{path}", gw.url)).await,
            404,
            "public {path}"
        );
    }
    let metadata = "/.well-known/oauth-authorization-server";
    assert_eq!(status(format!("{}{metadata}", gw.url)).await, 200);
    assert_eq!(status(format!("{admin}{metadata}")).await, 404);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http2_from_the_first_byte_is_served_beside_http1() {
    let gw = TestGateway::start(Backend::Sqlite).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(format!("{}/healthz", gw.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    let resp = reqwest::get(format!("{}/healthz", gw.url)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_11);
    gw.stop().await;
}

/// The listener tells the protocols apart by a connection's first bytes; a first byte that
/// could begin either (`P`: `PRI` or `PUT`), sent alone, still gets its request answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_first_byte_comes_alone_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start(Backend::Sqlite).await;
    let mut sock = tokio::net::TcpStream::connect(gw.local_addr).await.unwrap();
    sock.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sock.write_all(b"UT /healthz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut answer))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_failing_check() {
    let gw = TestGateway::start_with(Backend::Sqlite, |c| {
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let readyz = format!("{}/readyz", gw.admin_url.clone().unwrap());
    let resp = gw.http.get(&readyz).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["failing"], json!([]), "{body}");

    gw.store.db().close().await;
    let resp = gw.http.get(&readyz).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["failing"], json!(["database"]), "{body}");
    assert_eq!(body["checks"]["shutdown"], "ok", "{body}");
    assert!(
        body["checks"]["database"].as_str().unwrap() != "ok",
        "{body}"
    );
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `keygate serve` on `port` over a temporary SQLite database in `dir`, configured through
/// the environment as a deployment would.
fn serve_command(dir: &std::path::Path, key: &str, port: u16) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
    command
        .arg("serve")
        .env("KEYGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEYGATE_DATA_DIR", dir)
        .env("KEYGATE_VAULT_KEY", key)
        .env("KEYGATE_OUTBOUND_ALLOWED_PRIVATE_HOSTS", "127.0.0.1")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Until `readyz` answers 200 (30 s at most).
async fn wait_ready(http: &reqwest::Client, readyz: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = http.get(readyz).send().await
            && resp.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "the gateway did not get ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real binary on a free port over a temporary SQLite database, set up through that
/// database as the CLI would: an application with one integration (a fake upstream), a
/// management token, and an MCP token for one of its users.
struct Binary {
    child: tokio::process::Child,
    url: String,
    store: keygate_store::Store,
    org: keygate_core::OrgId,
    admin: String,
    /// `{url}/apps/{app}/mcp/{slug}`.
    mcp: String,
    mcp_token: String,
    _upstream: FakeUpstream,
    _dir: tempfile::TempDir,
}

impl Binary {
    async fn start() -> Self {
        use keygate_store::{Kek, Store, Vault};
        let dir = tempfile::tempdir().unwrap();
        let key = Kek::generate_base64();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        // Probes on the admin port, as a deployment has them.
        let admin = format!("127.0.0.1:{}", free_port());
        let child = serve_command(dir.path(), &key, port)
            .env("KEYGATE_ADMIN_LISTEN", &admin)
            .spawn()
            .expect("spawn keygate serve");
        wait_ready(&reqwest::Client::new(), &format!("http://{admin}/readyz")).await;
        let http = reqwest::Client::new();
        let mut config = Config {
            data_dir: Some(dir.path().display().to_string()),
            ..Default::default()
        };
        config.vault.key = Some(key.clone());
        let db = keygate::app::open_db(&config).await.unwrap();
        let vault = Vault::unlock(&db, &Kek::from_base64(&key).unwrap())
            .await
            .unwrap();
        let store = Store::new(db, vault);
        let org = store.default_organization().await.unwrap().id;
        let secret = keygate_auth::secret::generate_client_secret();
        let hash = keygate_auth::secret::hash_secret(&secret);
        let sa = store
            .create_service_account(org, "ops", None, None, &hash)
            .await
            .unwrap();
        let token: Value = http
            .post(format!("{url}/oauth2/token"))
            .basic_auth(sa.id.client_id(), Some(&secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "management:all"),
                ("audience", &format!("{url}/api/v1")),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let admin = token["access_token"].as_str().unwrap().to_owned();
        let api = |path: &str, body: Option<Value>| {
            let mut req = http.post(format!("{url}/api/v1{path}")).bearer_auth(&admin);
            if let Some(b) = body {
                req = req.json(&b);
            }
            async move { req.send().await.unwrap().json::<Value>().await.ok() }
        };
        let app = api(
            "/applications",
            Some(json!({"name": "edge", "oauth":
            {"type": "public", "redirectUris": ["http://127.0.0.1/cb"]}})),
        )
        .await
        .unwrap();
        let app: keygate_core::ApplicationId =
            app["application"]["id"].as_str().unwrap().parse().unwrap();
        let upstream = FakeUpstream::start().await;
        let i = api(
            "/integrations",
            Some(json!({"name": "Fake", "url": upstream.url})),
        )
        .await
        .unwrap();
        let (integration, slug) = (
            i["integration"]["id"].as_str().unwrap(),
            i["integration"]["slug"].as_str().unwrap(),
        );
        api(
            &format!("/applications/{app}/integrations/{integration}"),
            None,
        )
        .await;
        let user = store
            .create_user(
                org,
                "edge@example.com",
                keygate_core::model::Role::Member,
                None,
            )
            .await
            .unwrap()
            .id;
        let session = store
            .create_agent_session(
                org,
                keygate_store::NewAgentSession {
                    application_id: app,
                    user_id: Some(user),
                    agent_id: Some(app.client_id()),
                    name: None,
                    hostname: None,
                    user_agent: None,
                    client_info: None,
                    token_expires_at: None,
                },
            )
            .await
            .unwrap();
        let keys = keygate_auth::KeyRing::load(store.clone(), url.clone())
            .await
            .unwrap();
        let now = keygate_core::Timestamp::now().seconds();
        let resource = format!("{url}/apps/{app}/mcp");
        let mcp_token = keys.sign(&keygate_auth::Claims {
            iss: url.clone(),
            sub: user.to_string(),
            aud: resource.clone(),
            client_id: app.client_id(),
            scope: String::new(),
            org,
            sid: Some(session.id),
            iat: now,
            exp: now + 600,
            jti: uuid::Uuid::new_v4().to_string(),
        });
        Self {
            child,
            mcp: format!("{resource}/{slug}"),
            url,
            store,
            org,
            admin,
            mcp_token,
            _upstream: upstream,
            _dir: dir,
        }
    }

    /// A tool call through the pass-through endpoint, on `http`'s kept-alive connection.
    async fn call(&self, http: &reqwest::Client, id: i64, tool: &str) -> reqwest::Response {
        http.post(&self.mcp)
            .bearer_auth(&self.mcp_token)
            .header("accept", "application/json, text/event-stream")
            .json(&rpc(id, "tools/call", json!({"name": tool})))
            .send()
            .await
            .unwrap()
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; how long it took.
    async fn exit(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the gateway still runs {within:?} after SIGTERM"))
            .unwrap();
        assert!(status.success(), "{status:?}");
        start.elapsed()
    }

    /// The `tools/call` events in the database.
    async fn stored_calls(&self) -> usize {
        self.store
            .trace_events_after(
                self.org,
                &keygate_store::EventFilter::default(),
                None,
                10_000,
            )
            .await
            .unwrap()
            .iter()
            .filter(|e| e.event_type == "tools/call")
            .count()
    }
}

/// Reads an open stream to its end; whether it ended cleanly (no error) within 5 s.
async fn ends_cleanly(resp: reqwest::Response) -> bool {
    let mut stream = resp.bytes_stream();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = stream.next().await {
            chunk?;
        }
        Ok::<_, reqwest::Error>(())
    })
    .await;
    matches!(read, Ok(Ok(())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_event_streams_and_exits_within_5s_keeping_every_event() {
    let mut gw = Binary::start().await;
    let http = reqwest::Client::new();
    for id in 0..20 {
        let resp = gw.call(&http, id, "echo").await;
        assert_eq!(resp.status(), 200);
        assert!(resp.text().await.unwrap().contains("result"));
    }
    // The live tail and an MCP GET stream, both open and idle after their first bytes.
    let tail = http
        .get(format!("{}/api/v1/events/stream", gw.url))
        .bearer_auth(&gw.admin)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    let mcp_stream = http
        .get(&gw.mcp)
        .bearer_auth(&gw.mcp_token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(mcp_stream.status(), 200);

    gw.sigterm();
    let (tail_clean, mcp_clean) = tokio::join!(ends_cleanly(tail), ends_cleanly(mcp_stream));
    assert!(tail_clean, "the live tail ends cleanly");
    assert!(mcp_clean, "the MCP GET stream ends cleanly");
    let took = gw.exit(Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    assert_eq!(
        gw.stored_calls().await,
        20,
        "every answered call has its event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_a_request_in_flight_on_a_kept_alive_connection() {
    let mut gw = Binary::start().await;
    let http = reqwest::Client::new();
    // The connection is kept alive after a first call; the second (streamed over ~600 ms) is
    // in flight on it when the signal comes.
    assert_eq!(gw.call(&http, 1, "echo").await.status(), 200);
    let slow = gw.call(&http, 2, "slow").await;
    assert_eq!(slow.status(), 200);
    gw.sigterm();
    let text = slow.text().await.expect("the whole streamed answer");
    let events = sse_data(&text);
    assert_eq!(events.len(), 3, "{text}");
    assert_eq!(events[2]["id"], 2, "{text}");
    gw.exit(Duration::from_secs(5)).await;
    assert_eq!(gw.stored_calls().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_https_and_an_admin_port_from_the_environment() {
    let ca = TestCa::new();
    let files = ca.issue("gateway", "keygate");
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let _child = serve_command(dir.path(), &keygate_store::Kek::generate_base64(), port)
        .env("KEYGATE_TLS_CERT_FILE", &files.cert)
        .env("KEYGATE_TLS_KEY_FILE", &files.key)
        .env("KEYGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .spawn()
        .expect("spawn keygate serve");
    let http = ca.client().build().unwrap();
    wait_ready(&http, &format!("http://127.0.0.1:{admin}/readyz")).await;
    let url = format!("https://127.0.0.1:{port}");
    let resp = http
        .get(format!("{url}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let metadata: Value = resp.json().await.unwrap();
    assert_eq!(metadata["issuer"], url, "the public URL defaults to https");
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP gets no answer on the TLS port");
}
