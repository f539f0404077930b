//! Credential brokering toward upstream OAuth providers: users connect their own accounts once
//! and the gateway keeps the tokens sealed, fresh and revocable.
//!
//! - [`endpoints`](Broker::endpoints) decides how an integration talks OAuth: a provider named
//!   in config, endpoints and client given inline, an issuer to discover, or — with none of
//!   those — the integration's own MCP authorization metadata (RFC 9728 → RFC 8414 → dynamic
//!   registration, see [`discovery`]).
//! - [`flow`]: the authorization code flow with PKCE S256 and the `resource` indicator; its
//!   `state` is a single-use capability bound to the user and integration.
//! - [`refresh`]: tokens handed out fresh, one refresh at a time per connection — a per-process
//!   lock, and a lease on the connection row so replicas never race on a rotating refresh
//!   token; revocation (RFC 7009).
//!
//! Token values never reach a log line or an error message: errors carry the provider's error
//! code and the endpoint's origin only.

pub mod discovery;
pub mod flow;
pub mod refresh;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use keygate_core::config::{OAuthProviderConfig, SEALED_PREFIX};
use keygate_core::model::{AuthMode, Integration};
use keygate_core::{IntegrationId, Secret, UserId};
use keygate_store::{GenCache, Purpose, SealContext, Store, StoreError};
use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, ClientSecret, EndpointNotSet, EndpointSet, RedirectUrl, TokenUrl};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::outbound::{Outbound, OutboundError};

/// The largest answer read from a provider.
const MAX_PROVIDER_RESPONSE: usize = 256 * 1024;

/// Why brokering failed. Messages never contain a token, code or secret.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The user has no connection to this integration.
    #[error("not connected")]
    NotConnected,
    /// The connection exists but its grant is gone (refresh refused, token revoked).
    #[error("the connection must be renewed")]
    Disconnected,
    /// The integration's OAuth settings cannot be used.
    #[error("OAuth is not usable for this integration: {0}")]
    Config(String),
    /// The provider failed or could not be reached (worth retrying later).
    #[error("the OAuth provider failed: {0}")]
    Provider(String),
    /// An authorization response whose `state` is unknown, used or expired.
    #[error("unknown or expired authorization state")]
    UnknownState,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<OutboundError> for BrokerError {
    fn from(e: OutboundError) -> Self {
        match e {
            OutboundError::Refused(why) => BrokerError::Config(why),
            OutboundError::Failed(why) => BrokerError::Provider(why),
        }
    }
}

/// How keygate talks OAuth with an integration's provider.
#[derive(Clone, Serialize, Deserialize)]
pub struct Endpoints {
    pub authorization_url: Url,
    pub token_url: Url,
    #[serde(default)]
    pub revocation_url: Option<Url>,
    #[serde(default)]
    pub userinfo_url: Option<Url>,
    pub client_id: String,
    #[serde(skip)]
    pub client_secret: Option<Secret>,
    /// Client authentication at the token endpoint: secret in the body instead of HTTP Basic.
    #[serde(default)]
    pub secret_in_body: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,
    /// The RFC 8707 resource indicator (the MCP server's URL, for discovered servers).
    #[serde(default)]
    pub resource: Option<String>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// A configured provider, its client secret opened.
#[derive(Clone)]
pub struct Provider {
    pub config: OAuthProviderConfig,
    pub client_secret: Option<Secret>,
}

/// The oauth2 client type keygate builds: authorization and token endpoints (revocation is
/// sent by hand, see `refresh.rs`).
pub(crate) type UpstreamClient =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The broker. One per gateway process.
pub struct Broker {
    store: Store,
    outbound: Outbound,
    public_url: Arc<str>,
    providers: HashMap<String, Provider>,
    refresh_skew_secs: i64,
    resolved: GenCache<IntegrationId, Arc<Endpoints>>,
    locks: dashmap::DashMap<(IntegrationId, UserId), Arc<tokio::sync::Mutex<()>>>,
}

impl Broker {
    /// A broker for the configured providers, whose sealed client secrets are opened here.
    pub fn new(
        store: Store,
        outbound: Outbound,
        public_url: Arc<str>,
        providers: &BTreeMap<String, OAuthProviderConfig>,
        refresh_skew_secs: u64,
    ) -> Result<Self, String> {
        let mut opened = HashMap::new();
        for (name, config) in providers {
            let client_secret =
                match &config.client_secret {
                    Some(sealed) => Some(open_provider_secret(&store, sealed).map_err(|e| {
                        format!("upstream_oauth.providers.{name}.client_secret: {e}")
                    })?),
                    None => None,
                };
            opened.insert(
                name.clone(),
                Provider {
                    config: config.clone(),
                    client_secret,
                },
            );
        }
        Ok(Self {
            store,
            outbound,
            public_url,
            providers: opened,
            refresh_skew_secs: refresh_skew_secs as i64,
            resolved: GenCache::default(),
            locks: dashmap::DashMap::new(),
        })
    }

