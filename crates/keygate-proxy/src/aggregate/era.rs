//! The two eras of MCP on the aggregated endpoint (design notes in `README.md` here).
//!
//! - **2025** (`2025-03-26` … `2025-11-25`): an `initialize` handshake opens a session
//!   (`Mcp-Session-Id`); the client's capabilities are declared once.
//! - **2026-07-28**: stateless. Every request carries `params._meta` with the protocol version
//!   and the client's capabilities (and, optionally, its `clientInfo`), mirrored in the
//!   `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers; `server/discover` replaces
//!   `initialize`; results carry `resultType`.
//!
//! Downstream, [`declares_modern`] and [`accept`] decide and check a client's era per request.
//! Upstream, [`era`] learns each integration's era once per store generation with a
//! `server/discover` probe (and tells an HTTP+SSE upstream of 2024-11-05 by its `GET` stream),
//! and [`meta`] builds the `_meta` a 2026 upstream gets.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use super::sse_upstream;
use super::upstream::{self, Link, Member};
use crate::ProxyState;

/// The stateless protocol version.
pub const MODERN: &str = "2026-07-28";
/// The handshake-era version the gateway offers when it initializes an upstream itself.
pub const LATEST_LEGACY: &str = "2025-11-25";
/// Handshake-era versions: a request declaring one of these is not a 2026 request.
const LEGACY: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", LATEST_LEGACY];
/// What the aggregated endpoint speaks, newest first (`server/discover`, `-32022`).
pub const SUPPORTED: [&str; 4] = [MODERN, LATEST_LEGACY, "2025-06-18", "2025-03-26"];

pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// Keys under this prefix are the protocol's own (in `_meta`); some belong to one era only.
pub const RESERVED_PREFIX: &str = "io.modelcontextprotocol/";
/// Reserved `_meta` keys only 2026-07-28 defines: none of them reaches a 2025 peer.
const MODERN_META: [&str; 6] = [
    META_VERSION,
    META_CAPABILITIES,
    META_CLIENT_INFO,
    META_SERVER_INFO,
    "io.modelcontextprotocol/logLevel",
    "io.modelcontextprotocol/subscriptionId",
];
/// Reserved `_meta` keys only the 2025 era defines (2025-11-25 tasks): none reaches a 2026 peer.
const LEGACY_META: [&str; 1] = ["io.modelcontextprotocol/related-task"];
/// Result fields only 2026-07-28 defines.
const MODERN_RESULT: [&str; 3] = ["resultType", "ttlMs", "cacheScope"];

pub const PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
pub const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
pub const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
/// Tool parameters mirrored into headers (`x-mcp-header`), forwarded untouched.
pub const PARAM_PREFIX: &str = "mcp-param-";

/// JSON-RPC codes of 2026-07-28 (schema: `HEADER_MISMATCH`, `UNSUPPORTED_PROTOCOL_VERSION`).
pub const HEADER_MISMATCH: i64 = -32020;
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
const INVALID_PARAMS: i64 = -32602;

/// Client capabilities that need server-to-client requests (2025) or multi round-trip results
/// (2026), which the gateway does not translate between the eras: never declared across them.
const UNBRIDGED: [&str; 3] = ["roots", "sampling", "elicitation"];

/// What the gateway knows about an upstream's era, cached per integration.
#[derive(Clone)]
pub enum Era {
    /// It answered `server/discover` with 2026-07-28 among its versions: these capabilities.
    Modern(Arc<Value>),
    /// Anything else: it is spoken to through an `initialize` handshake.
    Legacy,
    /// It refused the probe as a path it does not serve (`404`, `405`), and a `GET` opens an
    /// HTTP+SSE stream (2024-11-05) that announces a message endpoint.
    Sse,
}

