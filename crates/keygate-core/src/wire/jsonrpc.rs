//! JSON-RPC 2.0 as the gateway writes it in its own name: request ids, and the results and
//! errors it answers with. An error answers the request it is about, with that request's id;
//! its id is `null` only when the request had none to read (it did not parse, or its id was
//! neither a number nor a string), as the JSON-RPC 2.0 specification says.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// A request's id: a number or a string, kept as sent (`1` and `"1"` are different ids, and
/// `1.0` stays `1.0`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Number(Number),
    String(String),
}

impl RequestId {
    /// The id of a JSON-RPC message, if it has one a response can carry.
    pub fn of(message: &Value) -> Option<Self> {
        message.get("id").and_then(Self::from_value)
    }

    /// `id` as a request id, unless it is something else (null, a boolean, an object, …).
    pub fn from_value(id: &Value) -> Option<Self> {
        match id {
            Value::Number(n) => Some(Self::Number(n.clone())),
            Value::String(s) => Some(Self::String(s.clone())),
            _ => None,
        }
    }

    pub fn to_value(&self) -> Value {
        match self {
            Self::Number(n) => Value::Number(n.clone()),
            Self::String(s) => Value::String(s.clone()),
        }
    }
}

impl From<RequestId> for Value {
    fn from(id: RequestId) -> Self {
        match id {
            RequestId::Number(n) => Value::Number(n),
            RequestId::String(s) => Value::String(s),
        }
    }
}

impl From<i64> for RequestId {
    fn from(n: i64) -> Self {
        Self::Number(n.into())
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> Self {
        Self::String(s.to_owned())
    }
}

/// A JSON-RPC error the gateway answers with.
#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl Error {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The response carrying this error to the request with `id` (`None` only when that
    /// request had no readable id).
    pub fn response(&self, id: Option<&RequestId>) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        json!({"jsonrpc": "2.0", "id": id, "error": error})
    }
}

/// The response carrying `result` to the request with `id`.
pub fn result(id: &RequestId, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A request's `params`, read only as far as the gateway looks before it forwards the request
/// as written: its `name`, borrowed (a name with escapes fails the read), and its `_meta` as `M`
/// reads it; every other member is checked as JSON and skipped. Not an object (an array is
/// not read as one), or `name` or `_meta` given twice, fails the read: the caller then parses
/// the message whole.
pub struct ParamsOutline<'a, M> {
    /// `Some(None)` for `"name": null`.
    pub name: Option<Option<&'a str>>,
    pub meta: Option<M>,
}

impl<M> Default for ParamsOutline<'_, M> {
    fn default() -> Self {
        Self {
            name: None,
            meta: None,
        }
    }
}

impl<'de: 'a, 'a, M: Deserialize<'de>> Deserialize<'de> for ParamsOutline<'a, M> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, Visitor};
        use std::marker::PhantomData;

        struct Members<'a, M>(PhantomData<(&'a str, M)>);
        impl<'de: 'a, 'a, M: Deserialize<'de>> Visitor<'de> for Members<'a, M> {
            type Value = ParamsOutline<'a, M>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut params = ParamsOutline::default();
                while let Some(key) = map.next_key::<&'de str>()? {
                    match key {
                        "name" if params.name.is_some() => {
                            return Err(Error::duplicate_field("name"));
                        }
                        "name" => params.name = Some(map.next_value()?),
                        "_meta" if params.meta.is_some() => {
                            return Err(Error::duplicate_field("_meta"));
                        }
                        "_meta" => params.meta = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(params)
            }
        }
        // Not `deserialize_any`: an array is not read as an object.
        d.deserialize_map(Members(PhantomData))
    }
}

/// What a JSON-RPC message is, read without building it: its `id` (present, `null` included, or
/// absent), whether it has a `method`, an `error` or a `result`, and whether that result says
/// `"isError": true` — each as `Value::get` reads them from the parsed message.
#[derive(Debug, Default, PartialEq)]
pub struct MessageOutline {
    pub id: Option<Value>,
    pub method: bool,
    pub error: bool,
    pub result: bool,
    /// The result is an object whose `isError` is `true`.
    pub tool_error: bool,
}

