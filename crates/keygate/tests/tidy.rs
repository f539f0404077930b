//! Tidy: the rules of the code base that no compiler checks, checked over the repository's
//! own files. A failure names the file and the rule it breaks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file git tracks, relative to the root.
fn tracked() -> Vec<String> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root())
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git ls-files failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_default()
}

/// Rust sources of the product's library and binary code (not tests, benches or test support).
fn product_sources() -> Vec<String> {
    tracked()
        .into_iter()
        .filter(|p| p.starts_with("crates/") && p.ends_with(".rs") && p.contains("/src/"))
        .filter(|p| !p.starts_with("crates/keygate-test-support/"))
        .filter(|p| !p.ends_with("_tests.rs") && !p.ends_with("/tests.rs"))
        .collect()
}

/// A crate's `keygate-*` dependencies (normal ones, not dev-dependencies) and whether it uses
/// `sqlx`.
fn manifest(dir: &str) -> (Vec<String>, bool) {
    let text = read(&format!("{dir}/Cargo.toml"));
    let doc: toml::Table = text.parse().expect("Cargo.toml parses");
    let deps = doc
        .get("dependencies")
        .and_then(|d| d.as_table())
        .cloned()
        .unwrap_or_default();
    let internal = deps
        .keys()
        .filter(|k| k.starts_with("keygate"))
        .cloned()
        .collect();
    (internal, deps.contains_key("sqlx"))
}

/// The crates in dependency order: a crate may depend only on crates of a lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("keygate-core", 0),
    ("keygate-store", 1),
    ("keygate-policy", 1),
    ("keygate-auth", 2),
    ("keygate-trace", 2),
    ("keygate-proxy", 3),
    ("keygate-api", 3),
    ("keygate", 4),
];

#[test]
fn crates_depend_only_on_lower_layers() {
    let layer: BTreeMap<_, _> = LAYERS.iter().copied().collect();
    let mut broken = Vec::new();
    for (name, own) in LAYERS {
        for dep in manifest(&format!("crates/{name}")).0 {
            match layer.get(dep.as_str()) {
                Some(l) if l < own => {}
                _ => broken.push(format!("{name} depends on {dep}")),
            }
        }
    }
    assert!(broken.is_empty(), "crate order broken: {broken:?}");
}

#[test]
fn only_the_store_uses_sqlx() {
    let users: Vec<_> = LAYERS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| manifest(&format!("crates/{name}")).1)
        .collect();
    // keygate-test-support uses it too, to create and drop test databases.
    assert_eq!(users, ["keygate-store"], "sqlx outside the store");
}

#[test]
fn only_the_binary_reads_the_environment() {
    let readers: Vec<_> = product_sources()
        .into_iter()
        .filter(|p| !p.starts_with("crates/keygate/"))
        .filter(|p| {
            let text = read(p);
            ["env::var", "env::vars", "env::set_var", "env::remove_var"]
                .iter()
                .any(|call| text.contains(call))
        })
        .collect();
    assert!(
        readers.is_empty(),
        "libraries read the environment (pass settings in from the binary): {readers:?}"
    );
}

/// Repository methods that take no organization, each with why it needs none.
const UNSCOPED: &[(&str, &str)] = &[
    // Keyed by an unguessable secret's hash (codes, tokens, cookies, links, flow states).
    ("oauth.rs", "redeem_authorization_code"),
    ("oauth.rs", "set_code_session"),
    ("oauth.rs", "insert_refresh_token"),
    ("oauth.rs", "use_refresh_token"),
    ("oauth.rs", "browser_session_user"),
    ("oauth.rs", "connect_session"),
    ("oauth.rs", "take_connect_session"),
    ("upstream_oauth.rs", "take_flow_state"),
    ("oauth.rs", "authorization_request"),
    ("oauth.rs", "insert_authorization_request"),
    // Token bookkeeping keyed by a signed token's own ids.
    ("oauth.rs", "revoke_jti"),
    ("oauth.rs", "access_token_is_live"),
    ("oauth.rs", "agent_session_is_active"),
    ("oauth.rs", "mark_agent_session_active"),
    ("oauth.rs", "touch_agent_session_token"),
    ("oauth.rs", "has_consent"),
    ("users.rs", "record_service_account_token"),
    // Client authentication happens before the organization is known; the row carries it.
    ("applications.rs", "application_secret_hash"),
    ("users.rs", "service_account_credentials"),
    ("oauth.rs", "insert_registered_client"),
    ("oauth.rs", "registered_client"),
    // The integration passed in carries its organization.
    ("connections.rs", "upstream_credential"),
    // Gateway-wide: signing keys, housekeeping, trace ingestion, the first organization.
    ("keys.rs", "insert_signing_key"),
    ("keys.rs", "signing_keys"),
    ("keys.rs", "retire_signing_keys_except"),
    ("oauth.rs", "purge_expired_oauth_state"),
    ("traces.rs", "insert_trace_events"),
    ("traces.rs", "delete_trace_events_before"),
    ("traces.rs", "application_org"),
    ("users.rs", "default_organization"),
    ("users.rs", "create_organization"),
];

