//! Loading the configuration: the file (optional), then `KEYGATE_*` environment overrides,
//! then the global `--data-dir` flag, then the per-user data directory when nothing named one,
//! then validation. Nothing here binds a port or opens the database, so bad configuration
//! fails before either happens.

use std::fs;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use keygate_core::config::{Config, ConfigError, FIELDS, FieldKind, env_var_for};
use keygate_store::{Kek, StoreError, VaultError};

/// Exit code for bad configuration (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// Reads and validates the configuration.
pub fn load(
    file: Option<&Path>,
    data_dir: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut in_file = None;
    let mut table = match file {
        Some(path) => {
            let text = fs::read_to_string(path).map_err(|e| {
                ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
            })?;
            let (mut table, schema_error) = file_table(path, &text)?;
            in_file = schema_error;
            // A relative data directory in the file is relative to the file, so every command
            // given the same file finds the same data, whatever its working directory.
            if let Some(toml::Value::String(dir)) = table.get("data_dir")
                && Path::new(dir).is_relative()
            {
                let base = path.parent().unwrap_or(Path::new("."));
                let dir = absolute(&base.join(dir));
                set(&mut table, "data_dir", toml::Value::String(dir));
            }
            table
        }
        None => toml::Table::new(),
    };
    for (field, kind) in FIELDS {
        let var = env_var_for(field);
        let Some(raw) = env(&var) else { continue };
        set(&mut table, field, typed(field, *kind, &var, raw)?);
    }
    standard_otel_vars(&mut table, &env)?;
    if let Some(dir) = data_dir {
        set(&mut table, "data_dir", toml::Value::String(absolute(dir)));
    } else if let Some(toml::Value::String(dir)) = table.get("data_dir") {
        let dir = absolute(Path::new(dir));
        set(&mut table, "data_dir", toml::Value::String(dir));
    } else if let Some(dir) = user_data_dir(&env) {
        set(&mut table, "data_dir", toml::Value::String(absolute(&dir)));
    }
    let config = parse_config(table).map_err(|mut e| match in_file {
        Some(located) if located.field == e.field => located,
        _ => {
            let var = env_var_for(&e.field);
            if env(&var).is_some() {
                e.message = format!("{} (from {var})", e.message);
            }
            e
        }
    })?;
    config.validate()?;
    if let Some(key) = &config.vault.key {
        Kek::from_base64(key).map_err(|e| ConfigError::new("vault.key", e.to_string()))?;
    }
    if config.data_dir.is_none()
        && (config.database.url.is_none()
            || (config.vault.key.is_none() && config.vault.key_file.is_none()))
    {
        return Err(ConfigError::new(
            "data_dir",
            "there is no per-user data directory (HOME is not set): pass --data-dir or set \
             KEYGATE_DATA_DIR",
        ));
    }
    Ok(config)
}

/// The OpenTelemetry SDKs' standard variables, each the fallback of one field (the trace
/// signal's own variable before the general one), where neither the `KEYGATE_*` variable nor
/// the file sets that field. `OTEL_SDK_DISABLED=true` turns them all off.
const STANDARD_OTEL_VARS: &[(&str, &[&str])] = &[
    ("telemetry.otlp_endpoint", &["OTEL_EXPORTER_OTLP_ENDPOINT"]),
    (
        "telemetry.otlp_traces_endpoint",
        &["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"],
    ),
    (
        "telemetry.otlp_protocol",
        &[
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ],
    ),
    (
        "telemetry.otlp_headers",
        &[
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ],
    ),
    (
        "telemetry.otlp_timeout_ms",
        &[
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ],
    ),
    (
        "telemetry.otlp_queue_capacity",
        &["OTEL_BSP_MAX_QUEUE_SIZE"],
    ),
    ("telemetry.traces_sampler", &["OTEL_TRACES_SAMPLER"]),
    ("telemetry.traces_sampler_arg", &["OTEL_TRACES_SAMPLER_ARG"]),
    ("telemetry.service_name", &["OTEL_SERVICE_NAME"]),
];

