//! The span export settings, decided once from `[telemetry]`: where spans go (the traces URL),
//! how (`http/protobuf` or `http/json`), with which headers and timeout, how many may wait,
//! and which sampler picks them. The strings follow the OpenTelemetry SDK environment
//! variables (`OTEL_EXPORTER_OTLP_*`, `OTEL_TRACES_SAMPLER[_ARG]`), which the binary maps onto
//! these fields.

use std::time::Duration;

use url::Url;

use crate::config::{ConfigError, TelemetryConfig};
use crate::secret::Secret;

/// Default time an export request may take (the OTLP exporter specification's 10 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of finished spans that may wait for export (the batch processor's 2048).
pub const DEFAULT_QUEUE_CAPACITY: usize = 2048;

/// The OTLP encoding on the wire. gRPC is not built in: every collector also takes OTLP over
/// HTTP (port 4318), and tonic would double the HTTP/2 client stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    HttpProtobuf,
    HttpJson,
}

/// Which traces are recorded, by the names of `OTEL_TRACES_SAMPLER`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    /// Follows the agent's `traceparent` sampled flag; a root span decides with the inner one.
    ParentBased(ParentlessSampler),
}

/// What a parent-based sampler does for a request without a `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParentlessSampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

/// Span export, ready to start.
#[derive(Clone, Debug)]
pub struct OtlpSettings {
    /// The URL export requests are POSTed to (`…/v1/traces`).
    pub traces_url: Url,
    pub protocol: OtlpProtocol,
    /// Header names and values (often a collector's API key, hence secret).
    pub headers: Vec<(String, Secret)>,
    pub timeout: Duration,
    pub queue_capacity: usize,
    pub sampler: SamplerSetting,
    pub service_name: String,
}

impl TelemetryConfig {
    /// The span export settings: `None` when no endpoint is configured (nothing is exported).
    pub fn otlp(&self) -> Result<Option<OtlpSettings>, ConfigError> {
        let Some(traces_url) = self.traces_url()? else {
            return Ok(None);
        };
        let queue_capacity = self.otlp_queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
        if !(1..=1_000_000).contains(&queue_capacity) {
            return Err(ConfigError::new(
                "telemetry.otlp_queue_capacity",
                "must be between 1 and 1000000",
            ));
        }
        let timeout = match self.otlp_timeout_ms {
            None => DEFAULT_TIMEOUT,
            Some(ms @ 1..=600_000) => Duration::from_millis(ms),
            Some(_) => {
                return Err(ConfigError::new(
                    "telemetry.otlp_timeout_ms",
                    "must be between 1 and 600000 milliseconds",
                ));
            }
        };
        Ok(Some(OtlpSettings {
            traces_url,
            protocol: parse_protocol(self.otlp_protocol.as_deref())?,
            headers: parse_headers(self.otlp_headers.as_deref().unwrap_or(""))?,
            timeout,
            queue_capacity,
            sampler: parse_sampler(
                self.traces_sampler.as_deref(),
                self.traces_sampler_arg.as_deref(),
            )?,
            service_name: self
                .service_name
                .clone()
                .unwrap_or_else(|| "keygate".to_owned()),
        }))
    }

    /// `otlp_traces_endpoint` as is, else `otlp_endpoint` + `/v1/traces`.
    fn traces_url(&self) -> Result<Option<Url>, ConfigError> {
        let (field, url) = match (&self.otlp_traces_endpoint, &self.otlp_endpoint) {
            (Some(full), _) => ("telemetry.otlp_traces_endpoint", full.clone()),
            (None, Some(base)) => (
                "telemetry.otlp_endpoint",
                format!("{}/v1/traces", base.trim_end_matches('/')),
            ),
            (None, None) => return Ok(None),
        };
        match Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(Some(u)),
            _ => Err(ConfigError::new(field, "must be an http or https URL")),
        }
    }
}

fn parse_protocol(value: Option<&str>) -> Result<OtlpProtocol, ConfigError> {
    match value.map(str::trim) {
        None | Some("http/protobuf") => Ok(OtlpProtocol::HttpProtobuf),
        Some("http/json") => Ok(OtlpProtocol::HttpJson),
        Some("grpc") => Err(ConfigError::new(
            "telemetry.otlp_protocol",
            "grpc is not supported: use http/protobuf (the collector's port 4318) or http/json",
        )),
        Some(other) => Err(ConfigError::new(
            "telemetry.otlp_protocol",
            format!("must be http/protobuf or http/json, got {other:?}"),
        )),
    }
}

