//! The `scopegate` command line: `serve`, `config check`, the admin commands that mirror
//! `az acr scope-map` and `az acr token` (plus `anonymous` and `check`), which talk to the
//! admin API (`--server` / `SCOPEGATE_SERVER`, secret from `SCOPEGATE_ADMIN_TOKEN`), and the
//! `repository` commands, which use a token's own credentials on the public endpoint as
//! `az acr repository` does.
//!
//! Exit codes: 0 success (for `check`: allowed); 1 refused (invalid input, conflict, in
//! use, denied; for `check`: denied); 2 usage error; 3 not found; 4 authentication failed;
//! 5 server unreachable or failing.
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
use client::{AdminClient, RegistryClient};
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
    /// Manage API keys (log in as `apikey:<key>`).
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Show or set the scope map anonymous callers are bound to.
    Anonymous {
        /// Bind anonymous callers to this scope map.
        #[arg(long, conflicts_with = "none")]
        scope_map: Option<String>,
        /// Switch anonymous access off.
        #[arg(long)]
        none: bool,
    },
    /// Explain whether a token (or the anonymous caller) may do an action on a repository.
    Check {
        #[arg(long, conflicts_with_all = ["anonymous", "apikey"], required_unless_present_any = ["anonymous", "apikey"])]
        token: Option<String>,
        #[arg(long, conflicts_with = "anonymous")]
        apikey: Option<String>,
        #[arg(long)]
        anonymous: bool,
        #[arg(long)]
        repository: String,
        /// content/read, content/write, content/delete, metadata/read or metadata/write
        #[arg(long)]
        action: String,
    },
    /// Work on repositories with a token's own credentials (as `az acr repository`).
    Repository {
        #[command(subcommand)]
        command: RepositoryCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ApikeyCommand {
    /// Create an API key; the key is printed once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        scope_map: String,
        #[arg(long, conflicts_with = "expiration")]
        expiration_in_days: Option<u32>,
        /// Expiry as an RFC 3339 time.
        #[arg(long)]
        expiration: Option<String>,
    },
    /// List API keys (never shows a key).
    List,
    /// Show one API key (never shows the key).
    Show {
        #[arg(long)]
        name: String,
    },
    /// Change an API key's status or scope map.
    Update {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["enabled", "disabled"])]
        status: Option<String>,
        #[arg(long)]
        scope_map: Option<String>,
    },
    /// Delete an API key.
    Delete {
        #[arg(long)]
        name: String,
    },
}

#[derive(Args, Debug)]
struct RegistryArgs {
    /// The gateway's public URL.
    #[arg(long, env = "SCOPEGATE_REGISTRY")]
    registry: String,
    /// Token name.
    #[arg(long, short = 'u', env = "SCOPEGATE_USERNAME")]
    username: String,
    /// Token password (prefer SCOPEGATE_PASSWORD to keep it out of the process list).
    #[arg(long, short = 'p', env = "SCOPEGATE_PASSWORD", hide_env_values = true)]
    password: String,
}

#[derive(Args, Debug)]
struct Target {
    /// A repository.
    #[arg(long, conflicts_with = "image", required_unless_present = "image")]
    repository: Option<String>,
    /// An image: <repository>:<tag> or <repository>@<digest>.
    #[arg(long)]
    image: Option<String>,
}

