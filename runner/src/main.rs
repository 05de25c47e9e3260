//! `warren-runner`: join a gateway, then keep the tunnel up and run sandboxes.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use warren_runner::backend::process::{ProcessBackend, find_agent_bin};
use warren_runner::state::DataDir;
use warren_runner::tunnel;

#[derive(Parser)]
#[command(name = "warren-runner", version, about = "Warren's runner")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// Sandboxes are agent processes on this host. NO ISOLATION.
    Process,
}

#[derive(Subcommand)]
enum Command {
    /// Register this runner with a gateway using a one-time join token.
    Join {
        /// The gateway's runner endpoint, HOST:PORT.
        #[arg(long)]
        gateway: String,
        /// The join token (`wj_…`) the operator created.
        #[arg(long, env = "WARREN_JOIN_TOKEN")]
        token: String,
        /// The gateway's host key fingerprint (`SHA256:…`); anything else is refused.
        #[arg(long)]
        fingerprint: String,
        /// This runner's name (one word).
        #[arg(long)]
        name: String,
        #[arg(long, env = "WARREN_RUNNER_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Keep the tunnel to the gateway up and serve sandboxes, until SIGTERM.
    Run {
        #[arg(long, env = "WARREN_RUNNER_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value = "process")]
        backend: Backend,
        /// Where agent sockets go (default: <data-dir>/sockets).
        #[arg(long)]
        listen_dir: Option<PathBuf>,
        /// The warren-agent binary (default: next to this executable).
        #[arg(long, env = "WARREN_AGENT_BIN")]
        agent_bin: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Join {
            gateway,
            token,
            fingerprint,
            name,
            data_dir,
        } => {
            let data = DataDir::open(&data_dir)?;
            let identity = tunnel::join(&data, &gateway, &token, &fingerprint, &name).await?;
            println!("joined as runner {}", identity.runner_id);
            Ok(())
        }
        Command::Run {
            data_dir,
            backend: Backend::Process,
            listen_dir,
            agent_bin,
        } => {
            let data = DataDir::open(&data_dir)?;
            let listen_dir = listen_dir.unwrap_or_else(|| data.root().join("sockets"));
            let agent_bin = find_agent_bin(agent_bin.as_deref())?;
            let backend = Arc::new(ProcessBackend::new(
                data.sandboxes(),
                listen_dir,
                agent_bin,
            )?);
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                let _ = stop_tx.send(true);
            });
            tunnel::run(&data, backend, stop_rx).await
        }
    }
}
