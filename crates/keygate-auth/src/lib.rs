//! keygate's OAuth 2.1 authorization server.
//!
//! - [`secret`]: generation, hashing and constant-time checks of client secrets; argon2id
//!   passwords.
//! - [`keys::KeyRing`]: ES256 signing keys kept (sealed) in the store, their JWKS, signing and
//!   verifying access tokens.
//! - [`token`]: the `/oauth2/token` grants.
//! - [`router`]: the HTTP endpoints (`/oauth2/*`, `/.well-known/*`).
#![forbid(unsafe_code)]

pub mod claims;
pub mod error;
pub mod keys;
pub mod router;
pub mod secret;
pub mod token;

pub use claims::{Claims, MANAGEMENT_SCOPE, Subject};
pub use error::OAuthError;
pub use keys::KeyRing;
pub use router::{AuthState, router};
