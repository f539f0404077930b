//! The API-backed commands of the real binary against a real gateway: `keygate login` (as a
//! service account, and in a scripted browser), the resource commands (`apps`,
//! `integrations`, `connections`, `sessions`, `service-accounts`, `traces`) as tables and as
//! JSON, `keygate token --app`, and the errors they exit with. Every process runs with a
//! cleared environment and a temporary `HOME`, where its credentials file lives.

use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};
use std::time::Duration;

use keygate_test_support::browser::{browser, field, location};
use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::mcp::{passthrough, rpc};
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, TestGateway};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The binary, pointed at one gateway, with its own home directory.
struct Cli {
    home: tempfile::TempDir,
    url: String,
    /// A management token passed as KEYGATE_TOKEN, instead of a stored login.
    token: Option<String>,
}

impl Cli {
    fn new(gw: &TestGateway) -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
            url: gw.url.clone(),
            token: None,
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
        command
            .args(args)
            .env_clear()
            .env("HOME", self.home.path())
            .env("KEYGATE_URL", &self.url)
            .env("KEYGATE_DATA_DIR", self.home.path().join("data"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(token) = &self.token {
            command.env("KEYGATE_TOKEN", token);
        }
        command
    }

    async fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        child.wait_with_output().await.unwrap()
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().await.unwrap()
    }

    /// Standard output of a command that must succeed.
    async fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.run(args).await)
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        serde_json::from_str(&self.ok(&with_json).await).unwrap()
    }

    /// Signs in as a new service account of the gateway's organization.
    async fn login_service_account(&self, gw: &TestGateway) {
        let (id, secret) = gw.service_account_in(gw.org, "cli").await;
        let out = self
            .command(&["login", "--client-id", &id])
            .env("KEYGATE_CLIENT_SECRET", &secret)
            .output()
            .await
            .unwrap();
        succeeded(&["login"], out);
    }

    fn credentials_file(&self) -> std::path::PathBuf {
        self.home.path().join(".config/keygate/credentials.json")
    }
}

