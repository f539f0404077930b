//! A client's POSTed message, read as little as the route needs.
//!
//! Most messages are plain requests — `tools/call` above all — whose method, id and
//! `params.name` are all the route reads before it sends them on, renamed. For those
//! ([`Message::Outlined`]) only that outline is read; the whole message becomes a JSON value
//! only if something needs it (a policy judging the call, a payload capture, an upstream of
//! another era), and a routed call is sent as the client wrote it, minus the name's
//! `{slug}_` prefix ([`Message::without_prefix`]). Parsing into a value costs more than the
//! rest of a routed call's JSON handling: every key is an allocation and a hash.
//!
//! Anything else — a notification, a response, a batch, a `_meta` with keys of the 2026 era
//! (its protocol version, capabilities, …), a name, method or `_meta` key written with
//! escapes, duplicated members, ids that are no id — is parsed and checked whole as before
//! ([`Message::Parsed`]). A `_meta` of other keys (`progressToken`, trace context) is only
//! skipped: nothing in the route reads it, and a 2025 upstream gets it as it is. A message
//! that has been parsed is sent on from its parse, as it was judged: no second parser upstream
//! reads other bytes than those a policy saw.

use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use keygate_core::wire::jsonrpc::{ParamsOutline, RequestId};
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::era;
use super::upstream::Outgoing;
use super::{invalid, parse_error};
use crate::error::ProxyError;

/// A client's message.
pub enum Message {
    /// A plain request, read only as far as its [`Outline`].
    Outlined {
        /// The message as the client sent it: valid JSON (the outline's read checked it).
        text: String,
        outline: Outline,
        /// The whole message, parsed when first needed.
        value: OnceLock<Value>,
    },
    /// Any other message, parsed and checked whole.
    Parsed(Value),
}

/// What the route reads of a plain request: a JSON object whose `method` and `params.name`
/// (when there is one) are strings without escapes, whose `id` is a number or a string, whose
/// `params` (when there are) are an object whose `_meta` (if any) has no key of the 2026 era
/// ([`era::foreign_meta`]), and whose members are not duplicated.
pub struct Outline {
    method: Range<usize>,
    id: RequestId,
    /// Where the characters of `params.name` are (between its quotes).
    name: Option<Range<usize>>,
}

impl Message {
    /// Reads a POSTed body: a plain request's outline, or else the whole message (one
    /// message: a batch is refused). See [`Message::check`] for the rest.
    pub fn read(bytes: &[u8]) -> Result<Self, ProxyError> {
        if let Ok(text) = std::str::from_utf8(bytes)
            && let Some(outline) = Outline::read(text)
        {
            return Ok(Self::Outlined {
                text: text.to_owned(),
                outline,
                value: OnceLock::new(),
            });
        }
        let message: Value = serde_json::from_slice(bytes).map_err(|_| parse_error())?;
        if message.is_array() {
            return Err(invalid("JSON-RPC batches are not supported"));
        }
        Ok(Self::Parsed(message))
    }

    /// Refuses what the route cannot read: it reads (and rewrites) the message as an object
    /// with object params and an id that is one. An outline is all that.
    pub fn check(&self) -> Result<(), ProxyError> {
        let Self::Parsed(message) = self else {
            return Ok(());
        };
        if !message.is_object() {
            return Err(invalid("A JSON-RPC message is an object"));
        }
        if message.get("params").is_some_and(|p| !p.is_object()) {
            return Err(invalid("MCP params are an object"));
        }
        if message
            .get("id")
            .is_some_and(|id| RequestId::from_value(id).is_none())
        {
            return Err(invalid("A JSON-RPC id is a string or a number"));
        }
        Ok(())
    }

    /// The whole message (parsed now, if it was only outlined). Fails only for JSON that the
    /// outline's read let through and a parse refuses: a number out of range.
    pub fn value(&self) -> Result<&Value, ProxyError> {
        match self {
            Self::Parsed(value) => Ok(value),
            Self::Outlined { text, value, .. } => {
                if let Some(v) = value.get() {
                    return Ok(v);
                }
                let parsed = serde_json::from_str(text).map_err(|_| parse_error())?;
                Ok(value.get_or_init(|| parsed))
            }
        }
    }

    /// The whole message, owned.
    pub fn into_value(self) -> Result<Value, ProxyError> {
        match self {
            Self::Parsed(value) => Ok(value),
            Self::Outlined { text, value, .. } => match value.into_inner() {
                Some(value) => Ok(value),
                None => serde_json::from_str(&text).map_err(|_| parse_error()),
            },
        }
    }

