//! keygate's OAuth 2.1 authorization server.
//!
//! - [`secret`]: generation, hashing and constant-time checks of client secrets; argon2id
//!   passwords.
//! - [`keys::KeyRing`]: ES256 signing keys kept (sealed) in the store, their JWKS, signing and
//!   verifying access tokens.
//! - [`authorize`]: the browser half of the code flow (authorize → login → consent → code).
//! - [`token`] and [`grants`]: `/oauth2/token` (client credentials, authorization code with
//!   PKCE, rotating refresh tokens with reuse detection).
//! - [`credential`]: which upstream credential an integration gets for a user — the one
//!   decision behind the proxy and token exchange, writing nothing.
//! - [`exchange`]: RFC 8693 token exchange — an application's user token in, that user's
//!   upstream credential out (`internal_mcp_credentials`, server-side SDKs).
//! - [`revoke`], [`register`]: RFC 7009 and RFC 7591.
//! - [`verify`] and [`protected`]: what resource servers use — token verification including
//!   revocation, RFC 9728 metadata and the `401` challenge.
//! - [`broker`]: users' upstream OAuth connections (discovery, the connect flow, single-flight
//!   refresh, revocation); [`connect`] is its page.
//! - [`limits`]: throttles for sign-in, client authentication and registration.
//! - [`router`]: the HTTP endpoints (`/oauth2/*`, `/.well-known/*`).
#![forbid(unsafe_code)]

pub mod authorize;
pub mod broker;
pub mod claims;
pub mod clients;
pub mod connect;
pub mod credential;
pub mod error;
pub mod exchange;
pub mod grants;
pub mod keys;
pub mod limits;
pub mod outbound;
pub mod protected;
pub mod register;
pub mod resource;
pub mod revoke;
pub mod router;
pub mod secret;
pub mod token;
pub mod verify;
pub mod web;

pub use claims::{Claims, MANAGEMENT_SCOPE, Subject};
pub use error::OAuthError;
pub use keys::KeyRing;
pub use protected::bearer_token;
pub use resource::Resource;
pub use router::{AuthState, router};
