//! `warren-runner`: join a gateway, then keep the tunnel up and run sandboxes.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

use warren_runner::backend::docker::DockerDefaults;
use warren_runner::backend::process::find_agent_bin;
use warren_runner::service::{BackendKind, CapacityLimits, Runner, RunnerOptions};
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
    /// Sandboxes are hardened Docker containers (needs root and a Docker engine).
    Docker,
}

// Parsed once at start: the size of `Serve` costs nothing.
#[allow(clippy::large_enum_variant)]
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
        /// Where sandboxes run: `docker` (hardened containers; needs root and a
        /// Docker engine) or `process` (local processes, NO ISOLATION). No default:
        /// running untrusted code without isolation must be a choice.
        #[arg(long, value_enum, env = "WARREN_RUNNER_BACKEND")]
        backend: Backend,
        /// Where agent sockets go (default: <data-dir>/sockets).
        #[arg(long)]
        listen_dir: Option<PathBuf>,
        /// The warren-agent binary (default: next to this executable). The docker
        /// backend needs a static build (scripts/build-static-agent).
        #[arg(long, env = "WARREN_AGENT_BIN")]
        agent_bin: Option<PathBuf>,
        /// Docker: the image of sandboxes whose create request names none.
        #[arg(long, default_value = "warren-base:latest")]
        default_image: String,
        /// Docker: an OCI runtime for every sandbox (e.g. `runsc` for gVisor).
        #[arg(long)]
        runtime: Option<String>,
        /// Docker: stop sandboxes idle for this many seconds (0: never), unless their
        /// create request says otherwise.
        #[arg(long, default_value_t = 1800)]
        idle_timeout_s: u64,
        /// Docker: the IPv4 block each sandbox's own network gets a /28 of (4,096
        /// sandboxes in a /16); pick one no host network uses.
        #[arg(long, default_value = "10.213.0.0/16")]
        network_pool: String,
        /// Docker: how often the idle reaper looks.
        #[arg(long, default_value_t = 10)]
        reap_interval_s: u64,
        /// The memory all sandboxes' limits may add up to, in MiB (default: the
        /// host's memory).
        #[arg(long)]
        capacity_memory_mb: Option<u64>,
        /// At most this many sandboxes (default: as many as the memory allows).
        #[arg(long)]
        max_sandboxes: Option<u32>,
        /// Docker: the disk quota of sandboxes whose create request names none, in
        /// MiB (their workspace, /tmp, /var/tmp and writable layer).
        #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(64..=16 << 20))]
        disk_mb: u64,
        /// Docker: the disk quotas of all sandboxes (stopped ones too) may add up to
        /// this, in MiB (default: what the file system of the run directory has
        /// free for them at start).
        #[arg(long)]
        capacity_disk_mb: Option<u64>,
        /// Docker: a TCP port on this host's own addresses that sandboxes may reach
        /// (repeatable; e.g. a package cache). By default the host is unreachable.
        #[arg(long = "host-tcp-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
        host_tcp_ports: Vec<u16>,
        /// Docker: an image sandboxes may use, a reference or a prefix ending in `*`
        /// (repeatable; e.g. `python:3.12`, `ghcr.io/acme/*`; no tag means
        /// `:latest`). The default image is always allowed. Default: Warren's own
        /// images (`warren-*`).
        #[arg(long = "allow-image", value_name = "PATTERN", value_parser = image_pattern_arg)]
        allow_images: Vec<String>,
        /// Docker: build a repository's devcontainer.json `build.dockerfile` (tenant
        /// code on this host: with no network, 1 CPU, 1 GiB, from allowed local
        /// images only). Off by default: such creates get the default image.
        #[arg(long)]
        allow_builds: bool,
        /// Docker: remove a built image once no sandbox has used it for this many
        /// seconds (it is built again from the same inputs when needed).
        #[arg(long, default_value_t = 3600)]
        keep_unused_builds_s: u64,
        /// End a persistent session (`ssh -t <sandbox-id>+<name>@gateway`) nobody has
        /// been attached to for this many seconds (default: it lives until its shell
        /// exits or the sandbox stops).
        #[arg(long)]
        session_detached_ttl_s: Option<u64>,
        /// Docker: keep N started sandboxes of IMAGE waiting to be claimed, so a
        /// create from IMAGE with the default network, root and idle timeout is
        /// a claim (repeatable; e.g. `warren-base:latest=2`). `IMAGE=MIN..MAX`
        /// keeps MIN plus one per create of IMAGE in the last
        /// `--pool-demand-window-s`, at most MAX. Counted against the capacity; refilled in the
        /// background, several at once.
        #[arg(long = "pool", value_name = "IMAGE=N|IMAGE=MIN..MAX")]
        pool: Vec<warren_runner::backend::docker::PoolSize>,
        /// Docker: how often the pool looks whether an image tag now names
        /// another image (its members are then replaced).
        #[arg(long, default_value_t = 30)]
        pool_check_interval_s: u64,
        /// Docker: the window of recent creates a `MIN..MAX` pool sizes itself to.
        #[arg(long, default_value_t = 60)]
        pool_demand_window_s: u64,
        /// Docker: how many pool members and spare networks are made at once.
        #[arg(long, default_value_t = 3)]
        pool_fill_parallel: usize,
        /// Docker: keep N networks (with their volume and firewall rules) made
        /// ahead, so a cold create starts with its container (0: none). Each holds
        /// one /28 of the network pool.
        #[arg(long, default_value_t = 2)]
        spare_networks: usize,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    warren_protocol::stream::keep_freed_buffers();
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
            backend,
            listen_dir,
            agent_bin,
            default_image,
            runtime,
            idle_timeout_s,
            network_pool,
            reap_interval_s,
            capacity_memory_mb,
            max_sandboxes,
            disk_mb,
            capacity_disk_mb,
            host_tcp_ports,
            allow_images,
            allow_builds,
            keep_unused_builds_s,
            session_detached_ttl_s,
            pool,
            pool_check_interval_s,
            pool_demand_window_s,
            pool_fill_parallel,
            spare_networks,
        } => {
            let data = DataDir::open(&data_dir)?;
            let options = RunnerOptions {
                backend: match backend {
                    Backend::Process => BackendKind::Process,
                    Backend::Docker => BackendKind::Docker,
                },
                listen_dir,
                agent_bin: find_agent_bin(agent_bin.as_deref())?,
                docker: DockerDefaults {
                    image: default_image,
                    runtime,
                    idle_timeout: Duration::from_secs(idle_timeout_s),
                    network_pool: network_pool_arg(&network_pool)?,
                    host_access: warren_runner::netpolicy::HostAccess {
                        tcp_ports: host_tcp_ports,
                    },
                    allowed_images: if allow_images.is_empty() {
                        DockerDefaults::default().allowed_images
                    } else {
                        allow_images
                    },
                    pool,
                    pool_check_interval: Duration::from_secs(pool_check_interval_s.max(1)),
                    pool_demand_window: Duration::from_secs(pool_demand_window_s.max(1)),
                    pool_fill_parallel: pool_fill_parallel.max(1),
                    spare_networks,
                    allow_builds,
                    keep_unused_builds: Duration::from_secs(keep_unused_builds_s),
                    disk_mb,
                    ..DockerDefaults::default()
                },
                reap_interval: Duration::from_secs(reap_interval_s),
                capacity: CapacityLimits {
                    memory_mb: capacity_memory_mb,
                    max_sandboxes,
                    disk_mb: capacity_disk_mb,
                },
                session_detached_ttl: session_detached_ttl_s
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs),
            };
            let runner = Runner::start(&data, options).await?;
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
            runner.run(&data, stop_rx).await
        }
    }
}

fn network_pool_arg(text: &str) -> Result<(std::net::Ipv4Addr, u8)> {
    let net = warren_protocol::validate::parse_cidr(text).context("--network-pool")?;
    anyhow::ensure!(
        net.prefix_len() <= 28,
        "--network-pool must be a /28 or larger"
    );
    Ok((net.addr(), net.prefix_len()))
}

/// An `--allow-image` pattern: a reference, with at most a trailing `*`.
fn image_pattern_arg(text: &str) -> Result<String, String> {
    let body = text.strip_suffix('*').unwrap_or(text);
    if text.is_empty() || body.contains('*') || text.chars().any(char::is_whitespace) {
        return Err("an image reference, optionally ending in `*` (e.g. `warren-*`)".into());
    }
    Ok(text.to_owned())
}
