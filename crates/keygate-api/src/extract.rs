//! Extractors that turn hostile input into [`ApiError`]s in the API's own format: JSON bodies
//! (415, 413, 400 with the offending field), UUID path segments and query strings.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError};

/// The body limit in force, set as a request extension next to `DefaultBodyLimit` so that
/// the 413 message can state it.
#[derive(Clone, Copy, Debug)]
pub struct MaxBody(pub usize);

/// A JSON body. Unknown fields, missing fields and wrong types are 400 with the field named.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "Content-Type must be application/json",
            ));
        }
        let limit = req
            .extensions()
            .get::<MaxBody>()
            .map_or(DEFAULT_MAX_BODY, |m| m.0);
        let bytes = read_limited(req.into_body(), limit).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// After an oversized body, at most this much more is read and discarded before answering.
const DRAIN_MAX_BYTES: usize = 64 * 1024 * 1024;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// Buffers at most `limit` bytes. Past the limit the rest is drained (bounded in bytes and
/// time) before the 413 goes out, so a client still uploading reads the answer instead of a
/// reset connection: the "lingering close" of nginx.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = body;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::validation("body", "could not be read"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limit {
            let mut drained = buf.len() + data.len();
            let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
                while drained < DRAIN_MAX_BYTES {
                    match body.frame().await {
                        Some(Ok(f)) => drained += f.data_ref().map_or(0, |d| d.len()),
                        _ => break,
                    }
                }
            })
            .await;
            return Err(ApiError::PayloadTooLarge(limit));
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// Deserializes JSON, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::validation("body", format!("is not valid JSON ({inner})"));
        }
        let text = inner.to_string();
        let text = text.split(" at line ").next().unwrap_or(&text);
        let join = |name: &str| {
            if path == "." || path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            }
        };
        let error = if let Some(name) = backticked(text, "missing field `") {
            FieldError::new(join(name), "is required")
        } else if let Some(name) = backticked(text, "unknown field `") {
            // For unknown fields the path already ends with the field itself.
            let field = if path == "." || path.is_empty() {
                name.to_owned()
            } else {
                path.clone()
            };
            FieldError::new(field, "is not a known field")
        } else {
            let field = if path == "." { "body".to_owned() } else { path };
            FieldError::new(field, text.to_owned())
        };
        ApiError::fields(vec![error])
    })
}

fn backticked<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.strip_prefix(prefix)?.split('`').next()
}

/// A UUID path parameter; anything else is 400.
pub struct Id<T>(pub T);

impl<S: Send + Sync, T: std::str::FromStr + Send> FromRequestParts<S> for Id<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw): axum::extract::Path<String> =
            axum::extract::Path::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::validation("id", "must be a UUID"))?;
        parse_id(&raw, "id").map(Id)
    }
}

/// Two UUID path parameters (`/:id/…/:otherId`).
pub struct Ids<A, B>(pub A, pub B);

impl<S: Send + Sync, A: std::str::FromStr + Send, B: std::str::FromStr + Send> FromRequestParts<S>
    for Ids<A, B>
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path((a, b)): axum::extract::Path<(String, String)> =
            axum::extract::Path::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::validation("id", "must be a UUID"))?;
        Ok(Ids(parse_id(&a, "id")?, parse_id(&b, "id")?))
    }
}

pub fn parse_id<T: std::str::FromStr>(raw: &str, field: &str) -> Result<T, ApiError> {
    if uuid::Uuid::try_parse(raw).is_err() {
        return Err(ApiError::validation(field, "must be a UUID"));
    }
    raw.parse()
        .map_err(|_| ApiError::validation(field, "must be a UUID"))
}

/// A query string; unknown or malformed parameters are 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|err| {
                let path = err.path().to_string();
                let text = err.into_inner().to_string();
                match backticked(&text, "unknown field `") {
                    Some(name) => ApiError::validation(name, "is not a known query parameter"),
                    None => ApiError::validation(
                        if path == "." {
                            "query".to_owned()
                        } else {
                            path
                        },
                        text,
                    ),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        oauth: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        r#type: String,
    }

    fn field_of(json: &str) -> String {
        match parse_json::<Body>(json.as_bytes()).unwrap_err() {
            ApiError::Validation { errors, .. } => errors[0].field.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"oauth": {"type": "public"}}"#), "name");
        assert_eq!(field_of(r#"{"name": "a", "oauth": {}}"#), "oauth.type");
        assert_eq!(
            field_of(r#"{"name": "a", "oauth": {"type": "x"}, "bogus": 1}"#),
            "bogus"
        );
        assert_eq!(field_of(r#"{"name": 5, "oauth": {"type": "x"}}"#), "name");
        assert_eq!(field_of(r#"{"name": "#), "body");
    }
}