#[derive(Subcommand, Debug)]
enum RepositoryCommand {
    /// List a repository's tags (needs metadata/read).
    ShowTags {
        #[command(flatten)]
        registry: RegistryArgs,
        #[arg(long)]
        repository: String,
    },
    /// List a repository's manifests and their tags (needs metadata/read).
    ShowManifests {
        #[command(flatten)]
        registry: RegistryArgs,
        #[arg(long)]
        repository: String,
    },
    /// Show a repository's attributes and counts, or an image (needs metadata/read).
    Show {
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a repository's manifests, or one image's manifest (needs content/delete).
    Delete {
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a tag, keeping the manifest (needs metadata/write).
    Untag {
        #[command(flatten)]
        registry: RegistryArgs,
        /// <repository>:<tag>
        #[arg(long)]
        image: String,
    },
    /// Lock or unlock a repository for every caller (needs metadata/write).
    Update {
        #[command(flatten)]
        registry: RegistryArgs,
        #[arg(long)]
        repository: String,
        #[arg(long)]
        write_enabled: Option<bool>,
        #[arg(long)]
        delete_enabled: Option<bool>,
        #[arg(long)]
        read_enabled: Option<bool>,
        #[arg(long)]
        list_enabled: Option<bool>,
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
    /// PostgreSQL shared by several replicas (postgres://user:password@host/db).
    #[arg(long, env = "SCOPEGATE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
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
        Command::Anonymous { scope_map, none } => {
            let c = admin_client(&cli.client)?;
            let v = match (scope_map, none) {
                (Some(m), _) => c.call(Method::PUT, "/api/v1/anonymous", Some(json!({"scopeMap": m}))).await?,
                (None, true) => c.call(Method::PUT, "/api/v1/anonymous", Some(json!({"scopeMap": null}))).await?,
                (None, false) => c.call(Method::GET, "/api/v1/anonymous", None).await?,
            };
            print(&v, cli.client.output, &[]);
            Ok(())
        }
        Command::Apikey { command } => apikey(&admin_client(&cli.client)?, command, cli.client.output).await,
        Command::Check { token, apikey, anonymous, repository, action } => {
            if crate::access::Action::parse(&action).is_none() {
                return Err(CliError::usage(format!(
                    "invalid --action {action:?}: expected content/read, content/write, content/delete, metadata/read or metadata/write"
                )));
            }
            let who: (&str, String) = match (token, apikey) {
                (Some(t), _) => ("token", t),
                (None, Some(k)) => ("apikey", k),
                (None, None) => ("anonymous", anonymous.to_string()),
            };
            let q = crate::route::encode_query([(who.0, who.1.as_str()), ("repository", repository.as_str()), ("action", action.as_str())]);
            let v = admin_client(&cli.client)?.call(Method::GET, &format!("/api/v1/check?{q}"), None).await?;
            print(&v, cli.client.output, &[]);
            if v.get("allowed") == Some(&Value::Bool(true)) {
                Ok(())
            } else {
                Err(CliError::refused(v.get("reason").and_then(Value::as_str).unwrap_or("denied").to_owned()))
            }
        }
        Command::Repository { command } => repository(command, cli.client.output).await,
    }
}

/// `R:tag` or `R@digest` into the repository and the API path of that image.
fn image(text: &str) -> Result<(String, &'static str, String), CliError> {
    let bad = || CliError::usage(format!("invalid --image {text:?}: expected <repository>:<tag> or <repository>@<digest>"));
    if let Some((r, d)) = text.split_once('@') {
        return Ok((r.to_owned(), "_manifests", d.to_owned()));
    }
    let (r, t) = text.rsplit_once(':').ok_or_else(bad)?;
    if r.is_empty() || t.is_empty() || t.contains('/') {
        return Err(bad());
    }
    Ok((r.to_owned(), "_tags", t.to_owned()))
}

impl Target {
    /// The repository and the API path a `--repository` or `--image` names; `kind` forces
    /// the collection an image's reference is looked up in.
    fn resolve(&self, kind: Option<&'static str>) -> Result<(String, String), CliError> {
        match (&self.repository, &self.image) {
            (Some(r), _) => Ok((r.clone(), repo_path(r)?)),
            (None, Some(i)) => {
                let (r, own_kind, reference) = image(i)?;
                let p = format!("{}/{}/{reference}", repo_path(&r)?, kind.unwrap_or(own_kind));
                Ok((r, p))
            }
            (None, None) => Err(CliError::usage("give --repository or --image")),
        }
    }
}

/// Path segments of a repository name (sent as given; the gateway validates it).
fn repo_path(r: &str) -> Result<String, CliError> {
    if r.is_empty() || !r.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'.' | b'_' | b'-')) {
        return Err(CliError::usage(format!("invalid repository name {r:?}")));
    }
    Ok(format!("/scopegate/v1/{r}"))
}

