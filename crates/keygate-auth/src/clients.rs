//! OAuth clients: an application's own client (`app_<uuid>`), clients registered dynamically
//! (RFC 7591, `mcp_<uuid>`), and the built-in first-party public client `keygate`.

use keygate_core::ids::APP_CLIENT_PREFIX;
use keygate_core::model::{Application, ClientType};
use keygate_core::{ApplicationId, ServiceAccountId};
use keygate_store::{RegisteredClient, StoreError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use url::{Host, Url};

use crate::outbound::Outbound;

use crate::error::OAuthError;
use crate::router::AuthState;
use crate::secret::verify_secret;

/// The id of the built-in first-party client.
pub const FIRST_PARTY_CLIENT_ID: &str = "keygate";

/// Where the dashboard (`/ui`) receives its authorization code: the one redirect URI of the
/// first-party client that is not a loopback one, always under the gateway's own public URL.
pub const DASHBOARD_CALLBACK_PATH: &str = "/ui/callback";
/// Prefix of dynamically registered client ids.
pub const REGISTERED_CLIENT_PREFIX: &str = "mcp_";

/// What kind of client a `client_id` names.
#[derive(Clone, Debug)]
pub enum ClientKind {
    Application(Application),
    Registered(RegisteredClient),
    FirstParty,
}

/// A resolved client.
#[derive(Clone, Debug)]
pub struct Client {
    pub id: String,
    pub kind: ClientKind,
}

impl Client {
    /// Looks a client up; `None` when no active client has this id. An `https://` client id is
    /// a client ID metadata document, fetched (through the SSRF guard) and cached.
    pub async fn resolve(state: &AuthState, client_id: &str) -> Result<Option<Self>, StoreError> {
        let store = &state.store;
        let kind = if client_id.starts_with("https://") || client_id.starts_with("http://") {
            match state.client_documents.get(client_id).await {
                Ok(doc) => ClientKind::Registered(doc),
                Err(why) => {
                    tracing::info!(client_id, %why, "client metadata document refused");
                    return Ok(None);
                }
            }
        } else if client_id == FIRST_PARTY_CLIENT_ID {
            ClientKind::FirstParty
        } else if let Some(raw) = client_id.strip_prefix(APP_CLIENT_PREFIX) {
            let Ok(id) = raw.parse::<ApplicationId>() else {
                return Ok(None);
            };
            match store.application_secret_hash(id).await {
                Ok((app, _)) => ClientKind::Application(app),
                Err(StoreError::NotFound) => return Ok(None),
                Err(e) => return Err(e),
            }
        } else if client_id.starts_with(REGISTERED_CLIENT_PREFIX) {
            match store.registered_client(client_id).await {
                Ok(c) => ClientKind::Registered(c),
                Err(StoreError::NotFound) => return Ok(None),
                Err(e) => return Err(e),
            }
        } else {
            return Ok(None);
        };
        Ok(Some(Self {
            id: client_id.to_owned(),
            kind,
        }))
    }

    /// Public clients cannot keep a secret; they must use PKCE.
    pub fn is_public(&self) -> bool {
        match &self.kind {
            ClientKind::Application(app) => app.oauth.client_type == ClientType::Public,
            ClientKind::Registered(c) => c.auth_method == "none",
            ClientKind::FirstParty => true,
        }
    }

    /// Whether the client described itself (dynamic client registration or a client ID
    /// metadata document): its name is unverified, unlike an application's an admin created.
    pub fn is_self_registered(&self) -> bool {
        matches!(self.kind, ClientKind::Registered(_))
    }

    pub fn display_name(&self) -> String {
        match &self.kind {
            ClientKind::Application(app) => app.name.clone(),
            ClientKind::Registered(c) => c.name.clone().unwrap_or_else(|| c.client_id.clone()),
            ClientKind::FirstParty => "keygate (its dashboard or command line)".to_owned(),
        }
    }

    fn registered_redirects(&self) -> &[String] {
        match &self.kind {
            ClientKind::Application(app) => &app.oauth.redirect_uris,
            ClientKind::Registered(c) => &c.redirect_uris,
            ClientKind::FirstParty => &[],
        }
    }

    /// The redirect URI to use: the one given if it is registered (exactly, or a loopback URI
    /// differing only in port, RFC 8252 §7.3), or the only registered one when none is given.
    /// The first-party client takes any loopback URI (the CLI) and the dashboard's callback on
    /// `public_url`.
    pub fn redirect_uri(&self, given: Option<&str>, public_url: &str) -> Option<String> {
        let registered = self.registered_redirects();
        match given {
            None if registered.len() == 1 => Some(registered[0].clone()),
            None => None,
            Some(uri) => {
                let allowed = match self.kind {
                    ClientKind::FirstParty => {
                        is_loopback_http(uri) || is_dashboard_callback(uri, public_url)
                    }
                    _ => registered.iter().any(|r| redirect_matches(r, uri)),
                };
                allowed.then(|| uri.to_owned())
            }
        }
    }

    /// Authenticates the client at the token, revocation and introspection endpoints.
    /// Confidential clients must present their current secret; public clients none.
    pub async fn authenticate(
        state: &AuthState,
        client_id: &str,
        secret: Option<&str>,
        basic: bool,
    ) -> Result<Client, OAuthError> {
        let store = &state.store;
        let invalid = || OAuthError::InvalidClient { basic };
        let client = Client::resolve(state, client_id)
            .await?
            .ok_or_else(invalid)?;
        let stored_hash = match &client.kind {
            ClientKind::Application(app) => {
                store
                    .application_secret_hash(app.id)
                    .await
                    .map_err(|_| invalid())?
                    .1
            }
            ClientKind::Registered(c) => c.secret_hash.clone(),
            ClientKind::FirstParty => None,
        };
        match (client.is_public(), stored_hash, secret) {
            (true, _, None) => Ok(client),
            (false, Some(hash), Some(s)) if verify_secret(s, &hash) => Ok(client),
            _ => Err(invalid()),
        }
    }
}

fn is_dashboard_callback(uri: &str, public_url: &str) -> bool {
    uri.strip_prefix(public_url) == Some(DASHBOARD_CALLBACK_PATH)
}

/// Exact match, except that an `http` loopback IP literal may differ in port.
pub fn redirect_matches(registered: &str, given: &str) -> bool {
    if registered == given {
        return true;
    }
    let (Ok(r), Ok(g)) = (Url::parse(registered), Url::parse(given)) else {
        return false;
    };
    is_loopback_http(registered)
        && r.scheme() == g.scheme()
        && r.host() == g.host()
        && r.path() == g.path()
        && r.query() == g.query()
        && g.fragment().is_none()
}

/// `http://127.0.0.1…`, `http://[::1]…` or `http://localhost…`.
pub fn is_loopback_http(uri: &str) -> bool {
    let Ok(u) = Url::parse(uri) else { return false };
    u.scheme() == "http"
        && u.fragment().is_none()
        && match u.host() {
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            Some(Host::Domain(d)) => d == "localhost",
            None => false,
        }
}

/// Whether `client_id` belongs to a service account (they use client credentials only).
pub fn is_service_account(client_id: &str) -> bool {
    ServiceAccountId::from_client_id(client_id).is_some()
}

/// Client ID metadata documents: fetched through the SSRF guard, checked, cached briefly.
pub struct ClientDocuments {
    outbound: Outbound,
    cache: DashMap<String, (Instant, RegisteredClient)>,
}

const DOCUMENT_TTL: Duration = Duration::from_secs(300);
const DOCUMENT_MAX_BYTES: usize = 64 * 1024;

impl ClientDocuments {
    pub fn new(outbound: Outbound) -> Self {
        Self {
            outbound,
            cache: DashMap::new(),
        }
    }

    /// The client a metadata document URL describes.
    pub async fn get(&self, client_id: &str) -> Result<RegisteredClient, String> {
        if let Some(hit) = self.cache.get(client_id)
            && hit.0.elapsed() < DOCUMENT_TTL
        {
            return Ok(hit.1.clone());
        }
        let url = Url::parse(client_id).map_err(|_| "not a URL".to_owned())?;
        let path_ok = url.path() != "/"
            && !url.path().split('/').any(|seg| seg == "." || seg == "..")
            && url.fragment().is_none();
        if !path_ok {
            return Err("the client id URL needs a path without dot segments or fragment".into());
        }
        self.outbound.check(&url, true).map_err(|e| e.to_string())?;
        let doc = self
            .outbound
            .get_json(&url, DOCUMENT_MAX_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        if doc["client_id"].as_str() != Some(client_id) {
            return Err("the document's client_id is not its own URL".into());
        }
        let method = doc["token_endpoint_auth_method"].as_str().unwrap_or("none");
        if method != "none" {
            return Err(format!(
                "token_endpoint_auth_method {method} is not supported"
            ));
        }
        let redirect_uris: Vec<String> = doc["redirect_uris"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if redirect_uris.is_empty() {
            return Err("the document lists no redirect_uris".into());
        }
        let client = RegisteredClient {
            client_id: client_id.to_owned(),
            name: doc["client_name"]
                .as_str()
                .map(|n| n.chars().take(200).collect()),
            redirect_uris,
            auth_method: "none".into(),
            secret_hash: None,
            metadata: doc,
            created_at: keygate_core::Timestamp::now(),
        };
        self.cache
            .insert(client_id.to_owned(), (Instant::now(), client.clone()));
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_match_exactly_or_by_loopback_port() {
        let r = "http://127.0.0.1:3000/callback";
        assert!(redirect_matches(r, r));
        assert!(redirect_matches(r, "http://127.0.0.1:49152/callback"));
        assert!(!redirect_matches(r, "http://127.0.0.1:3000/callback/x"));
        assert!(!redirect_matches(r, "http://127.0.0.1:3000/callback?x=1"));
        assert!(!redirect_matches(r, "http://127.0.0.2:3000/callback"));
        let https = "https://app.example/cb";
        assert!(!redirect_matches(https, "https://app.example/cb/"));
        assert!(!redirect_matches(https, "https://app.example:444/cb"));
        assert!(!redirect_matches(https, "https://APP.example.evil/cb"));
    }

    #[test]
    fn the_first_party_client_redirects_to_loopback_or_the_dashboard_callback_only() {
        let client = Client {
            id: FIRST_PARTY_CLIENT_ID.into(),
            kind: ClientKind::FirstParty,
        };
        let public = "https://gw.example";
        let ok = |uri: &str| client.redirect_uri(Some(uri), public).is_some();
        assert!(ok("https://gw.example/ui/callback"));
        assert!(ok("http://127.0.0.1:49152/callback"));
        assert!(!ok("https://gw.example/ui/callback/x"));
        assert!(!ok("https://gw.example.evil/ui/callback"));
        assert!(!ok("https://evil.example/ui/callback"));
    }
}
