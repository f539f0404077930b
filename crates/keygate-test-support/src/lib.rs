//! Test harness: boots the real gateway in-process on an ephemeral port, on a temporary SQLite
//! file or a freshly created PostgreSQL database (dropped afterwards), and hands out tokens.
//!
//! PostgreSQL is reached at `KEYGATE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each gateway gets its own database named
//! `keygate_test_<uuid>`.
#![forbid(unsafe_code)]

pub mod browser;
pub mod dashboard;
pub mod fake_oauth;
pub mod fake_upstream;
pub mod fuzz;
pub mod mcp;
pub mod tls;
pub mod world;

use std::time::Duration;

use keygate::app::Gateway;
use keygate_core::config::Config;
use keygate_core::{ApplicationId, IntegrationId, OrgId};
use keygate_store::{Kek, Store};
use serde_json::Value;
use sqlx::Connection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::world::AppClient;

pub use keygate_store::Backend;

/// Runs each named async test body (`async fn name(backend: Backend)`) once on SQLite and
/// once on PostgreSQL, as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Backend::Sqlite).await }) +
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Backend::Postgres).await }) +
        }
    };
}

/// The PostgreSQL server used by tests.
pub fn postgres_admin_url() -> String {
    std::env::var("KEYGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A throwaway PostgreSQL database, dropped when this value is.
pub struct TempPostgres {
    pub url: String,
    name: String,
}

impl TempPostgres {
    pub async fn create() -> anyhow::Result<Self> {
        let admin = postgres_admin_url();
        let name = format!("keygate_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let mut url = url::Url::parse(&admin)?;
        url.set_path(&name);
        Ok(Self {
            url: url.to_string(),
            name,
        })
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside a test's runtime; do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
                    .await
                    .ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()?;
                conn.close().await.ok()
            })
        })
        .join();
    }
}

/// A running gateway and what a test needs to talk to it.
pub struct TestGateway {
    /// Where to send requests; also the public URL, except for a [`TestGateway::replica`].
    pub url: String,
    pub local_addr: std::net::SocketAddr,
    pub store: Store,
    pub org: OrgId,
    pub http: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    pub database_url: String,
    pub backend: Backend,
    pub keys: std::sync::Arc<keygate_auth::KeyRing>,
    /// The gateway's trace pipeline, spans and metrics.
    pub telemetry: std::sync::Arc<keygate_trace::Telemetry>,
    /// The configuration it was started with.
    pub config: Config,
    /// `http://{admin listener}` when `admin.listen` was configured.
    pub admin_url: Option<String>,
    vault_key: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _postgres: Option<TempPostgres>,
}