/// `(file, method, parameters)` of every public method in the store's repositories.
fn repository_methods() -> Vec<(String, String, String)> {
    let mut methods = Vec::new();
    for path in tracked() {
        let Some(file) = path.strip_prefix("crates/keygate-store/src/repo/") else {
            continue;
        };
        let text = read(&path);
        let mut rest = text.as_str();
        while let Some(at) = [rest.find("pub async fn "), rest.find("pub fn ")]
            .into_iter()
            .flatten()
            .min()
        {
            rest = &rest[at..];
            let name_start = rest.find("fn ").unwrap() + 3;
            let name_end = name_start
                + rest[name_start..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap();
            let name = &rest[name_start..name_end];
            let open = rest.find('(').unwrap();
            let mut depth = 0;
            let close = rest[open..]
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| open + i)
                .unwrap();
            methods.push((
                file.to_owned(),
                name.to_owned(),
                rest[open..close].to_owned(),
            ));
            rest = &rest[close..];
        }
    }
    methods
}

#[test]
fn every_repository_method_takes_the_organization() {
    let methods = repository_methods();
    assert!(methods.len() > 50, "the scan found the repositories");
    let unscoped: Vec<_> = methods
        .iter()
        .filter(|(_, _, params)| params.contains("&self") && !params.contains("OrgId"))
        .filter(|(file, name, _)| !UNSCOPED.contains(&(file.as_str(), name.as_str())))
        .map(|(file, name, _)| format!("{file}: {name}"))
        .collect();
    assert!(
        unscoped.is_empty(),
        "repository methods without an organization (scope them, or add them to UNSCOPED \
         with the reason): {unscoped:?}"
    );
}

/// Where outbound HTTP clients may be built: the SSRF-guarded ones, and the two that talk only
/// to addresses an operator or user configured.
const CLIENT_BUILDERS: &[&str] = &[
    // Guarded: resolves and refuses private addresses unless allowed.
    "crates/keygate-auth/src/outbound.rs",
    "crates/keygate-proxy/src/upstream.rs",
    // The OpenTelemetry collector the operator configured.
    "crates/keygate-trace/src/otel/export.rs",
    // The CLI's commands (`keygate apps`, `login`, `tail`, …): they talk only to the gateway
    // the user named with --url, KEYGATE_URL or `keygate login`, never to an address taken
    // from data, so this is not a server-side request forgery surface.
    "crates/keygate/src/cli/remote.rs",
];

#[test]
fn every_outbound_client_goes_through_the_ssrf_guard() {
    let builders: Vec<_> = product_sources()
        .into_iter()
        .filter(|p| !CLIENT_BUILDERS.contains(&p.as_str()))
        .filter(|p| {
            let text = read(p);
            [
                "reqwest::Client::",
                "reqwest::get(",
                "ClientBuilder",
                "legacy::Client",
                "HttpConnector",
                "TcpStream::connect",
            ]
            .iter()
            .any(|needle| text.contains(needle))
        })
        .collect();
    assert!(
        builders.is_empty(),
        "outbound clients built outside the SSRF guard: {builders:?}"
    );
}

#[test]
fn every_rust_file_starts_with_a_module_doc_line() {
    let missing: Vec<_> = tracked()
        .into_iter()
        .filter(|p| p.ends_with(".rs") && (p.starts_with("crates/") || p.starts_with("benches/")))
        .filter(|p| !read(p).starts_with("//!"))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` first line: {missing:?}"
    );
}

#[test]
fn nothing_cites_a_document_outside_the_repository() {
    // Spelled in pieces so that this file does not match itself.
    let outside = [
        concat!("DESIGN", " §"),
        concat!("DESIGN", ".md"),
        concat!("STYLE", ".md"),
        concat!("../", "shared"),
    ];
    let citing: Vec<_> = tracked()
        .into_iter()
        .filter(|p| {
            let text = read(p);
            outside.iter().any(|o| text.contains(o))
        })
        .collect();
    assert!(
        citing.is_empty(),
        "files citing documents outside the repository: {citing:?}"
    );
}
