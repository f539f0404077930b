//! The connect flow: an authorization request with PKCE S256 (and the `resource` indicator for
//! discovered MCP servers), then the callback that redeems the code and seals the tokens.
//!
//! The `state` parameter is the flow's capability: random, stored only as a hash, bound to the
//! organization, integration and user that started it, usable once, for ten minutes. A flow
//! started on the connect page also needs that page's connect link to be live when it
//! completes, and uses the link up.

use keygate_core::model::{AuthMode, Integration};
use keygate_core::{OrgId, Secret, Timestamp, UserId};
use keygate_store::StoreError;
use oauth2::{AuthorizationCode, CsrfToken, PkceCodeChallenge, PkceCodeVerifier, Scope};
use serde::{Deserialize, Serialize};

use super::refresh::{provider_error, tokens_from};
use super::{Broker, BrokerError};
use crate::secret::hash_secret;
use crate::web::random_token;

/// How long a user has to finish at the provider.
const FLOW_SECS: i64 = 10 * 60;

/// What is sealed with a flow's state.
#[derive(Serialize, Deserialize)]
struct Payload {
    verifier: String,
    /// The connect session to go back to, if the flow started on the connect page.
    return_to: Option<String>,
}

/// A finished connect flow.
pub struct Connected {
    pub integration: Integration,
    pub return_to: Option<String>,
}

impl Broker {
    /// Starts connecting `user` to `integration`: `(authorization URL, state)`.
    pub async fn begin(
        &self,
        org: OrgId,
        integration: &Integration,
        user: UserId,
        return_to: Option<&str>,
    ) -> Result<(String, String), BrokerError> {
        let endpoints = self.endpoints(integration).await?;
        let client = self.client(&endpoints)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = random_token();
        let payload = serde_json::to_vec(&Payload {
            verifier: verifier.secret().clone(),
            return_to: return_to.map(str::to_owned),
        })
        .map_err(|e| BrokerError::Config(e.to_string()))?;
        self.store()
            .insert_flow_state(
                &hash_secret(&state),
                org,
                integration.id,
                user,
                &payload,
                Timestamp::now().plus_seconds(FLOW_SECS),
            )
            .await?;
        let flow_state = state.clone();
        let mut request = client
            .authorize_url(move || CsrfToken::new(flow_state))
            .add_scopes(endpoints.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge);
        if let Some(resource) = &endpoints.resource {
            request = request.add_extra_param("resource", resource.clone());
        }
        for (k, v) in &endpoints.authorize_params {
            request = request.add_extra_param(k.clone(), v.clone());
        }
        let (url, _) = request.url();
        Ok((url.to_string(), state))
    }

    /// Finishes a flow from the provider's redirect: redeems `code` with the flow's verifier and
    /// stores the user's tokens.
    pub async fn complete(&self, state: &str, code: &str) -> Result<Connected, BrokerError> {
        let flow = match self.store().take_flow_state(&hash_secret(state)).await {
            Ok(f) => f,
            Err(StoreError::NotFound) => return Err(BrokerError::UnknownState),
            Err(e) => return Err(e.into()),
        };
        let payload: Payload =
            serde_json::from_slice(&flow.payload).map_err(|_| BrokerError::UnknownState)?;
        let integration = match self
            .store()
            .get_integration(flow.org, flow.integration)
            .await
        {
            Ok(i) if i.archived_at.is_none() && i.auth_mode == AuthMode::Oauth => i,
            Ok(_) | Err(StoreError::NotFound) => {
                return Err(BrokerError::Config(
                    "the integration no longer uses OAuth".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let endpoints = self.endpoints(&integration).await?;
        let client = self.client(&endpoints)?;
        let mut request = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(payload.verifier));
        if let Some(resource) = &endpoints.resource {
            request = request.add_extra_param("resource", resource.clone());
        }
        let response = request
            .request_async(&self.http())
            .await
            .map_err(|e| provider_error("code exchange", &e).0)?;
        let tokens = tokens_from(&response);
        // A flow started from a connect link completes only while that link is live, and uses
        // it up: a link connects once.
        if let Some(session) = &payload.return_to {
            match self
                .store()
                .take_connect_session(&hash_secret(session))
                .await
            {
                Ok((org, _, user)) if org == flow.org && user == flow.user => {}
                Ok(_) | Err(StoreError::NotFound) => return Err(BrokerError::UnknownState),
                Err(e) => return Err(e.into()),
            }
        }
        let display_name = self.display_name(&endpoints, &tokens.access).await;
        self.store()
            .put_oauth_connection(
                flow.org,
                integration.id,
                flow.user,
                &tokens,
                display_name.as_deref(),
            )
            .await?;
        tracing::info!(integration = %integration.id, user = %flow.user, "upstream OAuth connection made");
        Ok(Connected {
            integration,
            return_to: payload.return_to,
        })
    }

    /// A readable name for the connected account, from the provider's userinfo endpoint (best
    /// effort: a provider without one, or failing, leaves it unset).
    async fn display_name(&self, endpoints: &super::Endpoints, access: &Secret) -> Option<String> {
        let url = endpoints.userinfo_url.as_ref()?;
        let mut bearer =
            http::HeaderValue::from_str(&format!("Bearer {}", access.expose())).ok()?;
        bearer.set_sensitive(true);
        let req = http::Request::get(url.as_str())
            .header(http::header::AUTHORIZATION, bearer)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .ok()?;
        let resp = self
            .outbound
            .execute(req, super::MAX_PROVIDER_RESPONSE)
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let info: serde_json::Value = serde_json::from_slice(resp.body()).ok()?;
        ["name", "preferred_username", "login", "email"]
            .iter()
            .find_map(|k| info[k].as_str())
            .map(|s| s.chars().take(200).collect())
    }
}
