//! The dashboard's sessions: server-side, keyed by a random id in an HttpOnly cookie
//! (`__Host-` on https), each holding the user's management access token and the CSRF token
//! its forms must carry. Nothing a script can read ever holds the access token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use keygate_auth::web::{CookiePolicy, random_token};
use subtle::ConstantTimeEq;

/// The dashboard session cookie's name (before the `__Host-` prefix on https).
pub const SESSION_COOKIE: &str = "kg_ui";
/// The cookie naming a sign-in under way (its `state` and PKCE verifier stay on the server).
pub const SIGNIN_COOKIE: &str = "kg_ui_signin";
/// How long a sign-in may take between `/ui/login` and `/ui/callback`.
pub const SIGNIN_TTL: Duration = Duration::from_secs(600);
/// At most this many sessions (and as many sign-ins under way) are kept; the oldest go first.
const CAPACITY: usize = 10_000;

/// A signed-in dashboard user.
#[derive(Clone, Debug)]
pub struct Session {
    pub access_token: String,
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
#[derive(Clone, Debug)]
pub struct PendingSignin {
    pub state: String,
    pub verifier: String,
    pub started: Instant,
}

/// The sessions and sign-ins of this process (a replica's users sign in to it again).
#[derive(Clone, Default)]
pub struct Sessions {
    live: Arc<Mutex<HashMap<String, Session>>>,
    signins: Arc<Mutex<HashMap<String, PendingSignin>>>,
}

impl Sessions {
    /// Stores `session` under a new id and answers the id.
    pub fn open(&self, session: Session) -> String {
        let id = random_token();
        let mut live = self.live.lock().expect("sessions lock");
        let now = Instant::now();
        live.retain(|_, s| s.expires > now);
        evict_oldest(&mut live, |s| s.expires);
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

    /// Forgets the session the request's cookie names.
    pub fn close(&self, policy: CookiePolicy, headers: &HeaderMap) {
        if let Some(id) = policy.get(headers, SESSION_COOKIE) {
            self.live.lock().expect("sessions lock").remove(&id);
        }
    }

    /// Remembers a sign-in under a new id (for the sign-in cookie).
    pub fn start_signin(&self, pending: PendingSignin) -> String {
        let id = random_token();
        let mut signins = self.signins.lock().expect("sign-ins lock");
        signins.retain(|_, p| p.started.elapsed() < SIGNIN_TTL);
        evict_oldest(&mut signins, |p| p.started);
        signins.insert(id.clone(), pending);
        id
    }

    /// Takes the sign-in the request's cookie names (once: a replayed callback finds nothing).
    pub fn take_signin(&self, policy: CookiePolicy, headers: &HeaderMap) -> Option<PendingSignin> {
        let id = policy.get(headers, SIGNIN_COOKIE)?;
        let pending = self.signins.lock().expect("sign-ins lock").remove(&id)?;
        (pending.started.elapsed() < SIGNIN_TTL).then_some(pending)
    }
}

fn evict_oldest<V, K: Ord + Copy>(map: &mut HashMap<String, V>, key: impl Fn(&V) -> K) {
    if map.len() < CAPACITY {
        return;
    }
    if let Some(oldest) = map
        .iter()
        .min_by_key(|(_, v)| key(v))
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
    fn a_sign_in_is_taken_once() {
        let sessions = Sessions::default();
        let policy = CookiePolicy { secure: false };
        let id = sessions.start_signin(PendingSignin {
            state: "s".into(),
            verifier: "v".into(),
            started: Instant::now(),
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            HeaderValue::from_str(&format!("{SIGNIN_COOKIE}={id}")).unwrap(),
        );
        assert!(sessions.take_signin(policy, &headers).is_some());
        assert!(sessions.take_signin(policy, &headers).is_none());
    }
}
