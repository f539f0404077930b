//! The policy stage's decision cost per `tools/call`, run with
//! `cargo bench -p keygate-benches --bench policy`.
//!
//! An organization with 100 enabled policies (the README's examples among per-user forbids,
//! argument limits and approvals), compiled once as the gateway caches them; then, per call,
//! what the stage adds to a `tools/call`: the decision for the call, and for a `tools/list` of
//! 20 tools the "may ever be permitted" check of each. Budget: the decision for a call ≤ 20 µs
//! at p50. Numbers are per single call on one core, measured one call at a time.
//!
//! Decisions are memoized per (user, action, tool): the first call of a key (cold: its
//! entities and Cedar's partial evaluation of every policy) costs far more than the next ones
//! (warm: only the policies that read the arguments are evaluated). Both are reported; the
//! warm rows repeat one key, the cold row asks a new tool each call.

#![allow(clippy::print_stdout)] // a benchmark's report is its output

/// The allocator the `keygate` binary uses.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::{Duration, Instant};

use keygate_core::model::Policy;
use keygate_core::{OrgId, PolicyId, Timestamp};
use keygate_policy::{Action, Annotations, Compiled, IntegrationRef, Principal, Target};
use serde_json::{Value, json};

const POLICIES: usize = 100;
const WARMUP: usize = 2_000;
const SAMPLES: usize = 20_000;
const BUDGET_P50: Duration = Duration::from_micros(20);

fn stored(text: String) -> Policy {
    Policy {
        id: PolicyId::new(),
        org_id: OrgId::new(),
        name: "bench".into(),
        description: String::new(),
        enabled: true,
        text,
        created_at: Timestamp::now(),
        updated_at: Timestamp::now(),
    }
}

/// 100 policies of the kinds an organization writes.
fn policies() -> Vec<Policy> {
    let mut texts = vec![
        r#"permit (principal, action, resource) when { principal.role != "member" };"#.to_owned(),
        r#"permit (principal, action, resource) when { principal.role == "member" && resource.readOnlyHint };"#.to_owned(),
        r#"forbid (principal, action == Action::"call_tool", resource)
when { resource.name like "delete_*" && resource.integration.host like "*.prod.example.com" };"#
            .to_owned(),
        r#"forbid (principal, action == Action::"call_tool", resource)
when { resource.name == "transfer" && !(context.arguments has amount && context.arguments.amount < 100) };"#
            .to_owned(),
        r#"@approval("user") permit (principal, action == Action::"call_tool", resource)
when { resource.name == "send_email" };"#
            .to_owned(),
    ];
    let mut n = 0;
    while texts.len() < POLICIES {
        let text = match n % 4 {
            0 => format!(
                r#"forbid (principal == User::"user-{n}", action == Action::"call_tool", resource) when {{ resource.name == "tool_{n}" }};"#
            ),
            1 => format!(
                r#"forbid (principal, action, resource) when {{ resource.integration.slug == "team{n}" && principal.email like "*@contractor{n}.example" }};"#
            ),
            2 => format!(
                r#"forbid (principal, action == Action::"call_tool", resource) when {{ resource.name == "pay_{n}" && context.arguments has amount && context.arguments.amount > {n} }};"#
            ),
            _ => format!(
                r#"@approval("user") permit (principal, action == Action::"call_tool", resource) when {{ resource.integration.slug == "finance{n}" && resource.destructiveHint }};"#
            ),
        };
        texts.push(text);
        n += 1;
    }
    texts.into_iter().map(stored).collect()
}

fn principal() -> Principal {
    Principal {
        id: "0e6c4b1a-9f43-4b43-9a70-3f7d2f1f4c11".into(),
        email: "m@example.com".into(),
        role: "member".into(),
    }
}