impl TestGateway {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a gateway after `tweak` has adjusted its configuration.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_client(backend, tweak, reqwest::Client::builder()).await
    }

    /// Starts a gateway after `tweak` has adjusted its configuration, with `http` built from
    /// `client` (a test CA to trust, an HTTP version to force). An `admin.listen` in the
    /// configuration is bound (port 0: any free port) and served as the admin listener.
    pub async fn start_with_client(
        backend: Backend,
        tweak: impl FnOnce(&mut Config),
        client: reqwest::ClientBuilder,
    ) -> Self {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let postgres = match backend {
            Backend::Postgres => Some(TempPostgres::create().await.expect("create test database")),
            Backend::Sqlite => None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = Config {
            listen: Some(addr),
            data_dir: Some(data_dir.path().display().to_string()),
            ..Default::default()
        };
        config.database.url = postgres.as_ref().map(|p| p.url.clone());
        config.database.max_connections = Some(5);
        config.vault.key = Some(Kek::generate_base64());
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let admin = match config.admin.listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .expect("bind admin"),
            ),
            None => None,
        };
        let admin_url = admin
            .as_ref()
            .map(|l| format!("http://{}", l.local_addr().expect("admin addr")));
        let vault_key = config.vault.key.clone().unwrap();
        let kek = Kek::from_base64(&vault_key).unwrap();
        let gateway = Gateway::open(&config, &kek).await.expect("open gateway");
        let store = gateway.store.clone();
        let keys = gateway.keys.clone();
        let telemetry = gateway.telemetry.clone();
        let org = store.default_organization().await.expect("org").id;
        let (tx, rx) = oneshot::channel();
        let listeners = keygate::app::Listeners {
            public: listener,
            admin,
        };
        let task = tokio::spawn(gateway.serve(listeners, async {
            let _ = rx.await;
        }));
        Self {
            url: config.public_url(),
            local_addr: addr,
            store,
            org,
            http: client.timeout(Duration::from_secs(30)).build().unwrap(),
            data_dir,
            database_url: config.database_url(),
            backend,
            keys,
            telemetry,
            config: config.clone(),
            admin_url,
            vault_key,
            shutdown: Some(tx),
            task: Some(task),
            _postgres: postgres,
        }
    }

    /// A second gateway on the same PostgreSQL database, vault key and public URL, listening on
    /// its own port: what replicas behind a load balancer look like. Its `url` is its own
    /// socket (where to send requests); tokens and resources use the shared public URL.
    pub async fn replica(&self) -> TestGateway {
        assert_eq!(
            self.backend,
            Backend::Postgres,
            "replicas share a PostgreSQL database"
        );
        let (db, key) = (self.database_url.clone(), self.vault_key.clone());
        let public: url::Url = self.url.parse().expect("public URL");
        let base = self.config.clone();
        let mut replica = Self::start_with(Backend::Sqlite, move |c| {
            let (listen, data_dir) = (c.listen, c.data_dir.clone());
            *c = base;
            (c.listen, c.data_dir) = (listen, data_dir);
            c.database.url = Some(db);
            c.vault.key = Some(key);
            c.public_url = Some(public);
        })
        .await;
        replica.url = format!("http://{}", replica.local_addr);
        replica.backend = Backend::Postgres;
        replica
    }

    /// A user's access token for `resource`, as the authorization server would issue it after
    /// the code flow (a fresh agent session, signed by the gateway's own key ring).
    pub async fn user_token(
        &self,
        user: keygate_core::UserId,
        app: keygate_core::ApplicationId,
        resource: &str,
    ) -> String {
        self.user_token_for(user, app, resource, 600).await
    }

    /// [`TestGateway::user_token`] that lives `lifetime_secs` (a long fuzz run outlives 600).
    pub async fn user_token_for(
        &self,
        user: keygate_core::UserId,
        app: keygate_core::ApplicationId,
        resource: &str,
        lifetime_secs: i64,
    ) -> String {
        let session = self
            .store
            .create_agent_session(
                self.org,
                keygate_store::NewAgentSession {
                    application_id: app,
                    user_id: Some(user),
                    agent_id: Some(app.client_id()),
                    name: Some("test agent".into()),
                    hostname: None,
                    user_agent: None,
                    client_info: None,
                    token_expires_at: None,
                },
            )
            .await
            .expect("session");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        self.keys.sign(&keygate_auth::Claims {
            iss: self.url.clone(),
            sub: user.to_string(),
            aud: resource.to_owned(),
            client_id: app.client_id(),
            scope: String::new(),
            org: self.org,
            sid: Some(session.id),
            iat: now,
            exp: now + lifetime_secs,
            jti: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// A user's own management API token, as the first-party `keygate` client obtains it
    /// (`aud` = `{url}/api/v1`, no agent session).
    pub async fn management_token(&self, user: keygate_core::UserId) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        self.keys.sign(&keygate_auth::Claims {
            iss: self.url.clone(),
            sub: user.to_string(),
            aud: format!("{}/api/v1", self.url),
            client_id: keygate_auth::clients::FIRST_PARTY_CLIENT_ID.to_owned(),
            scope: String::new(),
            org: self.org,
            sid: None,
            iat: now,
            exp: now + 600,
            jti: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Creates a service account in `org` and returns `(clientId, clientSecret)`.
    pub async fn service_account_in(&self, org: OrgId, name: &str) -> (String, String) {
        let secret = keygate_auth::secret::generate_client_secret();
        let hash = keygate_auth::secret::hash_secret(&secret);
        let sa = self
            .store
            .create_service_account(org, name, None, None, &hash)
            .await
            .unwrap();
        (sa.id.client_id(), secret)
    }

    /// `POST /oauth2/token` with client credentials; returns the status and body.
    pub async fn client_credentials(&self, client_id: &str, secret: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/oauth2/token", self.url))
            .basic_auth(client_id, Some(secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "management:all"),
                ("audience", &format!("{}/api/v1", self.url)),
            ])
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A management token of a fresh service account of the default organization.
    pub async fn admin_token(&self) -> String {
        let (id, secret) = self.service_account_in(self.org, "test-admin").await;
        let (status, body) = self.client_credentials(&id, &secret).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Creates an application named `name` with a public or confidential OAuth client; returns
    /// the API's answer (`application`, and `oauth` with a confidential client's secret).
    pub async fn create_application(&self, admin: &str, name: &str, client: AppClient) -> Value {
        let kind = match client {
            AppClient::Public => "public",
            AppClient::Confidential => "confidential",
        };
        let body = serde_json::json!({"name": name, "oauth": {"type": kind, "redirectUris": ["http://127.0.0.1/cb"]}});
        let (status, _, app) = self
            .api(reqwest::Method::POST, "/applications", admin, Some(body))
            .await;
        assert_eq!(status, 201, "{app}");
        app
    }

    /// Creates an integration from `body` and attaches it to `app`: (id, slug).
    pub async fn attach_integration(
        &self,
        admin: &str,
        app: ApplicationId,
        body: Value,
    ) -> (IntegrationId, String) {
        let (status, _, i) = self
            .api(reqwest::Method::POST, "/integrations", admin, Some(body))
            .await;
        assert_eq!(status, 201, "{i}");
        let id = i["integration"]["id"].as_str().unwrap().to_owned();
        let path = format!("/applications/{app}/integrations/{id}");
        let (status, _, _) = self.api(reqwest::Method::POST, &path, admin, None).await;
        assert_eq!(status, 204);
        (
            id.parse().unwrap(),
            i["integration"]["slug"].as_str().unwrap().to_owned(),
        )
    }

    /// Sends a management request and returns `(status, headers, body)`.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, value)
    }

    /// Runs one SQL statement on the gateway's database, behind the store's back.
    pub async fn raw_execute(&self, sql: &str) {
        let mut conn = sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("connect");
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .expect("raw sql");
        conn.close().await.ok();
    }

    /// Everything the database holds, as text: the SQLite files' bytes (main file and WAL),
    /// or every row of every table rendered by PostgreSQL (binary columns as hex).
    pub async fn raw_dump(&self) -> String {
        match self.backend {
            Backend::Sqlite => {
                let mut out = String::new();
                for entry in std::fs::read_dir(self.data_dir.path()).expect("data dir") {
                    let path = entry.expect("entry").path();
                    if path.to_string_lossy().contains("keygate.db") {
                        out.push_str(&String::from_utf8_lossy(
                            &std::fs::read(&path).expect("read"),
                        ));
                    }
                }
                out
            }
            Backend::Postgres => {
                let tables = self.rows().await;
                let rows: Vec<String> = tables.into_values().flatten().collect();
                rows.join("\n")
            }
        }
    }

    /// Every row of every table, rendered as text and sorted, by table: what a test compares
    /// before and after to see whether anything was written.
    pub async fn rows(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        use sqlx::Row;
        let mut conn = sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("connect");
        let list = match self.backend {
            Backend::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            }
            Backend::Postgres => {
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'"
            }
        };
        let tables: Vec<String> = sqlx::query(list)
            .fetch_all(&mut conn)
            .await
            .expect("tables")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut out = std::collections::BTreeMap::new();
        for table in tables {
            let select = match self.backend {
                Backend::Sqlite => {
                    let columns: Vec<String> =
                        sqlx::query(&format!("SELECT name FROM pragma_table_info('{table}')"))
                            .fetch_all(&mut conn)
                            .await
                            .expect("columns")
                            .iter()
                            .map(|r| format!("quote(\"{}\")", r.get::<String, _>(0)))
                            .collect();
                    format!("SELECT {} FROM \"{table}\"", columns.join(" || ',' || "))
                }
                Backend::Postgres => format!("SELECT t::text FROM \"{table}\" t"),
            };
            let mut rows: Vec<String> = sqlx::query(&select)
                .fetch_all(&mut conn)
                .await
                .expect("rows")
                .iter()
                .map(|r| r.get(0))
                .collect();
            rows.sort_unstable();
            out.insert(table, rows);
        }
        conn.close().await.ok();
        out
    }

    /// Stops the gateway and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("gateway task").expect("gateway served");
        }
    }
}
