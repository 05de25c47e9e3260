//! warren-gateway: the SSH front door users log in to, and the endpoint runners dial.
//!
//! `serve` runs it; the other commands are the operator's, working on the same data
//! directory (join tokens for runners, accounts and their keys) until the HTTP API
//! covers them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use warren_gateway::dial::TunnelDialer;
use warren_gateway::ssh::{self, FailureLimiter, FrontDoor};
use warren_gateway::store::Store;
use warren_gateway::tunnel::RunnerHub;
use warren_keys::TokenSigner;

#[derive(Parser)]
#[command(version, about = "Warren's gateway")]
struct Cli {
    /// Where the gateway keeps its keys and (by default) its SQLite database.
    #[arg(long, env = "WARREN_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL instead of SQLite (postgres://...).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve users' SSH and runners' tunnels.
    Serve {
        #[arg(long, env = "WARREN_SSH_LISTEN", default_value = "127.0.0.1:2222")]
        ssh_listen: SocketAddr,
        #[arg(long, env = "WARREN_RUNNER_LISTEN", default_value = "127.0.0.1:2223")]
        runner_listen: SocketAddr,
    },
    /// Print a one-time token for `warren-runner join`.
    JoinToken {
        /// How long the token stays valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The runner endpoint as runners reach it, for the printed command.
        #[arg(long, default_value = "127.0.0.1:2223")]
        gateway: String,
    },
    /// Create an account; prints its API key once.
    AddUser {
        name: String,
        #[arg(long)]
        admin: bool,
    },
    /// Register an OpenSSH public key (a file) for an account.
    AddSshKey { user: String, public_key: PathBuf },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let data_dir = cli.data_dir.clone().unwrap_or_else(default_data_dir);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(cli, data_dir))
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("warren")
}

async fn open_store(cli: &Cli, data_dir: &Path) -> anyhow::Result<Store> {
    Ok(match &cli.database_url {
        Some(url) => Store::open(url).await.context("opening the database")?,
        None => Store::open_in_data_dir(data_dir)
            .await
            .with_context(|| format!("opening the store in {}", data_dir.display()))?,
    })
}

async fn run(cli: Cli, data_dir: PathBuf) -> anyhow::Result<()> {
    let store = open_store(&cli, &data_dir).await?;
    match cli.command {
        Command::Serve {
            ssh_listen,
            runner_listen,
        } => serve(store, &data_dir, ssh_listen, runner_listen).await,
        Command::JoinToken { ttl, gateway } => {
            let host_key = warren_keys::load_or_generate_host_key(&data_dir.join("host_key"))?;
            let created = store.create_join_token(Duration::from_secs(ttl)).await?;
            println!(
                "warren-runner join --gateway {gateway} --token {} --fingerprint {} --name <runner-name> --data-dir <dir>",
                created.secret.expose(),
                warren_keys::fingerprint(host_key.public_key()),
            );
            Ok(())
        }
        Command::AddUser { name, admin } => {
            let user = store.create_user(&name, admin).await?;
            let key = store
                .create_api_key(&user.id, "created by add-user")
                .await?;
            println!("user {} ({})", user.name, user.id);
            println!("api key (shown once): {}", key.secret.expose());
            Ok(())
        }
        Command::AddSshKey { user, public_key } => {
            let text = std::fs::read_to_string(&public_key)
                .with_context(|| format!("reading {}", public_key.display()))?;
            let key = russh::keys::PublicKey::from_openssh(text.trim())
                .context("not an OpenSSH public key")?;
            let user = store.get_user_by_name(&user).await?;
            let added = store.add_ssh_key(&user.id, "cli", &key).await?;
            println!("added {} for {}", added.fingerprint, user.name);
            Ok(())
        }
    }
}

async fn serve(
    store: Store,
    data_dir: &Path,
    ssh_listen: SocketAddr,
    runner_listen: SocketAddr,
) -> anyhow::Result<()> {
    let host_key = warren_keys::load_or_generate_host_key(&data_dir.join("host_key"))
        .context("the gateway's host key")?;
    let signer = TokenSigner::load_or_generate(&data_dir.join("token_signer"))
        .context("the gateway's token signer")?;
    let hub = RunnerHub::bind(store.clone(), host_key.clone(), runner_listen)
        .await
        .with_context(|| format!("cannot listen for runners on {runner_listen}"))?;
    let hub = Arc::new(hub);
    let listener = tokio::net::TcpListener::bind(ssh_listen)
        .await
        .with_context(|| format!("cannot listen on {ssh_listen}"))?;
    let Some(ssh_addr) = ssh::bound(&listener) else {
        bail!("the SSH listener has no address");
    };
    println!(
        "gateway ssh on {ssh_addr}, runners on {}, host key {}",
        hub.local_addr(),
        hub.fingerprint()
    );
    let door = Arc::new(FrontDoor {
        store,
        signer,
        dialer: Arc::new(TunnelDialer::new(hub.clone())),
        limiter: FailureLimiter::default(),
    });
    tokio::select! {
        result = ssh::serve(listener, ssh::ssh_config(host_key), door) => {
            result.context("the SSH front door stopped")
        }
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
