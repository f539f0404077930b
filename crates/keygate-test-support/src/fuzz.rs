//! Property-based fuzzing on stable Rust: [`run`] draws inputs a stranger controls from a
//! proptest strategy and shrinks any failure to a minimal input.
//!
//! The test suite runs a short round (`PROPTEST_CASES`, proptest's default 256 cases per
//! property). A longer run repeats rounds with fresh seeds until `KEYGATE_FUZZ_SECS` have
//! passed, for each property; all eight at once in ten minutes:
//! `KEYGATE_FUZZ_SECS=600 cargo test --release -p keygate --test fuzz -- --test-threads=8`.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

/// Checks `property` on inputs from `strategy`; panics with the shrunk failing input.
pub fn run<S: Strategy>(strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let deadline = std::env::var("KEYGATE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(|secs| Instant::now() + Duration::from_secs(secs));
    let config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    loop {
        if let Err(e) = TestRunner::new(config.clone()).run(&strategy, &property) {
            panic!("{e}");
        }
        if deadline.is_none_or(|d| Instant::now() >= d) {
            return;
        }
    }
}

/// Any JSON value, nested a few levels deep.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The methods a client or server may send, plus strings that are none of them.
pub fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "initialize",
            "notifications/initialized",
            "notifications/cancelled",
            "ping",
            "tools/list",
            "tools/call",
            "prompts/list",
            "prompts/get",
            "resources/list",
            "resources/read",
            "resources/templates/list",
            "resources/subscribe",
            "resources/unsubscribe",
            "completion/complete",
            "logging/setLevel",
            "server/discover",
            "sampling/createMessage",
            "elicitation/create",
        ])
        .prop_map(str::to_owned),
        ".{0,24}",
    ]
}

/// A JSON-RPC message as a hostile client sends it: any field may be missing or of the
/// wrong type, and the params are arbitrary.
pub fn json_rpc_message() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just(Some(json!("2.0"))),
            Just(None),
            json_value().prop_map(Some)
        ],
        prop_oneof![
            Just(None),
            any::<i64>().prop_map(|i| Some(json!(i))),
            ".{0,12}".prop_map(|s| Some(json!(s))),
            json_value().prop_map(Some),
        ],
        prop_oneof![
            method().prop_map(|m| Some(json!(m))),
            json_value().prop_map(Some),
            Just(None)
        ],
        prop_oneof![
            Just(None),
            json_value().prop_map(Some),
            tool_params().prop_map(Some)
        ],
        prop_oneof![Just(None), json_value().prop_map(Some)],
        prop_oneof![Just(None), json_value().prop_map(Some)],
    )
        .prop_map(|(jsonrpc, id, method, params, result, error)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("jsonrpc", jsonrpc),
                ("id", id),
                ("method", method),
                ("params", params),
                ("result", result),
                ("error", error),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Value::Object(m)
        })
}

/// `tools/call`-shaped params whose name and arguments are arbitrary.
fn tool_params() -> impl Strategy<Value = Value> {
    (".{0,24}", json_value(), json_value()).prop_map(
        |(name, arguments, meta)| json!({"name": name, "arguments": arguments, "_meta": meta}),
    )
}

/// A request body: one message, a batch, arbitrary JSON, or bytes that are not JSON at all.
pub fn json_rpc_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => json_rpc_message().prop_map(|m| m.to_string().into_bytes()),
        2 => prop::collection::vec(json_rpc_message(), 0..4)
            .prop_map(|b| Value::Array(b).to_string().into_bytes()),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}