/// Why a 2026 request was refused before any upstream saw it (answered `400`).
#[derive(Debug, PartialEq)]
pub struct Rejection {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

/// What a request's `Mcp-Name` header mirrors: `params.name` of a tool call or prompt,
/// `params.uri` of a resource read.
pub fn name_of(message: &Value) -> Option<&str> {
    let key = match message.get("method")?.as_str()? {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return None,
    };
    message["params"][key].as_str()
}

/// The version a 2025 `initialize` is answered with: the one requested if it is a
/// handshake-era version, else the newest of those (as the 2025 spec has a server do).
pub fn handshake_version(requested: Option<&str>) -> &str {
    match requested {
        Some(v) if LEGACY.contains(&v) => v,
        Some(_) => LATEST_LEGACY,
        None => "2025-06-18",
    }
}

/// Whether a request speaks 2026-07-28 (or a later, stateless version): its `_meta` names a
/// protocol version, or its `MCP-Protocol-Version` header is not a handshake-era one.
pub fn declares_modern(headers: &HeaderMap, message: Option<&Value>) -> bool {
    let in_meta = message.is_some_and(|m| m["params"]["_meta"].get(META_VERSION).is_some());
    let header = headers.get(PROTOCOL_VERSION).and_then(|v| v.to_str().ok());
    in_meta || header.is_some_and(|v| !LEGACY.contains(&v))
}

/// Checks a 2026 request the way the spec orders it: the required `_meta` keys (`-32602`),
/// headers that mirror the body (`-32020`), then the version (`-32022`). Returns the reserved
/// `_meta` entries, to pass on to 2026 upstreams.
pub fn accept(headers: &HeaderMap, message: &Value) -> Result<Map<String, Value>, Rejection> {
    let meta = message["params"]["_meta"].as_object();
    let Some(meta) =
        meta.filter(|m| m.contains_key(META_VERSION) && m.contains_key(META_CAPABILITIES))
    else {
        return Err(rejection(
            INVALID_PARAMS,
            format!("params._meta must carry {META_VERSION} and {META_CAPABILITIES}"),
        ));
    };
    // A header given twice could be read one way here and another way elsewhere.
    let header = |name: &HeaderName| {
        let mut values = headers.get_all(name).iter();
        let first = values.next().and_then(|v| v.to_str().ok());
        if values.next().is_some() { None } else { first }
    };
    let version = meta[META_VERSION].as_str();
    if version.is_none() || header(&PROTOCOL_VERSION) != version {
        return Err(mismatch("MCP-Protocol-Version", "_meta protocol version"));
    }
    if header(&MCP_METHOD) != message["method"].as_str() {
        return Err(mismatch("Mcp-Method", "method"));
    }
    if let Some(name) = name_of(message)
        && header(&MCP_NAME).and_then(decode_header_value).as_deref() != Some(name)
    {
        return Err(mismatch("Mcp-Name", "name"));
    }
    match version {
        Some(MODERN) => Ok(reserved(meta)),
        requested => Err(Rejection {
            code: UNSUPPORTED_PROTOCOL_VERSION,
            message: "Unsupported protocol version".into(),
            data: Some(json!({"supported": SUPPORTED, "requested": requested})),
        }),
    }
}

fn rejection(code: i64, message: String) -> Rejection {
    Rejection {
        code,
        message,
        data: None,
    }
}

fn mismatch(header: &str, field: &str) -> Rejection {
    rejection(
        HEADER_MISMATCH,
        format!("Header mismatch: {header} is missing or does not match the request's {field}"),
    )
}

/// The `io.modelcontextprotocol/*` entries of a `_meta` object.
fn reserved(meta: &Map<String, Value>) -> Map<String, Value> {
    meta.iter()
        .filter(|(k, _)| k.starts_with(RESERVED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The `_meta` a 2026 upstream gets on behalf of a client that declared `capabilities` and
/// `client_info` in a 2025 `initialize` (or, with neither, on the gateway's own behalf).
pub fn meta(capabilities: Option<&Value>, client_info: Option<&Value>) -> Map<String, Value> {
    let mut meta = Map::new();
    meta.insert(META_VERSION.into(), MODERN.into());
    meta.insert(META_CAPABILITIES.into(), bridged(capabilities));
    let info = client_info.cloned().unwrap_or_else(gateway_info);
    meta.insert(META_CLIENT_INFO.into(), info);
    meta
}

/// Capabilities declared to an upstream of the other era: the client's, without those the
/// gateway cannot carry across (see [`UNBRIDGED`]).
pub fn bridged(capabilities: Option<&Value>) -> Value {
    let mut caps = capabilities
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    caps.retain(|k, _| !UNBRIDGED.contains(&k.as_str()));
    Value::Object(caps)
}

/// The gateway as an MCP implementation (`serverInfo`, or `clientInfo` toward upstreams).
pub fn gateway_info() -> Value {
    json!({"name": "keygate", "version": env!("CARGO_PKG_VERSION")})
}

/// Marks a result the gateway hands a 2026 client: `resultType` (when the upstream, of the
/// 2025 era, did not say) and the gateway's `serverInfo`.
pub fn complete(result: &mut Value) {
    let Some(r) = result.as_object_mut() else {
        return;
    };
    r.entry("resultType").or_insert_with(|| "complete".into());
    let meta = r.entry("_meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        meta.entry(META_SERVER_INFO).or_insert_with(gateway_info);
    }
}

/// Whether the `_meta` key `key` belongs to the era a peer does not speak (`to_modern`: the
/// peer speaks 2026-07-28). Keys of neither era alone (extensions, `progressToken`) pass.
pub fn foreign_meta(key: &str, to_modern: bool) -> bool {
    if to_modern {
        LEGACY_META.contains(&key)
    } else {
        MODERN_META.contains(&key)
    }
}

/// Removes from a `_meta` object the keys of the era the peer does not speak.
pub fn strip_meta(meta: &mut Map<String, Value>, to_modern: bool) {
    meta.retain(|k, _| !foreign_meta(k, to_modern));
}

/// A message from an upstream on its way to a client of the other era (`to_modern`: the
/// client speaks 2026-07-28), in place: the other era's `_meta` keys leave its `result` and
/// `params`, a 2026 result loses the fields 2025 does not know (`resultType`, `ttlMs`,
/// `cacheScope`), and a 2025 result gets what 2026 requires ([`complete`]). Messages between
/// peers of one era never come here.
pub fn translate(message: &mut Value, to_modern: bool) {
    for part in ["result", "params"] {
        let Some(p) = message.get_mut(part).and_then(Value::as_object_mut) else {
            continue;
        };
        let Some(meta) = p.get_mut("_meta").and_then(Value::as_object_mut) else {
            continue;
        };
        let before = meta.len();
        strip_meta(meta, to_modern);
        if meta.is_empty() && before > 0 {
            p.remove("_meta");
        }
    }
    let Some(result) = message.get_mut("result") else {
        return;
    };
    if to_modern {
        complete(result);
    } else if let Some(r) = result.as_object_mut() {
        r.retain(|k, _| !MODERN_RESULT.contains(&k.as_str()));
    }
}

/// A message from an upstream (of the 2026 era if `from_modern`) on its way to a client (of
/// the 2026 era if `to_modern`): translated when the eras differ ([`translate`]).
pub fn cross(message: &mut Value, from_modern: bool, to_modern: bool) {
    if from_modern != to_modern {
        translate(message, to_modern);
    }
}

/// Marks a cacheable result (lists, reads, discovery) for a 2026 client: it depends on the
/// user's connections, so it is private and immediately stale.
pub fn cacheable(result: &mut Value) {
    if let Some(r) = result.as_object_mut() {
        r.entry("ttlMs").or_insert_with(|| 0.into());
        r.entry("cacheScope").or_insert_with(|| "private".into());
    }
    complete(result);
}

/// A header value as 2026-07-28 carries names and parameters: plain when it is visible ASCII
/// without edge spaces, else `=?base64?…?=`.
pub fn encode_header_value(value: &str) -> HeaderValue {
    let plain = value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && value.trim() == value
        && !(value.starts_with("=?base64?") && value.ends_with("?="));
    let encoded;
    let text = if plain {
        value
    } else {
        encoded = format!("=?base64?{}?=", STANDARD.encode(value));
        &encoded
    };
    HeaderValue::from_str(text).expect("visible ASCII is a valid header value")
}

/// The inverse of [`encode_header_value`]; `None` for a malformed encoding.
pub fn decode_header_value(value: &str) -> Option<String> {
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(b64) => String::from_utf8(STANDARD.decode(b64).ok()?).ok(),
        None => Some(value.to_owned()),
    }
}

/// The era of `member`'s upstream, probed once per store generation. A probe that reaches no
/// verdict (unreachable, refused credential, server error) is not cached; the upstream is then
/// treated as 2025 for this request.
pub async fn era(state: &ProxyState, member: &Member) -> Era {
    let generation = state.auth.store.generation();
    let id = member.integration.id;
    if let Some(era) = state.cache.eras.get(&id, generation) {
        return era;
    }
    // Boxed: the probe (once per generation) is an upstream exchange, a future far larger
    // than the cache hit every request takes.
    match Box::pin(discover(state, member)).await {
        Some(era) => {
            state.cache.eras.put(id, generation, era.clone());
            era
        }
        None => Era::Legacy,
    }
}

/// `server/discover` on the gateway's own behalf.
async fn discover(state: &ProxyState, member: &Member) -> Option<Era> {
    // The link puts the gateway's own `_meta` in.
    let message = json!({"jsonrpc": "2.0", "id": "kg-discover", "method": "server/discover"});
    let link = Link::Modern(Arc::new(meta(None, None)));
    let resp = upstream::send_message(state, member, &link, &message, None)
        .await
        .ok()?;
    let status = resp.status();
    if status.is_server_error()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return None;
    }
    if matches!(
        status,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
    ) && sse_upstream::announces_endpoint(state, member).await
    {
        return Some(Era::Sse);
    }
    let Ok(answer) = upstream::read_answer(resp, message.get("id")).await else {
        return Some(Era::Legacy);
    };
    let result = &answer["result"];
    let modern = result["supportedVersions"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v == MODERN));
    Some(if modern {
        Era::Modern(Arc::new(result["capabilities"].clone()))
    } else {
        Era::Legacy
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, params: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn checks_a_request_in_the_spec_order() {
        let meta = json!({META_VERSION: MODERN, META_CAPABILITIES: {}, "progressToken": 1});
        let call = request("tools/call", json!({"name": "a_b", "_meta": meta}));
        let ok = headers(&[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", "a_b"),
        ]);
        let accepted = accept(&ok, &call).unwrap();
        assert_eq!(accepted.len(), 2, "only the reserved keys: {accepted:?}");
        let no_caps = request("tools/list", json!({"_meta": {META_VERSION: MODERN}}));
        assert_eq!(accept(&ok, &no_caps).unwrap_err().code, INVALID_PARAMS);
        let wrong_name = headers(&[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", "a_c"),
        ]);
        assert_eq!(
            accept(&wrong_name, &call).unwrap_err().code,
            HEADER_MISMATCH
        );
        let mut twice = ok.clone();
        twice.append("mcp-name", HeaderValue::from_static("a_c"));
        assert_eq!(accept(&twice, &call).unwrap_err().code, HEADER_MISMATCH);
        let future = json!({META_VERSION: "2099-01-01", META_CAPABILITIES: {}});
        let list = request("tools/list", json!({"_meta": future}));
        let h = headers(&[
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-method", "tools/list"),
        ]);
        let refused = accept(&h, &list).unwrap_err();
        assert_eq!(refused.code, UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(refused.data.unwrap()["requested"], "2099-01-01");
    }

    #[test]
    fn initialize_gets_a_handshake_era_version() {
        assert_eq!(handshake_version(Some("2025-03-26")), "2025-03-26");
        assert_eq!(handshake_version(Some(MODERN)), LATEST_LEGACY);
        assert_eq!(handshake_version(None), "2025-06-18");
    }

    #[test]
    fn tells_the_eras_apart() {
        let legacy = headers(&[("mcp-protocol-version", "2025-06-18")]);
        assert!(!declares_modern(&legacy, None));
        assert!(!declares_modern(
            &HeaderMap::new(),
            Some(&request("x", json!({})))
        ));
        assert!(declares_modern(
            &headers(&[("mcp-protocol-version", MODERN)]),
            None
        ));
        let meta = request("x", json!({"_meta": {META_VERSION: MODERN}}));
        assert!(declares_modern(&HeaderMap::new(), Some(&meta)));
    }

    #[test]
    fn header_values_round_trip() {
        for v in ["echo", "file:///a b", " padded", "héllo", "=?base64?x?="] {
            let encoded = encode_header_value(v);
            assert_eq!(decode_header_value(encoded.to_str().unwrap()).unwrap(), v);
        }
        assert_eq!(encode_header_value("echo"), "echo");
        assert_eq!(encode_header_value("héllo"), "=?base64?aMOpbGxv?=");
    }

    #[test]
    fn a_2026_answer_reaches_a_2025_client_without_2026_fields() {
        let mut answer = json!({"jsonrpc": "2.0", "id": 1, "result": {
            "messages": [], "resultType": "complete", "ttlMs": 0, "cacheScope": "private",
            "_meta": {META_SERVER_INFO: {"name": "up"}, "io.modelcontextprotocol/ui": {}}}});
        translate(&mut answer, false);
        assert_eq!(
            answer["result"],
            json!({"messages": [], "_meta": {"io.modelcontextprotocol/ui": {}}})
        );
        let mut note = json!({"method": "notifications/message", "params": {
            "_meta": {"io.modelcontextprotocol/subscriptionId": 3}}});
        translate(&mut note, false);
        assert_eq!(note["params"], json!({}));
    }

    #[test]
    fn a_2025_answer_reaches_a_2026_client_without_2025_fields() {
        let related = "io.modelcontextprotocol/related-task";
        let mut answer = json!({"jsonrpc": "2.0", "id": 1, "result": {
            "content": [], "_meta": {related: {"taskId": "t"}, "progressToken": 1}}});
        translate(&mut answer, true);
        let r = &answer["result"];
        assert_eq!(r["resultType"], "complete");
        assert!(r["_meta"].get(related).is_none(), "{r}");
        assert_eq!(r["_meta"]["progressToken"], 1);
        assert_eq!(r["_meta"][META_SERVER_INFO]["name"], "keygate");
    }

    #[test]
    fn each_era_keeps_its_own_meta_keys() {
        let related = "io.modelcontextprotocol/related-task";
        let mut meta: Map<String, Value> = [related, META_VERSION, "io.example/x"]
            .into_iter()
            .map(|k| (k.to_owned(), json!({})))
            .collect();
        strip_meta(&mut meta, false);
        // Key order is insertion order or sorted, depending on serde_json's `preserve_order`.
        let mut kept: Vec<_> = meta.keys().collect();
        kept.sort();
        assert_eq!(kept, ["io.example/x", related]);
        strip_meta(&mut meta, true);
        assert_eq!(meta.keys().collect::<Vec<_>>(), ["io.example/x"]);
    }

    #[test]
    fn bridged_capabilities_leave_out_server_to_client_requests() {
        let caps = json!({"sampling": {}, "roots": {}, "experimental": {"x": {}}});
        assert_eq!(bridged(Some(&caps)), json!({"experimental": {"x": {}}}));
        let m = meta(Some(&caps), None);
        assert_eq!(m[META_VERSION], MODERN);
        assert_eq!(m[META_CLIENT_INFO]["name"], "keygate");
    }
}
