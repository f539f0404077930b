//! A real MCP handshake against an integration, for `POST /integrations/:id/validate`: an
//! `initialize` over Streamable HTTP (JSON or SSE answer), falling back to the legacy
//! transport's `endpoint` event; the session is closed afterwards.

use std::time::Duration;

use axum::body::Body;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use keygate_core::Secret;
use keygate_core::wire::sse::{Decoder, Event};
use keygate_trace::exchange::MCP_SESSION_ID;
use serde_json::{Value, json};
use url::Url;

use crate::error::ProxyError;
use crate::sse::is_event_stream;
use crate::upstream::Upstream;

const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_PROBE_BODY: usize = 256 * 1024;

/// What the handshake found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// An MCP server answered `initialize`.
    Valid(String),
    /// Reachable, but it wants user authorization first.
    NeedsAuthorization(String),
    /// Not usable, and why.
    Invalid(String),
}

impl Upstream {
    /// Handshakes with the MCP server at `url`, with `credential` as a bearer token if given.
    pub async fn probe(&self, url: &str, credential: Option<&Secret>) -> ProbeOutcome {
        match tokio::time::timeout(PROBE_TIMEOUT, self.probe_inner(url, credential)).await {
            Ok(outcome) => outcome,
            Err(_) => ProbeOutcome::Invalid("the server did not answer within 10 s".into()),
        }
    }

    async fn probe_inner(&self, url: &str, credential: Option<&Secret>) -> ProbeOutcome {
        let Ok(parsed) = Url::parse(url) else {
            return ProbeOutcome::Invalid("the URL is not valid".into());
        };
        // The guard's refusal as it is (what to change), not as an unavailable upstream.
        if let Err(e) = self.check(&parsed) {
            return ProbeOutcome::Invalid(match e {
                ProxyError::Misconfigured {
                    cause: Some(why), ..
                } => why.to_string(),
                other => other.chain().to_string(),
            });
        }
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "keygate-validate", "version": env!("CARGO_PKG_VERSION")},
        }});
        let post = self.request(Method::POST, url, credential, Some(init.to_string()));
        let resp = match self.send(post).await {
            Ok(r) => r,
            Err(e) => return ProbeOutcome::Invalid(e.chain().to_string()),
        };
        let status = resp.status();
        let session = resp.headers().get(MCP_SESSION_ID).cloned();
        let is_sse = is_event_stream(resp.headers());
        let body = read(resp.into_body()).await;
        match status {
            s if s.is_success() => {
                let parsed: Option<Value> = if is_sse {
                    first_event(&body)
                        .and_then(|e| e.data)
                        .and_then(|d| serde_json::from_str(&d).ok())
                } else {
                    serde_json::from_slice(&body).ok()
                };
                let outcome = match parsed.as_ref().and_then(|v| v.get("result")) {
                    Some(result) => ProbeOutcome::Valid(describe(result)),
                    None => ProbeOutcome::Invalid(
                        "the server's answer to initialize is not an MCP result".into(),
                    ),
                };
                if let Some(id) = session {
                    let mut del = self.request(Method::DELETE, url, credential, None);
                    del.headers_mut().insert(MCP_SESSION_ID, id);
                    let _ = self.send(del).await;
                }
                outcome
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                ProbeOutcome::NeedsAuthorization(format!(
                    "the server answered {status}: it needs {} credential",
                    if credential.is_some() {
                        "a different"
                    } else {
                        "a user's"
                    }
                ))
            }
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_FOUND => {
                self.probe_legacy(url, credential).await
            }
            other => ProbeOutcome::Invalid(format!("initialize answered {other}")),
        }
    }

    /// The legacy transport: a GET stream that opens with an `endpoint` event.
    async fn probe_legacy(&self, url: &str, credential: Option<&Secret>) -> ProbeOutcome {
        let get = self.request(Method::GET, url, credential, None);
        let resp = match self.send(get).await {
            Ok(r) => r,
            Err(e) => return ProbeOutcome::Invalid(e.chain().to_string()),
        };
        if !resp.status().is_success() || !is_event_stream(resp.headers()) {
            return ProbeOutcome::Invalid(format!(
                "not an MCP endpoint (GET answered {})",
                resp.status()
            ));
        }
        let mut body = resp.into_body();
        let mut events = Decoder::new(MAX_PROBE_BODY);
        while let Some(Ok(frame)) = body.frame().await {
            let Some(mut data) = frame.data_ref().map(|d| &d[..]) else {
                continue;
            };
            while let Some(decoded) = events.next_event(&mut data) {
                match decoded {
                    Ok(event) if !event.is_dispatched() => continue,
                    Ok(event) if event.event_type() == "endpoint" => {
                        return ProbeOutcome::Valid(
                            "MCP server (legacy HTTP+SSE transport)".into(),
                        );
                    }
                    _ => {
                        return ProbeOutcome::Invalid(
                            "the SSE stream did not open with an endpoint event".into(),
                        );
                    }
                }
            }
        }
        ProbeOutcome::Invalid("the SSE stream ended before an endpoint event".into())
    }

    fn request(
        &self,
        method: Method,
        url: &str,
        credential: Option<&Secret>,
        body: Option<String>,
    ) -> Request<Body> {
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .header(ACCEPT, "application/json, text/event-stream")
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .expect("a request to a checked URL");
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(c) = credential
            && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", c.expose()))
        {
            v.set_sensitive(true);
            req.headers_mut().insert(AUTHORIZATION, v);
        }
        req
    }
}

async fn read(body: hyper::body::Incoming) -> bytes::Bytes {
    match Limited::new(body, MAX_PROBE_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => bytes::Bytes::new(),
    }
}

/// The first event (with data) of an SSE body.
fn first_event(mut body: &[u8]) -> Option<Event> {
    let mut events = Decoder::new(MAX_PROBE_BODY);
    while let Some(decoded) = events.next_event(&mut body) {
        match decoded {
            Ok(event) if event.is_dispatched() => return Some(event),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

fn describe(result: &Value) -> String {
    let info = &result["serverInfo"];
    let name = info["name"].as_str().unwrap_or("unnamed server");
    let version = info["version"].as_str().unwrap_or("?");
    let protocol = result["protocolVersion"].as_str().unwrap_or("?");
    format!("MCP server {name} {version} (protocol {protocol})")
}
