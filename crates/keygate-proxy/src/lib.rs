//! keygate's MCP gateway.
//!
//! Every MCP route first runs [`stage::authenticate`]: an `Origin` the gateway serves
//! ([`origin`]), then a bearer token for exactly this resource (RFC 8707 `aud`), live (not
//! revoked), of the application's organization. Then:
//!
//! - `/apps/{id}/mcp/{integration}` — [`passthrough`]: a streaming reverse proxy to one
//!   attached integration, keeping the upstream's names and behaviour. The client's own
//!   `Authorization` never goes upstream; [`stage::credential`] supplies the integration's, and
//!   [`forwarded`] lets only allow-listed request headers through.
//! - `/apps/{id}/mcp` and `/mcp` — [`aggregate`]: one MCP server over every attached
//!   integration, names namespaced by integration slug.
//! - `/mcp/integrations`, `/mcp/connect-session`, `/mcp/integrations/{id}/oauth/connection` —
//!   `/mcp/integrations/{id}/oauth/init` — [`runtime`].
//!
//! Upstream traffic goes through [`upstream::Upstream`], a hyper client whose resolver refuses
//! internal addresses (the SSRF guard) unless allow-listed for local development.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod approval;
pub mod error;
pub mod forwarded;
pub mod legacy;
pub mod origin;
pub mod passthrough;
pub mod policy;
pub mod probe;
pub mod runtime;
pub mod sse;
pub mod stage;
pub mod traced;
pub mod unsent;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use keygate_auth::AuthState;
use keygate_core::model::{Application, Integration};
use keygate_core::{ApplicationId, IntegrationId, OrgId, UserId};
use keygate_store::GenCache;

pub use error::ProxyError;
pub use upstream::Upstream;

/// What the MCP routes share: one reference-counted [`Shared`]. axum hands each request its
/// own copy of the state (`State<ProxyState>`), so a copy is one atomic increment, not one per
/// field (perf at saturation put cloning and dropping the field-by-field state at 1.3 % of the
/// gateway's CPU).
#[derive(Clone)]
pub struct ProxyState(Arc<Shared>);

impl std::ops::Deref for ProxyState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`ProxyState`].
#[derive(Clone)]
pub struct Shared {
    pub auth: AuthState,
    pub upstream: Arc<Upstream>,
    pub activity: Arc<stage::authenticate::Activity>,
    pub cache: Arc<RouteCache>,
    /// Trace events, spans and metrics of MCP requests.
    pub tracing: Arc<traced::Tracing>,
    /// The browser origins the MCP endpoints serve.
    pub origins: Arc<origin::AllowedOrigins>,
    /// What each upstream gets to answer its part of an aggregated fan-out
    /// (`proxy.fanout_timeout_secs`).
    pub fanout_timeout: Duration,
    /// Tools listed through the policy stage, with their annotations (shared with the API's
    /// access graph).
    pub tools: Arc<keygate_policy::ToolCatalog>,
}

/// What the hot path would otherwise read from the store on every request, valid for one
/// change generation (`Store::generation`): no database round trip once warm, and any change
/// here or on another replica retires it.
#[derive(Default)]
pub struct RouteCache {
    pub(crate) apps: GenCache<(OrgId, ApplicationId), Arc<Application>>,
    pub(crate) attached: GenCache<ApplicationId, Arc<Vec<Arc<Integration>>>>,
    /// The attached integrations' URLs, parsed.
    pub(crate) urls: stage::route::ParsedUrls,
    pub(crate) credentials: GenCache<(IntegrationId, UserId), stage::credential::Cached>,
    /// Which era each upstream speaks (probed with `server/discover`).
    pub(crate) eras: GenCache<IntegrationId, aggregate::era::Era>,
    /// The upstream sessions the gateway holds for 2026 clients.
    pub(crate) handshakes: aggregate::handshakes::Handshakes,
    /// The aggregated endpoint's routed calls in flight, for cancellation.
    pub(crate) calls: aggregate::inflight::InFlight,
    /// Whether each aggregated session was ended by its client (per ended-sessions generation).
    pub(crate) ended: aggregate::ended::Ended,
    /// The HTTP+SSE upstream streams the gateway holds.
    pub(crate) sse_sessions: aggregate::sse_upstream::SseSessions,
    /// Compiled tool policies, the users they judge, listed tools' annotations.
    pub(crate) policies: policy::PolicyCache,
    /// Calls waiting for the user's approval, and what pass-through clients declared.
    pub(crate) approvals: approval::Approvals,
}

impl ProxyState {
    pub fn new(auth: AuthState, upstream: Arc<Upstream>) -> Self {
        Self(Arc::new(Shared {
            origins: Arc::new(origin::AllowedOrigins::new(&auth.public_url, &[])),
            auth,
            upstream,
            activity: Arc::default(),
            cache: Arc::default(),
            tracing: Arc::new(traced::Tracing::new(Arc::new(
                keygate_trace::Telemetry::disabled(),
            ))),
            fanout_timeout: Duration::from_secs(5),
            tools: Arc::default(),
        }))
    }

    /// The parts, while the state is being configured (before it is shared, so nothing is
    /// copied).
    fn parts_mut(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }

    /// Remembers listed tools in `tools` (the catalog the API reads too).
    pub fn with_tool_catalog(mut self, tools: Arc<keygate_policy::ToolCatalog>) -> Self {
        self.parts_mut().tools = tools;
        self
    }

    /// Serves browsers on these origins (`mcp.allowed_origins`) besides the public URL's.
    pub fn with_allowed_origins(mut self, origins: &[String]) -> Self {
        self.parts_mut().origins =
            Arc::new(origin::AllowedOrigins::new(&self.auth.public_url, origins));
        self
    }

    /// Gives each upstream `timeout` for its part of an aggregated fan-out (default 5 s).
    pub fn with_fanout_timeout(mut self, timeout: Duration) -> Self {
        self.parts_mut().fanout_timeout = timeout;
        self
    }

    /// Records exchanges through `telemetry` (the default records metrics only).
    pub fn with_telemetry(mut self, telemetry: Arc<keygate_trace::Telemetry>) -> Self {
        self.parts_mut().tracing = Arc::new(traced::Tracing::new(telemetry));
        self
    }
}

/// The MCP routes.
pub fn router(state: ProxyState) -> Router {
    Router::new()
        .route("/apps/{id}/mcp", any(aggregate::handle))
        .route("/apps/{id}/mcp/{integration}", any(passthrough::handle))
        .route("/apps/{id}/mcp/{integration}/sse", any(passthrough::handle))
        .route(
            "/apps/{id}/mcp/{integration}/message",
            any(passthrough::handle_message),
        )
        .route("/mcp", any(aggregate::handle))
        .route("/mcp/integrations", get(runtime::integrations))
        .route("/mcp/connect-session", post(runtime::connect_session))
        .route(
            "/mcp/integrations/{id}/oauth/connection",
            get(runtime::oauth_connection),
        )
        .route(
            "/mcp/integrations/{id}/oauth/init",
            post(runtime::oauth_init),
        )
        .route("/mcp/{*rest}", any(runtime::unknown))
        .with_state(state)
}