impl MessageOutline {
    /// The outline of a JSON object; `None` for anything else. Where the outline is unsure (a
    /// member among these twice, a key with escapes, a `result` neither an object nor `null`)
    /// the text is parsed whole, so the answer is always the parsed message's.
    pub fn read(json: &[u8]) -> Option<Self> {
        serde_json::from_slice(json).ok().or_else(|| {
            serde_json::from_slice::<Value>(json)
                .ok()
                .filter(Value::is_object)
                .map(|message| Self::of(&message))
        })
    }

    /// The outline of a message already parsed.
    pub fn of(message: &Value) -> Self {
        Self {
            id: message.get("id").cloned(),
            method: message.get("method").is_some(),
            error: message.get("error").is_some(),
            result: message.get("result").is_some(),
            tool_error: message["result"]["isError"] == Value::Bool(true),
        }
    }

    /// Whether the message is a response (neither a request nor a notification).
    pub fn answers(&self) -> bool {
        !self.method && (self.result || self.error)
    }

    /// Whether it reports a failure: a JSON-RPC error, or a tool's `"isError": true`.
    pub fn failed(&self) -> bool {
        self.error || self.tool_error
    }
}

impl<'de> Deserialize<'de> for MessageOutline {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, Visitor};

        /// A result's `isError` is `true`; `null` is a result without one.
        struct ToolError(bool);

        impl<'de> Deserialize<'de> for ToolError {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Members;
                impl<'de> Visitor<'de> for Members {
                    type Value = ToolError;

                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a result object")
                    }

                    fn visit_unit<E: Error>(self) -> Result<ToolError, E> {
                        Ok(ToolError(false))
                    }

                    fn visit_map<A: MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<ToolError, A::Error> {
                        let mut is_error = None;
                        while let Some(key) = map.next_key::<&'de str>()? {
                            if key == "isError" {
                                if is_error.is_some() {
                                    return Err(Error::duplicate_field("isError"));
                                }
                                is_error = Some(map.next_value::<Value>()? == Value::Bool(true));
                            } else {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                        Ok(ToolError(is_error.unwrap_or(false)))
                    }
                }
                // `deserialize_option` would take `null` for no result; `deserialize_any` hands
                // it to `visit_unit`, and refuses everything but an object or `null`.
                d.deserialize_any(Members)
            }
        }

        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = MessageOutline;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON-RPC message")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut outline = MessageOutline::default();
                while let Some(key) = map.next_key::<&'de str>()? {
                    match key {
                        "id" if outline.id.is_some() => return Err(Error::duplicate_field("id")),
                        "id" => outline.id = Some(map.next_value()?),
                        "method" if outline.method => {
                            return Err(Error::duplicate_field("method"));
                        }
                        "method" => {
                            map.next_value::<IgnoredAny>()?;
                            outline.method = true;
                        }
                        "error" if outline.error => return Err(Error::duplicate_field("error")),
                        "error" => {
                            map.next_value::<IgnoredAny>()?;
                            outline.error = true;
                        }
                        "result" if outline.result => {
                            return Err(Error::duplicate_field("result"));
                        }
                        "result" => {
                            outline.tool_error = map.next_value::<ToolError>()?.0;
                            outline.result = true;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(outline)
            }
        }
        // Not `deserialize_any`: an array is not read as an object.
        d.deserialize_map(Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    type Params<'a> = ParamsOutline<'a, IgnoredAny>;

    #[test]
    fn a_params_outline_tells_a_null_name_from_none() {
        let read = |json| serde_json::from_str::<Params<'_>>(json).unwrap().name;
        assert_eq!(
            read(r#"{"name":"echo","arguments":{"a":[1]}}"#),
            Some(Some("echo"))
        );
        assert_eq!(read(r#"{"name":null}"#), Some(None));
        assert_eq!(read(r#"{"arguments":{}}"#), None);
    }

    #[test]
    fn a_params_outline_refuses_what_it_cannot_stand_for() {
        for json in [
            r#"{"name":"a","name":"b"}"#,
            r#"{"_meta":{},"_meta":{}}"#,
            r#"{"name":"e\u0063ho"}"#,
            r#"["echo"]"#,
            "null",
        ] {
            assert!(serde_json::from_str::<Params<'_>>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn a_message_outline_reads_what_the_parsed_message_says() {
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}"#,
            r#"{"jsonrpc":"2.0","id":"a-7","result":{"isError":true,"content":[]}}"#,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"bad"}}"#,
            r#"{"jsonrpc":"2.0","id":2,"result":null}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"roots/list","params":{"id":4}}"#,
            r#"{"id":4,"error":null,"result":{"isError":"yes"}}"#,
            // Where the outline is unsure, the parsed message answers.
            r#"{"id":1,"id":2,"result":{}}"#,
            r#"{"id":1,"result":{"isError":false,"isError":true}}"#,
            r#"{"id":1,"result":{"isE\u0072ror":true}}"#,
            r#"{"id":1,"e\u0072ror":{}}"#,
            r#"{"id":1,"result":[true]}"#,
            r#"{"id":1,"result":"text"}"#,
        ] {
            let parsed: Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                MessageOutline::read(text.as_bytes()),
                Some(MessageOutline::of(&parsed)),
                "{text}"
            );
        }
        for not_one in [r#"[{"id":1,"result":{}}]"#, "7", r#"{"id":1"#] {
            assert_eq!(MessageOutline::read(not_one.as_bytes()), None, "{not_one}");
        }
    }

    #[test]
    fn a_message_outline_reads_arrays_only_as_a_refusal() {
        for refused in [r#"["id",1]"#, r#"{"id":1,"result":[true]}"#] {
            assert!(
                serde_json::from_str::<MessageOutline>(refused).is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn ids_keep_numbers_and_strings_apart() {
        for sent in [json!(1), json!("1"), json!(1.0), json!(-7), json!("kg~3")] {
            let id = RequestId::of(&json!({"id": sent})).unwrap();
            assert_eq!(Error::new(-32002, "down").response(Some(&id))["id"], sent);
            assert_eq!(result(&id, json!({}))["id"], sent);
        }
        assert_ne!(RequestId::from(1), RequestId::from("1"));
    }

    /// Found by fuzzing: without `float_roundtrip`, serde_json read this 16-digit float one
    /// unit off, and the id written back was another number.
    #[test]
    fn a_fractional_id_comes_back_as_the_same_number() {
        let sent: Value = serde_json::from_str(r#"{"id":4.314367889823496e-229}"#).unwrap();
        let id = RequestId::of(&sent).unwrap();
        let written = Error::new(-32002, "down").response(Some(&id)).to_string();
        assert!(
            written.contains(r#""id":4.314367889823496e-229"#),
            "{written}"
        );
    }

    #[test]
    fn only_a_number_or_a_string_is_an_id() {
        for message in [json!({}), json!({"id": null}), json!({"id": {}}), json!([])] {
            assert_eq!(RequestId::of(&message), None, "{message}");
        }
        let answer = Error::new(PARSE_ERROR, "Parse error").response(None);
        assert_eq!(
            answer,
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}})
        );
    }

    #[test]
    fn data_is_written_only_when_given() {
        let id = RequestId::from(3);
        let plain = Error::new(INVALID_PARAMS, "bad").response(Some(&id));
        assert!(plain["error"].get("data").is_none());
        let detailed = Error::new(INVALID_PARAMS, "bad")
            .with_data(json!({"why": 1}))
            .response(Some(&id));
        assert_eq!(detailed["error"]["data"], json!({"why": 1}));
    }
}
