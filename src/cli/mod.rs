//! The `scopegate` command line: `serve`, `config check`, and the admin commands that
//! mirror `az acr scope-map` and `az acr token`. Admin commands talk to the admin API
//! (`--server` / `SCOPEGATE_SERVER`, secret from `SCOPEGATE_ADMIN_TOKEN`).
//!
//! Exit codes: 0 success; 1 refused (invalid input, conflict, in use); 2 usage error;
//! 3 not found; 4 authentication failed; 5 server unreachable or failing.
//!
//! The CLI parses arguments and prints; every rule is enforced by the server.

mod client;
pub mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use http::Method;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::auth::secret::Secret;
use crate::config::{Config, LogFormat, Overrides};
use crate::server::{self, AdminToken};
use client::AdminClient;
use output::{print, Column, Output};

#[derive(Parser, Debug)]
#[command(name = "scopegate", version, about = "Repository-scoped authorization gateway and Docker token server for container registries")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// Admin API of the gateway (its admin listener).
    #[arg(long, global = true, env = "SCOPEGATE_SERVER", default_value = "http://127.0.0.1:5002")]
    server: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "json")]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Check a configuration file without serving.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage scope maps (sets of repository permissions).
    ScopeMap {
        #[command(subcommand)]
        command: ScopeMapCommand,
    },
    /// Manage tokens (repository-scoped credentials).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// YAML configuration file (the embedded defaults apply without one).
    #[arg(long, env = "SCOPEGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Public listener address.
    #[arg(long, env = "SCOPEGATE_LISTEN")]
    listen: Option<String>,
    /// URL of the registry behind the gateway.
    #[arg(long, env = "SCOPEGATE_UPSTREAM")]
    upstream: Option<String>,
    /// Origin clients use to reach the gateway (token realm, upload Locations).
    #[arg(long, env = "SCOPEGATE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Admin API listener address.
    #[arg(long, env = "SCOPEGATE_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Directory of the embedded database and keys.
    #[arg(long, env = "SCOPEGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a configuration file.
    Check {
        #[arg(long, env = "SCOPEGATE_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ScopeMapCommand {
    /// Create a scope map.
    Create {
        #[arg(long)]
        name: String,
        /// A repository (or prefix/* or *) and its actions; repeatable.
        #[arg(long = "repository", num_args = 2.., value_names = ["REPO", "ACTION"], action = ArgAction::Append, required = true)]
        repository: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Add or remove repository permissions, or change the description.
    Update {
        #[arg(long)]
        name: String,
        #[arg(long = "add-repository", num_args = 2.., value_names = ["REPO", "ACTION"], action = ArgAction::Append)]
        add_repository: Vec<String>,
        #[arg(long = "remove-repository", num_args = 2.., value_names = ["REPO", "ACTION"], action = ArgAction::Append)]
        remove_repository: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List scope maps, system and user defined.
    List,
    /// Show one scope map.
    Show {
        #[arg(long)]
        name: String,
    },
    /// Delete a scope map (refused while a token uses it).
    Delete {
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token; its two passwords are printed once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, conflicts_with = "repository", required_unless_present = "repository")]
        scope_map: Option<String>,
        /// Create a scope map <name>-scope-map with these permissions; repeatable.
        #[arg(long = "repository", num_args = 2.., value_names = ["REPO", "ACTION"], action = ArgAction::Append)]
        repository: Vec<String>,
        #[arg(long, value_parser = ["enabled", "disabled"])]
        status: Option<String>,
        #[arg(long, conflicts_with = "expiration")]
        expiration_in_days: Option<u32>,
        /// Password expiry as an RFC 3339 time.
        #[arg(long)]
        expiration: Option<String>,
    },
    /// Change a token's scope map or status.
    Update {
        #[arg(long)]
        name: String,
        #[arg(long)]
        scope_map: Option<String>,
        #[arg(long, value_parser = ["enabled", "disabled"])]
        status: Option<String>,
    },
    /// List tokens (never shows a password).
    List,
    /// Show one token (never shows a password).
    Show {
        #[arg(long)]
        name: String,
    },
    /// Delete a token.
    Delete {
        #[arg(long)]
        name: String,
    },
    /// Manage a token's passwords.
    Credential {
        #[command(subcommand)]
        command: CredentialCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CredentialCommand {
    /// Generate password1 and/or password2 (both when neither is named); printed once.
    Generate {
        #[arg(long)]
        name: String,
        #[arg(long)]
        password1: bool,
        #[arg(long)]
        password2: bool,
        #[arg(long, conflicts_with = "expiration")]
        expiration_in_days: Option<u32>,
        #[arg(long)]
        expiration: Option<String>,
    },
    /// Delete one password.
    Delete {
        #[arg(long)]
        name: String,
        #[arg(long, conflicts_with = "password2", required_unless_present = "password2")]
        password1: bool,
        #[arg(long)]
        password2: bool,
    },
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct CliError {
    code: u8,
    message: String,
}

impl CliError {
    fn with(code: u8, m: impl Into<String>) -> Self {
        CliError { code, message: m.into() }
    }
    fn refused(m: impl Into<String>) -> Self {
        Self::with(1, m)
    }
    fn usage(m: impl Into<String>) -> Self {
        Self::with(2, m)
    }
    fn not_found(m: impl Into<String>) -> Self {
        Self::with(3, m)
    }
    fn auth(m: impl Into<String>) -> Self {
        Self::with(4, m)
    }
    fn unreachable(m: impl Into<String>) -> Self {
        Self::with(5, m)
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(5);
        }
    };
    match rt.block_on(run(cli, &matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

async fn run(cli: Cli, matches: &ArgMatches) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Config { command: ConfigCommand::Check { config } } => {
            let c = Config::load(Some(&config), &Overrides::default()).map_err(|e| CliError::refused(e.to_string()))?;
            println!(
                "configuration OK: listen={} upstream={} admin={} data_dir={}",
                c.listen,
                c.upstream.as_string(),
                c.admin_listen,
                c.data_dir.display()
            );
            Ok(())
        }
        Command::ScopeMap { command } => scope_map(&admin_client(&cli.client)?, command, sub(matches, "scope-map"), cli.client.output).await,
        Command::Token { command } => token(&admin_client(&cli.client)?, command, sub(matches, "token"), cli.client.output).await,
    }
}

fn admin_client(args: &ClientArgs) -> Result<AdminClient, CliError> {
    let token = std::env::var("SCOPEGATE_ADMIN_TOKEN")
        .map_err(|_| CliError::usage("set SCOPEGATE_ADMIN_TOKEN to the gateway's admin token"))?;
    AdminClient::new(&args.server, Secret::new(token))
}

/// The matches of a subcommand (and, one level down, of its own subcommand).
fn sub<'a>(m: &'a ArgMatches, name: &str) -> Option<&'a ArgMatches> {
    m.subcommand_matches(name).and_then(|s| s.subcommand().map(|(_, inner)| inner))
}

/// `--repository REPO ACTION...` occurrences, grouped as given (clap's derive flattens them).
fn groups(m: Option<&ArgMatches>, id: &str) -> Vec<Vec<String>> {
    m.and_then(|m| m.get_occurrences::<String>(id))
        .map(|occ| occ.map(|o| o.cloned().collect()).collect())
        .unwrap_or_default()
}

fn repo_actions(list: &[Vec<String>]) -> Value {
    Value::Array(
        list.iter()
            .map(|ra| {
                let (repo, actions) = ra.split_first().map(|(r, a)| (r.clone(), a.to_vec())).unwrap_or_default();
                json!({"repository": repo, "actions": actions})
            })
            .collect(),
    )
}

fn segment(name: &str) -> Result<&str, CliError> {
    if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
        return Err(CliError::refused(format!("invalid name {name:?}: use letters, digits and '-'")));
    }
    Ok(name)
}

