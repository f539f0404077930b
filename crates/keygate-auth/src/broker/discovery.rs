//! Finding an integration's authorization server and registering keygate there: RFC 9728
//! protected resource metadata of the MCP server → RFC 8414 (or OpenID Connect discovery)
//! metadata of its authorization server → RFC 7591 dynamic client registration. Every request
//! goes through the SSRF-guarded client.

use keygate_core::Secret;
use keygate_core::model::Integration;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::{BrokerError, MAX_PROVIDER_RESPONSE};
use crate::outbound::Outbound;

/// What keygate needs from an authorization server's metadata.
#[derive(Debug)]
pub struct ServerMetadata {
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub revocation_endpoint: Option<Url>,
    pub userinfo_endpoint: Option<Url>,
    pub registration_endpoint: Option<Url>,
    pub token_endpoint_auth_methods: Vec<String>,
    pub scopes: Vec<String>,
    /// The protected resource these tokens are for (RFC 8707), when found through RFC 9728.
    pub resource: Option<String>,
}

#[derive(Deserialize)]
struct ResourceDocument {
    resource: String,
    #[serde(default)]
    authorization_servers: Vec<Url>,
    #[serde(default)]
    scopes_supported: Vec<String>,
}

#[derive(Deserialize)]
struct ServerDocument {
    issuer: String,
    authorization_endpoint: Url,
    token_endpoint: Url,
    #[serde(default)]
    revocation_endpoint: Option<Url>,
    #[serde(default)]
    userinfo_endpoint: Option<Url>,
    #[serde(default)]
    registration_endpoint: Option<Url>,
    #[serde(default)]
    code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

/// `origin + /.well-known/{name} + path` (RFC 8414 §3.1, RFC 9728 §3.1), then the same without
/// the path.
fn well_known(base: &Url, name: &str) -> Vec<Url> {
    let path = base.path().trim_end_matches('/');
    let origin = base.origin().ascii_serialization();
    let mut out = Vec::new();
    if !path.is_empty() {
        out.extend(Url::parse(&format!("{origin}/.well-known/{name}{path}")).ok());
    }
    out.extend(Url::parse(&format!("{origin}/.well-known/{name}")).ok());
    out
}

/// The first candidate that answers with a JSON document of type `T`.
async fn first_document<T: serde::de::DeserializeOwned>(
    outbound: &Outbound,
    candidates: &[Url],
) -> Result<T, BrokerError> {
    let mut last = String::from("no metadata location");
    for url in candidates {
        outbound.check(url, true)?;
        match outbound.get_json(url, MAX_PROVIDER_RESPONSE).await {
            Ok(value) => {
                return serde_json::from_value(value)
                    .map_err(|e| BrokerError::Config(format!("{url}: {e}")));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(BrokerError::Config(format!("metadata not found: {last}")))
}

fn trimmed(s: &str) -> &str {
    s.trim_end_matches('/')
}

/// The authorization server of an MCP server, through its RFC 9728 metadata.
pub async fn for_mcp_server(
    outbound: &Outbound,
    integration: &Integration,
) -> Result<ServerMetadata, BrokerError> {
    let url = Url::parse(&integration.url)
        .map_err(|_| BrokerError::Config("the integration URL is invalid".into()))?;
    let doc: ResourceDocument =
        first_document(outbound, &well_known(&url, "oauth-protected-resource")).await?;
    // RFC 9728 §3.3: the metadata must be about the resource it was fetched for.
    if trimmed(&doc.resource) != trimmed(url.as_str())
        && trimmed(&doc.resource) != url.origin().ascii_serialization()
    {
        return Err(BrokerError::Config(format!(
            "the protected resource metadata names another resource ({})",
            doc.resource
        )));
    }
    let issuer = doc.authorization_servers.first().ok_or_else(|| {
        BrokerError::Config("the protected resource names no authorization server".into())
    })?;
    let mut metadata = authorization_server(outbound, issuer).await?;
    metadata.resource = Some(doc.resource);
    if !doc.scopes_supported.is_empty() {
        metadata.scopes = doc.scopes_supported;
    }
    Ok(metadata)
}

/// An authorization server's metadata: RFC 8414, then OpenID Connect discovery.
pub async fn authorization_server(
    outbound: &Outbound,
    issuer: &Url,
) -> Result<ServerMetadata, BrokerError> {
    let mut candidates = well_known(issuer, "oauth-authorization-server");
    candidates.extend(
        Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            trimmed(issuer.as_str())
        ))
        .ok(),
    );
    let doc: ServerDocument = first_document(outbound, &candidates).await?;
    // RFC 8414 §3.3: the issuer in the document is the one asked for.
    if trimmed(&doc.issuer) != trimmed(issuer.as_str()) {
        return Err(BrokerError::Config(format!(
            "the authorization server metadata names another issuer ({})",
            doc.issuer
        )));
    }
    if !doc
        .code_challenge_methods_supported
        .iter()
        .any(|m| m == "S256")
    {
        return Err(BrokerError::Config(
            "the authorization server does not support PKCE with S256".into(),
        ));
    }
    Ok(ServerMetadata {
        authorization_endpoint: doc.authorization_endpoint,
        token_endpoint: doc.token_endpoint,
        revocation_endpoint: doc.revocation_endpoint,
        userinfo_endpoint: doc.userinfo_endpoint,
        registration_endpoint: doc.registration_endpoint,
        token_endpoint_auth_methods: doc.token_endpoint_auth_methods_supported,
        scopes: Vec::new(),
        resource: None,
    })
}

#[derive(Deserialize)]
struct Registered {
    client_id: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
}

/// Registers keygate as a client (RFC 7591): `(client_id, client_secret, secret_in_body)`.
pub async fn register(
    outbound: &Outbound,
    metadata: &ServerMetadata,
    redirect_uri: &str,
) -> Result<(String, Option<Secret>, bool), BrokerError> {
    let endpoint = metadata.registration_endpoint.as_ref().ok_or_else(|| {
        BrokerError::Config(
            "the authorization server has no registration endpoint; set oauth.clientId".into(),
        )
    })?;
    let methods = &metadata.token_endpoint_auth_methods;
    let supports = |m: &str| methods.is_empty() || methods.iter().any(|x| x == m);
    let method = if supports("client_secret_basic") {
        "client_secret_basic"
    } else if supports("client_secret_post") {
        "client_secret_post"
    } else {
        "none"
    };
    let body = json!({
        "client_name": "keygate",
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": method,
    });
    let req = http::Request::post(endpoint.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(body.to_string().into_bytes())
        .map_err(|e| BrokerError::Config(e.to_string()))?;
    let resp = outbound.execute(req, MAX_PROVIDER_RESPONSE).await?;
    if !resp.status().is_success() {
        return Err(BrokerError::Provider(format!(
            "dynamic registration answered {}",
            resp.status()
        )));
    }
    let r: Registered = serde_json::from_slice(resp.body())
        .map_err(|_| BrokerError::Provider("dynamic registration answered garbage".into()))?;
    let in_body = r.token_endpoint_auth_method.as_deref().unwrap_or(method) == "client_secret_post";
    Ok((r.client_id, r.client_secret.map(Secret::new), in_body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_locations_insert_before_the_path() {
        let u = Url::parse("https://mcp.example.com/tenant/mcp").unwrap();
        let got: Vec<String> = well_known(&u, "oauth-protected-resource")
            .iter()
            .map(Url::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "https://mcp.example.com/.well-known/oauth-protected-resource/tenant/mcp",
                "https://mcp.example.com/.well-known/oauth-protected-resource",
            ]
        );
        let root = Url::parse("https://auth.example.com").unwrap();
        assert_eq!(
            well_known(&root, "oauth-authorization-server")[0].as_str(),
            "https://auth.example.com/.well-known/oauth-authorization-server"
        );
    }
}
