//! What MCP messages look like on the wire, in one place for every crate: server-sent events
//! ([`sse`]: a decoder that yields whole events from bytes cut anywhere, and the encoder) and
//! JSON-RPC ([`jsonrpc`]: request ids and the responses the gateway writes itself).
//!
//! Plain bytes and `serde_json` values only: the HTTP bodies that carry them live in the
//! crates that speak HTTP.

pub mod jsonrpc;
pub mod sse;