const MAP_COLUMNS: &[Column] = &[("NAME", "/name"), ("TYPE", "/type"), ("CREATION DATE", "/creationDate"), ("DESCRIPTION", "/description")];
const TOKEN_COLUMNS: &[Column] =
    &[("NAME", "/name"), ("STATUS", "/status"), ("SCOPE MAP", "/scopeMap"), ("CREATION DATE", "/creationDate")];
const PASSWORD_COLUMNS: &[Column] = &[("NAME", "/name"), ("VALUE", "/value"), ("CREATION TIME", "/creationTime"), ("EXPIRY", "/expiry")];

async fn scope_map(c: &AdminClient, cmd: ScopeMapCommand, m: Option<&ArgMatches>, out: Output) -> Result<(), CliError> {
    match cmd {
        ScopeMapCommand::Create { name, description, .. } => {
            let repository = groups(m, "repository");
            let v = c
                .call(Method::POST, "/api/v1/scope-maps", Some(json!({"name": name, "description": description, "repositories": repo_actions(&repository)})))
                .await?;
            print(&v, out, &[]);
        }
        ScopeMapCommand::Update { name, description, .. } => {
            let (add_repository, remove_repository) = (groups(m, "add_repository"), groups(m, "remove_repository"));
            let body = json!({
                "description": description,
                "addRepositories": repo_actions(&add_repository),
                "removeRepositories": repo_actions(&remove_repository),
            });
            let v = c.call(Method::PATCH, &format!("/api/v1/scope-maps/{}", segment(&name)?), Some(body)).await?;
            print(&v, out, &[]);
        }
        ScopeMapCommand::List => print(&c.call(Method::GET, "/api/v1/scope-maps", None).await?, out, MAP_COLUMNS),
        ScopeMapCommand::Show { name } => {
            print(&c.call(Method::GET, &format!("/api/v1/scope-maps/{}", segment(&name)?), None).await?, out, &[])
        }
        ScopeMapCommand::Delete { name } => {
            c.call(Method::DELETE, &format!("/api/v1/scope-maps/{}", segment(&name)?), None).await?;
        }
    }
    Ok(())
}