fn target(name: &str, read_only: bool) -> Target {
    Target {
        name: name.into(),
        integration: IntegrationRef {
            slug: "bank".into(),
            host: "bank.prod.example.com".into(),
        },
        application: "6f1c1a2e-2c55-4d0b-8b7e-0c8a5e6a9d21".into(),
        annotations: Annotations {
            read_only_hint: read_only,
            ..Annotations::default()
        },
    }
}

/// p50, p90 and p99 of `SAMPLES` timings of `f` (after a warm-up).
fn measure(mut f: impl FnMut()) -> [Duration; 3] {
    for _ in 0..WARMUP {
        f();
    }
    let mut times: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    let at = |q: f64| times[((SAMPLES as f64 * q) as usize).min(SAMPLES - 1)];
    [at(0.50), at(0.90), at(0.99)]
}

fn report(name: &str, [p50, p90, p99]: [Duration; 3]) {
    println!(
        "{name:<48} p50 {:>7.2} µs   p90 {:>7.2} µs   p99 {:>7.2} µs",
        p50.as_secs_f64() * 1e6,
        p90.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
}

fn main() {
    let stored = policies();
    let started = Instant::now();
    let compiled = Compiled::new(&stored);
    println!(
        "{POLICIES} policies compiled in {:.2} ms (once per change, per organization)",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(compiled.broken().is_empty(), "{:?}", compiled.broken());
    let user = principal();

    let transfer = target("transfer", false);
    let small = json!({"amount": 42, "to": "DE02120300000000202051", "memo": "rent"});
    let decision = compiled.decide(&user, Action::CallTool, &transfer, Some(&small));
    assert!(
        !decision.allowed,
        "a member's destructive transfer is not permitted"
    );
    let call = measure(|| {
        std::hint::black_box(compiled.decide(
            &user,
            Action::CallTool,
            &transfer,
            Some(std::hint::black_box(&small)),
        ));
    });
    report("decide, warm key: tools/call (arguments, denied)", call);

    let read = target("get_balance", true);
    let args = json!({"account": "main"});
    assert!(
        compiled
            .decide(&user, Action::CallTool, &read, Some(&args))
            .allowed
    );
    let allowed = measure(|| {
        std::hint::black_box(compiled.decide(&user, Action::CallTool, &read, Some(&args)));
    });
    report("decide, warm key: tools/call (read-only, allowed)", allowed);

    // The pass-through stage also reads the body as JSON and sends it on as judged.
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "get_balance", "arguments": args}})
    .to_string();
    let stage = measure(|| {
        let message: Value = serde_json::from_str(std::hint::black_box(&body)).unwrap();
        let d = compiled.decide(
            &user,
            Action::CallTool,
            &read,
            message["params"].get("arguments"),
        );
        std::hint::black_box((d, serde_json::to_vec(&message).unwrap()));
    });
    report("stage, warm key: parse + decide + serialize", stage);

    // A new tool per call: every decision is a first one (the memo starts over when full).
    let cold_targets: Vec<Target> = (0..WARMUP + SAMPLES)
        .map(|i| target(&format!("cold_{i}"), false))
        .collect();
    let mut next = 0;
    let cold = measure(|| {
        let t = &cold_targets[next % cold_targets.len()];
        next += 1;
        std::hint::black_box(compiled.decide(&user, Action::CallTool, t, Some(&args)));
    });
    report("decide, cold key: first call of a tool", cold);

    let listed: Vec<Target> = (0..20)
        .map(|i| target(&format!("tool_{i}"), i % 2 == 0))
        .collect();
    let list = measure(|| {
        for t in &listed {
            std::hint::black_box(compiled.may_ever(&user, Action::CallTool, t));
        }
    });
    report("may_ever, warm keys: a tools/list of 20 tools", list);

    let verdict = if call[0] <= BUDGET_P50 && allowed[0] <= BUDGET_P50 {
        "within"
    } else {
        "OVER"
    };
    println!(
        "decision per tools/call (warm key) with {POLICIES} policies: {verdict} the budget of {} µs at p50",
        BUDGET_P50.as_micros()
    );
}
