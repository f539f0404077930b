//! DNS rebinding: a page on a foreign origin that gets a browser to talk to the gateway. Every
//! MCP endpoint refuses a request whose `Origin` is neither the public URL's nor listed in
//! `mcp.allowed_origins` with 403 before anything else happens; requests without `Origin`
//! (non-browser clients) are served.

use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, both_backends};
use reqwest::Method;
use serde_json::{Value, json};

use crate::legacy_endpoint::LegacyStream;

both_backends!(
    foreign_origin_is_refused_on_every_mcp_route,
    gateway_and_allowed_origins_are_served,
);

const ALLOWED: &str = "https://app.example.com";

struct Routes {
    w: McpWorld,
    up: FakeUpstream,
    /// A Streamable HTTP and a legacy HTTP+SSE integration on `up`.
    slug: String,
    legacy: String,
    integration: String,
    /// Alice's tokens for the application's endpoints and for `/mcp`.
    app_token: String,
    mcp_token: String,
}

async fn routes(backend: Backend) -> Routes {
    let w = McpWorld::start(backend, AppClient::Public, |c| {
        c.mcp.allowed_origins = vec![ALLOWED.to_owned()];
    })
    .await;
    let up = FakeUpstream::start().await;
    let (id, slug) = w
        .integration(json!({"name": "Plain", "url": up.url, "authMode": "none"}))
        .await;
    let (_, legacy) = w
        .integration(json!({"name": "Legacy", "url": up.sse_url, "authMode": "none"}))
        .await;
    let app_token = w.token(w.alice).await;
    let mcp_token =
        w.gw.user_token(w.alice, w.app, &format!("{}/mcp", w.gw.url))
            .await;
    Routes {
        w,
        up,
        slug,
        legacy,
        integration: id.to_string(),
        app_token,
        mcp_token,
    }
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}})
}

impl Routes {
    /// Every MCP request an agent makes, with the token it needs: (method, url, token, body).
    fn requests(&self) -> Vec<(Method, String, &str, Option<Value>)> {
        let (app, gw) = (&self.w.app_url, &self.w.gw.url);
        let (t, m) = (self.app_token.as_str(), self.mcp_token.as_str());
        let i = &self.integration;
        vec![
            (
                Method::POST,
                format!("{app}/{}", self.slug),
                t,
                Some(initialize()),
            ),
            (Method::POST, app.clone(), t, Some(initialize())),
            (Method::POST, format!("{gw}/mcp"), m, Some(initialize())),
            (Method::GET, format!("{app}/{}/sse", self.legacy), t, None),
            (Method::GET, format!("{gw}/mcp/integrations"), m, None),
            (Method::POST, format!("{gw}/mcp/connect-session"), m, None),
            (
                Method::GET,
                format!("{gw}/mcp/integrations/{i}/oauth/connection"),
                m,
                None,
            ),
            (
                Method::POST,
                format!("{gw}/mcp/integrations/{i}/oauth/init"),
                m,
                None,
            ),
        ]
    }

    fn send(
        &self,
        (method, url, token, body): &(Method, String, &str, Option<Value>),
        origin: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .w
            .gw
            .http
            .request(method.clone(), url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream");
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        req
    }
}

async fn foreign_origin_is_refused_on_every_mcp_route(backend: Backend) {
    let r = routes(backend).await;
    let port = r.w.gw.local_addr.port();
    let foreign = [
        "http://evil.example".to_owned(),
        "null".to_owned(),
        format!("http://127.0.0.1:{}", port + 1),
        format!("https://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}.evil.example"),
    ];
    for request in r.requests() {
        for origin in &foreign {
            let resp = r.send(&request, Some(origin)).send().await.unwrap();
            assert_eq!(
                resp.status(),
                403,
                "{} {} from {origin}",
                request.0,
                request.1
            );
        }
    }
    // A message post on a genuine legacy stream is refused just the same.
    let url = format!("{}/{}", r.w.app_url, r.legacy);
    let stream = LegacyStream::open(&r.w, &url, &r.app_token, &[]).await;
    let message = (
        Method::POST,
        stream.endpoint.clone(),
        r.app_token.as_str(),
        Some(initialize()),
    );
    let resp = r
        .send(&message, Some("http://evil.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let reached: Vec<Value> =
        r.up.hits()
            .into_iter()
            .filter(|h| h["path"] != "/sse")
            .collect();
    assert_eq!(
        reached,
        Vec::<Value>::new(),
        "a foreign origin reached the upstream"
    );
    assert_eq!(r.up.hits().len(), 1, "only the genuine stream was opened");
    r.w.gw.stop().await;
}

async fn gateway_and_allowed_origins_are_served(backend: Backend) {
    let r = routes(backend).await;
    let own = r.w.gw.url.clone();
    for origin in [None, Some(own.as_str()), Some(ALLOWED)] {
        for request in r.requests() {
            let resp = r.send(&request, origin).send().await.unwrap();
            let status = resp.status().as_u16();
            // oauth/init on an integration without OAuth is the client's mistake, not a refusal.
            let expected = if request.1.ends_with("/oauth/init") {
                400
            } else {
                200
            };
            assert_eq!(
                status, expected,
                "{} {} from {origin:?}",
                request.0, request.1
            );
        }
    }
    r.w.gw.stop().await;
}
