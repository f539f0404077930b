//! The management API, end to end over HTTP, against the real gateway on SQLite and on
//! PostgreSQL: every test body runs once per backend.

use keygate_test_support::{Backend, TestGateway};
use reqwest::Method;
use serde_json::{Value, json};

use keygate_test_support::both_backends;

both_backends!(
    service_account_to_archive_flow,
    bad_input_gets_clear_errors,
    tenants_are_isolated,
    credentials_are_sealed_at_rest,
    service_accounts_lifecycle,
    integration_settings_and_connections,
    sessions_and_counts,
    traces_and_stats,
    rate_limit_answers_429,
);

/// A response sent before the request body was read closes the connection explicitly, so a
/// client reusing it does not meet a reset (seen with httpx and the MCP 401 challenge).
#[tokio::test]
async fn unread_request_bodies_close_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start(Backend::Sqlite).await;
    let mut sock = tokio::net::TcpStream::connect(gw.local_addr).await.unwrap();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    sock.write_all(body.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = sock.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 401"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    // A request whose body is read keeps the connection alive.
    let resp = gw
        .http
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("connection").is_none());
    gw.stop().await;
}

/// `/api/openapi.json` passes `openapi-spec-validator` (installed by `scripts/setup.sh`):
/// unique operation ids, a `servers` entry, valid schemas.
#[tokio::test]
async fn the_openapi_document_passes_openapi_spec_validator() {
    let venv = std::env::var("KEYGATE_E2E_OPENAPI_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/keygate-e2e/openapi-venv",
            std::env::var("HOME").unwrap()
        )
    });
    let python = format!("{venv}/bin/python");
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: run scripts/setup.sh"
    );
    let gw = TestGateway::start(Backend::Sqlite).await;
    let doc = gw
        .http
        .get(format!("{}/api/openapi.json", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let url = gw.url.clone();
    gw.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &doc).unwrap();
    let out = std::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["servers"][0]["url"], url.as_str());
}

/// Validating an integration on a loopback address that is not allow-listed says why it is
/// refused and which setting lifts it, instead of blaming its plain http.
#[tokio::test]
async fn validating_a_loopback_integration_names_the_allow_list() {
    let gw = TestGateway::start(Backend::Sqlite).await;
    let token = gw.admin_token().await;
    let i = create_integration(
        &gw,
        &token,
        json!({"name": "Local", "url": "http://127.0.0.1:9/mcp"}),
    )
    .await;
    let id = i["id"].as_str().unwrap();
    let (s, _, v) = gw
        .api(POST, &format!("/integrations/{id}/validate"), &token, None)
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("invalid")), "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("127.0.0.1 is a loopback address"),
        "{message}"
    );
    assert!(
        message.contains("`outbound.allowed_private_hosts`"),
        "{message}"
    );
    assert!(!message.contains("must use https"), "{message}");
    gw.stop().await;
}

const POST: Method = Method::POST;
const GET: Method = Method::GET;
const PATCH: Method = Method::PATCH;
const PUT: Method = Method::PUT;
const DELETE: Method = Method::DELETE;

