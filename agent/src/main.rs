//! warren-agent: the SSH server inside each sandbox.
//!
//! It authenticates sandbox tokens (verified offline with the gateway's public key)
//! and authorized public keys, and serves shells, exec, SFTP and forwarding as the
//! sandbox's unprivileged user. It is built as a static binary so that it runs in any
//! image, even one with nothing but busybox.

mod auth;
mod forward;
mod handler;
mod init;
mod process;
mod pty;
mod pump;
mod server;
mod session;
mod sftp;
mod user;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use warren_keys::{SandboxId, TokenVerifier};

use crate::auth::Authenticator;
use crate::server::{Agent, EnvPolicy, ListenAddr};
use crate::user::UserDb;

#[derive(Parser)]
#[command(version, about = "Warren's in-sandbox SSH server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve SSH for one sandbox.
    Serve(Box<ServeArgs>),
    /// Serve SFTP on stdin/stdout (started by the agent for the sftp subsystem).
    SftpServer,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The sandbox this agent serves; tokens must name it.
    #[arg(long, env = "WARREN_SANDBOX_ID")]
    sandbox_id: String,
    /// The gateway's token-verifying public key (URL-safe base64). Without it,
    /// token logins are refused.
    #[arg(long, env = "WARREN_TOKEN_KEY")]
    token_key: Option<String>,
    /// OpenSSH authorized_keys file, read on every login attempt.
    #[arg(long, env = "WARREN_AUTHORIZED_KEYS")]
    authorized_keys: Option<PathBuf>,
    /// HOST:PORT, or unix:/path for a unix socket.
    #[arg(long, env = "WARREN_AGENT_LISTEN", default_value = "127.0.0.1:2222")]
    listen: ListenAddr,
    /// The agent's SSH host key; generated (ed25519, mode 0600) when missing.
    #[arg(
        long,
        env = "WARREN_AGENT_HOST_KEY",
        default_value = "/var/lib/warren-agent/host_key"
    )]
    host_key: PathBuf,
    /// The sandbox user sessions run as (default: the agent's own user). When the
    /// agent runs as root, each session switches to this user.
    #[arg(long, env = "WARREN_SANDBOX_USER")]
    user: Option<String>,
    /// Working directory of sessions (default: the user's home).
    #[arg(long, env = "WARREN_WORKDIR")]
    workdir: Option<PathBuf>,
    /// Extra variable names clients may set (NAME or PREFIX*); LANG, LC_* and TERM
    /// are always allowed.
    #[arg(long = "allow-env", env = "WARREN_ALLOW_ENV", value_delimiter = ',')]
    allow_env: Vec<String>,
    /// Where users are looked up (the image's own files; no NSS in a static binary).
    #[arg(long, env = "WARREN_PASSWD_FILE", default_value = "/etc/passwd")]
    passwd_file: PathBuf,
    #[arg(long, env = "WARREN_GROUP_FILE", default_value = "/etc/group")]
    group_file: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init::become_init_if_pid1();
            init_logging();
            runtime()?.block_on(serve(*args))
        }
        Command::SftpServer => runtime()?.block_on(sftp::serve_stdio()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("cannot start the async runtime")
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let sandbox = SandboxId::parse(&args.sandbox_id).context("bad --sandbox-id")?;
    let tokens = args
        .token_key
        .as_deref()
        .map(TokenVerifier::from_base64)
        .transpose()
        .context("bad --token-key")?;
    if tokens.is_none() && args.authorized_keys.is_none() {
        bail!("nobody could log in: give --token-key, --authorized-keys or both");
    }
    let db = UserDb {
        passwd: args.passwd_file,
        group: args.group_file,
    };
    let running_as = user::current_user(&db)?;
    let (user, switch_user) = match args.user {
        Some(name) if name != running_as.name => {
            if running_as.uid != 0 {
                bail!(
                    "the agent runs as {} and cannot start sessions as {name}; run it as root or drop --user",
                    running_as.name
                );
            }
            (db.by_name(&name)?, true)
        }
        _ => (running_as, false),
    };
    if user.uid == 0 {
        tracing::warn!("sessions run as root");
    }
    let host_key = warren_keys::load_or_generate_host_key(&args.host_key)
        .with_context(|| format!("host key {}", args.host_key.display()))?;
    let workdir = args.workdir.unwrap_or_else(|| user.home.clone());
    tracing::info!(user = %user.name, uid = user.uid, switch_user, workdir = %workdir.display(), "sandbox user");
    let agent = Agent {
        auth: Authenticator {
            sandbox,
            tokens,
            authorized_keys: args.authorized_keys,
        },
        user,
        switch_user,
        workdir,
        env_policy: EnvPolicy::new(&args.allow_env),
        session_env: Vec::new(),
    };
    server::serve(args.listen, server::ssh_config(host_key), agent).await
}