    /// Where providers send users back: `{publicUrl}/oauth/connect/callback`.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/connect/callback", self.public_url)
    }

    /// How to talk OAuth with an integration's provider (cached per change generation).
    pub async fn endpoints(
        &self,
        integration: &Integration,
    ) -> Result<Arc<Endpoints>, BrokerError> {
        if integration.auth_mode != AuthMode::Oauth {
            return Err(BrokerError::Config(
                "the integration does not use OAuth".into(),
            ));
        }
        let generation = self.store.generation();
        if let Some(e) = self.resolved.get(&integration.id, generation) {
            return Ok(e);
        }
        let resolved = Arc::new(self.resolve(integration).await?);
        for url in [&resolved.authorization_url, &resolved.token_url]
            .into_iter()
            .chain(resolved.revocation_url.as_ref())
            .chain(resolved.userinfo_url.as_ref())
        {
            self.outbound.check(url, true)?;
        }
        self.resolved
            .put(integration.id, generation, resolved.clone());
        Ok(resolved)
    }

    async fn resolve(&self, integration: &Integration) -> Result<Endpoints, BrokerError> {
        let oauth = integration.oauth.clone().unwrap_or_default();
        let (org, id) = (integration.org_id, integration.id);
        if let Some(name) = &oauth.provider {
            let p = self.providers.get(name).ok_or_else(|| {
                BrokerError::Config(format!("no provider named {name:?} is configured"))
            })?;
            let c = &p.config;
            let required = |u: &Option<Url>| {
                u.clone()
                    .ok_or_else(|| BrokerError::Config("provider endpoints missing".into()))
            };
            return Ok(Endpoints {
                authorization_url: required(&c.authorization_url)?,
                token_url: required(&c.token_url)?,
                revocation_url: c.revocation_url.clone(),
                userinfo_url: c.userinfo_url.clone(),
                client_id: c.client_id.clone().unwrap_or_default(),
                client_secret: p.client_secret.clone(),
                secret_in_body: false,
                scopes: if oauth.scopes.is_empty() {
                    c.scopes.clone()
                } else {
                    oauth.scopes.clone()
                },
                authorize_params: c.authorize_params.clone(),
                resource: None,
            });
        }
        let inline_secret = || async {
            if integration.oauth_client_secret_configured {
                self.store.integration_oauth_client_secret(org, id).await
            } else {
                Ok(None)
            }
        };
        let parse = |field: &str, v: &Option<String>| -> Result<Option<Url>, BrokerError> {
            v.as_deref()
                .map(|s| {
                    Url::parse(s).map_err(|_| BrokerError::Config(format!("{field} is not a URL")))
                })
                .transpose()
        };
        if let (Some(authorization_url), Some(token_url), Some(client_id)) = (
            parse("authorizationUrl", &oauth.authorization_url)?,
            parse("tokenUrl", &oauth.token_url)?,
            oauth.client_id.clone(),
        ) {
            return Ok(Endpoints {
                authorization_url,
                token_url,
                revocation_url: parse("revocationUrl", &oauth.revocation_url)?,
                userinfo_url: parse("userinfoUrl", &oauth.userinfo_url)?,
                client_id,
                client_secret: inline_secret().await?,
                secret_in_body: false,
                scopes: oauth.scopes.clone(),
                authorize_params: BTreeMap::new(),
                resource: None,
            });
        }
        // Discovery: an issuer given, or the MCP server's own metadata. What registration
        // produced is stored, so a client is registered once per integration.
        if let Some((config, secret)) = self.store.discovered_oauth_client(org, id).await?
            && let Ok(mut e) = serde_json::from_value::<Endpoints>(config)
        {
            e.client_secret = secret;
            return Ok(e);
        }
        let metadata = match parse("issuer", &oauth.issuer)? {
            Some(issuer) => discovery::ServerMetadata {
                resource: None,
                ..discovery::authorization_server(&self.outbound, &issuer).await?
            },
            None => discovery::for_mcp_server(&self.outbound, integration).await?,
        };
        let (client_id, client_secret, secret_in_body) = match oauth.client_id.clone() {
            Some(client_id) => (client_id, inline_secret().await?, false),
            None => discovery::register(&self.outbound, &metadata, &self.redirect_uri()).await?,
        };
        let mut e = Endpoints {
            authorization_url: metadata.authorization_endpoint,
            token_url: metadata.token_endpoint,
            revocation_url: metadata.revocation_endpoint,
            userinfo_url: metadata.userinfo_endpoint,
            client_id,
            client_secret: None,
            secret_in_body,
            scopes: if oauth.scopes.is_empty() {
                metadata.scopes
            } else {
                oauth.scopes.clone()
            },
            authorize_params: BTreeMap::new(),
            resource: metadata.resource,
        };
        let config = serde_json::to_value(&e).map_err(|e| BrokerError::Config(e.to_string()))?;
        self.store
            .put_discovered_oauth_client(org, id, &config, client_secret.as_ref())
            .await?;
        e.client_secret = client_secret;
        Ok(e)
    }

