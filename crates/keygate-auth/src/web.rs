//! The browser-facing pieces: cookies (`__Host-` + `Secure` on https public URLs, plain on
//! http loopback), CSRF double-submit tokens, and the server-rendered pages.

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

/// A page with the headers every page gets: no framing, no caching, no scripts.
pub fn page(status: StatusCode, title: &str, body: &str, cookies: Vec<HeaderValue>) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title} · keygate</title><style>{STYLE}</style></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>",
        title = escape(title),
    );
    let mut resp = (status, Html(html)).into_response();
    let h = resp.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    for c in cookies {
        h.append(SET_COOKIE, c);
    }
    resp
}

/// An error page (for errors that must not be redirected to the client).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Sign-in failed",
        &format!("<p class=\"error\">{}</p>", escape(message)),
        vec![],
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f6f7f9;margin:0}\
main{max-width:26rem;margin:4rem auto;background:#fff;padding:2rem;border-radius:8px;\
box-shadow:0 1px 4px #0002}h1{font-size:1.3rem}label{display:block;margin:.8rem 0 .2rem}\
input[type=email],input[type=password]{width:100%;padding:.5rem;box-sizing:border-box}\
button{margin-top:1rem;padding:.5rem 1rem;margin-right:.5rem}.error{color:#b00020}";

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
