//! `keygate login`, `keygate logout` and `keygate token`.
//!
//! A service account signs in with its client id and secret (client credentials; the
//! credentials are stored, so later commands mint their own tokens). A person signs in in the
//! browser, as `gh auth login` does: the authorization code flow with PKCE through the
//! gateway's first-party public client `keygate`, redirected to a one-time listener on
//! `127.0.0.1` at a random port (RFC 8252), which checks `state` and waits at most
//! `--timeout`. `keygate token --app` runs the same flow for an application's MCP URL (the
//! browser is usually signed in already, so it is one consent) and keeps the token and its
//! refresh token, so later calls print a fresh token without the browser.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use axum::extract::Query;
use axum::response::Html;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Args;
use keygate_core::config::Config;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::credentials::{Login, Signin, Stored, UserToken, default_path};
use super::remote::{
    self, Api, CLIENT_ID, Remote, client_credentials, gateway_url, http_client, refresh,
    token_answer,
};
use super::resources::app_id;

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Sign in as this service account (`sa_…`) instead of in the browser.
    #[arg(long, requires = "client_secret")]
    pub client_id: Option<String>,
    /// The service account's secret (better in KEYGATE_CLIENT_SECRET than on the command
    /// line, where other local users can see it).
    #[arg(long, env = "KEYGATE_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    #[command(flatten)]
    pub browser: BrowserArgs,
    /// The gateway's URL (default: the configured public URL).
    #[arg(long, env = "KEYGATE_URL")]
    pub url: Option<String>,
}

/// How the browser sign-in behaves.
#[derive(Args, Debug, Clone)]
pub struct BrowserArgs {
    /// Only print the sign-in URL; do not try to open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// How long to wait for the browser sign-in, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The application (id or name) whose MCP URL the token is for.
    #[arg(long, value_name = "APP")]
    pub app: String,
    /// Print the token, its MCP URL and expiry as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub browser: BrowserArgs,
    #[command(flatten)]
    pub remote: Remote,
}

/// `keygate login`.
pub async fn login(config: &Config, args: LoginArgs) -> anyhow::Result<()> {
    let path = default_path()?;
    let mut stored = Stored::load(&path)?;
    let remote = Remote {
        url: args.url,
        token: None,
    };
    // A login names its gateway explicitly or takes the configured one, never the last login's.
    let base = gateway_url(config, &remote, &Stored::default());
    let http = http_client()?;
    let login = match (args.client_id, args.client_secret) {
        (Some(client_id), Some(client_secret)) => {
            client_credentials(&http, &base, &client_id, &client_secret).await?;
            eprintln!("signed in to {base} as service account {client_id}");
            Login::ServiceAccount {
                client_id,
                client_secret,
            }
        }
        _ => {
            let resource = format!("{base}/api/v1");
            let token = browser_signin(&http, &base, &resource, &args.browser).await?;
            eprintln!("signed in to {base}");
            Login::User(token)
        }
    };
    let fresh = Signin {
        login,
        mcp_tokens: Default::default(),
    };
    if let Some(replaced) = stored.gateways.insert(base.clone(), fresh) {
        revoke_refresh_tokens(&http, &base, &replaced).await;
    }
    stored.current = Some(base);
    stored.save(&path)?;
    eprintln!("credentials stored in {}", path.display());
    Ok(())
}

/// `keygate logout`: forgets the gateway's sign-in and revokes its refresh tokens.
pub async fn logout(config: &Config, remote: Remote) -> anyhow::Result<()> {
    let path = default_path()?;
    let mut stored = Stored::load(&path)?;
    let base = gateway_url(config, &remote, &stored);
    let Some(signin) = stored.gateways.remove(&base) else {
        anyhow::bail!("not signed in to {base}");
    };
    revoke_refresh_tokens(&http_client()?, &base, &signin).await;
    if stored.current.as_deref() == Some(base.as_str()) {
        stored.current = None;
    }
    stored.save(&path)?;
    eprintln!("signed out of {base}");
    Ok(())
}

/// Revokes the refresh tokens of a sign-in that is being forgotten or replaced (RFC 7009);
/// best effort, since the stored copy is gone either way.
async fn revoke_refresh_tokens(http: &reqwest::Client, base: &str, signin: &Signin) {
    let user_token = match &signin.login {
        Login::User(t) => Some(t),
        Login::ServiceAccount { .. } => None,
    };
    for token in user_token.into_iter().chain(signin.mcp_tokens.values()) {
        if let Some(refresh_token) = &token.refresh_token {
            let _ = http
                .post(format!("{base}/oauth2/revoke"))
                .form(&[("token", refresh_token.as_str()), ("client_id", CLIENT_ID)])
                .send()
                .await;
        }
    }
}

