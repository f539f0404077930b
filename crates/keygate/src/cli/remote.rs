//! The CLI as a client of a running gateway: which gateway (`--url`, `KEYGATE_URL`, the last
//! `keygate login`, else the configured public URL), which credential (`--token`, a service
//! account in `KEYGATE_CLIENT_ID`/`KEYGATE_CLIENT_SECRET`, else the stored sign-in, renewed
//! when it runs out), and [`Api`], the management API's client that turns the API's error
//! bodies into the error the command exits with.
//!
//! This is the one place the binary builds an HTTP client for its own commands: it talks only
//! to the gateway the user named, so it does not go through the SSRF guard.

use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use keygate_core::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::credentials::{Login, Signin, Stored, UserToken, default_path};

/// How to reach the gateway; shared by every API-backed command.
#[derive(Args, Debug, Clone, Default)]
pub struct Remote {
    /// The gateway's URL (default: the gateway of the last `keygate login`, else the
    /// configured public URL).
    #[arg(long, env = "KEYGATE_URL", global = true)]
    pub url: Option<String>,
    /// A management access token to use as it is (default: the stored sign-in, or a service
    /// account in KEYGATE_CLIENT_ID and KEYGATE_CLIENT_SECRET).
    #[arg(long, env = "KEYGATE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// A service account's credentials in the environment: client id, then secret.
pub const CREDENTIAL_VARS: [&str; 2] = ["KEYGATE_CLIENT_ID", "KEYGATE_CLIENT_SECRET"];

/// The first-party OAuth client the CLI signs users in as.
pub const CLIENT_ID: &str = "keygate";

/// A token this close to its expiry is renewed before use.
const RENEW_MARGIN_SECS: i64 = 30;

/// The HTTP client of the CLI's own commands.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Which gateway a command talks to.
pub fn gateway_url(config: &Config, remote: &Remote, stored: &Stored) -> String {
    remote
        .url
        .clone()
        .or_else(|| stored.current.clone())
        .unwrap_or_else(|| config.public_url())
        .trim_end_matches('/')
        .to_owned()
}

/// Where a command's management token comes from.
enum Source {
    /// `--token`: used as it is, never renewed.
    Given,
    /// A service account's credentials (the environment, or stored by `keygate login`).
    ServiceAccount { id: String, secret: String },
    /// The stored user sign-in, renewed with its refresh token and written back.
    User,
}

/// A client of one gateway's management API, signed in.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    source: Source,
    token: String,
    stored: Stored,
}

impl Api {
    /// Resolves the gateway and the credential and obtains a token (nothing is sent for
    /// `--token`).
    pub async fn connect(config: &Config, remote: &Remote) -> anyhow::Result<Self> {
        // Without a home directory there is nothing stored, which matters only without --token.
        let stored = match default_path() {
            Ok(path) => Stored::load(&path)?,
            Err(_) => Stored::default(),
        };
        let base = gateway_url(config, remote, &stored);
        let env_client = (
            std::env::var(CREDENTIAL_VARS[0]),
            std::env::var(CREDENTIAL_VARS[1]),
        );
        let source = match (&remote.token, env_client, stored.gateways.get(&base)) {
            (Some(_), _, _) => Source::Given,
            (None, (Ok(id), Ok(secret)), _) => Source::ServiceAccount { id, secret },
            (None, _, Some(Signin { login, .. })) => match login {
                Login::ServiceAccount {
                    client_id,
                    client_secret,
                } => Source::ServiceAccount {
                    id: client_id.clone(),
                    secret: client_secret.clone(),
                },
                Login::User(_) => Source::User,
            },
            (None, _, None) => anyhow::bail!(
                "not signed in to {base}: run `keygate login` (or pass --token, or set \
                 KEYGATE_CLIENT_ID and KEYGATE_CLIENT_SECRET)"
            ),
        };
        let mut api = Self {
            http: http_client()?,
            base,
            source,
            token: remote.token.clone().unwrap_or_default(),
            stored,
        };
        api.renew(false).await?;
        Ok(api)
    }

    /// The current management token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Obtains a token when the one held is missing or (with `rejected`) was refused.
    pub async fn renew(&mut self, rejected: bool) -> anyhow::Result<()> {
        match &self.source {
            Source::Given if rejected => {
                anyhow::bail!("the gateway refused the token (401); pass a current one")
            }
            Source::Given => Ok(()),
            Source::ServiceAccount { id, secret } => {
                self.token = client_credentials(&self.http, &self.base, id, secret).await?;
                Ok(())
            }
            Source::User => {
                let path = default_path()?;
                let Some(Signin {
                    login: Login::User(token),
                    ..
                }) = self.stored.gateways.get_mut(&self.base)
                else {
                    anyhow::bail!("the stored sign-in to {} changed", self.base);
                };
                if rejected || !token.fresh(now(), RENEW_MARGIN_SECS) {
                    *token = refresh(&self.http, &self.base, token)
                        .await
                        .with_context(|| {
                            format!(
                                "the sign-in to {} has expired: run `keygate login`",
                                self.base
                            )
                        })?;
                    self.token = token.access_token.clone();
                    self.stored.save(&path)?;
                } else {
                    self.token = token.access_token.clone();
                }
                Ok(())
            }
        }
    }