fn standard_otel_vars(
    table: &mut toml::Table,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(());
    }
    for (field, vars) in STANDARD_OTEL_VARS {
        if env(&env_var_for(field)).is_some() || file_value(table, field).is_some() {
            continue;
        }
        let found = vars
            .iter()
            .find_map(|var| env(var).filter(|v| !v.trim().is_empty()).map(|v| (var, v)));
        if let Some((var, raw)) = found {
            let kind = FIELDS
                .iter()
                .find(|(f, _)| f == field)
                .map(|(_, kind)| *kind)
                .expect("every standard variable maps onto a listed field");
            set(table, field, typed(field, kind, var, raw)?);
        }
    }
    Ok(())
}

/// The value of variable `var`, as the type field `field` takes.
fn typed(field: &str, kind: FieldKind, var: &str, raw: String) -> Result<toml::Value, ConfigError> {
    Ok(match kind {
        FieldKind::String => toml::Value::String(raw),
        FieldKind::Integer => toml::Value::Integer(raw.trim().parse().map_err(|_| {
            ConfigError::new(field, format!("{var} must be an integer, got {raw:?}"))
        })?),
        FieldKind::Bool => toml::Value::Boolean(match raw.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(ConfigError::new(
                    field,
                    format!("{var} must be true or false, got {raw:?}"),
                ));
            }
        }),
        FieldKind::StringList => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
    })
}

/// The per-user data directory: `$XDG_DATA_HOME/keygate`, else `~/.local/share/keygate`
/// (`~/Library/Application Support/keygate` on macOS). `None` without a home directory.
pub fn user_data_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if !cfg!(target_os = "macos")
        && let Some(xdg) = env("XDG_DATA_HOME").filter(|d| Path::new(d).is_absolute())
    {
        return Some(Path::new(&xdg).join("keygate"));
    }
    let home = env("HOME").filter(|h| Path::new(h).is_absolute())?;
    let base = if cfg!(target_os = "macos") {
        "Library/Application Support"
    } else {
        ".local/share"
    };
    Some(Path::new(&home).join(base).join("keygate"))
}

/// `path` made absolute against the working directory, as text.
fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// The file as a table (a syntax error fails here, located), and what deserializing the file
/// alone into [`Config`] finds wrong, located too: an unknown key or a value of the wrong type.
/// That second error stands only if the merged configuration fails on the same field (an
/// environment variable may override a bad value).
fn file_table(path: &Path, text: &str) -> Result<(toml::Table, Option<ConfigError>), ConfigError> {
    let located = |e: toml::de::Error, field: String| {
        ConfigError::new(field, one_line(e.message())).at(location(path, text, e.span()))
    };
    let table = toml::from_str(text).map_err(|e| located(e, String::new()))?;
    let schema = serde_path_to_error::deserialize::<_, Config>(toml::Deserializer::new(text))
        .err()
        .map(|e| {
            let field = field_named(e.path().to_string(), e.inner().message());
            located(e.into_inner(), field)
        });
    Ok((table, schema))
}

/// `FILE:LINE:COLUMN` of a byte span in `text` (lines and columns from 1).
fn location(path: &Path, text: &str, span: Option<Range<usize>>) -> String {
    let Some(span) = span else {
        return path.display().to_string();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!("{}:{line}:{column}", path.display())
}

/// toml's messages span lines (`invalid string` / `expected ...`): one line for the log.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Variables of the project's test and benchmark tooling (a trailing `_` is a prefix): not
/// settings, but set around the binary by its own scripts.
const TOOLING_VARS: &[&str] = &[
    "KEYGATE_BIN",
    "KEYGATE_TEST_",
    "KEYGATE_E2E_",
    "KEYGATE_BENCH_",
    "KEYGATE_FUZZ_",
];

/// The `KEYGATE_*` names in `present` that nothing reads (`known` lists what does), sorted,
/// each with the known name it most likely misspells.
pub fn unknown_env_vars(
    present: impl IntoIterator<Item = String>,
    known: &[String],
) -> Vec<(String, Option<String>)> {
    let tooling = |name: &str| {
        TOOLING_VARS.iter().any(|t| match t.strip_suffix('_') {
            Some(_) => name.starts_with(t),
            None => name == *t,
        })
    };
    let mut unknown: Vec<(String, Option<String>)> = present
        .into_iter()
        .filter(|n| n.starts_with("KEYGATE_") && !known.contains(n) && !tooling(n))
        .map(|n| {
            let closest = closest(&n, known);
            (n, closest)
        })
        .collect();
    unknown.sort();
    unknown
}

/// The known name nearest to `name` by edit distance, if near enough to be a typo of it:
/// at most a third of the part after `KEYGATE_` differs (and at least two edits are allowed).
fn closest(name: &str, known: &[String]) -> Option<String> {
    let (best, distance) = known
        .iter()
        .map(|k| (k, strsim::damerau_levenshtein(name, k)))
        .min_by_key(|(_, d)| *d)?;
    let typed = name.len().saturating_sub("KEYGATE_".len());
    (distance <= (typed / 3).max(2)).then(|| best.clone())
}

/// The variable overriding each configuration field (`KEYGATE_DATABASE_URL`, …).
pub fn field_env_vars() -> impl Iterator<Item = String> {
    FIELDS.iter().map(|(field, _)| env_var_for(field))
}

fn file_value<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let (section, leaf) = dotted.split_once('.')?;
    table.get(section)?.as_table()?.get(leaf)
}

