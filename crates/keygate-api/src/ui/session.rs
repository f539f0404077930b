//! The dashboard's sessions: server-side, keyed by a random id in an HttpOnly cookie
//! (`__Host-` on https), each holding the user's management access token and the CSRF token
//! its forms must carry. Nothing a script can read ever holds the access token. A sign-in
//! under way keeps nothing on the server (so unauthenticated requests cannot fill memory or
//! push out another browser's sign-in): its `state` and PKCE verifier ride in an HttpOnly
//! cookie of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use keygate_auth::web::{CookiePolicy, random_token};
use subtle::ConstantTimeEq;

/// The dashboard session cookie's name (before the `__Host-` prefix on https).
pub const SESSION_COOKIE: &str = "kg_ui";
/// The cookie of a sign-in under way: `{state}.{verifier}`.
pub const SIGNIN_COOKIE: &str = "kg_ui_signin";
/// How long a sign-in may take between `/ui/login` and `/ui/callback`.
pub const SIGNIN_TTL: Duration = Duration::from_secs(600);
/// At most this many sessions are kept; the one expiring first goes first.
const CAPACITY: usize = 10_000;

/// A signed-in dashboard user.
#[derive(Clone, Debug)]
pub struct Session {
    pub access_token: String,
    /// Kept only to revoke the grant at sign-out.
    pub refresh_token: Option<String>,
    pub csrf: String,
    pub email: String,
    /// Owners and admins: the organization is theirs to change.
    pub privileged: bool,
    pub expires: Instant,
}

impl Session {
    /// Whether `field` is this session's CSRF token (constant time).
    pub fn csrf_ok(&self, field: Option<&str>) -> bool {
        field.is_some_and(|f| {
            f.len() == self.csrf.len() && bool::from(f.as_bytes().ct_eq(self.csrf.as_bytes()))
        })
    }
}

/// A sign-in under way: what `/ui/callback` must see again.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingSignin {
    pub state: String,
    pub verifier: String,
}

impl PendingSignin {
    /// A fresh `state` and PKCE verifier (256 random bits each).
    pub fn fresh() -> Self {
        Self {
            state: random_token(),
            verifier: random_token(),
        }
    }

    /// The sign-in cookie, valid for [`SIGNIN_TTL`].
    pub fn cookie(&self, policy: CookiePolicy) -> HeaderValue {
        policy.set(
            SIGNIN_COOKIE,
            &format!("{}.{}", self.state, self.verifier),
            SIGNIN_TTL.as_secs() as i64,
        )
    }

    /// The sign-in the request's cookie carries.
    pub fn from_cookie(policy: CookiePolicy, headers: &HeaderMap) -> Option<Self> {
        let value = policy.get(headers, SIGNIN_COOKIE)?;
        let (state, verifier) = value.split_once('.')?;
        (!state.is_empty() && !verifier.is_empty()).then(|| Self {
            state: state.to_owned(),
            verifier: verifier.to_owned(),
        })
    }
}

/// The sessions of this process (a replica's users sign in to it again).
#[derive(Clone, Default)]
pub struct Sessions {
    live: Arc<Mutex<HashMap<String, Session>>>,
}

impl Sessions {
    /// Stores `session` under a new id and answers the id.
    pub fn open(&self, session: Session) -> String {
        let id = random_token();
        let mut live = self.live.lock().expect("sessions lock");
        let now = Instant::now();
        live.retain(|_, s| s.expires > now);
        evict_oldest(&mut live);
        live.insert(id.clone(), session);
        id
    }

    /// The live session the request's cookie names.
    pub fn current(&self, policy: CookiePolicy, headers: &HeaderMap) -> Option<Session> {
        let id = policy.get(headers, SESSION_COOKIE)?;
        let mut live = self.live.lock().expect("sessions lock");
        match live.get(&id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                live.remove(&id);
                None
            }
            None => None,
        }
    }

    /// Forgets the session the request's cookie names; answers it, if there was one.
    pub fn close(&self, policy: CookiePolicy, headers: &HeaderMap) -> Option<Session> {
        let id = policy.get(headers, SESSION_COOKIE)?;
        self.live.lock().expect("sessions lock").remove(&id)
    }
}

fn evict_oldest(map: &mut HashMap<String, Session>) {
    if map.len() < CAPACITY {
        return;
    }
    if let Some(oldest) = map
        .iter()
        .min_by_key(|(_, s)| s.expires)
        .map(|(id, _)| id.clone())
    {
        map.remove(&oldest);
    }
}

/// A `Set-Cookie` that removes cookie `base`.
pub fn clear(policy: CookiePolicy, base: &str) -> HeaderValue {
    policy.set(base, "", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(csrf: &str) -> Session {
        Session {
            access_token: "t".into(),
            refresh_token: None,
            csrf: csrf.into(),
            email: "a@example.com".into(),
            privileged: false,
            expires: Instant::now() + Duration::from_secs(60),
        }
    }

    #[test]
    fn a_form_passes_only_with_its_sessions_csrf_token() {
        let s = session("abc");
        assert!(s.csrf_ok(Some("abc")));
        assert!(!s.csrf_ok(Some("abd")));
        assert!(!s.csrf_ok(Some("")));
        assert!(!s.csrf_ok(None));
    }

    #[test]
    fn a_sign_in_cookie_gives_back_its_state_and_verifier() {
        let policy = CookiePolicy { secure: true };
        let pending = PendingSignin::fresh();
        let set = pending.cookie(policy).to_str().unwrap().to_owned();
        assert!(
            set.starts_with("__Host-kg_ui_signin=") && set.contains("HttpOnly"),
            "{set}"
        );
        let pair = set.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            HeaderValue::from_str(pair).unwrap(),
        );
        assert_eq!(PendingSignin::from_cookie(policy, &headers), Some(pending));
    }

    #[test]
    fn a_malformed_sign_in_cookie_is_no_sign_in() {
        let policy = CookiePolicy { secure: false };
        for value in ["", "nodot", ".verifier", "state."] {
            let mut headers = HeaderMap::new();
            headers.insert(
                axum::http::header::COOKIE,
                HeaderValue::from_str(&format!("{SIGNIN_COOKIE}={value}")).unwrap(),
            );
            assert_eq!(
                PendingSignin::from_cookie(policy, &headers),
                None,
                "{value:?}"
            );
        }
    }
}