/// `keygate token --app APP`: a token of the signed-in user for the application's MCP URL.
pub async fn token(config: &Config, args: TokenArgs) -> anyhow::Result<()> {
    let mut api = Api::connect(config, &args.remote).await?;
    let app = app_id(&mut api, &args.app).await?;
    // Read after the API calls, which may have renewed (and written) the management token.
    let path = default_path()?;
    let mut stored = Stored::load(&path)?;
    let signin = stored
        .gateways
        .get_mut(&api.base)
        .filter(|s| matches!(s.login, Login::User(_)))
        .context(
            "MCP tokens are a user's: sign in with `keygate login` (in the browser), not as a \
             service account",
        )?;
    let mcp_url = format!("{}/apps/{app}/mcp", api.base);
    let token = mcp_token(
        &api,
        signin.mcp_tokens.get(&mcp_url),
        &mcp_url,
        &args.browser,
    )
    .await?;
    signin.mcp_tokens.insert(mcp_url.clone(), token.clone());
    stored.save(&path)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = serde_json::json!({
            "accessToken": token.access_token, "mcpUrl": mcp_url, "expiresAt": token.expires_at,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        writeln!(out, "{}", token.access_token)?;
    }
    Ok(())
}

/// The stored token if it is fresh, else a refreshed one, else one from the browser.
async fn mcp_token(
    api: &Api,
    stored: Option<&UserToken>,
    mcp_url: &str,
    browser: &BrowserArgs,
) -> anyhow::Result<UserToken> {
    if let Some(token) = stored {
        if token.fresh(remote::now(), 60) {
            return Ok(token.clone());
        }
        if token.refresh_token.is_some()
            && let Ok(renewed) = refresh(&api.http, &api.base, token).await
        {
            return Ok(renewed);
        }
    }
    browser_signin(&api.http, &api.base, mcp_url, browser).await
}

/// The PKCE pair (RFC 7636): a 256-bit verifier and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = keygate_auth::web::random_token();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The authorization code flow through the browser for `resource`.
pub async fn browser_signin(
    http: &reqwest::Client,
    base: &str,
    resource: &str,
    browser: &BrowserArgs,
) -> anyhow::Result<UserToken> {
    reachable(http, base).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("opening a port on 127.0.0.1 for the browser's redirect")?;
    let redirect_uri = format!("http://{}/callback", listener.local_addr()?);
    let (verifier, challenge) = pkce();
    let state = keygate_auth::web::random_token();
    let mut url = url::Url::parse(&format!("{base}/oauth2/authorize"))
        .with_context(|| format!("{base} is not a URL"))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", &state)
        .append_pair("resource", resource);
    eprintln!("Open this URL in your browser to sign in to {base}:\n\n  {url}\n");
    if !browser.no_browser {
        open_browser(url.as_str());
    }
    eprintln!("Waiting for the sign-in (at most {} s)…", browser.timeout);
    let code = receive_code(listener, state, Duration::from_secs(browser.timeout)).await?;
    let resp = http
        .post(format!("{base}/oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &verifier),
            ("resource", resource),
        ])
        .send()
        .await
        .map_err(|e| remote::unreachable(base, e))?;
    token_answer(resp)
        .await
        .context("the gateway refused the authorization code")
}

/// Waits up to 10 seconds for the gateway to answer `/healthz` (it may have been started just
/// before), so that nobody is sent to a sign-in page that is not there.
async fn reachable(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match http.get(format!("{base}/healthz")).send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("{base}/healthz answered {}", resp.status())
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(remote::unreachable(base, e));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Opens `url` with the command in `BROWSER` (the usual convention), else asks the desktop
/// (`xdg-open`, `open` on macOS); a failure only means the user opens it by hand.
fn open_browser(url: &str) {
    let desktop = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let opener = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| desktop.to_owned());
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// What the redirect brought: the code, or the authorization server's error.
type Redirected = Result<String, String>;

/// Serves `GET /callback` on `listener` until a redirect with the expected `state` arrives
/// (others are answered and ignored, so a stray page cannot end the wait), or `timeout`.
async fn receive_code(
    listener: tokio::net::TcpListener,
    state: String,
    timeout: Duration,
) -> anyhow::Result<String> {
    let (tx, mut rx) = mpsc::channel::<Redirected>(1);
    let callback = move |Query(q): Query<HashMap<String, String>>| {
        let tx = tx.clone();
        let state = state.clone();
        async move {
            if q.get("state") != Some(&state) {
                return Html("This is not the sign-in keygate is waiting for.");
            }
            let outcome = match (q.get("code"), q.get("error")) {
                (Some(code), _) => Ok(code.clone()),
                (None, error) => Err(q
                    .get("error_description")
                    .or(error)
                    .cloned()
                    .unwrap_or_else(|| "no code in the redirect".into())),
            };
            let page = match outcome {
                Ok(_) => "Signed in to keygate. You can close this tab.",
                Err(_) => "The sign-in failed; see the terminal.",
            };
            let _ = tx.try_send(outcome);
            Html(page)
        }
    };
    let app = axum::Router::new().route("/callback", axum::routing::get(callback));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    let received = tokio::time::timeout(timeout, rx.recv()).await;
    // Let the browser have its page, but do not wait on a connection it keeps open.
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    match received {
        Ok(Some(Ok(code))) => Ok(code),
        Ok(Some(Err(why))) => anyhow::bail!("the sign-in failed: {why}"),
        Ok(None) => anyhow::bail!("the redirect listener stopped"),
        Err(_) => anyhow::bail!(
            "no sign-in within {} s (--timeout waits longer)",
            timeout.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_the_verifiers_s256() {
        let (verifier, challenge) = pkce();
        assert!(keygate_auth::grants::pkce_matches(&verifier, &challenge));
    }
}