    /// Sends a request to `/api/v1{path}` and returns the JSON answer (`null` for an empty
    /// one); an error status becomes an error carrying the API's message.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut renewed = false;
        loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}/api/v1{path}", self.base))
                .bearer_auth(&self.token);
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = req.send().await.map_err(|e| unreachable(&self.base, e))?;
            if resp.status() == StatusCode::UNAUTHORIZED && !renewed {
                renewed = true;
                self.renew(true).await?;
                continue;
            }
            return answer(resp).await;
        }
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// Every item of a paginated list (`items` + `nextCursor`), following the cursors.
    pub async fn list(&mut self, path: &str) -> anyhow::Result<Vec<Value>> {
        let join = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page_path = match &cursor {
                Some(c) => format!("{path}{join}limit=200&cursor={}", encode(c)),
                None => format!("{path}{join}limit=200"),
            };
            let page = self.get(&page_path).await?;
            if let Some(list) = page["items"].as_array() {
                items.extend(list.iter().cloned());
            }
            match page["nextCursor"].as_str() {
                Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
                _ => return Ok(items),
            }
        }
    }
}

/// A query value, percent-encoded.
pub fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// What a failed connection says: which gateway, and the likely reason.
pub fn unreachable(base: &str, e: reqwest::Error) -> anyhow::Error {
    anyhow!(
        "cannot reach the gateway at {base} (is it running? --url or KEYGATE_URL names another): {e}"
    )
}

/// The JSON of a successful answer, or the API's error message with its status.
async fn answer(resp: reqwest::Response) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp.text().await.context("reading the gateway's answer")?;
    let body: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if status.is_success() {
        return Ok(body);
    }
    Err(anyhow!(api_error(status, &body)))
}

/// `404 Not Found: Application not found`, with each invalid field on a line of its own.
pub fn api_error(status: StatusCode, body: &Value) -> String {
    let message = body["message"]
        .as_str()
        .or_else(|| body["error_description"].as_str())
        .or_else(|| body["error"].as_str())
        .or_else(|| body.as_str())
        .unwrap_or("");
    let mut text = format!("{status}: {message}");
    for field in body["validationErrors"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "\n  {}: {}",
            field["field"].as_str().unwrap_or("?"),
            field["message"].as_str().unwrap_or("")
        ));
    }
    text
}

/// A management token for a service account (client credentials).
pub async fn client_credentials(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    secret: &str,
) -> anyhow::Result<String> {
    let resp = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth(encode(id), Some(encode(secret)))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "management:all"),
            ("audience", &format!("{base}/api/v1")),
        ])
        .send()
        .await
        .map_err(|e| unreachable(base, e))?;
    let token = token_answer(resp)
        .await
        .context("the gateway refused the service account's credentials")?;
    Ok(token.access_token)
}

/// A fresh token for `token`'s refresh token (which rotates).
pub async fn refresh(
    http: &reqwest::Client,
    base: &str,
    token: &UserToken,
) -> anyhow::Result<UserToken> {
    let refresh_token = token.refresh_token.as_deref().context(
        "a browser sign-in to the management API lasts as long as its access token (the \
         gateway's auth.access_token_ttl_secs)",
    )?;
    let resp = http
        .post(format!("{base}/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .map_err(|e| unreachable(base, e))?;
    token_answer(resp).await
}

/// A token endpoint's answer (RFC 6749 §5.1), or its error (§5.2) as the error.
pub async fn token_answer(resp: reqwest::Response) -> anyhow::Result<UserToken> {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let Some(access_token) = body["access_token"].as_str() else {
        anyhow::bail!("{}", api_error(status, &body));
    };
    Ok(UserToken {
        access_token: access_token.to_owned(),
        refresh_token: body["refresh_token"].as_str().map(str::to_owned),
        expires_at: now() + body["expires_in"].as_i64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_api_error_says_the_status_the_message_and_each_bad_field() {
        let body = json!({
            "error": "validation_error", "message": "Invalid request: 2 fields are invalid",
            "validationErrors": [{"field": "name", "message": "must not be empty"},
                                 {"field": "url", "message": "must be a URL"}]
        });
        assert_eq!(
            api_error(StatusCode::BAD_REQUEST, &body),
            "400 Bad Request: Invalid request: 2 fields are invalid\n  name: must not be empty\n  \
             url: must be a URL"
        );
    }

    #[test]
    fn the_gateway_named_by_flag_wins_over_the_last_login_and_the_configuration() {
        let config = Config::default();
        let mut stored = Stored {
            current: Some("http://last".into()),
            ..Default::default()
        };
        let flag = Remote {
            url: Some("http://flag/".into()),
            token: None,
        };
        assert_eq!(gateway_url(&config, &flag, &stored), "http://flag");
        assert_eq!(
            gateway_url(&config, &Remote::default(), &stored),
            "http://last"
        );
        stored.current = None;
        assert_eq!(
            gateway_url(&config, &Remote::default(), &stored),
            config.public_url()
        );
    }
}
