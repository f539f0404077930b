//! The stages every MCP request goes through, one small file each, in this order:
//!
//! 1. [`authenticate`] — the `Origin`, the bearer token, the application: the
//!    [`authenticate::McpCaller`]. A refused request is attributed by [`crate::traced`].
//! 2. [`route`] — which integration answers: by slug or id on pass-through, every attached
//!    proxied one on the aggregated endpoint; the upstream URL and the SSRF guard's check of it.
//! 3. [`policy`] — the organization's tool policies: `-32043`, or a call to approve first.
//! 4. [`credential`] — the credential the integration gets for this user, or "connect first"
//!    (`-32042`, its link minted only where that answer is sent).
//! 5. [`send`] — the upstream request (forwarded headers and the credential), sent with the
//!    one OAuth retry after a `401`; the trace notes the credential and opens a client span.
//! 6. [`relay`] — the answer streamed back (pass-through; the aggregated endpoint reads and
//!    rewrites its answers in [`crate::aggregate`]).
//!
//! Pass-through ([`crate::passthrough`]) runs them once per request. The aggregated endpoint
//! ([`crate::aggregate`]) authenticates once, then runs route, policy, credential and send for
//! each upstream exchange it makes. From the route stage on, the stages share a [`Call`].
//! Around them, [`crate::traced`] only observes: it opens the request's record, scopes the
//! handler so that every send is seen, and finishes the record with the answer.

pub mod authenticate;
pub mod credential;
pub mod policy;
pub mod relay;
pub mod route;
pub mod send;

use keygate_core::model::Integration;

use crate::ProxyState;

pub use authenticate::McpCaller;

/// One request's way to one integration: what the stages after routing share. Borrowed, and
/// `Copy`: building one per upstream exchange costs nothing. The request's trace
/// ([`keygate_trace::Exchange`]) is not part of it: the aggregated endpoint runs many calls of
/// one request at once, and what a send tells the trace goes through the scope that
/// [`crate::traced::within`] sets around the handler.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub state: &'a ProxyState,
    /// Who asks ([`authenticate`]).
    pub caller: &'a McpCaller,
    /// Which integration answers ([`route`]).
    pub integration: &'a Integration,
    /// The route's label on the upstream request's metrics.
    pub route: &'static str,
}
