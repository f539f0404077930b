//! Payload capture: whether a trace event keeps the JSON-RPC request and response, and what
//! it masks first.
//!
//! - `off` (default): nothing is kept.
//! - `redacted`: the payload with every secret masked as `[REDACTED]` (the JSON stays valid):
//!   values under secret-named keys at any depth (`apiKey`, `access_token`, `X-Api-Key`,
//!   `client_secret`, `password`, `authorization`, `cookie`, `private_key`, `credentials`, …,
//!   compared after folding case, `-`/`_` and camelCase, plus `traces.redact_fields`), and
//!   secret-shaped text anywhere in a string ([`redact`]: bearer and basic credentials, JWTs,
//!   GitHub, Slack, OpenAI, Stripe, AWS and Google keys, PEM private keys, passwords in URLs,
//!   `key=value` and `key: value` pairs with a secret name). A string holding JSON text (an
//!   MCP tool result's `content[].text` often does) is redacted as JSON.
//! - `full`: the payload as sent.
//!
//! In every mode, `full` included, the credentials the gateway itself sent upstream for the
//! exchange ([`Injected`]) are masked wherever they appear — an upstream that echoes its
//! `Authorization` back must not make the gateway store it — and so are they and every
//! secret shape in the error message an event keeps.
//!
//! The policy runs once per payload when the exchange completes, over at most
//! `traces.max_payload_bytes`: a payload larger than that is replaced by
//! `{"truncated": true, "bytes": N}` (a cut JSON document would not parse, and a bounded row
//! keeps the writer fast).

mod redact;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use serde_json::Value;

use self::redact::Redactor;

pub const MASK: &str = "[REDACTED]";

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
    /// Extra field names to mask, folded like keys are (whole key).
    fields: Vec<String>,
    /// Largest payload kept, in bytes.
    pub max_bytes: usize,
}

/// The credentials the gateway sent upstream while handling one exchange, noted by the code
/// that sends ([`Injected::note`]) and masked in what the exchange stores. Cheap to clone:
/// clones share one list.
#[derive(Clone, Default)]
pub struct Injected(Arc<Mutex<Vec<HeaderValue>>>);

impl Capture {
    pub fn new(mode: CaptureMode, fields: &[String], max_bytes: usize) -> Self {
        Self {
            mode,
            fields: fields.iter().map(|f| redact::fold_key(f)).collect(),
            max_bytes,
        }
    }

    pub fn is_on(&self) -> bool {
        self.mode != CaptureMode::Off
    }

    /// What to keep of a payload of `total` bytes whose (possibly partial) text is `bytes`,
    /// before [`Capture::scrub`].
    pub fn payload(&self, bytes: &[u8], total: u64) -> Option<Value> {
        if !self.is_on() || total == 0 {
            return None;
        }
        if total > self.max_bytes as u64 || (bytes.len() as u64) < total {
            return Some(serde_json::json!({"truncated": true, "bytes": total}));
        }
        serde_json::from_slice::<Value>(bytes).ok()
    }

    /// Applies the policy to a kept payload: `secrets` ([`Injected::secrets`]) masked in every
    /// mode, and in `redacted` mode every secret-named field and secret-shaped string.
    pub fn scrub(&self, mut value: Value, secrets: &[String]) -> Value {
        let redactor = Redactor {
            fields: &self.fields,
            secrets,
            redact: self.mode == CaptureMode::Redacted,
        };
        redactor.value(&mut value, redact::NESTING);
        value
    }

    /// An error message as it may be stored, whatever the mode: `secrets` and every
    /// secret-shaped string masked.
    pub fn scrub_message(&self, message: &str, secrets: &[String]) -> String {
        let redactor = Redactor {
            fields: &self.fields,
            secrets,
            redact: true,
        };
        redactor
            .text(message, redact::NESTING)
            .unwrap_or_else(|| message.to_owned())
    }
}

impl Injected {
    /// Notes a header value sent upstream as a credential (`Authorization`, or any header
    /// marked sensitive).
    pub fn note(&self, value: &HeaderValue) {
        let mut values = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !values.contains(value) {
            values.push(value.clone());
        }
    }

    /// The strings to mask: each credential without its scheme (`Bearer abc` → `abc`, which
    /// also masks the whole value), and its percent-encoded form when that differs; longest
    /// first.
    pub fn secrets(&self) -> Vec<String> {
        let values = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(values.len());
        for value in values.iter() {
            let text = String::from_utf8_lossy(value.as_bytes());
            let text = text.trim();
            let credential = match text.split_once(' ') {
                Some((scheme, rest)) if scheme.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    rest.trim()
                }
                _ => text,
            };
            if credential.is_empty() {
                continue;
            }
            let encoded = percent_encode(credential);
            if encoded != credential {
                out.push(encoded);
            }
            out.push(credential.to_owned());
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out.dedup();
        out
    }
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |v| v.len());
        write!(f, "Injected({n} credentials)")
    }
}

/// `s` with every byte outside RFC 3986's unreserved set percent-encoded (how a credential
/// echoed in a URL looks).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests;