    /// The parsed message, when the outline cannot stand for it. An outlined message is a
    /// request whose `params._meta` has no 2026 key, so what the era rules read there (the
    /// protocol version) reads the same as `None`.
    pub fn parsed(&self) -> Option<&Value> {
        match self {
            Self::Parsed(value) => Some(value),
            Self::Outlined { .. } => None,
        }
    }

    pub fn method(&self) -> Option<&str> {
        match self {
            Self::Outlined { text, outline, .. } => Some(&text[outline.method.clone()]),
            Self::Parsed(value) => value["method"].as_str(),
        }
    }

    pub fn id(&self) -> Option<RequestId> {
        match self {
            Self::Outlined { outline, .. } => Some(outline.id.clone()),
            Self::Parsed(value) => RequestId::of(value),
        }
    }

    /// `params.name`, if it is a string.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Outlined { text, outline, .. } => outline.name.clone().map(|r| &text[r]),
            Self::Parsed(value) => value["params"]["name"].as_str(),
        }
    }

    /// The message for the upstream that a routed `params.name` names, with the name's first
    /// `prefix` bytes (its `{slug}_`) cut. Unparsed, it is the client's text without them;
    /// parsed (judged by a policy, captured), it is the parse, renamed.
    pub fn without_prefix(self, prefix: usize) -> Result<Renamed, ProxyError> {
        if let Self::Outlined {
            text,
            outline,
            value,
        } = &self
            && value.get().is_none()
            && let Some(name) = &outline.name
            && text[name.clone()].get(..prefix).is_some()
        {
            let cut = name.start..name.start + prefix;
            let mut sent = Vec::with_capacity(text.len() - prefix);
            sent.extend_from_slice(&text.as_bytes()[..cut.start]);
            sent.extend_from_slice(&text.as_bytes()[cut.end..]);
            return Ok(Renamed::Sent(Bytes::from(sent)));
        }
        let mut value = self.into_value()?;
        let inner = value["params"]["name"]
            .as_str()
            .and_then(|name| name.get(prefix..))
            .map(str::to_owned);
        value["params"]["name"] = Value::from(inner);
        Ok(Renamed::Value(value))
    }
}

/// A routed request as its upstream is sent it.
pub enum Renamed {
    /// Bytes of valid JSON: a plain request as the client wrote it, renamed.
    Sent(Bytes),
    Value(Value),
}

impl Renamed {
    pub fn outgoing(&self) -> Outgoing<'_> {
        match self {
            Self::Sent(bytes) => Outgoing::Sent(bytes.clone()),
            Self::Value(value) => Outgoing::Value(value),
        }
    }
}

impl Outline {
    fn read(text: &str) -> Option<Self> {
        // A struct also reads from an array (its members in order): only an object is one.
        if !text.trim_start().starts_with('{') {
            return None;
        }
        let envelope: Envelope<'_> = serde_json::from_str(text).ok()?;
        let name = match envelope.params.name {
            Some(None) => return None, // `null` is not a name: read whole
            name => name.flatten().map(|name| within(text, name)),
        };
        Some(Self {
            method: within(text, envelope.method),
            id: RequestId::from_value(&envelope.id)?,
            name,
        })
    }
}

/// Where `part`, borrowed from `text`, is in it.
fn within(text: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - text.as_ptr() as usize;
    debug_assert!(text.get(start..start + part.len()) == Some(part));
    start..start + part.len()
}

/// The members of a plain request the route reads; the others are skipped (checked as JSON,
/// not kept). `&str` borrows: a string with escapes fails the read, as does a member given
/// twice.
#[derive(Deserialize)]
struct Envelope<'a> {
    method: &'a str,
    id: Value,
    /// An object (not `null`) whose `_meta`, if any, has no 2026 key.
    #[serde(borrow, default)]
    params: ParamsOutline<'a, OtherEraFree>,
}

/// A `_meta` object without keys of the 2026 era (whose keys are read without escapes).
struct OtherEraFree;

