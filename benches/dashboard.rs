//! The dashboard's server time per page with 200 applications and 10,000 trace events in the
//! store (SQLite): the median of 20 GETs of each page by a signed-in owner over loopback,
//! against the 50 ms budget. `cargo bench -p keygate-benches --bench dashboard`.

#![allow(clippy::print_stdout)] // a benchmark's report is its output

use std::time::Duration;

use keygate_core::model::Role;
use keygate_test_support::dashboard::{PAGES, person, seed, sign_in, time_pages, unthrottled};
use keygate_test_support::{Backend, TestGateway};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const BUDGET: Duration = Duration::from_millis(50);

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let gw = TestGateway::start_with(Backend::Sqlite, unthrottled).await;
    person(&gw, "owner@example.com", Role::Owner).await;
    let admin = gw.admin_token().await;
    seed(&gw, &admin, 200, 10_000).await;
    let (b, _) = sign_in(&gw, "owner@example.com").await;
    println!("dashboard pages, 200 applications, 10,000 trace events (median of 20)");
    let mut over = Vec::new();
    for (page, took) in time_pages(&gw, &b, PAGES, 20).await {
        let verdict = if took < BUDGET { "ok" } else { "OVER" };
        println!(
            "  {page:<22} {:>8.2} ms  {verdict}",
            took.as_secs_f64() * 1e3
        );
        if took >= BUDGET {
            over.push(page);
        }
    }
    assert!(over.is_empty(), "over the {BUDGET:?} budget: {over:?}");
}
