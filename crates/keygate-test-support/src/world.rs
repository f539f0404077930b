//! The usual starting point of a proxy test: a gateway that may reach loopback upstreams, a
//! management token, one application and two of its organization's members, Alice and Bob.

use keygate_core::config::Config;
use keygate_core::model::Role;
use keygate_core::{ApplicationId, IntegrationId, UserId};
use serde_json::Value;

use crate::{Backend, TestGateway};

/// The kind of OAuth client the application gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppClient {
    Public,
    /// With a client secret ([`McpWorld::app_secret`]).
    Confidential,
}

pub struct McpWorld {
    pub gw: TestGateway,
    /// A management token.
    pub admin: String,
    pub app: ApplicationId,
    /// `{gateway}/apps/{app}/mcp`, the aggregated endpoint.
    pub app_url: String,
    /// The application's client secret, for a confidential client.
    pub app_secret: Option<String>,
    pub alice: UserId,
    pub bob: UserId,
}

impl McpWorld {
    /// Starts the gateway (`tweak` adjusts its config after loopback upstreams are allowed).
    pub async fn start(
        backend: Backend,
        client: AppClient,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let gw = TestGateway::start_with(backend, |c| {
            c.outbound.allowed_private_hosts = vec!["127.0.0.1".into()];
            tweak(c);
        })
        .await;
        let admin = gw.admin_token().await;
        let app = gw.create_application(&admin, "Agents", client).await;
        let id: ApplicationId = app["application"]["id"].as_str().unwrap().parse().unwrap();
        let mut users = Vec::new();
        for email in ["alice@example.com", "bob@example.com"] {
            let user = gw
                .store
                .create_user(gw.org, email, Role::Member, None)
                .await;
            users.push(user.unwrap().id);
        }
        Self {
            app_url: format!("{}/apps/{id}/mcp", gw.url),
            app_secret: app["oauth"]["clientSecret"].as_str().map(str::to_owned),
            app: id,
            alice: users[0],
            bob: users[1],
            gw,
            admin,
        }
    }

    /// Creates an integration from `body` and attaches it to the application: (id, slug).
    pub async fn integration(&self, body: Value) -> (IntegrationId, String) {
        self.gw
            .attach_integration(&self.admin, self.app, body)
            .await
    }

    /// `user`'s access token for the aggregated endpoint (it opens the pass-through ones too).
    pub async fn token(&self, user: UserId) -> String {
        self.gw.user_token(user, self.app, &self.app_url).await
    }
}
