//! Loading the configuration: the file (optional), then `KEYGATE_*` environment overrides,
//! then the global `--data-dir` flag, then validation. Nothing here binds a port or opens the
//! database, so bad configuration fails before either happens.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use keygate_core::config::{Config, ConfigError, FIELDS, FieldKind, env_var_for};
use keygate_store::Kek;

/// Exit code for bad configuration (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// Reads and validates the configuration.
pub fn load(
    file: Option<&Path>,
    data_dir: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut table = match file {
        Some(path) => {
            let text = fs::read_to_string(path).map_err(|e| {
                ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
            })?;
            toml::from_str::<toml::Table>(&text)
                .map_err(|e| ConfigError::new(field_of_toml_error(&e), e.message().to_owned()))?
        }
        None => toml::Table::new(),
    };
    for (field, kind) in FIELDS {
        let var = env_var_for(field);
        let Some(raw) = env(&var) else { continue };
        let value = match kind {
            FieldKind::String => toml::Value::String(raw),
            FieldKind::Integer => toml::Value::Integer(raw.trim().parse().map_err(|_| {
                ConfigError::new(*field, format!("{var} must be an integer, got {raw:?}"))
            })?),
            FieldKind::Bool => toml::Value::Boolean(match raw.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(ConfigError::new(
                        *field,
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
        };
        set(&mut table, field, value);
    }
    // The OpenTelemetry SDKs' standard variables, when keygate's own are not set.
    for (standard, field) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
        ("OTEL_SERVICE_NAME", "telemetry.service_name"),
    ] {
        if env(&env_var_for(field)).is_none()
            && let Some(value) = env(standard).filter(|v| !v.trim().is_empty())
            && file_value(&table, field).is_none()
        {
            set(&mut table, field, toml::Value::String(value));
        }
    }
    if let Some(dir) = data_dir {
        set(
            &mut table,
            "data_dir",
            toml::Value::String(dir.display().to_string()),
        );
    }
    let config = parse_config(table)?;
    config.validate()?;
    if let Some(key) = &config.vault.key {
        Kek::from_base64(key).map_err(|e| ConfigError::new("vault.key", e.to_string()))?;
    }
    Ok(config)
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
        // For an unknown key the path already ends with the key itself.
        let field = match message
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
        {
            Some(name) if path == "." => name.to_owned(),
            _ => path,
        };
        ConfigError::new(field, message)
    })
}

/// Best effort: the key named in a TOML syntax error, else `config`.
fn field_of_toml_error(e: &toml::de::Error) -> String {
    e.message().split('`').nth(1).unwrap_or("config").to_owned()
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
    Ok((Kek::from_base64(&key)?, KeySource::File(path)))
}

/// Where the key-encryption key came from.
#[derive(Clone, Debug)]
pub enum KeySource {
    Config,
    File(PathBuf),
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
            env(&[("KEYGATE_API_RATE_LIMIT_PER_MINUTE", "7")]),
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
