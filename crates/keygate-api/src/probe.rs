//! Connectivity checks, as the API sees them: a trait the binary implements with the proxy's
//! upstream client, so this crate does not depend on the proxy.

use std::future::Future;
use std::pin::Pin;

use keygate_core::Secret;

/// What a handshake with an integration's server found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Valid(String),
    NeedsAuthorization(String),
    Invalid(String),
}

/// Performs MCP handshakes.
pub trait Prober: Send + Sync {
    fn probe<'a>(
        &'a self,
        url: &'a str,
        credential: Option<&'a Secret>,
    ) -> Pin<Box<dyn Future<Output = Probe> + Send + 'a>>;
}
