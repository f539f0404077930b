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
        Self::parse_path(raw.strip_prefix(public_url)?)
    }

    /// Parses the path of a resource URL (what follows the public URL), as [`Resource::parse`].
    pub fn parse_path(path: &str) -> Option<Self> {
        let rest = path.trim_end_matches('/');
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

    /// Whether `url` is exactly this resource's canonical URL (what [`Resource::url`] builds),
    /// told without building it.
    pub fn is_url(&self, public_url: &str, url: &str) -> bool {
        let Some(rest) = url.strip_prefix(public_url) else {
            return false;
        };
        match self {
            Resource::AppMcp { app, integration } => {
                let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
                let id = app.0.hyphenated().encode_lower(&mut id);
                let Some(rest) = rest
                    .strip_prefix("/apps/")
                    .and_then(|r| r.strip_prefix(&*id))
                    .and_then(|r| r.strip_prefix("/mcp"))
                else {
                    return false;
                };
                match integration {
                    None => rest.is_empty(),
                    Some(i) => rest.strip_prefix('/') == Some(i.as_str()),
                }
            }
            Resource::KontextMcp => rest == "/mcp",
            Resource::Management => rest == "/api/v1",
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

    #[test]
    fn a_resource_is_exactly_its_canonical_url() {
        let app = ApplicationId::new();
        let resources = [
            Resource::AppMcp {
                app,
                integration: None,
            },
            Resource::AppMcp {
                app,
                integration: Some("github".into()),
            },
            Resource::AppMcp {
                app: ApplicationId::new(),
                integration: None,
            },
            Resource::KontextMcp,
            Resource::Management,
        ];
        for r in &resources {
            for other in &resources {
                assert_eq!(
                    r.is_url(BASE, &other.url(BASE)),
                    r == other,
                    "{r:?} {other:?}"
                );
            }
            let url = r.url(BASE);
            for near in [
                format!("{url}/"),
                format!("{url}?x"),
                url.to_uppercase(),
                url.replacen(BASE, "https://evil.example", 1),
                url[..url.len() - 1].to_owned(),
            ] {
                assert!(!r.is_url(BASE, &near), "{r:?} {near}");
            }
        }
    }
}
