//! The dashboard as a scripted browser sees it: sign in through the real authorization
//! server (login form, consent, callback), and a store seeded to the size the dashboard must
//! stay fast at (200 applications, 10,000 trace events), with each page's time measured.

use std::time::{Duration, Instant};

use keygate_core::model::{Role, TraceEvent};
use keygate_core::{ApplicationId, Timestamp, UserId};
use reqwest::StatusCode;

use crate::TestGateway;
use crate::browser::{browser, field, location};

/// The password of the people [`person`] creates.
pub const PASSWORD: &str = "correct horse battery";

/// Every page of the dashboard an owner sees.
pub const PAGES: &[&str] = &[
    "/ui/",
    "/ui/applications",
    "/ui/integrations",
    "/ui/traces",
    "/ui/sessions",
    "/ui/connections",
    "/ui/access-graph",
    "/ui/policies",
    "/ui/service-accounts",
];

/// Lifts the management API's rate limit, for a gateway measured with a seeded store (seeding
/// and timing ask the API more often in a minute than a person would).
pub fn unthrottled(config: &mut keygate_core::config::Config) {
    config.api.rate_limit_per_minute = Some(1_000_000);
}

/// Creates a person of the gateway's organization with [`PASSWORD`].
pub async fn person(gw: &TestGateway, email: &str, role: Role) -> UserId {
    let hash = keygate_auth::secret::hash_password(PASSWORD).unwrap();
    gw.store
        .create_user(gw.org, email, role, Some(&hash))
        .await
        .unwrap()
        .id
}

fn absolute(gw: &TestGateway, loc: &str) -> String {
    if loc.starts_with('/') {
        format!("{}{loc}", gw.url)
    } else {
        loc.to_owned()
    }
}

/// A browser signed in to the dashboard as `email`, and the CSRF token of its forms.
pub async fn sign_in(gw: &TestGateway, email: &str) -> (reqwest::Client, String) {
    let b = browser();
    let resp = b.get(format!("{}/ui/login", gw.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let resp = b.get(absolute(gw, &location(&resp))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let login = b
        .get(absolute(gw, &location(&resp)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let resp = b
        .post(format!("{}/oauth2/login", gw.url))
        .form(&[
            ("csrf", field(&login, "csrf").as_str()),
            ("request", &field(&login, "request")),
            ("email", email),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "sign-in of {email}");
    let resp = b.get(absolute(gw, &location(&resp))).send().await.unwrap();
    let callback = if resp.status() == StatusCode::SEE_OTHER {
        location(&resp)
    } else {
        let consent = resp.text().await.unwrap();
        let resp = b
            .post(format!("{}/oauth2/consent", gw.url))
            .form(&[
                ("csrf", field(&consent, "csrf").as_str()),
                ("request", &field(&consent, "request")),
                ("approve", "1"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        location(&resp)
    };
    let resp = b.get(&callback).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "the dashboard callback"
    );
    let html = b
        .get(format!("{}/ui/connections", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = field(&html, "csrf");
    (b, csrf)
}

/// Fills the store to the size the dashboard is measured at: `apps` applications (the first
/// ten with an integration each, attached) and `events` trace events spread over the last
/// day across them.
pub async fn seed(gw: &TestGateway, admin: &str, apps: usize, events: usize) {
    let mut ids: Vec<ApplicationId> = Vec::with_capacity(apps);
    for n in 0..apps {
        let created = gw
            .create_application(
                admin,
                &format!("App {n:03}"),
                crate::world::AppClient::Public,
            )
            .await;
        ids.push(
            created["application"]["id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    for (n, app) in ids.iter().take(10).enumerate() {
        gw.attach_integration(
            admin,
            *app,
            serde_json::json!({"name": format!("Upstream {n}"), "url": format!("https://up{n}.example.com/mcp")}),
        )
        .await;
    }
    let now = Timestamp::now();
    // Four events per trace.
    let traces: Vec<uuid::Uuid> = (0..events.div_ceil(4))
        .map(|_| uuid::Uuid::now_v7())
        .collect();
    let batch: Vec<TraceEvent> = (0..events)
        .map(|i| {
            let failed = i % 20 == 0;
            TraceEvent {
                id: uuid::Uuid::now_v7(),
                org_id: gw.org,
                created_at: now.plus_seconds(-((events - i) as i64 * 86_000 / events as i64)),
                trace_id: traces[i / 4],
                session_id: format!("session-{}", i % 50),
                agent_session_id: None,
                application_id: ids[i % ids.len()],
                user_id: None,
                event_type: if i % 4 == 0 {
                    "tools/list"
                } else {
                    "tools/call"
                }
                .into(),
                status: if failed { "error_remote" } else { "ok" }.into(),
                duration_ms: (i % 300) as i64,
                integration_id: None,
                tool_name: (i % 4 != 0).then(|| format!("tool_{}", i % 25)),
                error_message: failed.then(|| "upstream said no".into()),
                bytes_in: 120,
                bytes_out: 800,
                request_json: None,
                response_json: None,
                otel_trace_id: None,
                otel_span_id: None,
            }
        })
        .collect();
    for chunk in batch.chunks(1_000) {
        gw.store.insert_trace_events(chunk).await.unwrap();
    }
}

/// The median time of `rounds` GETs of each of `pages` (after one warm-up GET each), as the
/// signed-in browser `b` sees it over loopback.
pub async fn time_pages(
    gw: &TestGateway,
    b: &reqwest::Client,
    pages: &[&'static str],
    rounds: usize,
) -> Vec<(&'static str, Duration)> {
    let mut out = Vec::new();
    for page in pages {
        let url = format!("{}{page}", gw.url);
        let warm = b.get(&url).send().await.unwrap();
        assert_eq!(warm.status(), StatusCode::OK, "{page}");
        warm.bytes().await.unwrap();
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            let resp = b.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{page}");
            resp.bytes().await.unwrap();
            times.push(started.elapsed());
        }
        times.sort();
        out.push((*page, times[times.len() / 2]));
    }
    out
}
