//! Payload capture: whether a trace event keeps the JSON-RPC request and response, and what
//! it masks first.
//!
//! - `off` (default): nothing is kept.
//! - `redacted`: the payload with every value under a sensitive key masked — keys containing
//!   `token`, `secret`, `password`, `authorization`, `api_key`, `apikey`, `cookie`,
//!   `credential`, `private_key`, plus the configured field names — and every string that
//!   looks like a credential (`Bearer …`, `Basic …`, a JWT) masked wherever it is.
//! - `full`: the payload as sent.
//!
//! Either way a payload larger than the configured bound is replaced by
//! `{"truncated": true, "bytes": N}`: a cut JSON document would not parse, and a bounded row
//! keeps the writer fast.

use serde_json::Value;

pub const MASK: &str = "[REDACTED]";

const SENSITIVE_KEYS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "authorization",
    "api_key",
    "apikey",
    "api-key",
    "cookie",
    "credential",
    "private_key",
    "privatekey",
];

/// How much of the payload to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaptureMode {
    #[default]
    Off,
    Redacted,
    Full,
}

impl CaptureMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "redacted" => Some(Self::Redacted),
            "full" => Some(Self::Full),
            _ => None,
        }
    }
}

/// The capture policy of one gateway.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    pub mode: CaptureMode,
    /// Extra field names to mask (compared case-insensitively, whole key).
    pub fields: Vec<String>,
    /// Largest payload kept, in bytes.
    pub max_bytes: usize,
}

impl Capture {
    pub fn new(mode: CaptureMode, fields: &[String], max_bytes: usize) -> Self {
        Self {
            mode,
            fields: fields.iter().map(|f| f.to_ascii_lowercase()).collect(),
            max_bytes,
        }
    }

    pub fn is_on(&self) -> bool {
        self.mode != CaptureMode::Off
    }

    /// What to store for a payload of `total` bytes whose (possibly partial) text is `bytes`.
    pub fn payload(&self, bytes: &[u8], total: u64) -> Option<Value> {
        if !self.is_on() || total == 0 {
            return None;
        }
        if total > self.max_bytes as u64 || (bytes.len() as u64) < total {
            return Some(serde_json::json!({"truncated": true, "bytes": total}));
        }
        let value = serde_json::from_slice::<Value>(bytes).ok()?;
        Some(self.value(value))
    }

    /// Applies the policy to an already parsed payload.
    pub fn value(&self, mut value: Value) -> Value {
        if self.mode == CaptureMode::Redacted {
            self.redact(&mut value);
        }
        value
    }

    fn redact(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if self.sensitive(key) {
                        *v = Value::from(MASK);
                    } else {
                        self.redact(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact(v)),
            Value::String(s) if looks_like_credential(s) => *s = MASK.to_owned(),
            _ => {}
        }
    }

    fn sensitive(&self, key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        SENSITIVE_KEYS.iter().any(|s| key.contains(s)) || self.fields.contains(&key)
    }
}

/// `Bearer …`/`Basic …` values and JWTs (three base64url parts, the first a JSON header).
fn looks_like_credential(s: &str) -> bool {
    let lower = s.get(..7).map(str::to_ascii_lowercase);
    if matches!(lower.as_deref(), Some("bearer "))
        || s.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("basic "))
    {
        return true;
    }
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && s.starts_with("eyJ")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn off_keeps_nothing() {
        let c = Capture::new(CaptureMode::Off, &[], 1024);
        assert_eq!(c.payload(br#"{"a":1}"#, 7), None);
    }

    #[test]
    fn redacted_masks_keys_configured_fields_and_credential_values() {
        let c = Capture::new(CaptureMode::Redacted, &["SSN".to_owned()], 4096);
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "lookup",
            "arguments": {"query": "weather", "apiKey": "k-123", "ssn": "123-45-6789",
                "nested": [{"client_secret": "s"}, "Bearer abc.def", "eyJhbGciOi.eyJzdWIiOi.c2ln"],
                "Authorization": "whatever", "ssn_note": "kept"}}});
        let bytes = body.to_string();
        let out = c.payload(bytes.as_bytes(), bytes.len() as u64).unwrap();
        let args = &out["params"]["arguments"];
        assert_eq!(args["query"], "weather");
        assert_eq!(args["apiKey"], MASK);
        assert_eq!(args["ssn"], MASK);
        assert_eq!(args["ssn_note"], "kept");
        assert_eq!(args["Authorization"], MASK);
        assert_eq!(args["nested"][0]["client_secret"], MASK);
        assert_eq!(args["nested"][1], MASK);
        assert_eq!(args["nested"][2], MASK);
        assert_eq!(out["params"]["name"], "lookup");
        for secret in ["k-123", "123-45-6789", "abc.def", "eyJhbGciOi"] {
            assert!(!out.to_string().contains(secret), "{secret} leaked: {out}");
        }
    }

    #[test]
    fn full_keeps_everything_and_large_payloads_are_replaced() {
        let c = Capture::new(CaptureMode::Full, &[], 16);
        let small = br#"{"token":"t"}"#;
        assert_eq!(
            c.payload(small, small.len() as u64).unwrap(),
            json!({"token": "t"})
        );
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
}