    /// The oauth2 client for an integration's endpoints.
    pub(crate) fn client(&self, e: &Endpoints) -> Result<UpstreamClient, BrokerError> {
        let redirect = RedirectUrl::new(self.redirect_uri())
            .map_err(|_| BrokerError::Config("the public URL is not a valid base".into()))?;
        let mut client = BasicClient::new(ClientId::new(e.client_id.clone()))
            .set_auth_uri(AuthUrl::from_url(e.authorization_url.clone()))
            .set_token_uri(TokenUrl::from_url(e.token_url.clone()))
            .set_redirect_uri(redirect);
        if let Some(secret) = &e.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
        }
        if e.secret_in_body {
            client = client.set_auth_type(oauth2::AuthType::RequestBody);
        }
        Ok(client)
    }

    /// The HTTP function the oauth2 client sends its requests with: the SSRF-guarded client,
    /// answers capped in size.
    pub(crate) fn http(
        &self,
    ) -> impl Fn(
        oauth2::HttpRequest,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<oauth2::HttpResponse, OutboundError>> + Send>,
    > + '_ {
        move |req| {
            let outbound = self.outbound.clone();
            Box::pin(async move { outbound.execute(req, MAX_PROVIDER_RESPONSE).await })
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
}

/// Opens a provider client secret sealed by `keygate vault seal`.
pub fn open_provider_secret(store: &Store, sealed: &str) -> Result<Secret, String> {
    use base64::Engine;
    let encoded = sealed
        .strip_prefix(SEALED_PREFIX)
        .ok_or("is not sealed (run `keygate vault seal`)")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim())
        .map_err(|_| "is not valid sealed text")?;
    let plain = store
        .vault()
        .open_string(&provider_context(), &bytes)
        .map_err(|e| e.to_string())?;
    Ok(Secret::new(plain))
}

/// Seals a provider client secret for the configuration file (`keygate vault seal`).
pub fn seal_provider_secret(store: &Store, secret: &Secret) -> String {
    use base64::Engine;
    let sealed = store
        .vault()
        .seal(&provider_context(), secret.expose().as_bytes());
    format!(
        "{SEALED_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed)
    )
}

fn provider_context() -> SealContext {
    SealContext {
        purpose: Purpose::ProviderSecret,
        org: None,
        integration: None,
        user: None,
    }
}
