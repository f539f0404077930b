//! MCP traffic as the integration tests send it to a [`McpWorld`]'s aggregated endpoint:
//! JSON-RPC bodies, the requests of 2025 and 2026-07-28 clients, and reading their answers.

use serde_json::{Value, json};

use crate::world::McpWorld;

/// The protocol version of a 2026-07-28 client, which carries no session.
pub const MODERN: &str = "2026-07-28";

/// A JSON-RPC request with `id`, `method` and `params`.
pub fn rpc(id: i64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// A 2025 client's POST to the world's aggregated endpoint, within `session` once it has one.
pub fn post(
    w: &McpWorld,
    token: &str,
    session: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    post_at(w, &w.app_url, token, session, body)
}

/// A 2025 client's POST to the aggregated endpoint at `url` (a replica's, say), within
/// `session` once it has one.
pub fn post_at(
    w: &McpWorld,
    url: &str,
    token: &str,
    session: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let mut req =
        w.gw.http
            .post(url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(body);
    if let Some(s) = session {
        req = req
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-06-18");
    }
    req
}

/// A POST of `body` to the pass-through endpoint of the integration `slug`.
pub fn passthrough(w: &McpWorld, slug: &str, token: &str, body: &Value) -> reqwest::RequestBuilder {
    w.gw.http
        .post(format!("{}/{slug}", w.app_url))
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(token)
        .json(body)
}

/// A 2025 client's `initialize` on the aggregated endpoint, declaring `capabilities`: its
/// session id and the answer.
pub async fn initialize(w: &McpWorld, token: &str, capabilities: Value) -> (String, Value) {
    let params = json!({"protocolVersion": "2025-06-18", "capabilities": capabilities,
        "clientInfo": {"name": "t", "version": "1"}});
    let resp = post(w, token, None, &rpc(0, "initialize", params))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    (session, resp.json().await.unwrap())
}

/// A 2026-07-28 request to the aggregated endpoint declaring no client capabilities: see
/// [`modern_with`].
pub fn modern(
    w: &McpWorld,
    token: &str,
    id: i64,
    method: &str,
    params: Value,
) -> reqwest::RequestBuilder {
    modern_with(w, token, id, method, params, json!({}))
}

/// A 2026-07-28 request to the aggregated endpoint: `_meta` with the version, `capabilities`
/// and `clientInfo`, and the `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` (the
/// params' `name` or `uri`) headers.
pub fn modern_with(
    w: &McpWorld,
    token: &str,
    id: i64,
    method: &str,
    mut params: Value,
    capabilities: Value,
) -> reqwest::RequestBuilder {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": capabilities,
        "io.modelcontextprotocol/clientInfo": {"name": "client-2026", "version": "1"},
    });
    let mut req =
        w.gw.http
            .post(&w.app_url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", MODERN)
            .header("mcp-method", method);
    if let Some(name) = params
        .get("name")
        .or(params.get("uri"))
        .and_then(Value::as_str)
    {
        req = req.header("mcp-name", name);
    }
    req.json(&rpc(id, method, params))
}

/// Sends a request and reads its status and JSON body (`null` where it has none).
pub async fn status_json(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The sorted `name`s of a list result's items.
pub fn names(items: &Value) -> Vec<String> {
    let mut names: Vec<String> = items
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {items}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort_unstable();
    names
}
