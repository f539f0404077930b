//! `x-request-id`: taken from the request when it is sane, generated otherwise, echoed on every
//! response and available to error bodies through a task-local.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

tokio::task_local! {
    static REQUEST_ID: String;
}

pub const HEADER: &str = "x-request-id";

/// The id of the request being handled, or an empty string outside one.
pub fn current() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Middleware: assigns the id, runs the request inside its scope, and sets the header.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let value = HeaderValue::from_str(&id).expect("checked or generated ids are valid headers");
    req.headers_mut().insert(HEADER, value.clone());
    let mut resp = REQUEST_ID.scope(id, next.run(req)).await;
    resp.headers_mut().insert(HEADER, value);
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostile_ids_are_replaced() {
        assert!(super::acceptable("3f2a-b1"));
        assert!(!super::acceptable("a\r\nSet-Cookie: x"));
        assert!(!super::acceptable(&"a".repeat(200)));
        assert!(!super::acceptable(""));
    }
}