fn set(table: &mut toml::Table, dotted: &str, value: toml::Value) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let leaf = parts.pop().expect("non-empty path");
    let mut cursor = table;
    for part in parts {
        let entry = cursor
            .entry(part)
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if !entry.is_table() {
            *entry = toml::Value::Table(Default::default());
        }
        cursor = entry.as_table_mut().expect("just made a table");
    }
    cursor.insert(leaf.to_owned(), value);
}

/// Deserializes, naming the offending field (`database.urll`, `listen`) in the error.
fn parse_config(table: toml::Table) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().message().to_owned();
        ConfigError::new(field_named(path, &message), message)
    })
}

/// The field a deserialization error is about: its path, which for an unknown key already
/// ends with the key, except at the top level (`.`), where the message names it.
fn field_named(path: String, message: &str) -> String {
    match message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        Some(name) if path == "." => name.to_owned(),
        _ => path,
    }
}

/// The key-encryption key: `vault.key`, else `vault.key_file`, else `{data_dir}/vault.key`
/// (generated with mode 0600 on first use).
pub fn resolve_kek(config: &Config) -> anyhow::Result<(Kek, KeySource)> {
    if let Some(key) = &config.vault.key {
        return Ok((Kek::from_base64(key)?, KeySource::Config));
    }
    let (path, generate) = match &config.vault.key_file {
        Some(path) => (PathBuf::from(path), false),
        None => (Path::new(config.data_dir()).join("vault.key"), true),
    };
    if path.exists() {
        let mode = fs::metadata(&path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "vault key file is readable by others; chmod 600 it");
        }
        let text = fs::read_to_string(&path)?;
        let kek =
            Kek::from_base64(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok((kek, KeySource::File(path)));
    }
    if !generate {
        anyhow::bail!("vault.key_file {} does not exist", path.display());
    }
    let key = Kek::generate_base64();
    write_secret_file(&path, &key)?;
    tracing::warn!(
        path = %path.display(),
        "generated a new vault key; back it up: without it no stored credential can be decrypted"
    );
    Ok((Kek::from_base64(&key)?, KeySource::Generated(path)))
}

/// Explains a vault that will not open with the key this run just generated: the database's
/// credentials are sealed with the key file that went missing. The generated file is removed,
/// so that the next start does not take it for the missing one.
pub fn explain_unlock_failure(source: &KeySource, e: anyhow::Error) -> anyhow::Error {
    let wrong_key = matches!(
        e.downcast_ref::<StoreError>(),
        Some(StoreError::Vault(VaultError::WrongKek { .. }))
    );
    match source {
        KeySource::Generated(path) if wrong_key => {
            let _ = fs::remove_file(path);
            anyhow::anyhow!(
                "{} is missing, and the database's credentials are sealed with the key that was \
                 there: restore that file (or set vault.key / KEYGATE_VAULT_KEY); to start \
                 afresh instead, move the database away ({e})",
                path.display()
            )
        }
        _ => e,
    }
}

/// Where the key-encryption key came from.
#[derive(Clone, Debug)]
pub enum KeySource {
    Config,
    File(PathBuf),
    /// No key file existed: this run generated it.
    Generated(PathBuf),
}