async fn create_app(gw: &TestGateway, token: &str, name: &str, kind: &str) -> Value {
    let (status, _, body) = gw
        .api(POST, "/applications", token, Some(json!({
            "name": name,
            "oauth": {"type": kind, "redirectUris": ["http://localhost:3000/callback"], "scopes": [], "allowedResources": []}
        })))
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn create_integration(gw: &TestGateway, token: &str, body: Value) -> Value {
    let (status, _, resp) = gw.api(POST, "/integrations", token, Some(body)).await;
    assert_eq!(status, 201, "{resp}");
    resp["integration"].clone()
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    assert_eq!(body["statusCode"], want_status, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["requestId"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn service_account_to_archive_flow(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let token = gw.admin_token().await;

    // An integration with a server token: the token is never echoed.
    let integration = create_integration(
        &gw,
        &token,
        json!({
            "name": "GitHub", "url": "https://mcp.github.example/mcp",
            "authMode": "server_token", "serverToken": "ghp_never_echo_this_token"
        }),
    )
    .await;
    assert_eq!(integration["serverTokenConfigured"], true);
    assert_eq!(integration["authMode"], "server_token");
    assert_eq!(integration["category"], "gateway_remote_mcp");
    assert_eq!(integration["validationStatus"], "pending");
    assert!(
        !integration
            .to_string()
            .contains("ghp_never_echo_this_token")
    );
    let integration_id = integration["id"].as_str().unwrap().to_owned();

    // A confidential application: the secret is shown once.
    let created = create_app(&gw, &token, "My App", "confidential").await;
    let app = &created["application"];
    let app_id = app["id"].as_str().unwrap().to_owned();
    let client_id = created["oauth"]["clientId"].as_str().unwrap().to_owned();
    let secret = created["oauth"]["clientSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(client_id, format!("app_{app_id}"));
    assert_eq!(app["oauth"]["pkceRequired"], true);
    assert_eq!(
        app["mcpUrlTemplate"],
        format!("{}/apps/{app_id}/mcp{{/integration}}", gw.url)
    );
    assert_eq!(
        app["oauth"]["gatewayUrl"],
        format!("{}/apps/{app_id}/mcp", gw.url)
    );
    assert_eq!(app["oauth"]["tokenUrl"], format!("{}/oauth2/token", gw.url));
    for field in [
        "createdAt",
        "updatedAt",
        "canModify",
        "activeSessionCount",
        "idleSessionCount",
        "liveSessionCount",
        "totalSessionCount",
        "integrations",
        "ownerUserId",
        "archivedAt",
    ] {
        assert!(app.get(field).is_some(), "application lacks {field}: {app}");
    }
    let (_, _, fetched) = gw
        .api(GET, &format!("/applications/{app_id}"), &token, None)
        .await;
    assert!(
        fetched["application"]["oauth"]
            .get("clientSecret")
            .is_none(),
        "secret shown twice"
    );
    assert!(!fetched.to_string().contains(&secret));

    // Attach, then list.
    let (status, _, _) = gw
        .api(
            POST,
            &format!("/applications/{app_id}/integrations/{integration_id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _, _) = gw
        .api(
            POST,
            &format!("/applications/{app_id}/integrations/{integration_id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 204, "attaching twice is a no-op");
    let (_, _, ids) = gw
        .api(
            GET,
            &format!("/applications/{app_id}/integrations"),
            &token,
            None,
        )
        .await;
    assert_eq!(ids, json!({"integrationIds": [integration_id]}));
    let (_, _, fetched) = gw
        .api(GET, &format!("/applications/{app_id}"), &token, None)
        .await;
    assert_eq!(
        fetched["application"]["integrations"][0]["id"],
        integration_id.as_str()
    );

    // Paginate with limit=1.
    create_app(&gw, &token, "Second", "public").await;
    create_app(&gw, &token, "Third", "public").await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/applications?limit=1&cursor={c}"),
            None => "/applications?limit=1".to_owned(),
        };
        let (status, _, page) = gw.api(GET, &path, &token, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
        seen.push(page["items"][0]["name"].as_str().unwrap().to_owned());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["Third", "Second", "My App"]);

    // Rotate: the old secret stops working at once, the new one authenticates.
    let (s, body) = gw.client_credentials(&client_id, &secret).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );
    let (status, _, rotated) = gw
        .api(
            POST,
            &format!("/applications/{app_id}/rotate-secret"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["oauth"]["clientSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(rotated["application"]["id"], app_id.as_str());
    let (s, body) = gw.client_credentials(&client_id, &secret).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    let (s, body) = gw.client_credentials(&client_id, &new_secret).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );

    // Detach, replace, archive.
    let (status, _, _) = gw
        .api(
            DELETE,
            &format!("/applications/{app_id}/integrations/{integration_id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _, ids) = gw
        .api(
            PUT,
            &format!("/applications/{app_id}/integrations"),
            &token,
            Some(json!({"integrationIds": [integration_id]})),
        )
        .await;
    assert_eq!(
        (status, ids),
        (200, json!({"integrationIds": [integration_id]}))
    );
    let (status, _, renamed) = gw
        .api(
            PATCH,
            &format!("/applications/{app_id}"),
            &token,
            Some(json!({"name": "Renamed"})),
        )
        .await;
    assert_eq!(
        (status, renamed["application"]["name"].as_str()),
        (200, Some("Renamed"))
    );
    let (status, _, body) = gw
        .api(DELETE, &format!("/applications/{app_id}"), &token, None)
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let (_, _, fetched) = gw
        .api(GET, &format!("/applications/{app_id}"), &token, None)
        .await;
    assert!(
        fetched["application"]["archivedAt"].is_string(),
        "{fetched}"
    );
    assert_eq!(fetched["application"]["canModify"], false);
    let (s, body) = gw.client_credentials(&client_id, &new_secret).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("invalid_client")),
        "archived client: {body}"
    );
    let (status, _, body) = gw
        .api(
            PATCH,
            &format!("/applications/{app_id}"),
            &token,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_error(status, &body, 409, "conflict");
    gw.stop().await;
}

async fn bad_input_gets_clear_errors(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let token = gw.admin_token().await;
    let url = |p: &str| format!("{}/api/v1{p}", gw.url);
    let send = |req: reqwest::RequestBuilder| async move {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        assert!(resp.headers().contains_key("x-request-id"));
        (status, resp.json::<Value>().await.unwrap())
    };

    // Malformed JSON.
    let (s, b) = send(
        gw.http
            .post(url("/applications"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{\"name\": "),
    )
    .await;
    assert_error(s, &b, 400, "validation_error");
    assert_eq!(b["validationErrors"][0]["field"], "body");
    // Unknown field.
    let (s, b) = send(
        gw.http
            .post(url("/applications"))
            .bearer_auth(&token)
            .json(&json!({
        "name": "x", "oauth": {"type": "public", "redirectUris": []}, "colour": "blue"})),
    )
    .await;
    assert_error(s, &b, 400, "validation_error");
    assert_eq!(b["validationErrors"][0]["field"], "colour");
    // Missing required fields.
    let (s, b) = send(
        gw.http
            .post(url("/applications"))
            .bearer_auth(&token)
            .json(&json!({"name": "x"})),
    )
    .await;
    assert_error(s, &b, 400, "validation_error");
    assert_eq!(
        b["validationErrors"][0],
        json!({"field": "oauth", "message": "is required"})
    );
    let (s, b) = send(
        gw.http
            .post(url("/integrations"))
            .bearer_auth(&token)
            .json(&json!({"name": "x", "url": "https://a.example", "authMode": "server_token"})),
    )
    .await;
    assert_error(s, &b, 400, "validation_error");
    assert_eq!(b["validationErrors"][0]["field"], "serverToken");
    // Wrong type, bad enum, bad URL.
    let (s, b) = send(
        gw.http
            .post(url("/integrations"))
            .bearer_auth(&token)
            .json(&json!({"name": "x", "url": "https://a.example", "authMode": "magic"})),
    )
    .await;
    assert_error(s, &b, 400, "validation_error");
    assert_eq!(b["validationErrors"][0]["field"], "authMode");
    let (s, b) = send(
        gw.http
            .post(url("/integrations"))
            .bearer_auth(&token)
            .json(&json!({"name": "x", "url": "not a url"})),
    )
    .await;
    assert_error(s, &b, 400, "validation_error");
    let (s, b) = send(
        gw.http
            .post(url("/applications"))
            .bearer_auth(&token)
            .json(&json!({
        "name": "x", "oauth": {"type": "public", "redirectUris": ["http://evil.example/cb"]}})),
    )
    .await;
    assert_error(s, &b, 400, "validation_error");
    assert_eq!(b["validationErrors"][0]["field"], "oauth.redirectUris[0]");
    // Non-UUID ids.
    for path in [
        "/applications/not-a-uuid",
        "/integrations/123",
        "/service-accounts/x",
        "/applications/zz/sessions",
    ] {
        let (s, b) = send(gw.http.get(url(path)).bearer_auth(&token)).await;
        assert_error(s, &b, 400, "validation_error");
    }
    // Unknown id and unknown route.
    let (s, b) = send(
        gw.http
            .get(url("/applications/00000000-0000-4000-8000-000000000000"))
            .bearer_auth(&token),
    )
    .await;
    assert_error(s, &b, 404, "not_found");
    assert_eq!(b["message"], "Application not found");
    let (s, b) = send(gw.http.get(url("/nope")).bearer_auth(&token)).await;
    assert_error(s, &b, 404, "not_found");
    // Pagination parameters.
    for q in ["limit=0", "limit=201", "limit=abc", "cursor=%21%21"] {
        let (s, b) = send(
            gw.http
                .get(url(&format!("/applications?{q}")))
                .bearer_auth(&token),
        )
        .await;
        assert_error(s, &b, 400, "validation_error");
    }
    // Wrong content type.
    let (s, b) = send(
        gw.http
            .post(url("/applications"))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body("{}"),
    )
    .await;
    assert_error(s, &b, 415, "unsupported_media_type");
    // A 10 MiB body.
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(10 * 1024 * 1024));
    let (s, b) = send(
        gw.http
            .post(url("/applications"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(big),
    )
    .await;
    assert_error(s, &b, 413, "payload_too_large");
    // Missing, tampered and expired tokens.
    let (s, b) = send(gw.http.get(url("/applications"))).await;
    assert_error(s, &b, 401, "authorization_required");
    let mut tampered = token.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let (s, b) = send(
        gw.http
            .get(url("/applications"))
            .bearer_auth(String::from_utf8(tampered).unwrap()),
    )
    .await;
    assert_error(s, &b, 401, "authorization_required");
    let (s, b) = send(gw.http.get(url("/applications")).bearer_auth("garbage")).await;
    assert_error(s, &b, 401, "authorization_required");
    let expired = sign_expired(&gw).await;
    let (s, b) = send(gw.http.get(url("/applications")).bearer_auth(expired)).await;
    assert_error(s, &b, 401, "authorization_required");
    assert_eq!(b["message"], "The access token has expired");
    // Token endpoint errors follow RFC 6749.
    let (s, b) = gw
        .client_credentials("sa_00000000-0000-4000-8000-000000000000", "x")
        .await;
    assert_eq!((s, b["error"].as_str()), (401, Some("invalid_client")));
    let resp = gw
        .http
        .post(format!("{}/oauth2/token", gw.url))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    // The gateway is still healthy.
    assert_eq!(
        gw.http
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        gw.http
            .get(format!("{}/readyz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gw.stop().await;
}

/// A correctly signed token whose `exp` has passed.
async fn sign_expired(gw: &TestGateway) -> String {
    let keys = keygate_auth::KeyRing::load(gw.store.clone(), gw.url.clone())
        .await
        .unwrap();
    let (client_id, _) = gw.service_account_in(gw.org, "expired").await;
    let now = chrono_now();
    keys.sign(&keygate_auth::Claims {
        iss: gw.url.clone(),
        sub: client_id.clone(),
        aud: format!("{}/api/v1", gw.url),
        client_id,
        scope: "management:all".into(),
        org: gw.org,
        sid: None,
        iat: now - 7200,
        exp: now - 3600,
        jti: "expired".into(),
    })
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn tenants_are_isolated(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let token = gw.admin_token().await;
    let app = create_app(&gw, &token, "Ours", "public").await;
    let app_id = app["application"]["id"].as_str().unwrap().to_owned();
    let integration = create_integration(
        &gw,
        &token,
        json!({"name": "Ours", "url": "https://a.example/mcp"}),
    )
    .await;
    let integration_id = integration["id"].as_str().unwrap().to_owned();

    let other = gw
        .store
        .create_organization("other", "Other Org")
        .await
        .unwrap();
    let (id, secret) = gw.service_account_in(other.id, "theirs").await;
    let (_, body) = gw.client_credentials(&id, &secret).await;
    let theirs = body["access_token"].as_str().unwrap().to_owned();

    for path in [
        format!("/applications/{app_id}"),
        format!("/applications/{app_id}/integrations"),
        format!("/applications/{app_id}/sessions"),
        format!("/integrations/{integration_id}"),
    ] {
        let (s, _, b) = gw.api(GET, &path, &theirs, None).await;
        assert_error(s, &b, 404, "not_found");
    }
    let (s, _, b) = gw
        .api(DELETE, &format!("/applications/{app_id}"), &theirs, None)
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, _, b) = gw
        .api(
            POST,
            &format!("/applications/{app_id}/integrations/{integration_id}"),
            &theirs,
            None,
        )
        .await;
    assert_error(s, &b, 404, "not_found");
    let (_, _, list) = gw.api(GET, "/applications", &theirs, None).await;
    assert_eq!(list["items"], json!([]));
    let (_, _, list) = gw.api(GET, "/integrations", &theirs, None).await;
    assert_eq!(list["items"], json!([]));
    // Their own integration cannot be attached to our application either.
    let foreign = create_integration(
        &gw,
        &theirs,
        json!({"name": "Theirs", "url": "https://b.example/mcp"}),
    )
    .await;
    let (s, _, b) = gw
        .api(
            POST,
            &format!(
                "/applications/{app_id}/integrations/{}",
                foreign["id"].as_str().unwrap()
            ),
            &token,
            None,
        )
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, _, b) = gw
        .api(
            PUT,
            &format!("/applications/{app_id}/integrations"),
            &token,
            Some(json!({"integrationIds": [foreign["id"]]})),
        )
        .await;
    assert_error(s, &b, 400, "validation_error");
    gw.stop().await;
}

async fn credentials_are_sealed_at_rest(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let token = gw.admin_token().await;
    let canary = "ghp_CANARY_4f1d2c9b7e_plaintext";
    let a = create_integration(&gw, &token, json!({"name": "A", "url": "https://a.example/mcp", "authMode": "server_token", "serverToken": canary})).await;
    let b = create_integration(&gw, &token, json!({"name": "B", "url": "https://b.example/mcp", "authMode": "server_token", "serverToken": "other-token"})).await;
    let oauth = create_integration(&gw, &token, json!({"name": "O", "url": "https://o.example/mcp", "authMode": "oauth",
        "oauth": {"clientId": "cid", "clientSecret": format!("{canary}_client_secret"), "authorizationUrl": "https://idp.example/authorize", "tokenUrl": "https://idp.example/token"}})).await;
    assert_eq!(oauth["oauth"]["clientSecretConfigured"], true);
    assert!(!oauth.to_string().contains(canary));
    let a_id: keygate_core::IntegrationId = a["id"].as_str().unwrap().parse().unwrap();
    let b_id: keygate_core::IntegrationId = b["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        gw.store
            .integration_server_token(gw.org, a_id)
            .await
            .unwrap()
            .unwrap()
            .expose(),
        canary
    );

    // The plaintext is nowhere in the database.
    let dump = gw.raw_dump().await;
    assert!(dump.len() > 1000, "the dump saw the data");
    let hex: String = canary.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(
        !dump.contains(canary),
        "plaintext credential found in the {:?} database",
        gw.backend
    );
    assert!(
        !dump.contains(&hex),
        "hex-encoded credential found in the {:?} database",
        gw.backend
    );
    assert!(
        dump.contains("https://a.example/mcp"),
        "the dump holds the integration rows"
    );

    // A ciphertext copied onto another integration's row does not open there.
    gw.raw_execute(&format!(
        "UPDATE integrations SET server_token = (SELECT server_token FROM integrations WHERE id = '{a_id}') WHERE id = '{b_id}'"
    ))
    .await;
    let err = gw
        .store
        .integration_server_token(gw.org, b_id)
        .await
        .unwrap_err();
    assert!(
        matches!(err, keygate_store::StoreError::Vault(_)),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains(canary));
    gw.stop().await;
}

async fn service_accounts_lifecycle(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let token = gw.admin_token().await;
    let (s, _, created) = gw
        .api(
            POST,
            "/service-accounts",
            &token,
            Some(json!({"name": "CI", "description": "pipelines"})),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let sa = &created["serviceAccount"];
    let id = sa["id"].as_str().unwrap().to_owned();
    assert_eq!(sa["name"], "CI");
    assert_eq!(sa["description"], "pipelines");
    assert!(sa["createdAt"].is_string());
    let client_id = created["credentials"]["clientId"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = created["credentials"]["clientSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(client_id, format!("sa_{id}"));
    let (_, got) = gw.client_credentials(&client_id, &secret).await;
    let ci_token = got["access_token"].as_str().unwrap().to_owned();
    assert_eq!(got["token_type"], "Bearer");
    assert_eq!(got["scope"], "management:all");

    let (_, _, fetched) = gw
        .api(GET, &format!("/service-accounts/{id}"), &token, None)
        .await;
    assert!(!fetched.to_string().contains(&secret));
    let (_, _, list) = gw.api(GET, "/service-accounts?limit=1", &token, None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(list["nextCursor"].is_string());

    let (s, _, rotated) = gw
        .api(
            POST,
            &format!("/service-accounts/{id}/rotate-secret"),
            &token,
            None,
        )
        .await;
    assert_eq!(s, 200, "{rotated}");
    let new_secret = rotated["credentials"]["clientSecret"].as_str().unwrap();
    assert_eq!(gw.client_credentials(&client_id, &secret).await.0, 401);
    assert_eq!(gw.client_credentials(&client_id, new_secret).await.0, 200);

    let (s, _, _) = gw
        .api(DELETE, &format!("/service-accounts/{id}"), &token, None)
        .await;
    assert_eq!(s, 204);
    let (s, _, b) = gw.api(GET, "/applications", &ci_token, None).await;
    assert_error(s, &b, 401, "authorization_required");
    assert_eq!(gw.client_credentials(&client_id, new_secret).await.0, 401);
    let (_, _, fetched) = gw
        .api(GET, &format!("/service-accounts/{id}"), &token, None)
        .await;
    assert!(fetched["serviceAccount"]["archivedAt"].is_string());
    gw.stop().await;
}

async fn integration_settings_and_connections(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    // A service account acting for a user can hold that user's connections.
    let user = gw
        .store
        .create_user(
            gw.org,
            "owner@example.com",
            keygate_core::model::Role::Owner,
            None,
        )
        .await
        .unwrap();
    let secret = keygate_auth::secret::generate_client_secret();
    let sa = gw
        .store
        .create_service_account(
            gw.org,
            "acting",
            None,
            Some(user.id),
            &keygate_auth::secret::hash_secret(&secret),
        )
        .await
        .unwrap();
    let (_, body) = gw.client_credentials(&sa.id.client_id(), &secret).await;
    let token = body["access_token"].as_str().unwrap().to_owned();

    let i = create_integration(
        &gw,
        &token,
        json!({"name": "Linear", "url": "https://linear.example/mcp", "authMode": "user_token",
        "capabilities": {"tools": true}}),
    )
    .await;
    let id = i["id"].as_str().unwrap().to_owned();
    assert_eq!(i["slug"], "linear");
    assert_eq!(
        i["userConnection"],
        json!({"connected": false, "status": "disconnected"})
    );
    let (s, _, c) = gw
        .api(
            POST,
            &format!("/integrations/{id}/connection"),
            &token,
            Some(json!({"token": "lin_personal_123"})),
        )
        .await;
    assert_eq!(
        (s, &c["connection"]["connected"]),
        (200, &json!(true)),
        "{c}"
    );
    assert!(!c.to_string().contains("lin_personal_123"));
    let (_, _, c) = gw
        .api(GET, &format!("/integrations/{id}/connection"), &token, None)
        .await;
    assert_eq!(c["connection"]["status"], "connected");
    let iid: keygate_core::IntegrationId = id.parse().unwrap();
    assert_eq!(
        gw.store
            .connection_credential(gw.org, iid, user.id)
            .await
            .unwrap()
            .expose(),
        "lin_personal_123"
    );
    let (s, _, _) = gw
        .api(
            DELETE,
            &format!("/integrations/{id}/connection"),
            &token,
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (_, _, c) = gw
        .api(GET, &format!("/integrations/{id}/connection"), &token, None)
        .await;
    assert_eq!(c["connection"]["connected"], false);

    // Same name → distinct slug; name filter.
    let twin = create_integration(
        &gw,
        &token,
        json!({"name": "Linear", "url": "https://linear2.example/mcp"}),
    )
    .await;
    assert_eq!(twin["slug"], "linear-2");
    let (_, _, found) = gw.api(GET, "/integrations?name=LIN", &token, None).await;
    assert_eq!(found["items"].as_array().unwrap().len(), 2);
    let (_, _, found) = gw
        .api(GET, "/integrations?name=nothing", &token, None)
        .await;
    assert_eq!(found["items"], json!([]));

    // OAuth settings: replace, read (secret never returned), refuse removal while in use.
    let (s, _, b) = gw
        .api(
            PUT,
            &format!("/integrations/{id}/oauth"),
            &token,
            Some(json!({"provider": "github"})),
        )
        .await;
    assert_error(s, &b, 409, "conflict");
    let (s, _, patched) = gw
        .api(
            PATCH,
            &format!("/integrations/{id}"),
            &token,
            Some(json!({"authMode": "oauth"})),
        )
        .await;
    assert_eq!(
        (s, &patched["integration"]["authMode"]),
        (200, &json!("oauth")),
        "{patched}"
    );
    let (s, _, o) = gw.api(PUT, &format!("/integrations/{id}/oauth"), &token, Some(json!({
        "provider": "github", "scopes": ["repo"], "clientId": "abc", "clientSecret": "shh-client-secret"}))).await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["oauth"]["scopes"], json!(["repo"]));
    assert_eq!(o["oauth"]["clientSecretConfigured"], true);
    let (_, _, o) = gw
        .api(GET, &format!("/integrations/{id}/oauth"), &token, None)
        .await;
    assert_eq!(o["oauth"]["provider"], "github");
    assert!(!o.to_string().contains("shh-client-secret"));
    let (s, _, b) = gw
        .api(DELETE, &format!("/integrations/{id}/oauth"), &token, None)
        .await;
    assert_error(s, &b, 409, "conflict");
    let (s, _, _) = gw
        .api(
            PATCH,
            &format!("/integrations/{id}"),
            &token,
            Some(json!({"authMode": "server_token", "serverToken": "srv"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _, _) = gw
        .api(DELETE, &format!("/integrations/{id}/oauth"), &token, None)
        .await;
    assert_eq!(s, 204);
    let (s, _, b) = gw
        .api(GET, &format!("/integrations/{id}/oauth"), &token, None)
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, _, patched) = gw
        .api(
            PATCH,
            &format!("/integrations/{id}"),
            &token,
            Some(json!({"authMode": "none"})),
        )
        .await;
    assert_eq!(
        (s, &patched["integration"]["serverTokenConfigured"]),
        (200, &json!(false)),
        "leaving server_token drops it"
    );

    // Validation performs a real handshake: this example URL cannot be reached from here
    // (and would be refused by the SSRF guard's https rule anyway), so it is recorded invalid.
    let (s, _, v) = gw
        .api(POST, &format!("/integrations/{id}/validate"), &token, None)
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("invalid")), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    let (_, _, i) = gw
        .api(GET, &format!("/integrations/{id}"), &token, None)
        .await;
    assert!(i["integration"]["lastValidatedAt"].is_string());

    // Access graph.
    let app = create_app(&gw, &token, "Graph", "public").await;
    let app_id = app["application"]["id"].as_str().unwrap();
    gw.api(
        POST,
        &format!("/applications/{app_id}/integrations/{id}"),
        &token,
        None,
    )
    .await;
    let (s, _, g) = gw
        .api(
            GET,
            "/applications/access-graph?includePolicy=true",
            &token,
            None,
        )
        .await;
    assert_eq!(s, 200, "{g}");
    let edges = g["edges"].as_array().unwrap();
    assert!(
        edges
            .iter()
            .any(|e| e["from"] == app_id && e["to"] == id.as_str() && e["type"] == "attached")
    );
    let types: Vec<&str> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"application") && types.contains(&"integration") && types.contains(&"user")
    );

    // Archive: gone from lists and attachments.
    let (s, _, _) = gw
        .api(DELETE, &format!("/integrations/{id}"), &token, None)
        .await;
    assert_eq!(s, 204);
    let (_, _, ids) = gw
        .api(
            GET,
            &format!("/applications/{app_id}/integrations"),
            &token,
            None,
        )
        .await;
    assert_eq!(ids["integrationIds"], json!([]));
    gw.stop().await;
}

async fn sessions_and_counts(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let token = gw.admin_token().await;
    let app = create_app(&gw, &token, "Agents", "public").await;
    let app_id: keygate_core::ApplicationId =
        app["application"]["id"].as_str().unwrap().parse().unwrap();
    let now = keygate_core::Timestamp::now();
    let session = gw
        .store
        .create_agent_session(
            gw.org,
            keygate_store::NewAgentSession {
                application_id: app_id,
                user_id: None,
                agent_id: None,
                name: Some("claude on laptop".into()),
                hostname: Some("laptop".into()),
                user_agent: Some("claude-code/1.0".into()),
                client_info: Some(json!({"name": "claude-code", "version": "1.0"})),
                token_expires_at: Some(now.plus_seconds(3600)),
            },
        )
        .await
        .unwrap();
    let (_, _, a) = gw
        .api(GET, &format!("/applications/{app_id}"), &token, None)
        .await;
    assert_eq!(a["application"]["activeSessionCount"], 1);
    assert_eq!(a["application"]["totalSessionCount"], 1);
    let (_, _, list) = gw
        .api(
            GET,
            &format!("/applications/{app_id}/sessions"),
            &token,
            None,
        )
        .await;
    let s0 = &list["items"][0];
    assert_eq!(s0["id"], session.id.to_string());
    assert_eq!(s0["derivedStatus"], "active");
    assert_eq!(s0["name"], "claude on laptop");
    for f in [
        "tokenExpiresAt",
        "lastActiveAt",
        "connectedAt",
        "disconnectedAt",
        "createdAt",
        "agentId",
        "userId",
        "hostname",
        "userAgent",
        "clientInfo",
        "status",
    ] {
        assert!(s0.get(f).is_some(), "session lacks {f}");
    }
    let (s, _, one) = gw
        .api(
            GET,
            &format!("/applications/{app_id}/sessions/{}", session.id),
            &token,
            None,
        )
        .await;
    assert_eq!(
        (s, &one["session"]["id"]),
        (200, &json!(session.id.to_string()))
    );
    let (s, _, r) = gw
        .api(
            DELETE,
            &format!("/applications/{app_id}/sessions"),
            &token,
            None,
        )
        .await;
    assert_eq!(
        (s, r),
        (200, json!({"success": true, "disconnectedCount": 1}))
    );
    let (_, _, list) = gw
        .api(
            GET,
            &format!("/applications/{app_id}/sessions"),
            &token,
            None,
        )
        .await;
    assert_eq!(list["items"], json!([]));
    let (_, _, list) = gw
        .api(
            GET,
            &format!("/applications/{app_id}/sessions?includeInactive=true"),
            &token,
            None,
        )
        .await;
    assert_eq!(list["items"][0]["derivedStatus"], "disconnected");
    let (s, _, b) = gw
        .api(
            GET,
            &format!("/applications/{app_id}/sessions?status=sleepy"),
            &token,
            None,
        )
        .await;
    assert_error(s, &b, 400, "validation_error");
    gw.stop().await;
}

async fn traces_and_stats(backend: Backend) {
    use keygate_core::model::TraceEvent;
    let gw = TestGateway::start(backend).await;
    let token = gw.admin_token().await;
    let app = create_app(&gw, &token, "Traced", "public").await;
    let app_id: keygate_core::ApplicationId =
        app["application"]["id"].as_str().unwrap().parse().unwrap();
    let trace_id = uuid::Uuid::now_v7();
    let base = keygate_core::Timestamp::now();
    let events: Vec<TraceEvent> = [
        ("initialize", None, "ok", 3),
        ("tools/call", Some("github_create_issue"), "ok", 40),
        (
            "tools/call",
            Some("github_create_issue"),
            "error_remote",
            100,
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (kind, tool, status, ms))| TraceEvent {
        id: uuid::Uuid::now_v7(),
        org_id: gw.org,
        created_at: base.plus_seconds(i as i64),
        trace_id,
        session_id: "mcp-session-1".into(),
        agent_session_id: None,
        application_id: app_id,
        user_id: None,
        event_type: kind.into(),
        status: status.into(),
        duration_ms: ms,
        integration_id: None,
        tool_name: tool.map(Into::into),
        error_message: (status != "ok").then(|| "upstream said no".into()),
        bytes_in: 100,
        bytes_out: 200,
        request_json: None,
        response_json: None,
        otel_trace_id: None,
        otel_span_id: None,
    })
    .collect();
    gw.store.insert_trace_events(&events).await.unwrap();

    let (s, _, traces) = gw
        .api(GET, &format!("/traces?agentId={app_id}"), &token, None)
        .await;
    assert_eq!(s, 200, "{traces}");
    let t = &traces["items"][0];
    assert_eq!(t["traceId"], trace_id.to_string());
    assert_eq!(
        (
            t["eventCount"].as_i64(),
            t["okCount"].as_i64(),
            t["errorCount"].as_i64()
        ),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(t["agentName"], "Traced");
    let (_, _, one) = gw
        .api(GET, &format!("/traces/{trace_id}"), &token, None)
        .await;
    let kinds: Vec<&str> = one["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["initialize", "tools/call", "tools/call"]);
    for f in [
        "id",
        "createdAt",
        "sessionId",
        "agentId",
        "eventType",
        "status",
    ] {
        assert!(one["events"][0][f].is_string(), "event lacks string {f}");
    }
    let (_, _, stats) = gw.api(GET, "/traces/stats?period=1d", &token, None).await;
    assert_eq!(stats["totalTraces"], 1);
    assert_eq!(stats["totalEvents"], 3);
    assert_eq!(stats["errorEvents"], 1);
    assert_eq!(stats["latency"], json!({"p50": 40, "p95": 100, "p99": 100}));
    assert_eq!(stats["bytesTransferred"], json!({"in": 300, "out": 600}));
    assert_eq!(
        stats["topTools"][0],
        json!({"toolName": "github_create_issue", "integrationId": null, "count": 2, "errorCount": 1})
    );
    let (_, _, ev) = gw
        .api(GET, "/events?status=error_remote", &token, None)
        .await;
    assert_eq!(ev["items"].as_array().unwrap().len(), 1);
    let (_, _, ev) = gw.api(GET, "/events?limit=2", &token, None).await;
    assert_eq!(ev["items"].as_array().unwrap().len(), 2);
    assert!(ev["nextCursor"].is_string());
    let (s, _, b) = gw.api(GET, "/traces/not-a-trace", &token, None).await;
    assert_error(s, &b, 400, "validation_error");
    let (s, _, b) = gw.api(GET, "/traces/stats?period=2y", &token, None).await;
    assert_error(s, &b, 400, "validation_error");

    // The OpenAPI document is generated from the routes and covers them.
    let doc: Value = gw
        .http
        .get(format!("{}/api/openapi.json", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/v1/applications",
        "/api/v1/applications/{id}/rotate-secret",
        "/api/v1/applications/access-graph",
        "/api/v1/integrations/{id}/oauth",
        "/api/v1/integrations/{id}/connection",
        "/api/v1/service-accounts/{id}/rotate-secret",
        "/api/v1/applications/{id}/sessions",
        "/api/v1/traces/stats",
        "/api/v1/events",
        "/api/v1/mcp-events",
    ] {
        assert!(doc["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }
    gw.stop().await;
}

async fn rate_limit_answers_429(backend: Backend) {
    let gw = TestGateway::start_with(backend, |c| c.api.rate_limit_per_minute = Some(5)).await;
    let token = gw.admin_token().await;
    for _ in 0..5 {
        let (s, _, _) = gw.api(GET, "/applications", &token, None).await;
        assert_eq!(s, 200);
    }
    let (s, headers, b) = gw.api(GET, "/applications", &token, None).await;
    assert_error(s, &b, 429, "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(b["retryAfter"], retry);
    // Another credential has its own budget.
    let other = gw.admin_token().await;
    assert_eq!(gw.api(GET, "/applications", &other, None).await.0, 200);
    gw.stop().await;
}