/// `key1=value1,key2=value2`, values percent-encoded (the W3C baggage syntax the
/// `OTEL_EXPORTER_OTLP_HEADERS` variable uses). An unusable entry is an error naming its key,
/// never its value.
pub fn parse_headers(value: &str) -> Result<Vec<(String, Secret)>, ConfigError> {
    let error = |message: String| ConfigError::new("telemetry.otlp_headers", message);
    value
        .split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            let Some((key, raw)) = entry.split_once('=') else {
                return Err(error("each entry must be key=value".to_owned()));
            };
            let key = key.trim().to_ascii_lowercase();
            let valid_name = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid_name {
                return Err(error(format!("{key:?} is not a header name")));
            }
            let value = percent_encoding::percent_decode_str(raw.trim())
                .decode_utf8()
                .map_err(|_| error(format!("the value of {key} is not UTF-8")))?;
            if value.bytes().any(|b| b.is_ascii_control()) {
                return Err(error(format!("the value of {key} has control characters")));
            }
            Ok((key, Secret::new(value)))
        })
        .collect()
}

fn parse_sampler(name: Option<&str>, arg: Option<&str>) -> Result<SamplerSetting, ConfigError> {
    let ratio = || -> Result<f64, ConfigError> {
        match arg.map(str::trim).filter(|a| !a.is_empty()) {
            None => Ok(1.0),
            Some(a) => a
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    ConfigError::new(
                        "telemetry.traces_sampler_arg",
                        format!("must be a ratio between 0 and 1, got {a:?}"),
                    )
                }),
        }
    };
    Ok(
        match name.map(str::trim).unwrap_or("parentbased_always_on") {
            "always_on" => SamplerSetting::AlwaysOn,
            "always_off" => SamplerSetting::AlwaysOff,
            "traceidratio" => SamplerSetting::TraceIdRatio(ratio()?),
            "parentbased_always_on" => SamplerSetting::ParentBased(ParentlessSampler::AlwaysOn),
            "parentbased_always_off" => SamplerSetting::ParentBased(ParentlessSampler::AlwaysOff),
            "parentbased_traceidratio" => {
                SamplerSetting::ParentBased(ParentlessSampler::TraceIdRatio(ratio()?))
            }
            other => {
                return Err(ConfigError::new(
                    "telemetry.traces_sampler",
                    format!(
                        "must be always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio, got {other:?}"
                    ),
                ));
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry(endpoint: &str) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: Some(endpoint.to_owned()),
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert!(TelemetryConfig::default().otlp().unwrap().is_none());
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_traces_endpoint_is_used_as_is() {
        let base = telemetry("http://collector:4318/").otlp().unwrap().unwrap();
        assert_eq!(base.traces_url.as_str(), "http://collector:4318/v1/traces");
        let mut c = telemetry("http://collector:4318");
        c.otlp_traces_endpoint = Some("https://ingest.example/otlp/spans".into());
        let full = c.otlp().unwrap().unwrap();
        assert_eq!(
            full.traces_url.as_str(),
            "https://ingest.example/otlp/spans"
        );
    }

    #[test]
    fn the_defaults_are_the_sdk_defaults() {
        let s = telemetry("http://c:4318").otlp().unwrap().unwrap();
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            s.sampler,
            SamplerSetting::ParentBased(ParentlessSampler::AlwaysOn)
        );
        assert_eq!(s.service_name, "keygate");
    }

    #[test]
    fn headers_are_percent_decoded_and_lowercased() {
        let h = parse_headers("X-Api-Key=a%2Bb%3D%3D , team = core%20team,").unwrap();
        let h: Vec<_> = h.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        assert_eq!(h, [("x-api-key", "a+b=="), ("team", "core team")]);
    }

    #[test]
    fn a_bad_header_is_named_by_its_key_not_its_value() {
        let e = parse_headers("authorization=Bearer%0Asecret-value").unwrap_err();
        assert!(e.message.contains("authorization"), "{}", e.message);
        assert!(!e.message.contains("secret-value"));
        assert!(parse_headers("no-equals-sign").is_err());
        assert!(parse_headers("bad name=v").is_err());
    }

    #[test]
    fn samplers_take_their_standard_names() {
        let s = |name, arg| parse_sampler(Some(name), arg);
        assert_eq!(s("always_off", None).unwrap(), SamplerSetting::AlwaysOff);
        assert_eq!(
            s("traceidratio", Some("0.25")).unwrap(),
            SamplerSetting::TraceIdRatio(0.25)
        );
        assert_eq!(
            s("parentbased_traceidratio", None).unwrap(),
            SamplerSetting::ParentBased(ParentlessSampler::TraceIdRatio(1.0))
        );
        assert!(s("traceidratio", Some("1.5")).is_err());
        assert!(s("jaeger_remote", None).is_err());
    }

    #[test]
    fn grpc_is_refused_with_the_alternative() {
        let mut c = telemetry("http://c:4317");
        c.otlp_protocol = Some("grpc".into());
        let e = c.otlp().unwrap_err();
        assert!(e.message.contains("http/protobuf"), "{}", e.message);
        c.otlp_protocol = Some("http/json".into());
        assert_eq!(c.otlp().unwrap().unwrap().protocol, OtlpProtocol::HttpJson);
    }
}