/// Writes `contents` to a new file readable only by its owner, creating parent directories
/// (mode 0700).
pub fn write_secret_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
        fs::set_permissions(parent, fs::Permissions::from_mode(0o700)).ok();
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn environment_overrides_file_and_names_fields() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[api]\nrate_limit_per_minute = 5\n",
        )
        .unwrap();
        let c = load(
            Some(&file),
            None,
            env(&[
                ("HOME", "/home/u"),
                ("KEYGATE_API_RATE_LIMIT_PER_MINUTE", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen().port(), 9000);
        assert_eq!(c.rate_limit_per_minute(), 7);

        let e = load(
            None,
            None,
            env(&[("KEYGATE_DATABASE_MAX_CONNECTIONS", "lots")]),
        )
        .unwrap_err();
        assert_eq!(e.field, "database.max_connections");
        let e = load(None, None, env(&[("KEYGATE_LISTEN", "nowhere")])).unwrap_err();
        assert_eq!(e.field, "listen");
        let e = load(None, None, env(&[("KEYGATE_VAULT_KEY", "short")])).unwrap_err();
        assert_eq!(e.field, "vault.key");
        fs::write(&file, "[database]\nurll = \"x\"\n").unwrap();
        let e = load(Some(&file), None, env(&[])).unwrap_err();
        assert_eq!(e.field, "database.urll");
    }

    fn load_file(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keygate.toml");
        fs::write(&file, text).unwrap();
        load(Some(&file), None, env(pairs))
    }

    #[test]
    fn a_toml_syntax_error_names_file_line_and_column() {
        let e = load_file("listen = \"127.0.0.1:9000\"\n[api\n", &[]).unwrap_err();
        let at = e.at.clone().unwrap();
        assert!(at.ends_with("keygate.toml:2:5"), "{at}");
        assert!(
            e.to_string()
                .contains("keygate.toml:2:5: invalid table header"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_key_names_its_field_line_and_column() {
        let e = load_file("# keys\n[database]\nurll = \"x\"\n", &[]).unwrap_err();
        assert_eq!(e.field, "database.urll");
        assert!(e.at.unwrap().ends_with("keygate.toml:3:1"));
        assert!(e.message.contains("unknown field `urll`, expected `url`"));
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_line_unless_the_environment_overrides_it() {
        let e = load_file("\nlisten = \"nowhere\"\n", &[("HOME", "/h")]).unwrap_err();
        assert_eq!(e.field, "listen");
        assert!(e.at.unwrap().ends_with("keygate.toml:2:10"));
        let c = load_file(
            "listen = \"nowhere\"\n",
            &[("HOME", "/h"), ("KEYGATE_LISTEN", "127.0.0.1:7")],
        )
        .unwrap();
        assert_eq!(c.listen().port(), 7);
    }

    #[test]
    fn standard_otel_variables_configure_span_export() {
        let c = load(
            None,
            None,
            env(&[
                ("HOME", "/h"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=general"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                    "x-api-key=traces%20only",
                ),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
                ("OTEL_SERVICE_NAME", "edge"),
            ]),
        )
        .unwrap();
        let otlp = c.telemetry.otlp().unwrap().expect("export configured");
        assert_eq!(otlp.traces_url.as_str(), "http://collector:4318/v1/traces");
        assert_eq!(otlp.protocol, keygate_core::otlp::OtlpProtocol::HttpJson);
        assert_eq!(otlp.headers[0].1.expose(), "traces only");
        assert_eq!(otlp.timeout, std::time::Duration::from_millis(2500));
        assert_eq!(otlp.queue_capacity, 64);
        assert_eq!(
            otlp.sampler,
            keygate_core::otlp::SamplerSetting::TraceIdRatio(0.5)
        );
        assert_eq!(otlp.service_name, "edge");
    }

    #[test]
    fn the_file_and_keygate_variables_win_over_standard_otel_variables() {
        let c = load_file(
            "[telemetry]\notlp_endpoint = \"http://from-file:4318\"\n",
            &[
                ("HOME", "/h"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-otel:4318"),
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("KEYGATE_TELEMETRY_TRACES_SAMPLER", "always_off"),
            ],
        )
        .unwrap();
        let otlp = c.telemetry.otlp().unwrap().unwrap();
        assert_eq!(otlp.traces_url.host_str(), Some("from-file"));
        assert_eq!(otlp.sampler, keygate_core::otlp::SamplerSetting::AlwaysOff);
    }

    #[test]
    fn otel_sdk_disabled_ignores_the_standard_variables() {
        let c = load(
            None,
            None,
            env(&[
                ("HOME", "/h"),
                ("OTEL_SDK_DISABLED", "true"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ]),
        )
        .unwrap();
        assert!(c.telemetry.otlp().unwrap().is_none());
    }

    #[test]
    fn a_bad_standard_otel_value_fails_before_start() {
        let e = load(
            None,
            None,
            env(&[
                ("HOME", "/h"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.field, "telemetry.otlp_timeout_ms");
        assert!(e.message.contains("OTEL_EXPORTER_OTLP_TIMEOUT"), "{e}");
    }

    #[test]
    fn a_bad_environment_value_names_its_variable() {
        let e = load(None, None, env(&[("KEYGATE_LISTEN", "nowhere")])).unwrap_err();
        assert!(e.to_string().contains("(from KEYGATE_LISTEN)"), "{e}");
    }

    #[test]
    fn the_data_dir_defaults_to_the_per_user_directory() {
        let c = load(None, None, env(&[("HOME", "/home/u")])).unwrap();
        assert_eq!(c.data_dir(), "/home/u/.local/share/keygate");
        assert_eq!(
            c.database_url(),
            "sqlite:///home/u/.local/share/keygate/keygate.db"
        );
        let c = load(
            None,
            None,
            env(&[("HOME", "/home/u"), ("XDG_DATA_HOME", "/xdg")]),
        )
        .unwrap();
        assert_eq!(c.data_dir(), "/xdg/keygate");
    }

    #[test]
    fn a_data_dir_flag_or_variable_wins_over_the_per_user_directory() {
        let c = load(
            None,
            Some(Path::new("/srv/kg")),
            env(&[("HOME", "/home/u"), ("KEYGATE_DATA_DIR", "/var/kg")]),
        )
        .unwrap();
        assert_eq!(c.data_dir(), "/srv/kg");
        let c = load(
            None,
            None,
            env(&[("HOME", "/home/u"), ("KEYGATE_DATA_DIR", "/var/kg")]),
        )
        .unwrap();
        assert_eq!(c.data_dir(), "/var/kg");
    }

    #[test]
    fn a_relative_data_dir_in_the_file_is_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keygate.toml");
        fs::write(&file, "data_dir = \"state\"\n").unwrap();
        let c = load(Some(&file), None, env(&[("HOME", "/home/u")])).unwrap();
        assert_eq!(Path::new(c.data_dir()), dir.path().join("state"));
    }

    #[test]
    fn without_home_the_data_dir_must_be_given_unless_unused() {
        let e = load(None, None, env(&[])).unwrap_err();
        assert_eq!(e.field, "data_dir");
        assert!(e.message.contains("--data-dir"), "{e}");
        let key = Kek::generate_base64();
        let c = load(
            None,
            None,
            env(&[
                ("KEYGATE_DATABASE_URL", "postgres://db/kg"),
                ("KEYGATE_VAULT_KEY", &key),
            ]),
        )
        .unwrap();
        assert!(c.data_dir.is_none());
    }

    #[test]
    fn a_mistyped_variable_is_named_with_its_closest_known_name() {
        let known: Vec<String> = field_env_vars().collect();
        let present = [
            "PATH",
            "KEYGATE_LISTEN",
            "KEYGATE_LISTN",
            "KEYGATE_DATABSE_URL",
            "KEYGATE_SOMETHING_ELSE_ENTIRELY",
            "KEYGATE_BIN",
            "KEYGATE_E2E_VENV",
        ]
        .map(str::to_owned);
        assert_eq!(
            unknown_env_vars(present, &known),
            vec![
                (
                    "KEYGATE_DATABSE_URL".to_owned(),
                    Some("KEYGATE_DATABASE_URL".to_owned())
                ),
                (
                    "KEYGATE_LISTN".to_owned(),
                    Some("KEYGATE_LISTEN".to_owned())
                ),
                ("KEYGATE_SOMETHING_ELSE_ENTIRELY".to_owned(), None),
            ]
        );
    }

    #[test]
    fn generated_key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config {
            data_dir: Some(dir.path().join("data").display().to_string()),
            ..Default::default()
        };
        let (a, _) = resolve_kek(&c).unwrap();
        let path = dir.path().join("data/vault.key");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (b, _) = resolve_kek(&c).unwrap();
        assert_eq!(a.id(), b.id());
    }
}
