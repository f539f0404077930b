//! The dashboard's way into the management API: requests sent in-process through the very
//! router that serves `/api/v1`, carrying the signed-in user's access token. Every rule of the
//! API (roles, organization scoping, validation, rate limits) applies to the dashboard as it
//! is, because the dashboard only ever asks the API.

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

/// What an API answer larger than this would be is not shown by a page.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Why a management call did not give what the page needed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The API refused: its status and its own message, shown to the user.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
    #[error("the management API answered something unreadable: {0}")]
    Unreadable(String),
}

/// The management API as one signed-in user sees it.
#[derive(Clone)]
pub struct Api {
    router: Router,
    token: String,
}

impl Api {
    pub fn new(router: Router, token: &str) -> Self {
        Self {
            router,
            token: token.to_owned(),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, CallError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// A call with a JSON body and any method (`PATCH`, `PUT`).
    pub async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, CallError> {
        self.call(method, path, Some(body)).await
    }

    /// A call whose answer carries nothing the page needs (`204`, or a body it ignores).
    pub async fn send(&self, method: Method, path: &str) -> Result<(), CallError> {
        let resp = self.raw(method, path, None, None).await;
        answer_bytes(resp).await.map(drop)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, CallError> {
        let resp = self.raw(method, path, body, None).await;
        let bytes = answer_bytes(resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Unreadable(e.to_string()))
    }

    /// The API's response as it is (for the event stream, relayed untouched).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        last_event_id: Option<HeaderValue>,
    ) -> Response {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"))
            .header(AUTHORIZATION, format!("Bearer {}", self.token));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let req = match body {
            Some(json) => req
                .header(CONTENT_TYPE, "application/json")
                .body(Body::from(json.to_string())),
            None => req.body(Body::empty()),
        }
        .expect("a request built from a path and valid headers");
        match self.router.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }
}

async fn answer_bytes(resp: Response) -> Result<bytes::Bytes, CallError> {
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), MAX_ANSWER_BYTES)
        .await
        .map_err(|e| CallError::Unreadable(e.to_string()))?;
    if status.is_success() {
        return Ok(bytes);
    }
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("the management API answered {status}"));
    Err(CallError::Refused { status, message })
}