fn succeeded(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "keygate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn gateway() -> TestGateway {
    TestGateway::start_with(Backend::Sqlite, |c| {
        c.outbound.allowed_private_hosts = vec!["127.0.0.1".into()];
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_login_is_stored_privately_and_used_by_later_commands() {
    let gw = gateway().await;
    let cli = Cli::new(&gw);
    cli.login_service_account(&gw).await;
    let mode = std::fs::metadata(cli.credentials_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let apps = cli.json(&["apps", "list"]).await;
    assert_eq!(apps, json!({"items": []}));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_login_a_command_says_how_to_sign_in() {
    let gw = gateway().await;
    let cli = Cli::new(&gw);
    let out = cli.run(&["apps", "list"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keygate login"), "{err}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_error_exits_non_zero_with_the_apis_message() {
    let gw = gateway().await;
    let cli = Cli::new(&gw);
    cli.login_service_account(&gw).await;
    let missing = "0190a0a0-0000-7000-8000-000000000000";
    let out = cli.run(&["apps", "get", missing]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("404 Not Found: Application not found"),
        "{err}"
    );
    let out = cli.run(&["apps", "create", "--name", " "]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("name: must not be empty"),
        "{err}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_are_created_shown_renamed_and_archived_by_name() {
    let gw = gateway().await;
    let cli = Cli::new(&gw);
    cli.login_service_account(&gw).await;
    let created = cli.json(&["apps", "create", "--name", "Desk"]).await;
    let id = created["application"]["id"].as_str().unwrap().to_owned();
    let table = cli.ok(&["apps", "list"]).await;
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("NAME"),
        "{table}"
    );
    assert!(table.contains(&id) && table.contains("Desk"), "{table}");
    let shown = cli.ok(&["apps", "get", "Desk"]).await;
    assert!(
        shown.contains(&format!("{}/apps/{id}/mcp", gw.url)),
        "{shown}"
    );
    let renamed = cli
        .json(&["apps", "update", "Desk", "--name", "Desk 2"])
        .await;
    assert_eq!(renamed["application"]["name"], "Desk 2");
    cli.ok(&["apps", "delete", "Desk 2"]).await;
    let got = cli.json(&["apps", "get", &id]).await;
    assert!(got["application"]["archivedAt"].is_string(), "{got}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confidential_apps_secret_is_shown_at_creation_and_rotation() {
    let gw = gateway().await;
    let cli = Cli::new(&gw);
    cli.login_service_account(&gw).await;
    let created = cli
        .ok(&[
            "apps",
            "create",
            "--name",
            "Server",
            "--type",
            "confidential",
        ])
        .await;
    assert!(created.contains("client secret"), "{created}");
    let rotated = cli.json(&["apps", "rotate-secret", "Server"]).await;
    let secret = rotated["oauth"]["clientSecret"].as_str().unwrap();
    assert!(!created.contains(secret), "a new secret");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_are_created_validated_and_attached_by_slug() {
    let gw = gateway().await;
    let up = FakeUpstream::start().await;
    let cli = Cli::new(&gw);
    cli.login_service_account(&gw).await;
    let created = cli
        .json(&[
            "integrations",
            "create",
            "--name",
            "Fake",
            "--server-url",
            &up.url,
        ])
        .await;
    assert_eq!(created["integration"]["slug"], "fake");
    let validated = cli.ok(&["integrations", "validate", "fake"]).await;
    assert!(validated.contains("valid"), "{validated}");
    let table = cli.ok(&["integrations", "list"]).await;
    assert!(table.contains("fake") && table.contains("valid"), "{table}");
    cli.ok(&["apps", "create", "--name", "Desk"]).await;
    cli.ok(&["apps", "attach", "Desk", "fake"]).await;
    let app = cli.json(&["apps", "get", "Desk"]).await;
    assert_eq!(app["application"]["integrations"][0]["slug"], "fake");
    cli.ok(&["apps", "detach", "Desk", "fake"]).await;
    let app = cli.json(&["apps", "get", "Desk"]).await;
    assert_eq!(app["application"]["integrations"], json!([]));
    cli.ok(&["integrations", "delete", "fake"]).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_token_is_read_from_stdin_and_never_printed() {
    let gw = gateway().await;
    let cli = Cli::new(&gw);
    cli.login_service_account(&gw).await;
    let args = [
        "integrations",
        "create",
        "--name",
        "GitHub",
        "--server-url",
        "https://mcp.github.example/mcp",
        "--auth-mode",
        "server_token",
        "--server-token-stdin",
    ];
    let out = cli.run_with_stdin(&args, "ghp_cli_secret\n").await;
    let shown = succeeded(&args, out);
    assert!(
        shown.contains("server token") && shown.contains("true"),
        "{shown}"
    );
    assert!(!shown.contains("ghp_cli_secret"), "{shown}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_connects_and_disconnects_a_personal_token() {
    let w = McpWorld::start(Backend::Sqlite, AppClient::Public, |_| {}).await;
    let (_, slug) = w
        .integration(
            json!({"name": "Notes", "url": "https://notes.example/mcp", "authMode": "user_token"}),
        )
        .await;
    let mut cli = Cli::new(&w.gw);
    cli.token = Some(w.gw.management_token(w.alice).await);
    let args = ["connections", "create", &slug, "--token-stdin", "--json"];
    let out = cli.run_with_stdin(&args, "notes-token\n").await;
    let created: Value = serde_json::from_str(&succeeded(&args, out)).unwrap();
    assert_eq!(created["connection"]["status"], "connected");
    let table = cli.ok(&["connections", "list"]).await;
    let row = table
        .lines()
        .find(|l| l.starts_with(&slug))
        .unwrap_or_default();
    assert!(row.split_whitespace().any(|w| w == "connected"), "{table}");
    cli.ok(&["connections", "delete", &slug]).await;
    let got = cli.json(&["connections", "get", &slug]).await;
    assert_eq!(got["connection"]["status"], "disconnected");
    w.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applications_sessions_are_listed_and_revoked() {
    let w = McpWorld::start(Backend::Sqlite, AppClient::Public, |_| {}).await;
    let token = w.token(w.alice).await;
    let cli = Cli::new(&w.gw);
    cli.login_service_account(&w.gw).await;
    let sessions = cli.json(&["sessions", "list", "Agents"]).await;
    let session = sessions["items"][0]["id"].as_str().unwrap().to_owned();
    let table = cli.ok(&["sessions", "list", "Agents"]).await;
    assert!(
        table.contains(&session) && table.contains("test agent"),
        "{table}"
    );
    let one = cli.json(&["sessions", "get", "Agents", &session]).await;
    assert_eq!(one["session"]["id"], session.as_str());
    let revoked = cli.ok(&["sessions", "revoke", "Agents"]).await;
    assert_eq!(revoked.trim(), "disconnected 1 session(s)");
    let resp =
        w.gw.http
            .post(&w.app_url)
            .bearer_auth(&token)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            .send()
            .await
            .unwrap();
    assert_eq!(
        resp.status(),
        401,
        "the revoked session's token no longer works"
    );
    w.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accounts_are_created_listed_rotated_and_revoked() {
    let gw = gateway().await;
    let cli = Cli::new(&gw);
    cli.login_service_account(&gw).await;
    let created = cli
        .json(&["service-accounts", "create", "--name", "deploy"])
        .await;
    let id = created["serviceAccount"]["id"].as_str().unwrap().to_owned();
    let client_id = created["credentials"]["clientId"].as_str().unwrap();
    let first = created["credentials"]["clientSecret"].as_str().unwrap();
    let table = cli.ok(&["service-accounts", "list"]).await;
    assert!(table.contains(&id) && table.contains("deploy"), "{table}");
    let rotated = cli.ok(&["service-accounts", "rotate-secret", &id]).await;
    assert!(
        rotated.contains("client secret") && !rotated.contains(first),
        "{rotated}"
    );
    assert_eq!(gw.client_credentials(client_id, first).await.0, 401);
    cli.ok(&["service-accounts", "delete", &id]).await;
    let got = cli.json(&["service-accounts", "get", &id]).await;
    assert!(got["serviceAccount"]["archivedAt"].is_string(), "{got}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_listed_shown_and_counted() {
    let w = McpWorld::start(Backend::Sqlite, AppClient::Public, |_| {}).await;
    let up = FakeUpstream::start().await;
    let (_, slug) = w.integration(json!({"name": "Fake", "url": up.url})).await;
    let token = w.token(w.alice).await;
    let call = rpc(1, "tools/call", json!({"name": "echo", "arguments": {}}));
    let resp = passthrough(&w, &slug, &token, &call).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cli = Cli::new(&w.gw);
    cli.login_service_account(&w.gw).await;
    let traces = loop {
        let traces = cli.json(&["traces", "list", "--app", "Agents"]).await;
        if traces["items"].as_array().is_some_and(|i| !i.is_empty()) {
            break traces;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let trace = traces["items"][0]["traceId"].as_str().unwrap().to_owned();
    let table = cli.ok(&["traces", "list"]).await;
    assert!(
        table.contains("alice@example.com") && table.contains("Agents"),
        "{table}"
    );
    let shown = cli.ok(&["traces", "get", &trace]).await;
    assert!(
        shown.contains("tools/call") && shown.contains("echo"),
        "{shown}"
    );
    let stats = cli.json(&["traces", "stats"]).await;
    assert_eq!(stats["totalEvents"], 1, "{stats}");
    w.gw.stop().await;
}

/// Follows a sign-in URL the CLI printed as a person would in `browser`: signs in as `email`
/// (unless this browser already is), approves, and lands on the CLI's loopback redirect.
async fn sign_in_at(
    w: &McpWorld,
    browser: &reqwest::Client,
    url: &str,
    user: keygate_core::UserId,
) {
    let resp = browser.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 303, "{}", resp.text().await.unwrap());
    let login = w.absolute(&location(&resp));
    let resp = browser.get(&login).send().await.unwrap();
    let consent = if resp.status() == 303 {
        w.absolute(&location(&resp))
    } else {
        let resp = w.sign_in(browser, &login, user).await;
        assert_eq!(resp.status(), 303, "{}", resp.text().await.unwrap());
        w.absolute(&location(&resp))
    };
    let resp = browser.get(&consent).send().await.unwrap();
    let redirect = if resp.status() == 303 {
        location(&resp)
    } else {
        let html = resp.text().await.unwrap();
        let resp = browser
            .post(format!("{}/oauth2/consent", w.gw.url))
            .form(&[
                ("csrf", field(&html, "csrf")),
                ("request", field(&html, "request")),
                ("approve", "1".to_owned()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303);
        location(&resp)
    };
    assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");
    let page = reqwest::get(&redirect).await.unwrap().text().await.unwrap();
    assert!(page.contains("Signed in"), "{page}");
}

/// Runs a command that signs in through the browser: follows the URL it prints in `browser`
/// as `user`, and returns its standard output once it has exited successfully.
async fn through_browser(
    cli: &Cli,
    w: &McpWorld,
    browser: &reqwest::Client,
    args: &[&str],
    user: keygate_core::UserId,
) -> String {
    let mut child = cli
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(10), stderr.next_line())
            .await
            .expect("the sign-in URL within 10 s")
            .unwrap()
            .expect("keygate printed no sign-in URL");
        if let Some(url) = line
            .trim()
            .strip_prefix(&format!("{}/oauth2/authorize?", w.gw.url))
        {
            break format!("{}/oauth2/authorize?{url}", w.gw.url);
        }
    };
    sign_in_at(w, browser, &url, user).await;
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("keygate exits after the sign-in")
        .unwrap();
    succeeded(args, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_login_signs_the_user_in_and_token_app_mints_an_mcp_token() {
    let w = McpWorld::start(Backend::Sqlite, AppClient::Public, |_| {}).await;
    let up = FakeUpstream::start().await;
    let (_, slug) = w.integration(json!({"name": "Fake", "url": up.url})).await;
    let cli = Cli::new(&w.gw);
    let b = browser();
    through_browser(&cli, &w, &b, &["login", "--no-browser"], w.alice).await;
    // A member sees the active applications, as herself.
    let table = cli.ok(&["apps", "list"]).await;
    assert!(table.contains("Agents"), "{table}");
    let token = through_browser(
        &cli,
        &w,
        &b,
        &["token", "--app", "Agents", "--no-browser"],
        w.alice,
    )
    .await;
    let token = token.trim().to_owned();
    let call = rpc(1, "tools/call", json!({"name": "echo", "arguments": {}}));
    let resp = passthrough(&w, &slug, &token, &call).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    // The next call needs no browser: the stored token is still fresh.
    assert_eq!(cli.ok(&["token", "--app", "Agents"]).await.trim(), token);
    w.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_login_that_never_completes_times_out() {
    let gw = gateway().await;
    let cli = Cli::new(&gw);
    let out = cli.run(&["login", "--no-browser", "--timeout", "1"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no sign-in within 1 s"), "{err}");
    assert!(!cli.credentials_file().exists());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_token_is_refused_to_a_service_account_login() {
    let gw = gateway().await;
    let cli = Cli::new(&gw);
    cli.login_service_account(&gw).await;
    cli.ok(&["apps", "create", "--name", "Desk"]).await;
    let out = cli.run(&["token", "--app", "Desk", "--no-browser"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MCP tokens are a user's"), "{err}");
    gw.stop().await;
}

/// A TCP relay to `target` on `at` (port 0: a port of its own); aborting the task takes it
/// down, its listener and every connection through it, as a gateway that crashed.
async fn relay(
    at: std::net::SocketAddr,
    target: std::net::SocketAddr,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(at).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            connections.spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_says_once_that_it_reconnects_while_the_gateway_is_down_and_when_it_is_back() {
    let gw = gateway().await;
    let (url, down) = relay(([127, 0, 0, 1], 0).into(), gw.local_addr).await;
    let mut cli = Cli::new(&gw);
    cli.url = url.clone();
    cli.token = Some(gw.admin_token().await);
    let mut child = cli
        .command(&["tail"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), stderr.next_line())
            .await
            .map(|line| line.unwrap().unwrap_or_default())
    };
    let first = next().await.expect("tail starts");
    assert!(first.contains("following trace events"), "{first}");
    down.abort();
    let line = next().await.expect("tail says the gateway went away");
    assert!(line.contains("reconnecting"), "{line}");
    // Its retries in the next seconds (after 0.5, 1 and 2 s) add no line.
    let more = next().await;
    assert!(more.is_err(), "{more:?}");
    let at = url.trim_start_matches("http://").parse().unwrap();
    let (_, up) = relay(at, gw.local_addr).await;
    let line = next()
        .await
        .expect("tail reconnects within its next delay (4 s)");
    assert!(line.contains("reconnected"), "{line}");
    child.kill().await.unwrap();
    up.abort();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_login_to_a_gateway_that_is_not_there_prints_no_sign_in_url() {
    let gw = gateway().await;
    let mut cli = Cli::new(&gw);
    let port = gw.local_addr.port();
    gw.stop().await;
    cli.url = format!("http://127.0.0.1:{port}");
    let out = cli.run(&["login", "--no-browser"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the gateway"), "{err}");
    assert!(!err.contains("oauth2/authorize"), "no sign-in URL: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_forgets_the_sign_in_and_revokes_its_refresh_tokens() {
    let w = McpWorld::start(Backend::Sqlite, AppClient::Public, |_| {}).await;
    let cli = Cli::new(&w.gw);
    let b = browser();
    through_browser(&cli, &w, &b, &["login", "--no-browser"], w.alice).await;
    let args = ["token", "--app", "Agents", "--no-browser"];
    through_browser(&cli, &w, &b, &args, w.alice).await;
    let stored: Value =
        serde_json::from_slice(&std::fs::read(cli.credentials_file()).unwrap()).unwrap();
    let refresh = stored["gateways"][&w.gw.url]["mcpTokens"][&w.app_url]["refreshToken"]
        .as_str()
        .unwrap_or_else(|| panic!("an MCP token with a refresh token: {stored:#}"))
        .to_owned();
    cli.ok(&["logout"]).await;
    let out = cli.run(&["apps", "list"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("keygate login"),
        "{err}"
    );
    let resp =
        w.gw.http
            .post(format!("{}/oauth2/token", w.gw.url))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", "keygate"),
                ("refresh_token", &refresh),
            ])
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 400, "{}", resp.text().await.unwrap());
    w.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_browser_sign_in_says_to_sign_in_again() {
    let w = McpWorld::start(Backend::Sqlite, AppClient::Public, |_| {}).await;
    let cli = Cli::new(&w.gw);
    through_browser(&cli, &w, &browser(), &["login", "--no-browser"], w.alice).await;
    let path = cli.credentials_file();
    let mut stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    stored["gateways"][&w.gw.url]["login"]["expiresAt"] = json!(0);
    std::fs::write(&path, stored.to_string()).unwrap();
    let out = cli.run(&["apps", "list"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("has expired: run `keygate login`"), "{err}");
    w.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrations_oauth_client_secret_is_read_from_stdin_and_never_shown() {
    let gw = gateway().await;
    let cli = Cli::new(&gw);
    cli.login_service_account(&gw).await;
    let server = "https://mcp.linear.example/mcp";
    let create = [
        "integrations",
        "create",
        "--name",
        "Linear",
        "--server-url",
        server,
    ];
    cli.ok(&[&create[..], &["--auth-mode", "oauth"]].concat())
        .await;
    let args = [
        "integrations",
        "oauth",
        "set",
        "linear",
        "--client-id",
        "kg-client",
        "--client-secret-stdin",
        "--authorization-url",
        "https://linear.example/oauth/authorize",
        "--token-url",
        "https://linear.example/oauth/token",
        "--scope",
        "read",
    ];
    let out = cli.run_with_stdin(&args, "provider-secret\n").await;
    let shown = succeeded(&args, out);
    assert!(!shown.contains("provider-secret"), "{shown}");
    let got = cli.json(&["integrations", "oauth", "get", "linear"]).await;
    assert_eq!(got["oauth"]["clientId"], "kg-client");
    assert_eq!(got["oauth"]["clientSecretConfigured"], true);
    assert_eq!(got["oauth"]["scopes"], json!(["read"]));
    gw.stop().await;
}
