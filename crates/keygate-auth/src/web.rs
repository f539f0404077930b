//! The browser-facing pieces: cookies (`__Host-` + `Secure` on https public URLs, plain on
//! http loopback), CSRF double-submit tokens, and the server-rendered pages (askama templates
//! in `templates/auth`, styled by the dashboard's stylesheet, `/ui/assets/app.css`).

use askama::Template;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use subtle::ConstantTimeEq;

pub const SESSION_COOKIE: &str = "kg_session";
pub const CSRF_COOKIE: &str = "kg_csrf";
pub const CSRF_FIELD: &str = "csrf";

/// 256 random bits, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Cookie naming and flags for this deployment.
#[derive(Clone, Copy, Debug)]
pub struct CookiePolicy {
    pub secure: bool,
}

impl CookiePolicy {
    pub fn name(&self, base: &str) -> String {
        if self.secure {
            format!("__Host-{base}")
        } else {
            base.to_owned()
        }
    }

    /// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, and Secure on https.
    pub fn set(&self, base: &str, value: &str, max_age_secs: i64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}",
            self.name(base)
        ))
        .expect("cookie values are base64url")
    }

    pub fn get(&self, headers: &HeaderMap, base: &str) -> Option<String> {
        let name = self.name(base);
        headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }
}

/// Whether the form's CSRF field matches the CSRF cookie (constant time).
pub fn csrf_ok(policy: CookiePolicy, headers: &HeaderMap, field: Option<&str>) -> bool {
    match (policy.get(headers, CSRF_COOKIE), field) {
        (Some(cookie), Some(field)) if !cookie.is_empty() => {
            cookie.len() == field.len() && bool::from(cookie.as_bytes().ct_eq(field.as_bytes()))
        }
        _ => false,
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A message page: a title, one paragraph (an error's is shown as an alert), and a link.
#[derive(Template)]
#[template(path = "auth/message.html")]
pub struct MessagePage<'a> {
    pub title: &'a str,
    pub message: &'a str,
    pub error: bool,
    pub link: Option<(&'a str, &'a str)>,
}

/// The policy of every page: the dashboard's stylesheet, nothing else (no script at all), no
/// framing. No `form-action`: the consent form's answer redirects to the client.
pub const PAGE_CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Renders `template` with the headers every page gets: no framing, no caching, no scripts.
pub fn render(status: StatusCode, template: &impl Template, cookies: Vec<HeaderValue>) -> Response {
    let html = match template.render() {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(error = %e, "a page template failed to render");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response();
        }
    };
    let mut resp = (status, Html(html)).into_response();
    let h = resp.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CONTENT_SECURITY_POLICY),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    for c in cookies {
        h.append(SET_COOKIE, c);
    }
    resp
}

/// A page saying `message` under `title`.
pub fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    render(
        status,
        &MessagePage {
            title,
            message,
            error: false,
            link: None,
        },
        vec![],
    )
}

/// An error page (for errors that must not be redirected to the client).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    render(
        status,
        &MessagePage {
            title: "Sign-in failed",
            message,
            error: true,
            link: None,
        },
        vec![],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn cookies_follow_the_scheme() {
        let secure = CookiePolicy { secure: true };
        let set = secure.set(SESSION_COOKIE, "abc", 60);
        assert!(
            set.to_str()
                .unwrap()
                .starts_with("__Host-kg_session=abc; Path=/;")
        );
        assert!(set.to_str().unwrap().ends_with("; Secure"));
        let plain = CookiePolicy { secure: false };
        assert!(
            !plain
                .set(SESSION_COOKIE, "abc", 60)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "cookie",
            "a=1; __Host-kg_csrf=tok; kg_csrf=other".parse().unwrap(),
        );
        assert!(csrf_ok(secure, &headers, Some("tok")));
        assert!(!csrf_ok(secure, &headers, Some("other")));
        assert!(!csrf_ok(secure, &headers, None));
        assert!(csrf_ok(plain, &headers, Some("other")));
    }
}
