//! The aggregated endpoint's SSE event ids. One downstream stream carries the events of
//! several upstream streams, so its event id says where the client is in each of them: a
//! [`Cursor`], the last event id seen from every upstream, by integration. A client that
//! reconnects with `Last-Event-ID: <cursor>` resumes every upstream after its own last event.
//!
//! The cursor is only a position (base64url JSON, not sealed): it names the client's own
//! upstream sessions' event ids, which a client could send through the pass-through route
//! anyway.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_core::IntegrationId;

/// The last event id seen from each upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<String, String>);

impl Cursor {
    /// The cursor a `Last-Event-ID` header carries; anything else is the start of every stream.
    pub fn parse(header: Option<&str>) -> Self {
        header
            .and_then(|h| URL_SAFE_NO_PAD.decode(h.trim()).ok())
            .and_then(|json| serde_json::from_slice(&json).ok())
            .map(Self)
            .unwrap_or_default()
    }

    /// The cursor of a stream from one upstream, at its event `id`.
    pub fn one(integration: IntegrationId, id: &str) -> String {
        let mut cursor = Self::default();
        cursor.advance(integration, id);
        cursor.encode()
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&self.0).expect("strings serialize"))
    }

    /// `integration`'s stream has reached event `id`.
    pub fn advance(&mut self, integration: IntegrationId, id: &str) {
        self.0.insert(integration.to_string(), id.to_owned());
    }

    /// Where `integration`'s stream resumes, if the client has seen any of it.
    pub fn get(&self, integration: IntegrationId) -> Option<&str> {
        self.0.get(&integration.to_string()).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_garbage() {
        let (a, b) = (IntegrationId::new(), IntegrationId::new());
        let mut c = Cursor::default();
        c.advance(a, "1");
        c.advance(b, "x y");
        c.advance(a, "2");
        let back = Cursor::parse(Some(&c.encode()));
        assert_eq!(back, c);
        assert_eq!(back.get(a), Some("2"));
        assert_eq!(back.get(b), Some("x y"));
        assert_eq!(Cursor::parse(Some(&Cursor::one(a, "7"))).get(a), Some("7"));
        assert_eq!(Cursor::parse(Some("3")), Cursor::default());
        assert_eq!(Cursor::parse(None), Cursor::default());
    }
}
