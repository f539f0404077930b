//! Timestamps: UTC, millisecond precision, ISO 8601 on the wire, epoch milliseconds in storage.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize, Serializer};

/// A point in time, stored as milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Self {
        // Straight from the clock to milliseconds: `Utc::now()` would build a calendar date
        // only for it to be taken apart again (every traced call takes the time).
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(since) => Self::from_millis(i64::try_from(since.as_millis()).unwrap_or(i64::MAX)),
            Err(_) => Self::from_millis(Utc::now().timestamp_millis()),
        }
    }

    pub fn from_millis(ms: i64) -> Self {
        Self(Utc.timestamp_millis_opt(ms).single().unwrap_or_default())
    }

    pub fn millis(&self) -> i64 {
        self.0.timestamp_millis()
    }

    pub fn seconds(&self) -> i64 {
        self.0.timestamp()
    }

    pub fn plus_seconds(&self, secs: i64) -> Self {
        Self::from_millis(self.millis() + secs * 1000)
    }

    /// `2026-11-21T20:03:59.123Z`.
    pub fn to_iso(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn parse_iso(s: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| Self::from_millis(t.timestamp_millis()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_iso())
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trip_keeps_milliseconds() {
        let t = Timestamp::from_millis(1_795_000_000_123);
        assert_eq!(t.to_iso(), "2026-11-18T11:06:40.123Z");
        assert_eq!(Timestamp::parse_iso(&t.to_iso()), Some(t));
    }

    #[test]
    fn now_is_the_clock_to_the_millisecond() {
        let before = Utc::now().timestamp_millis();
        let now = Timestamp::now();
        let after = Utc::now().timestamp_millis();
        assert!((before..=after).contains(&now.millis()));
        assert_eq!(now.0.timestamp_subsec_nanos() % 1_000_000, 0);
    }
}
