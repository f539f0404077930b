//! The CLI's stored sign-ins: `credentials.json` in the per-user configuration directory
//! (`$XDG_CONFIG_HOME/keygate`, else `~/.config/keygate`; `~/Library/Application
//! Support/keygate` on macOS), mode 0600 in a 0700 directory, one entry per gateway URL.
//! `keygate login` writes it; the API-backed commands read it and keep the tokens fresh.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Everything the file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    /// The gateway of the last `keygate login`: the default for later commands.
    #[serde(default)]
    pub current: Option<String>,
    #[serde(default)]
    pub gateways: BTreeMap<String, Signin>,
}

/// One gateway's sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signin {
    pub login: Login,
    /// Tokens for applications' MCP URLs (`keygate token --app`), by that URL.
    #[serde(default)]
    pub mcp_tokens: BTreeMap<String, UserToken>,
}

/// Who the CLI acts as.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Login {
    /// A service account: its credentials mint management tokens (client credentials).
    #[serde(rename_all = "camelCase")]
    ServiceAccount {
        client_id: String,
        client_secret: String,
    },
    /// A user signed in through the browser: a management token and its refresh token.
    User(UserToken),
}

/// An access token of the first-party client, with the refresh token that renews it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserToken {
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Unix seconds.
    pub expires_at: i64,
}

impl UserToken {
    /// Whether it is still good for at least `margin_secs`.
    pub fn fresh(&self, now: i64, margin_secs: i64) -> bool {
        self.expires_at > now + margin_secs
    }
}

/// The configuration directory of the CLI, from the environment (`None` without a home).
pub fn config_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if !cfg!(target_os = "macos")
        && let Some(xdg) = env("XDG_CONFIG_HOME").filter(|d| Path::new(d).is_absolute())
    {
        return Some(Path::new(&xdg).join("keygate"));
    }
    let home = env("HOME").filter(|h| Path::new(h).is_absolute())?;
    let base = if cfg!(target_os = "macos") {
        "Library/Application Support"
    } else {
        ".config"
    };
    Some(Path::new(&home).join(base).join("keygate"))
}

/// The credentials file of this user.
pub fn default_path() -> anyhow::Result<PathBuf> {
    config_dir(|k| std::env::var(k).ok())
        .map(|d| d.join("credentials.json"))
        .context("there is no per-user configuration directory (HOME is not set)")
}

impl Stored {
    /// Reads the file; a missing file is an empty one.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a keygate credentials file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the file readable only by its owner: a new file beside it, renamed over it, so
    /// a reader never sees half of one and the secrets are never in a wider-open file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path
            .parent()
            .context("the credentials path has no directory")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).ok();
        let staged = path.with_extension(format!("json.{}", std::process::id()));
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&staged)?;
            f.write_all(&serde_json::to_vec_pretty(self)?)?;
            f.sync_all()?;
            fs::rename(&staged, path)?;
            anyhow::Ok(())
        })();
        if written.is_err() {
            let _ = fs::remove_file(&staged);
        }
        written.with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_lives_in_the_per_user_configuration_directory() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            config_dir(env(&[("HOME", "/home/u")])),
            Some(PathBuf::from("/home/u/.config/keygate"))
        );
        assert_eq!(
            config_dir(env(&[("HOME", "/home/u"), ("XDG_CONFIG_HOME", "/xdg")])),
            Some(PathBuf::from("/xdg/keygate"))
        );
        assert_eq!(config_dir(env(&[])), None);
    }

    #[test]
    fn saved_credentials_are_readable_only_by_their_owner_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate/credentials.json");
        let mut stored = Stored::default();
        stored.gateways.insert(
            "http://kg".into(),
            Signin {
                login: Login::ServiceAccount {
                    client_id: "sa_1".into(),
                    client_secret: "s".into(),
                },
                mcp_tokens: BTreeMap::new(),
            },
        );
        stored.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = Stored::load(&path).unwrap();
        assert!(matches!(
            &back.gateways["http://kg"].login,
            Login::ServiceAccount { client_id, .. } if client_id == "sa_1"
        ));
    }
}
