//! Unit tests of capture: what each mode keeps and what redaction masks.

use http::HeaderValue;
use serde_json::{Value, json};

use super::*;

fn redacted() -> Capture {
    Capture::new(CaptureMode::Redacted, &["SSN".to_owned()], 64 * 1024)
}

/// A string as redacted mode stores it.
fn redact(text: &str) -> String {
    match redacted().scrub(json!(text), &[]) {
        Value::String(s) => s,
        other => panic!("not a string: {other}"),
    }
}

fn injected(values: &[&str]) -> Vec<String> {
    let injected = Injected::default();
    for v in values {
        injected.note(&HeaderValue::from_str(v).unwrap());
    }
    injected.secrets()
}

#[test]
fn off_keeps_nothing() {
    let c = Capture::new(CaptureMode::Off, &[], 1024);
    assert_eq!(c.payload(br#"{"a":1}"#, 7), None);
}

#[test]
fn secret_named_keys_are_masked_at_any_depth_whatever_their_spelling() {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "lookup", "_meta": {"progressToken": 7},
        "arguments": {"query": "weather", "apiKey": "k-123", "ssn": "123-45-6789",
            "ssn_note": "kept", "max_tokens": 100, "token_type": "bearer",
            "nested": [{"client_secret": "s1"}, [{"X-Api-Key": "k2", "accessToken": "a3"}]],
            "headers": {"Authorization": "whatever", "Cookie": "sid=4", "set-cookie": "sid=5"},
            "private_key": {"kty": "EC", "d": "x6"}, "credentials": ["u", "p7"],
            "password": "p8", "GITHUB_TOKEN": "t9", "auth": "a10", "password_set": true}}});
    let out = redacted().scrub(body, &[]);
    let args = &out["params"]["arguments"];
    for secret in [
        "k-123",
        "123-45-6789",
        "s1",
        "k2",
        "a3",
        "whatever",
        "sid=",
        "x6",
        "p7",
    ] {
        assert!(!out.to_string().contains(secret), "{secret} kept: {out}");
    }
    for secret in ["p8", "t9", "a10"] {
        assert!(!out.to_string().contains(secret), "{secret} kept: {out}");
    }
    assert_eq!(args["apiKey"], MASK);
    assert_eq!(args["nested"][1][0]["X-Api-Key"], MASK);
    assert_eq!(args["private_key"], MASK, "a secret object is masked whole");
    assert_eq!(args["password_set"], true, "a boolean tells nothing");
    // Ordinary fields stay.
    assert_eq!(args["query"], "weather");
    assert_eq!(args["ssn_note"], "kept");
    assert_eq!(args["max_tokens"], 100);
    assert_eq!(args["token_type"], "bearer");
    assert_eq!(out["params"]["_meta"]["progressToken"], 7);
    assert_eq!(out["params"]["name"], "lookup");
}

#[test]
fn every_secret_shape_is_masked_inside_free_text() {
    let cases = [
        (
            "use ghp_4fXk9QmZ2vB7nR1tY8wL3sD6hJ0pA5cE9uKx now",
            "use [REDACTED] now",
        ),
        (
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
            "[REDACTED]",
        ),
        (
            "gho_16C7e42F292c6912E7710c838347Ae178B4a ok",
            "[REDACTED] ok",
        ),
        (
            "slack xoxb-1234567890-0987654321-AbCdEfGh",
            "slack [REDACTED]",
        ),
        (
            "key sk-live-51HbQzR8mT3kX9vLp2Wd7Yc4Nf6Gh0Js.",
            "key [REDACTED].",
        ),
        ("openai sk-proj-Ab12Cd34Ef56Gh78Ij90", "openai [REDACTED]"),
        (
            "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "stripe [REDACTED]",
        ),
        (
            "restricted rk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "restricted [REDACTED]",
        ),
        (
            "aws AKIAIOSFODNN7EXAMPLE in us-east-1",
            "aws [REDACTED] in us-east-1",
        ),
        ("sts ASIAY34FZKBOKMUTVV7A", "sts [REDACTED]"),
        (
            "google AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
            "google [REDACTED]",
        ),
        ("gcp ya29.a0AfH6SMBx3Yk7Lq9Zr2Vn5Tw8", "gcp [REDACTED]"),
        ("glpat-xxxxxxxxxxxxxxxxxxxx1 here", "[REDACTED] here"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-1 end",
            "jwt [REDACTED] end",
        ),
        (
            "Authorization: Bearer b7Tq2LmX9pR4vW8zK3nY6cH1",
            "Authorization: Bearer [REDACTED]",
        ),
        (
            "authorization=token abcdef",
            "authorization=token [REDACTED]",
        ),
        (
            "curl -H 'Authorization: Basic dXNlcjpwYXNz'",
            "curl -H 'Authorization: Basic [REDACTED]'",
        ),
        (
            "send Bearer abc.def-123 along",
            "send Bearer [REDACTED] along",
        ),
        ("X-Api-Key: k1234", "X-Api-Key: [REDACTED]"),
        (
            r#"{"apiKey": "opaque" oops"#,
            r#"{"apiKey": "[REDACTED]" oops"#,
        ),
        (
            "client_secret=abc&grant_type=x",
            "client_secret=[REDACTED]&grant_type=x",
        ),
        (
            "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG",
            "AWS_SECRET_ACCESS_KEY=[REDACTED]",
        ),
        ("password: hunter2", "password: [REDACTED]"),
        ("GITHUB_TOKEN=abc123xyz", "GITHUB_TOKEN=[REDACTED]"),
        ("Cookie: sid=abc; theme=dark", "Cookie: [REDACTED]"),
        (
            "postgres://app:s3cr3t@db.internal:5432/app",
            "postgres://app:[REDACTED]@db.internal:5432/app",
        ),
        (
            "https://x.example/cb?code=abc123&state=s#access_token=t0k",
            "https://x.example/cb?code=[REDACTED]&state=s#access_token=[REDACTED]",
        ),
        (
            "https://maps.example/api?key=opaque&q=1",
            "https://maps.example/api?key=[REDACTED]&q=1",
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----\nafter",
            "[REDACTED]\nafter",
        ),
        ("-----BEGIN PRIVATE KEY-----\nMIIEvQ cut sho", "[REDACTED]"),
    ];
    for (text, expected) in cases {
        assert_eq!(redact(text), expected, "{text}");
    }
}

