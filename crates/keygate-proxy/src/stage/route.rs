//! The route stage, after authentication: which integration answers. Pass-through names one
//! by slug or id ([`integration`]); the aggregated endpoint routes over every attached proxied
//! integration ([`proxied`], then by name, URI or reference in `aggregate::route`). The
//! upstream URL is the integration's ([`endpoint`]) or, for a legacy message, the endpoint its
//! stream announced; the SSRF guard checks it before anything is sent ([`Endpoint::checked`]).
//! The application's attachments are cached per store generation.

use std::sync::Arc;

use dashmap::DashMap;
use keygate_core::IntegrationId;
use keygate_core::model::{Application, Category, Integration};
use url::Url;

use super::{Call, McpCaller};
use crate::ProxyState;
use crate::error::ProxyError;

/// The application's attached, active integrations, in attachment order (cached).
pub async fn attached(
    state: &ProxyState,
    app: &Application,
) -> Result<Arc<Vec<Arc<Integration>>>, ProxyError> {
    let store = &state.auth.store;
    let generation = store.generation();
    if let Some(list) = state.cache.attached.get(&app.id, generation) {
        return Ok(list);
    }
    let found = store.attached_integrations(app.org_id, app.id).await?;
    let list = Arc::new(found.into_iter().map(Arc::new).collect::<Vec<_>>());
    state.cache.attached.put(app.id, generation, list.clone());
    Ok(list)
}

/// One of the application's attached integrations, by slug or id.
pub async fn attached_by_ref(
    state: &ProxyState,
    app: &Application,
    r: &str,
) -> Result<Arc<Integration>, ProxyError> {
    let list = attached(state, app).await?;
    list.iter()
        .find(|i| i.slug == r || names_id(r, i))
        .cloned()
        .ok_or(ProxyError::NotFound("Integration not found"))
}

/// Whether `r` is the integration's id as it prints (hyphenated, lowercase).
fn names_id(r: &str, integration: &Integration) -> bool {
    let mut buf = uuid::Uuid::encode_buffer();
    r.len() == uuid::fmt::Hyphenated::LENGTH
        && integration.id.0.hyphenated().encode_lower(&mut buf) == r
}

/// The integration a pass-through request names by id or slug: attached to the caller's
/// application, active and proxied (not credential-only).
pub async fn integration(
    state: &ProxyState,
    caller: &McpCaller,
    r: &str,
) -> Result<Arc<Integration>, ProxyError> {
    let found = attached_by_ref(state, &caller.app, r).await?;
    if !is_proxied(&found) {
        return Err(ProxyError::NotFound(
            "Integration is credential-only and has no MCP endpoint here",
        ));
    }
    Ok(found)
}

/// The aggregated endpoint's routes: the application's attached integrations, of which it
/// serves those that [`is_proxied`], in attachment order.
pub async fn proxied(
    state: &ProxyState,
    caller: &McpCaller,
) -> Result<Arc<Vec<Arc<Integration>>>, ProxyError> {
    attached(state, &caller.app).await
}

/// Whether the gateway proxies MCP to `integration` (rather than only holding credentials).
pub fn is_proxied(integration: &Integration) -> bool {
    integration.category == Category::GatewayRemoteMcp
}

/// An upstream URL the SSRF guard has passed ([`check`]), with the `Uri` a request to it
/// carries.
#[derive(Debug)]
pub struct Endpoint {
    url: Url,
    uri: http::Uri,
}

impl Endpoint {
    /// `url`, if the gateway may call it.
    pub fn checked(call: Call<'_>, url: Url) -> Result<Self, ProxyError> {
        check(call, &url)?;
        let uri = url.as_str().parse().map_err(|e| {
            ProxyError::internal("reading the upstream URL as a request target", e)
                .of_integration(call.integration)
        })?;
        Ok(Self { url, uri })
    }

    /// `url` as it is, for tests of what is built from an endpoint.
    #[cfg(test)]
    pub(crate) fn unchecked(url: &str) -> Self {
        Self {
            url: Url::parse(url).unwrap(),
            uri: url.parse().unwrap(),
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }
}

/// The integration's URL, checked ([`Endpoint::checked`]); one that does not parse is the
/// integration's settings' fault.
pub fn endpoint(call: Call<'_>) -> Result<Arc<Endpoint>, ProxyError> {
    let integration = call.integration;
    if let Some(endpoint) = call.state.cache.urls.get(integration) {
        return Ok(endpoint);
    }
    let url = Url::parse(&integration.url).map_err(|e| {
        ProxyError::Misconfigured {
            integration: None,
            what: "the URL does not parse",
            cause: Some(Box::new(e)),
        }
        .of_integration(integration)
    })?;
    let endpoint = Arc::new(Endpoint::checked(call, url)?);
    call.state.cache.urls.put(integration, endpoint.clone());
    Ok(endpoint)
}

/// Integration URLs as parsed and checked, by integration: parsing one (WHATWG rules, IDNA),
/// checking it and parsing it again as a `Uri` costs more than the rest of routing a call. An
/// entry serves only while the integration's URL is the text it was parsed from, so an edited
/// URL is parsed afresh, whatever the cache generation. A URL the guard refuses is not kept.
#[derive(Default)]
pub(crate) struct ParsedUrls(
    DashMap<IntegrationId, (String, Arc<Endpoint>), foldhash::fast::RandomState>,
);

/// Most integrations whose URLs are kept parsed; more start the cache over.
const MAX_PARSED_URLS: usize = 10_000;

impl ParsedUrls {
    fn get(&self, integration: &Integration) -> Option<Arc<Endpoint>> {
        let entry = self.0.get(&integration.id)?;
        (entry.0 == integration.url).then(|| entry.1.clone())
    }

    fn put(&self, integration: &Integration, endpoint: Arc<Endpoint>) {
        if self.0.len() >= MAX_PARSED_URLS {
            self.0.clear();
        }
        self.0
            .insert(integration.id, (integration.url.clone(), endpoint));
    }
}

/// Refuses a URL the gateway must not call (the SSRF guard: non-https outside the allow-list,
/// embedded credentials, internal IP literals; internal addresses a name resolves to are
/// refused when connecting).
fn check(call: Call<'_>, url: &Url) -> Result<(), ProxyError> {
    call.state
        .upstream
        .check(url)
        .map_err(|e| e.of_integration(call.integration))
}
