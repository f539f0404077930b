//! The command line. Machine-readable results are one JSON document on stdout; everything meant
//! for people goes to stderr. The local commands (`serve`, `user add`, `service-account
//! create`, `vault`, …) open the data directory themselves; the resource commands (`apps`,
//! `integrations`, …, in the submodules) go through a running gateway's management API as the
//! user `keygate login` signed in.

pub mod apps;
pub mod connections;
pub mod credentials;
pub mod integration_oauth;
pub mod integrations;
pub mod login;
pub mod output;
pub mod policies;
pub mod remote;
pub mod resources;
pub mod service_accounts;
pub mod sessions;
pub mod traces;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use keygate_auth::secret::{generate_client_secret, hash_password, hash_secret};
use keygate_core::config::Config;
use keygate_core::model::Role;
use keygate_store::{Kek, Store, StoreError, Vault};
use serde_json::json;

use crate::app::{Gateway, open_db, shutdown_signal};
use crate::settings::{self, EXIT_CONFIG, KeySource, resolve_kek, write_secret_file};

/// keygate: a self-hosted MCP gateway with credential brokering.
#[derive(Parser, Debug)]
#[command(name = "keygate", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Global {
    /// Configuration file (TOML); see config/keygate.example.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the embedded database and generated vault key (also KEYGATE_DATA_DIR;
    /// default: the per-user data directory, $XDG_DATA_HOME/keygate or
    /// ~/.local/share/keygate), the same for `serve` and every local command.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Listen address (overrides `listen` and KEYGATE_LISTEN).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage service accounts.
    #[command(subcommand, name = "service-account")]
    ServiceAccount(ServiceAccountCommand),
    /// Manage the vault.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Manage the JWT signing keys.
    #[command(subcommand, name = "signing-key")]
    SigningKey(SigningKeyCommand),
    /// Follow trace events live from a running gateway.
    Tail(crate::tail::TailArgs),
    /// Sign in to a gateway: in the browser, or as a service account (--client-id).
    Login(login::LoginArgs),
    /// Forget the stored sign-in to a gateway.
    Logout {
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Print your access token for an application's MCP URL (for clients that take a bearer
    /// header).
    Token(login::TokenArgs),
    /// Applications (through the gateway's management API).
    Apps {
        #[command(flatten)]
        common: resources::Common,
        #[command(subcommand)]
        command: apps::AppsCommand,
    },
    /// Integrations: the MCP servers behind the gateway.
    Integrations {
        #[command(flatten)]
        common: resources::Common,
        #[command(subcommand)]
        command: integrations::IntegrationsCommand,
    },
    /// Your own connections to per-user integrations.
    Connections {
        #[command(flatten)]
        common: resources::Common,
        #[command(subcommand)]
        command: connections::ConnectionsCommand,
    },
    /// The organization's tool policies (Cedar).
    Policies {
        #[command(flatten)]
        common: resources::Common,
        #[command(subcommand)]
        command: policies::PoliciesCommand,
    },
    /// Agent sessions of an application.
    Sessions {
        #[command(flatten)]
        common: resources::Common,
        #[command(subcommand)]
        command: sessions::SessionsCommand,
    },
    /// Service accounts (through the management API; `service-account create` works offline).
    #[command(name = "service-accounts")]
    ServiceAccounts {
        #[command(flatten)]
        common: resources::Common,
        #[command(subcommand)]
        command: service_accounts::ServiceAccountsCommand,
    },
    /// Traces of what went through the gateway.
    Traces {
        #[command(flatten)]
        common: resources::Common,
        #[command(subcommand)]
        command: traces::TracesCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum SigningKeyCommand {
    /// Start signing with a new key; the old one stays in the JWKS until its tokens expire.
    Rotate,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user; prints {"user": {...}}.
    Add {
        email: String,
        #[arg(long, default_value = "member", value_parser = ["owner", "admin", "member"])]
        role: String,
        /// Read the password from the first line of standard input; at a terminal, prompt for
        /// it (twice, without echo).
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServiceAccountCommand {
    /// Create a service account; prints its credentials once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum VaultCommand {
    /// Re-wrap every data key under a new key-encryption key.
    RotateKey,
    /// Seal a secret read from stdin (an upstream OAuth provider's client secret) and print the
    /// `vault:…` text to put in the configuration file.
    Seal,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let unknown = settings::unknown_env_vars(
        std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()),
        &known_env_vars(),
    );
    let config = match settings::load(
        cli.global.config.as_deref(),
        cli.global.data_dir.as_deref(),
        |k| std::env::var(k).ok(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keygate: {e}");
            for (name, closest) in &unknown {
                eprintln!(
                    "keygate: note: {}",
                    unknown_env_note(name, closest.as_deref())
                );
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&config);
    for (name, closest) in &unknown {
        tracing::warn!(variable = %name, closest = closest.as_deref().unwrap_or(""), "{}", unknown_env_note(name, closest.as_deref()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keygate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keygate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every `KEYGATE_*` variable the binary reads: one per configuration field, the flags'
/// `env` fallbacks, and `keygate tail`'s service-account credentials.
pub fn known_env_vars() -> Vec<String> {
    fn flags(command: &clap::Command, out: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if let Some(var) = arg.get_env() {
                out.push(var.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            flags(sub, out);
        }
    }
    let mut known: Vec<String> = settings::field_env_vars().collect();
    flags(&Cli::command(), &mut known);
    known.extend(remote::CREDENTIAL_VARS.map(str::to_owned));
    known
}

fn unknown_env_note(name: &str, closest: Option<&str>) -> String {
    match closest {
        Some(known) => {
            format!("{name} is not a keygate variable and is ignored; did you mean {known}?")
        }
        None => format!("{name} is not a keygate variable and is ignored"),
    }
}

fn json_logs(config: &Config) -> bool {
    config.log.format.as_deref() == Some("json")
}

/// Colour (ANSI escapes) only on a terminal, and never when `NO_COLOR` is set to anything.
pub(crate) fn use_color(is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| config.log.level.clone())
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let color = use_color(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .with_writer(std::io::stderr);
    if json_logs(config) {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(command: Command, mut config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                config.listen = Some(listen);
            }
            serve(config).await
        }
        Command::Migrate => {
            existing_database(&config, Fresh::Create)?;
            open_db(&config).await?;
            eprintln!(
                "migrations applied to {}",
                redact_url(&config.database_url())
            );
            Ok(())
        }
        Command::User(UserCommand::Add {
            email,
            role,
            password_stdin,
        }) => user_add(&config, &email, &role, password_stdin).await,
        Command::ServiceAccount(ServiceAccountCommand::Create { name, description }) => {
            service_account_create(&config, &name, description.as_deref()).await
        }
        Command::Vault(VaultCommand::RotateKey) => rotate_key(&config).await,
        Command::Vault(VaultCommand::Seal) => {
            existing_database(&config, Fresh::Refuse("seal a secret for"))?;
            let store = open_store(&config).await?;
            let mut secret = String::new();
            std::io::stdin().read_line(&mut secret)?;
            let secret = secret.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!secret.is_empty(), "no secret on stdin");
            let sealed = keygate_auth::broker::seal_provider_secret(
                &store,
                &keygate_core::Secret::new(secret),
            );
            writeln!(std::io::stdout().lock(), "{sealed}")?;
            Ok(())
        }
        Command::Tail(args) => crate::tail::run(&config, args).await,
        Command::Login(args) => login::login(&config, args).await,
        Command::Logout { remote } => login::logout(&config, remote).await,
        Command::Token(args) => login::token(&config, args).await,
        Command::Apps { common, command } => apps::run(&config, common, command).await,
        Command::Integrations { common, command } => {
            integrations::run(&config, common, command).await
        }
        Command::Connections { common, command } => {
            connections::run(&config, common, command).await
        }
        Command::Sessions { common, command } => sessions::run(&config, common, command).await,
        Command::Policies { common, command } => policies::run(&config, common, command).await,
        Command::ServiceAccounts { common, command } => {
            service_accounts::run(&config, common, command).await
        }
        Command::Traces { common, command } => traces::run(&config, common, command).await,
        Command::SigningKey(SigningKeyCommand::Rotate) => {
            existing_database(&config, Fresh::Refuse("rotate the signing key of"))?;
            let store = open_store(&config).await?;
            let keys = keygate_auth::KeyRing::load(store, config.public_url()).await?;
            let kid = keys.rotate().await?;
            eprintln!(
                "now signing with key {kid}; running gateways pick it up on their next reload"
            );
            print_json(&json!({"kid": kid}))
        }
    }
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    let (kek, key_source) = resolve_kek(&config)?;
    // Bound before anything derives the public URL from it: with port 0 it names the port the
    // system chose.
    let listener = tokio::net::TcpListener::bind(config.listen())
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen()))?;
    let bound = listener.local_addr()?;
    config.listen = Some(bound);
    let admin = match config.admin.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (admin.listen): {e}"))?,
        ),
        None => None,
    };
    if let Some(admin) = &admin {
        config.admin.listen = Some(admin.local_addr()?);
    }
    if let Some(path) = sqlite_file(&config).filter(|p| !p.exists()) {
        tracing::info!(path = %path.display(), "no database yet: creating one");
    }
    let gateway = Gateway::open(&config, &kek)
        .await
        .map_err(|e| settings::explain_unlock_failure(&key_source, e))?;
    banner(&config, bound, &gateway.public_url, &key_source);
    let listeners = crate::app::Listeners {
        public: listener,
        admin,
    };
    gateway.serve(listeners, shutdown_signal()).await
}

/// What the operator needs at start: where the gateway listens, where its data and key are,
/// and which private hosts it may reach. One structured event when logs are JSON.
fn banner(config: &Config, bound: SocketAddr, url: &str, key: &KeySource) {
    let admin = config.admin.listen;
    let database = redact_url(&config.database_url());
    let key = match key {
        KeySource::File(path) | KeySource::Generated(path) => path.display().to_string(),
        KeySource::Config => "vault.key (configuration)".to_owned(),
    };
    let private = &config.outbound.allowed_private_hosts;
    if json_logs(config) {
        tracing::info!(
            listen = %bound,
            public_url = url,
            database = %database,
            vault_key = %key,
            allowed_private_hosts = %private.join(","),
            management_api = %format!("{url}/api/v1"),
            tls = config.tls_enabled(),
            admin = %admin.map(|a| a.to_string()).unwrap_or_default(),
            "keygate is listening"
        );
        return;
    }
    let private = if private.is_empty() {
        "none (upstreams on loopback or private addresses are refused; allow hosts with \
         outbound.allowed_private_hosts)"
            .to_owned()
    } else {
        private.join(", ")
    };
    eprintln!("keygate is listening on {bound} (public URL {url})");
    if config.tls_enabled() {
        eprintln!(
            "  TLS certificate:             {} (reloaded when it changes)",
            config.tls.cert_file.as_deref().unwrap_or_default()
        );
    }
    if let Some(admin) = admin {
        eprintln!("  health, readiness, metrics:  http://{admin} (/healthz /readyz /metrics)");
    }
    eprintln!("  database:                    {database}");
    eprintln!("  vault key:                   {key}");
    eprintln!("  private upstream hosts:      {private}");
    eprintln!(
        "  create the first owner:      keygate user add EMAIL --role owner --password-stdin"
    );
    eprintln!(
        "  sign in from the CLI:        keygate login   (then keygate apps, integrations, …)"
    );
    eprintln!("  create a service account:    keygate service-account create --name NAME");
    eprintln!("  management API:              {url}/api/v1   (OpenAPI: {url}/api/openapi.json)");
    eprintln!("  dashboard:                   {url}/ui/");
}

/// What a local command does when the embedded database it was pointed at does not exist.
enum Fresh {
    /// Creates it, saying so: the command may be setting up a new gateway, or may be looking
    /// in the wrong place.
    Create,
    /// Fails: the command (the text says what it does) only makes sense on existing data.
    Refuse(&'static str),
}

/// The embedded database's file, when the configuration uses one.
fn sqlite_file(config: &Config) -> Option<PathBuf> {
    let url = config.database_url();
    let path = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Says so when a local command would start a fresh embedded database, where the user more
/// likely meant the gateway's existing one.
fn existing_database(config: &Config, fresh: Fresh) -> anyhow::Result<()> {
    let Some(path) = sqlite_file(config).filter(|p| !p.exists()) else {
        return Ok(());
    };
    let hint = "pass the --data-dir (or --config) the gateway runs with";
    match fresh {
        Fresh::Create => {
            tracing::warn!(
                path = %path.display(),
                "no database at {}: creating a new one; a gateway using another data directory \
                 will not see what this command writes: {hint}",
                path.display()
            );
            Ok(())
        }
        Fresh::Refuse(what) => anyhow::bail!(
            "no database at {}: nothing to {what} there; {hint}",
            path.display()
        ),
    }
}

/// Opens the store of a local command (the caller has checked, with [`existing_database`],
/// what a missing database means for it).
async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let (kek, source) = resolve_kek(config)?;
    let db = open_db(config).await?;
    let vault = Vault::unlock(&db, &kek)
        .await
        .map_err(|e| settings::explain_unlock_failure(&source, e.into()))?;
    Ok(Store::new(db, vault))
}

async fn user_add(
    config: &Config,
    email: &str,
    role: &str,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let email = email.trim();
    if !email.contains('@') || email.len() > 254 || email.chars().any(char::is_whitespace) {
        anyhow::bail!("{email:?} is not an email address");
    }
    let role = Role::parse(role).expect("clap restricts the values");
    let password_hash = if password_stdin {
        let password = crate::password::read(email)?;
        if password.chars().count() < 8 {
            anyhow::bail!("the password must be at least 8 characters");
        }
        Some(hash_password(&password).map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?)
    } else {
        None
    };
    existing_database(config, Fresh::Create)?;
    let store = open_store(config).await?;
    let org = store.default_organization().await?;
    let user = match store
        .create_user(org.id, email, role, password_hash.as_deref())
        .await
    {
        Ok(u) => u,
        Err(StoreError::Conflict(m)) => anyhow::bail!("{m}"),
        Err(e) => return Err(e.into()),
    };
    print_json(&json!({"user": {
        "id": user.id, "email": user.email, "role": user.role,
        "organizationId": user.org_id, "createdAt": user.created_at,
    }}))
}

async fn service_account_create(
    config: &Config,
    name: &str,
    description: Option<&str>,
) -> anyhow::Result<()> {
    let name = name.trim();
    if name.is_empty() {
        anyhow::bail!("--name must not be empty");
    }
    existing_database(config, Fresh::Create)?;
    let store = open_store(config).await?;
    let org = store.default_organization().await?;
    // A service account made from the CLI acts for the organization's first owner, if any, so
    // that what it creates has an owner.
    let acting = store.first_owner(org.id).await?.map(|u| u.id);
    let secret = generate_client_secret();
    let sa = store
        .create_service_account(org.id, name, description, acting, &hash_secret(&secret))
        .await?;
    print_json(&json!({
        "serviceAccount": {
            "id": sa.id, "name": sa.name, "description": sa.description,
            "createdAt": sa.created_at, "actingUserId": sa.acting_user_id,
        },
        "credentials": {"clientId": sa.id.client_id(), "clientSecret": secret},
    }))
}

async fn rotate_key(config: &Config) -> anyhow::Result<()> {
    existing_database(config, Fresh::Refuse("re-key"))?;
    let (old, source) = resolve_kek(config)?;
    let db = open_db(config).await?;
    if let Err(e) = Vault::unlock(&db, &old).await {
        return Err(settings::explain_unlock_failure(&source, e.into()));
    }
    let new_b64 = Kek::generate_base64();
    let new = Kek::from_base64(&new_b64)?;
    match source {
        KeySource::File(path) | KeySource::Generated(path) => {
            // Write the new key beside the old one first: if anything fails after the database
            // commits, the key that opens the data is still on disk.
            let staged = path.with_extension("key.new");
            let _ = std::fs::remove_file(&staged);
            write_secret_file(&staged, &new_b64)?;
            let n = Vault::rotate_kek(&db, &old, &new).await?;
            std::fs::rename(&staged, &path)?;
            eprintln!(
                "re-wrapped {n} data key(s); {} now holds the new key",
                path.display()
            );
            print_json(&json!({"rotated": n, "kekId": new.id(), "keyFile": path}))
        }
        KeySource::Config => {
            let n = Vault::rotate_kek(&db, &old, &new).await?;
            eprintln!(
                "re-wrapped {n} data key(s); set vault.key / KEYGATE_VAULT_KEY to the new key \
                 below before the next start"
            );
            print_json(&json!({"rotated": n, "kekId": new.id(), "key": new_b64}))
        }
    }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A database URL without its password.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_variables_come_from_the_fields_the_flags_and_tail() {
        let known = known_env_vars();
        for var in [
            "KEYGATE_LISTEN",
            "KEYGATE_DATA_DIR",
            "KEYGATE_URL",
            "KEYGATE_TOKEN",
            "KEYGATE_CLIENT_SECRET",
        ] {
            assert!(known.iter().any(|k| k == var), "{var}");
        }
    }

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(use_color(true, None));
        assert!(use_color(true, Some("".into())));
        assert!(!use_color(true, Some("1".into())));
        assert!(!use_color(false, None));
    }

    #[test]
    fn the_embedded_database_file_is_read_from_the_url() {
        let mut c = Config {
            data_dir: Some("/d".into()),
            ..Default::default()
        };
        assert_eq!(sqlite_file(&c), Some(PathBuf::from("/d/keygate.db")));
        c.database.url = Some("sqlite:/x/k.db?mode=rwc".into());
        assert_eq!(sqlite_file(&c), Some(PathBuf::from("/x/k.db")));
        c.database.url = Some("postgres://db/kg".into());
        assert_eq!(sqlite_file(&c), None);
    }
}