impl<'de> Deserialize<'de> for OtherEraFree {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = OtherEraFree;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a _meta object without 2026 keys")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while let Some(key) = map.next_key::<&'de str>()? {
                    if era::foreign_meta(key, false) {
                        return Err(de::Error::custom("a 2026 _meta is read whole"));
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(OtherEraFree)
            }
        }
        d.deserialize_map(Keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Message {
        Message::read(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn is_outlined(m: &Message) -> bool {
        matches!(m, Message::Outlined { .. })
    }

    #[test]
    fn a_plain_call_is_outlined_and_reads_as_its_parse() {
        let text = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"gh_search","arguments":{"q":"x"}}}"#;
        let m = read(text);
        assert!(is_outlined(&m));
        assert_eq!(m.method(), Some("tools/call"));
        assert_eq!(m.id(), Some(RequestId::from(7)));
        assert_eq!(m.name(), Some("gh_search"));
        let parsed: Value = serde_json::from_str(text).unwrap();
        assert_eq!(m.value().unwrap(), &parsed);
    }

    #[test]
    fn a_call_with_a_progress_token_is_outlined() {
        let m = read(
            r#"{"id":1,"method":"tools/call","params":{"name":"gh_a","_meta":{"progressToken":"p-1"}}}"#,
        );
        assert!(is_outlined(&m));
        assert!(m.parsed().is_none());
    }

    #[test]
    fn a_renamed_call_is_the_clients_text_without_the_prefix() {
        let m = read(
            r#"{"id":"a","method":"tools/call","params":{"name":"gh_search","arguments":{"name":"gh_x"}}}"#,
        );
        let Renamed::Sent(sent) = m.without_prefix("gh_".len()).unwrap() else {
            panic!("sent as parsed");
        };
        assert_eq!(
            std::str::from_utf8(&sent).unwrap(),
            r#"{"id":"a","method":"tools/call","params":{"name":"search","arguments":{"name":"gh_x"}}}"#
        );
    }

    #[test]
    fn a_parsed_call_is_renamed_from_its_parse() {
        let m = read(r#"{"id":1,"method":"tools/call","params":{"name":"gh_search"}}"#);
        m.value().unwrap(); // judged by a policy, say
        let Renamed::Value(v) = m.without_prefix("gh_".len()).unwrap() else {
            panic!("sent as written, not as judged");
        };
        assert_eq!(v["params"]["name"], "search");
    }

    #[test]
    fn messages_the_outline_cannot_stand_for_are_parsed_whole() {
        for text in [
            r#"{"method":"notifications/initialized"}"#,
            r#"{"id":"kg-1","result":{}}"#,
            r#"{"id":1,"method":"tools/call","params":{"name":"gh_a","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
            r#"{"id":1,"method":"tools/call","params":{"name":"gh_a","_meta":{"io.modelcontextprotocol\/logLevel":"info"}}}"#,
            r#"{"id":1,"method":"tools/call","params":{"name":"gh_a","_meta":{},"_meta":{}}}"#,
            r#"{"id":1,"method":"tools/call","params":{"name":"gh\u005fa"}}"#,
            r#"{"id":1,"method":"tools/call","params":{"name":"gh_a","name":"gh_b"}}"#,
            r#"{"id":1,"id":2,"method":"tools/call"}"#,
        ] {
            assert!(!is_outlined(&read(text)), "{text}");
        }
    }

    #[test]
    fn a_duplicated_name_reads_as_its_parse_does() {
        let m = read(r#"{"id":1,"method":"tools/call","params":{"name":"gh_a","name":"gh_b"}}"#);
        assert_eq!(m.name(), Some("gh_b"));
    }

    #[test]
    fn what_no_parse_accepts_is_refused_as_before() {
        for (text, code) in [
            ("[1]", "batches"),
            (r#"["tools/call",1,{}]"#, "batches"),
            ("3", "is an object"),
            (
                r#"{"id":1,"method":"tools/call","params":null}"#,
                "params are an object",
            ),
            (r#"{"id":null,"method":"tools/call"}"#, "string or a number"),
            (r#"{"id":1,"method":"tools/call""#, "Parse error"),
        ] {
            let Err(e) = Message::read(text.as_bytes()).and_then(|m| m.check()) else {
                panic!("{text} was accepted");
            };
            assert!(e.to_string().contains(code), "{text}: {e}");
        }
    }

    #[test]
    fn invalid_utf8_in_a_skipped_member_is_refused() {
        let mut body =
            br#"{"id":1,"method":"tools/call","params":{"name":"gh_a","arguments":{"q":""#.to_vec();
        body.extend_from_slice(&[0xff, b'"', b'}', b'}', b'}']);
        assert!(
            Message::read(&body).is_err(),
            "sent on with bytes no parse accepts"
        );
    }
}
