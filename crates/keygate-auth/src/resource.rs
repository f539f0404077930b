//! Resource indicators (RFC 8707): which protected resource a token is for. A token's `aud` is
//! always one of these canonical URLs.

use keygate_core::ApplicationId;

/// A resource this gateway protects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `{publicUrl}/apps/{id}/mcp` or a pass-through `…/mcp/{integration}`.
    AppMcp {
        app: ApplicationId,
        integration: Option<String>,
    },
    /// `{publicUrl}/mcp`: the aggregated endpoint of the application named by `client_id`.
    KontextMcp,
    /// `{publicUrl}/api/v1`.
    Management,
}

impl Resource {
    /// Parses an absolute resource URL of this gateway. Trailing slashes are ignored; anything
    /// else (query, fragment, another host) is not ours.
    pub fn parse(public_url: &str, raw: &str) -> Option<Self> {
        let rest = raw.strip_prefix(public_url)?;
        let rest = rest.trim_end_matches('/');
        if rest.contains(['?', '#']) {
            return None;
        }
        match rest {
            "/mcp" => return Some(Resource::KontextMcp),
            "/api/v1" => return Some(Resource::Management),
            _ => {}
        }
        let mut parts = rest.strip_prefix("/apps/")?.splitn(3, '/');
        let app = parts.next()?.parse().ok()?;
        if parts.next()? != "mcp" {
            return None;
        }
        let integration = match parts.next() {
            None => None,
            Some(s) if !s.is_empty() && !s.contains('/') => Some(s.to_owned()),
            Some(_) => return None,
        };
        Some(Resource::AppMcp { app, integration })
    }

    /// The canonical URL, as it appears in `aud`.
    pub fn url(&self, public_url: &str) -> String {
        match self {
            Resource::AppMcp {
                app,
                integration: None,
            } => format!("{public_url}/apps/{app}/mcp"),
            Resource::AppMcp {
                app,
                integration: Some(i),
            } => {
                format!("{public_url}/apps/{app}/mcp/{i}")
            }
            Resource::KontextMcp => format!("{public_url}/mcp"),
            Resource::Management => format!("{public_url}/api/v1"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://kg.example";

    #[test]
    fn parses_the_gateway_resources_only() {
        let app = ApplicationId::new();
        let mcp = format!("{BASE}/apps/{app}/mcp");
        assert_eq!(
            Resource::parse(BASE, &mcp),
            Some(Resource::AppMcp {
                app,
                integration: None
            })
        );
        assert_eq!(
            Resource::parse(BASE, &format!("{mcp}/github/")),
            Some(Resource::AppMcp {
                app,
                integration: Some("github".into())
            })
        );
        assert_eq!(
            Resource::parse(BASE, &format!("{BASE}/api/v1/")),
            Some(Resource::Management)
        );
        assert_eq!(
            Resource::parse(BASE, &format!("{BASE}/mcp")),
            Some(Resource::KontextMcp)
        );
        assert_eq!(Resource::parse(BASE, &format!("{mcp}?x=1")), None);
        assert_eq!(Resource::parse(BASE, &format!("{mcp}/a/b")), None);
        assert_eq!(Resource::parse(BASE, "https://evil.example/api/v1"), None);
        assert_eq!(
            Resource::parse(BASE, &format!("{BASE}/apps/nope/mcp")),
            None
        );
        let r = Resource::AppMcp {
            app,
            integration: None,
        };
        assert_eq!(Resource::parse(BASE, &r.url(BASE)), Some(r));
    }
}