#[test]
fn ordinary_text_is_not_masked() {
    for text in [
        "the token count is 5",
        "Basic information about the weather",
        "password reset instructions were sent",
        "Bearer tokens expire; basic auth does not",
        "token: 5",
        "max_tokens=100",
        "the secret: simple",
        "task-scheduler-v2 and risk-assessment-framework",
        "see https://example.com/docs?page=2#intro",
        "email me at alice@example.com",
        "the authorization server",
        "sk-learn",
        "[REDACTED]",
    ] {
        assert_eq!(redact(text), text);
    }
}

#[test]
fn json_text_inside_a_string_is_redacted_as_json_and_stays_json() {
    let inner = json!({"rows": [{"name": "a", "apiKey": "opaque-1"}],
        "note": "token ghp_4fXk9QmZ2vB7nR1tY8wL3sD6hJ0pA5cE9uKx"});
    let result = json!({"content": [{"type": "text", "text": inner.to_string()},
        {"type": "text", "text": "[1, 2, 3]"}]});
    let out = redacted().scrub(result, &[]);
    let text = out["content"][0]["text"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(text).expect("still JSON");
    assert_eq!(parsed["rows"][0]["apiKey"], MASK);
    assert_eq!(parsed["rows"][0]["name"], "a");
    assert_eq!(parsed["note"], "token [REDACTED]");
    assert_eq!(
        out["content"][1]["text"], "[1, 2, 3]",
        "untouched JSON keeps its text"
    );
}

#[test]
fn injected_credentials_are_masked_in_every_mode() {
    let secrets = injected(&["Bearer opaque-Server-1", "plainkey"]);
    let body = json!({"result": {"headers": {"x": "Bearer opaque-Server-1"},
        "text": "I got opaque-Server-1 and plainkey", "opaque-Server-1": "as a key",
        "url": "https://e.example/?t=opaque-Server-1", "ok": "kept"}});
    for mode in [CaptureMode::Redacted, CaptureMode::Full] {
        let out = Capture::new(mode, &[], 4096).scrub(body.clone(), &secrets);
        let text = out.to_string();
        assert!(
            !text.contains("opaque-Server-1") && !text.contains("plainkey"),
            "{text}"
        );
        assert_eq!(out["result"]["text"], "I got [REDACTED] and [REDACTED]");
        assert_eq!(out["result"]["headers"]["x"], "Bearer [REDACTED]");
        assert_eq!(out["result"]["[REDACTED]"], "as a key");
        assert_eq!(out["result"]["ok"], "kept");
    }
    // Full mode keeps everything else as sent.
    let full = Capture::new(CaptureMode::Full, &[], 4096);
    let kept = json!({"token": "t", "note": "ghp_4fXk9QmZ2vB7nR1tY8wL3sD6hJ0pA5cE9uKx"});
    assert_eq!(full.scrub(kept.clone(), &secrets), kept);
}

#[test]
fn an_injected_credential_is_also_found_percent_encoded_and_a_short_one_only_whole() {
    let secrets = injected(&["Bearer a+b/c=d", "Bearer xyz"]);
    assert!(secrets.contains(&"a%2Bb%2Fc%3Dd".to_owned()), "{secrets:?}");
    let full = Capture::new(CaptureMode::Full, &[], 4096);
    let out = full.scrub(
        json!(["?t=a%2Bb%2Fc%3Dd", "raw a+b/c=d", "xyz", "xyzzy"]),
        &secrets,
    );
    assert_eq!(
        out,
        json!(["?t=[REDACTED]", "raw [REDACTED]", "[REDACTED]", "xyzzy"])
    );
}

#[test]
fn error_messages_lose_secrets_in_every_mode() {
    let secrets = injected(&["Bearer opaque-Server-1"]);
    for mode in [CaptureMode::Off, CaptureMode::Full] {
        let c = Capture::new(mode, &[], 4096);
        let m = c.scrub_message(
            "token opaque-Server-1 refused; try ghp_4fXk9QmZ2vB7nR1tY8wL3sD6hJ0pA5cE9uKx (-32000)",
            &secrets,
        );
        assert_eq!(m, "token [REDACTED] refused; try [REDACTED] (-32000)");
    }
}

#[test]
fn full_keeps_everything_and_large_payloads_are_replaced() {
    let c = Capture::new(CaptureMode::Full, &[], 16);
    let small = br#"{"token":"t"}"#;
    let kept = c.payload(small, small.len() as u64).unwrap();
    assert_eq!(c.scrub(kept, &[]), json!({"token": "t"}));
    let big = br#"{"a":"0123456789abcdef"}"#;
    assert_eq!(
        c.payload(big, big.len() as u64).unwrap(),
        json!({"truncated": true, "bytes": big.len()})
    );
    // Only a prefix was seen: never parse a partial document.
    assert_eq!(
        c.payload(b"{\"a\"", 40).unwrap(),
        json!({"truncated": true, "bytes": 40})
    );
}