async fn token(c: &AdminClient, cmd: TokenCommand, m: Option<&ArgMatches>, out: Output) -> Result<(), CliError> {
    match cmd {
        TokenCommand::Create { name, scope_map, status, expiration_in_days, expiration, .. } => {
            let repository = groups(m, "repository");
            let body = json!({
                "name": name,
                "scopeMap": scope_map,
                "repositories": repo_actions(&repository),
                "status": status,
                "expirationInDays": expiration_in_days,
                "expiration": expiration,
            });
            let v = c.call(Method::POST, "/api/v1/tokens", Some(body)).await?;
            print_with_passwords(&v, out, v.pointer("/credentials/passwords").unwrap_or(&Value::Null));
        }
        TokenCommand::Update { name, scope_map, status } => {
            let v = c
                .call(Method::PATCH, &format!("/api/v1/tokens/{}", segment(&name)?), Some(json!({"scopeMap": scope_map, "status": status})))
                .await?;
            print(&v, out, TOKEN_COLUMNS);
        }
        TokenCommand::List => print(&c.call(Method::GET, "/api/v1/tokens", None).await?, out, TOKEN_COLUMNS),
        TokenCommand::Show { name } => {
            print(&c.call(Method::GET, &format!("/api/v1/tokens/{}", segment(&name)?), None).await?, out, TOKEN_COLUMNS)
        }
        TokenCommand::Delete { name } => {
            c.call(Method::DELETE, &format!("/api/v1/tokens/{}", segment(&name)?), None).await?;
        }
        TokenCommand::Credential { command: CredentialCommand::Generate { name, password1, password2, expiration_in_days, expiration } } => {
            let body = json!({"password1": password1, "password2": password2, "expirationInDays": expiration_in_days, "expiration": expiration});
            let v = c.call(Method::POST, &format!("/api/v1/tokens/{}/credentials", segment(&name)?), Some(body)).await?;
            print_with_passwords(&v, out, v.pointer("/passwords").unwrap_or(&Value::Null));
        }
        TokenCommand::Credential { command: CredentialCommand::Delete { name, password1, .. } } => {
            let slot = if password1 { "password1" } else { "password2" };
            let v = c.call(Method::DELETE, &format!("/api/v1/tokens/{}/credentials/{slot}", segment(&name)?), None).await?;
            print(&v, out, TOKEN_COLUMNS);
        }
    }
    Ok(())
}

/// JSON as is; as a table, the passwords (the one time their values are shown).
fn print_with_passwords(v: &Value, out: Output, passwords: &Value) {
    match out {
        Output::Json => print(v, out, &[]),
        Output::Table => print(passwords, out, PASSWORD_COLUMNS),
    }
}

async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let overrides = Overrides {
        listen: args.listen,
        public_url: args.public_url,
        upstream: args.upstream,
        admin_listen: args.admin_listen,
        data_dir: args.data_dir,
    };
    let config = Config::load(args.config.as_deref(), &overrides).map_err(|e| CliError::refused(e.to_string()))?;
    init_logging(&config);
    let admin_token = match &config.admin_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| CliError::refused(format!("cannot read admin token file {}: {e}", path.display())))?;
            AdminToken::Given(checked_admin_token(text.trim())?)
        }
        None => match std::env::var("SCOPEGATE_ADMIN_TOKEN") {
            Ok(t) => AdminToken::Given(checked_admin_token(t.trim())?),
            Err(_) => AdminToken::StoredOrGenerate,
        },
    };
    let bind = |addr| async move { TcpListener::bind(addr).await.map_err(|e| CliError::refused(format!("cannot listen on {addr}: {e}"))) };
    let public = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    let running = server::start(config, public, admin, admin_token).await.map_err(|e| CliError::unreachable(e.to_string()))?;
    if let Some(t) = &running.generated_admin_token {
        eprintln!("Generated the admin token (shown once; it is stored only as a digest):\n\n    SCOPEGATE_ADMIN_TOKEN={}\n", t.expose());
    }
    println!("scopegate ready: public=http://{} admin=http://{}", running.public_addr, running.admin_addr);
    let stop = running.stopper();
    shutdown_signal().await;
    tracing::info!("shutting down: no new connections, waiting for open ones");
    let _ = stop.send(true);
    running.join().await;
    Ok(())
}

fn checked_admin_token(t: &str) -> Result<Secret, CliError> {
    if t.len() < 16 {
        return Err(CliError::refused("the admin token must be at least 16 characters"));
    }
    Ok(Secret::new(t.to_owned()))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SCOPEGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