async fn registry_client(a: &RegistryArgs, repo: &str, words: &str) -> Result<RegistryClient, CliError> {
    RegistryClient::login(&a.registry, &format!("repository:{repo}:{words}"), &a.username, &Secret::new(a.password.clone())).await
}

async fn repository(cmd: RepositoryCommand, out: Output) -> Result<(), CliError> {
    const TAGS: &[Column] = &[("NAME", "/name"), ("DIGEST", "/digest")];
    const MANIFESTS: &[Column] = &[("DIGEST", "/digest"), ("TAGS", "/tags"), ("MEDIA TYPE", "/mediaType"), ("SIZE", "/size")];
    match cmd {
        RepositoryCommand::ShowTags { registry, repository } => {
            let c = registry_client(&registry, &repository, "metadata_read").await?;
            let v = c.call(Method::GET, &format!("{}/_tags", repo_path(&repository)?), None).await?;
            print(v.get("tags").unwrap_or(&Value::Null), out, TAGS);
        }
        RepositoryCommand::ShowManifests { registry, repository } => {
            let c = registry_client(&registry, &repository, "metadata_read").await?;
            let v = c.call(Method::GET, &format!("{}/_manifests", repo_path(&repository)?), None).await?;
            print(v.get("manifests").unwrap_or(&Value::Null), out, MANIFESTS);
        }
        RepositoryCommand::Show { registry, target } => {
            // a tag shows the tag, a digest the manifest
            let (repo, path) = target.resolve(None)?;
            let c = registry_client(&registry, &repo, "metadata_read").await?;
            print(&c.call(Method::GET, &path, None).await?, out, &[]);
        }
        RepositoryCommand::Delete { registry, target } => {
            // deleting an image deletes its manifest, whether named by tag or digest
            let (repo, path) = target.resolve(Some("_manifests"))?;
            let c = registry_client(&registry, &repo, "delete").await?;
            print(&c.call(Method::DELETE, &path, None).await?, out, &[]);
        }
        RepositoryCommand::Untag { registry, image: text } => {
            let (repo, kind, tag) = image(&text)?;
            if kind != "_tags" {
                return Err(CliError::usage("untag takes --image <repository>:<tag>"));
            }
            let c = registry_client(&registry, &repo, "metadata_write").await?;
            print(&c.call(Method::DELETE, &format!("{}/_tags/{tag}", repo_path(&repo)?), None).await?, out, &[]);
        }
        RepositoryCommand::Update { registry, repository, write_enabled, delete_enabled, read_enabled, list_enabled } => {
            let body = json!({
                "writeEnabled": write_enabled, "deleteEnabled": delete_enabled,
                "readEnabled": read_enabled, "listEnabled": list_enabled,
            });
            let body = Value::Object(body.as_object().map(|m| m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default());
            let c = registry_client(&registry, &repository, "metadata_write").await?;
            print(&c.call(Method::PATCH, &repo_path(&repository)?, Some(body)).await?, out, &[]);
        }
    }
    Ok(())
}

/// The admin token from `SCOPEGATE_ADMIN_TOKEN`, or the file `SCOPEGATE_ADMIN_TOKEN_FILE` names.
fn admin_client(args: &ClientArgs) -> Result<AdminClient, CliError> {
    let token = match (std::env::var("SCOPEGATE_ADMIN_TOKEN"), std::env::var("SCOPEGATE_ADMIN_TOKEN_FILE")) {
        (Ok(t), _) => t,
        (Err(_), Ok(path)) => std::fs::read_to_string(&path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| CliError::usage(format!("cannot read SCOPEGATE_ADMIN_TOKEN_FILE {path}: {e}")))?,
        (Err(_), Err(_)) => return Err(CliError::usage("set SCOPEGATE_ADMIN_TOKEN (or SCOPEGATE_ADMIN_TOKEN_FILE) to the gateway's admin token")),
    };
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

const KEY_COLUMNS: &[Column] =
    &[("NAME", "/name"), ("STATUS", "/status"), ("SCOPE MAP", "/scopeMap"), ("CREATION DATE", "/creationDate"), ("EXPIRY", "/expiry")];

async fn apikey(c: &AdminClient, cmd: ApikeyCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        ApikeyCommand::Create { name, scope_map, expiration_in_days, expiration } => {
            let body = json!({"name": name, "scopeMap": scope_map, "expirationInDays": expiration_in_days, "expiration": expiration});
            let v = c.call(Method::POST, "/api/v1/apikeys", Some(body)).await?;
            print(&v, out, &[("NAME", "/name"), ("KEY", "/key"), ("SCOPE MAP", "/scopeMap"), ("EXPIRY", "/expiry")]);
        }
        ApikeyCommand::List => print(&c.call(Method::GET, "/api/v1/apikeys", None).await?, out, KEY_COLUMNS),
        ApikeyCommand::Show { name } => print(&c.call(Method::GET, &format!("/api/v1/apikeys/{}", segment(&name)?), None).await?, out, KEY_COLUMNS),
        ApikeyCommand::Update { name, status, scope_map } => {
            let body = json!({"status": status, "scopeMap": scope_map});
            print(&c.call(Method::PATCH, &format!("/api/v1/apikeys/{}", segment(&name)?), Some(body)).await?, out, KEY_COLUMNS);
        }
        ApikeyCommand::Delete { name } => {
            c.call(Method::DELETE, &format!("/api/v1/apikeys/{}", segment(&name)?), None).await?;
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
        database_url: args.database_url,
    };
    let config_path = args.config.clone();
    let config = Config::load(config_path.as_deref(), &overrides).map_err(|e| CliError::refused(e.to_string()))?;
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
    let scheme = if running.state.runtime().config.tls.is_some() { "https" } else { "http" };
    println!("scopegate ready: public={scheme}://{} admin=http://{}", running.public_addr, running.admin_addr);
    serve_until_stopped(&running, config_path.as_deref(), &overrides).await;
    let grace = running.state.runtime().config.shutdown_grace;
    tracing::info!(grace_secs = grace.as_secs(), "shutting down: /readyz now says no; finishing the work in progress");
    running.begin_shutdown();
    running.join().await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves until SIGTERM or SIGINT; on SIGHUP, or when the configuration file changes,
/// reloads it (validated first; a bad one is refused and the old one keeps serving).
async fn serve_until_stopped(running: &server::Running, path: Option<&std::path::Path>, overrides: &Overrides) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
        tracing::warn!("cannot install signal handlers; stop with Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    // modification time and length: a change of either is a change
    let stamp = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
    let mut last = path.and_then(stamp);
    loop {
        let why = tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => "SIGHUP",
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {
                let now = path.and_then(stamp);
                if now == last { continue; }
                // let a writer finish: read only a file that stays the same for a moment
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                if path.and_then(stamp) != now { continue; }
                last = now;
                "the configuration file changed"
            }
        };
        match Config::load(path, overrides) {
            Err(e) => {
                running.state.metrics.config_reloads.with_label_values(&["refused"]).inc();
                tracing::error!(reason = why, error = %e, "configuration refused; still serving the previous one");
            }
            Ok(c) => match running.reload(c).await {
                Ok(()) => tracing::info!(reason = why, "configuration reloaded"),
                Err(e) => tracing::error!(reason = why, error = %e, "configuration refused; still serving the previous one"),
            },
        }
    }
}

fn checked_admin_token(t: &str) -> Result<Secret, CliError> {
    if t.len() < 16 {
        return Err(CliError::refused("the admin token must be at least 16 characters"));
    }
    Ok(Secret::new(t.to_owned()))
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
