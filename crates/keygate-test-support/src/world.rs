//! The usual starting point of a proxy test: a gateway that may reach loopback upstreams, a
//! management token, one application and two of its organization's members, Alice and Bob
//! (both with the password [`PASSWORD`]).

use std::sync::LazyLock;

use keygate_core::config::Config;
use keygate_core::model::Role;
use keygate_core::{ApplicationId, IntegrationId, UserId};
use serde_json::Value;

use crate::browser::{field, location};
use crate::{Backend, TestGateway};

/// The password of every [`McpWorld`] user.
pub const PASSWORD: &str = "correct horse battery staple";

/// Hashed once per test binary: argon2 is slow on purpose.
static PASSWORD_HASH: LazyLock<String> =
    LazyLock::new(|| keygate_auth::secret::hash_password(PASSWORD).expect("hash"));

const EMAILS: [&str; 2] = ["alice@example.com", "bob@example.com"];

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
        Self::start_with_client(backend, client, tweak, reqwest::Client::builder()).await
    }

    /// [`McpWorld::start`], with the gateway's `http` client built from `http` (a test CA to
    /// trust, an HTTP version to force).
    pub async fn start_with_client(
        backend: Backend,
        client: AppClient,
        tweak: impl FnOnce(&mut Config),
        http: reqwest::ClientBuilder,
    ) -> Self {
        let gw = TestGateway::start_with_client(
            backend,
            |c| {
                c.outbound.allowed_private_hosts = vec!["127.0.0.1".into()];
                tweak(c);
            },
            http,
        )
        .await;
        let admin = gw.admin_token().await;
        let app = gw.create_application(&admin, "Agents", client).await;
        let id: ApplicationId = app["application"]["id"].as_str().unwrap().parse().unwrap();
        let mut users = Vec::new();
        for email in EMAILS {
            let user = gw
                .store
                .create_user(gw.org, email, Role::Member, Some(&PASSWORD_HASH))
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

    /// Alice's or Bob's email address.
    pub fn email(&self, user: UserId) -> &'static str {
        if user == self.alice {
            EMAILS[0]
        } else {
            assert_eq!(user, self.bob, "not a user of this world");
            EMAILS[1]
        }
    }

    /// Opens a connect link in `browser` as `user` would: a browser not signed in as them is
    /// sent to the sign-in page, signs in as `user` and is sent back to the link. Returns the
    /// answer to that last request (the connect page, or why it is refused).
    pub async fn open_connect_link(
        &self,
        browser: &reqwest::Client,
        link: &str,
        user: UserId,
    ) -> reqwest::Response {
        let resp = browser.get(link).send().await.unwrap();
        if resp.status() != reqwest::StatusCode::SEE_OTHER {
            return resp;
        }
        let login = self.absolute(&location(&resp));
        assert!(login.contains("/oauth2/login?"), "sent to {login}");
        let resp = self.sign_in(browser, &login, user).await;
        assert_eq!(
            resp.status(),
            reqwest::StatusCode::SEE_OTHER,
            "{}",
            resp.text().await.unwrap()
        );
        let back = self.absolute(&location(&resp));
        assert_eq!(back, link, "signing in returns to the link");
        browser.get(back).send().await.unwrap()
    }

    /// Fills in the sign-in page at `login_url` as `user`; returns the form's answer.
    pub async fn sign_in(
        &self,
        browser: &reqwest::Client,
        login_url: &str,
        user: UserId,
    ) -> reqwest::Response {
        let html = browser
            .get(login_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut form = vec![
            ("csrf", field(&html, "csrf")),
            ("email", self.email(user).to_owned()),
            ("password", PASSWORD.to_owned()),
        ];
        for hidden in ["request", "connect"] {
            if html.contains(&format!("name=\"{hidden}\"")) {
                form.push((hidden, field(&html, hidden)));
            }
        }
        browser
            .post(format!("{}/oauth2/login", self.gw.url))
            .form(&form)
            .send()
            .await
            .unwrap()
    }

    /// A gateway path made absolute.
    pub fn absolute(&self, location: &str) -> String {
        if location.starts_with('/') {
            format!("{}{location}", self.gw.url)
        } else {
            location.to_owned()
        }
    }
}
