//! warren-gateway: the SSH front door users log in to, and the endpoint runners dial.
//!
//! `serve` runs it (SSH, the runners' endpoint and the HTTP API); the other commands are the operator's, working on the same data
//! directory (join tokens for runners, accounts and their keys) until the HTTP API
//! covers them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use warren_gateway::server::{Gateway, Listen, Options};
use warren_store::Store;

#[derive(Parser)]
#[command(version, about = "Warren's gateway")]
struct Cli {
    /// Where the gateway keeps its keys and (by default) its SQLite database.
    #[arg(long, env = "WARREN_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL instead of SQLite (postgres://...).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// A gateway tier (several gateways on one PostgreSQL): the file (mode 0600, at
    /// least 32 bytes, the same on every gateway) whose secret seals the tier's
    /// shared SSH host key and token key in the database.
    #[arg(long, env = "WARREN_CLUSTER_SECRET_FILE", global = true)]
    cluster_secret_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size of `Serve` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve users' SSH, runners' tunnels and the HTTP API.
    Serve {
        #[arg(long, env = "WARREN_SSH_LISTEN", default_value = "127.0.0.1:2222")]
        ssh_listen: SocketAddr,
        #[arg(long, env = "WARREN_RUNNER_LISTEN", default_value = "127.0.0.1:2223")]
        runner_listen: SocketAddr,
        /// In a gateway tier: the runner endpoint as runners reach it (HOST:PORT),
        /// told to every runner (default: --runner-listen, unless a wildcard).
        #[arg(long, env = "WARREN_RUNNER_ADVERTISE")]
        runner_advertise: Option<String>,
        /// The HTTP API. Plain HTTP on loopback; on any other address HTTPS (a
        /// self-signed certificate made on first start unless --tls-cert/--tls-key).
        #[arg(long, env = "WARREN_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
        http_listen: SocketAddr,
        /// HTTPS with a self-signed certificate (kept in the data directory) even on
        /// loopback.
        #[arg(long)]
        tls: bool,
        /// HTTPS with this certificate chain (PEM) and --tls-key.
        #[arg(long, env = "WARREN_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, env = "WARREN_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Plain HTTP on a non-loopback address (behind a TLS-terminating proxy).
        #[arg(long, conflicts_with_all = ["tls", "tls_cert"])]
        insecure_http: bool,
        /// The SSH front door's host name as users reach it, for the `ssh` details,
        /// `Host` blocks and known_hosts lines the API hands out (default: the SSH
        /// listen address, or `localhost` if that is a wildcard).
        #[arg(long, env = "WARREN_PUBLIC_HOST")]
        public_host: Option<String>,
        /// Every SSH connection starts with a PROXY protocol v2 header (behind a
        /// TCP load balancer such as HAProxy with `send-proxy-v2`); connections
        /// without a valid one within 5 s are closed.
        #[arg(long, env = "WARREN_PROXY_PROTOCOL")]
        proxy_protocol: bool,
        #[command(flatten)]
        recording: warren_gateway::recordings::RecordingArgs,
        #[command(flatten)]
        admission: warren_gateway::ssh::AdmissionArgs,
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
    warren_protocol::stream::keep_freed_buffers();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(warren_gateway::server::default_data_dir);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(cli, data_dir))
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
            runner_advertise,
            http_listen,
            tls,
            tls_cert,
            tls_key,
            insecure_http,
            public_host,
            proxy_protocol,
            recording,
            admission,
        } => {
            warren_gateway::ssh::raise_open_file_limit();
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(warren_keys::tls::load_tls_identity(&cert, &key)?),
                _ if tls || (!http_listen.ip().is_loopback() && !insecure_http) => {
                    let mut names: Vec<String> = public_host.iter().cloned().collect();
                    if !http_listen.ip().is_unspecified() {
                        names.push(http_listen.ip().to_string());
                    }
                    Some(warren_keys::tls::load_or_generate_tls_identity(
                        &data_dir, &names,
                    )?)
                }
                _ => None,
            };
            let listen = Listen {
                ssh: ssh_listen,
                runners: runner_listen,
                http: http_listen,
                public_host,
            };
            let tier = match &cli.cluster_secret_file {
                Some(file) => {
                    let keys =
                        warren_gateway::tier::open_shared_keys(&store, file, &data_dir).await?;
                    let advertise = match runner_advertise {
                        Some(a) => a,
                        None if runner_listen.ip().is_unspecified() => anyhow::bail!(
                            "--runner-listen {runner_listen} is a wildcard: give \
                             --runner-advertise HOST:PORT, the runner endpoint as runners reach it"
                        ),
                        None => runner_listen.to_string(),
                    };
                    Some(std::sync::Arc::new(warren_gateway::tier::Tier::new(
                        keys, advertise,
                    )))
                }
                None => {
                    warren_gateway::tier::warn_if_outside(&store).await;
                    None
                }
            };
            let options = Options {
                tier,
                recording: recording.policy(),
                preauth: warren_gateway::server::Preauth {
                    ssh: admission.preauth(),
                    ..Default::default()
                },
                sessions: admission.limits(),
                proxy_protocol,
                ..Options::default()
            };
            serve(store, &data_dir, listen, options, tls).await
        }
        Command::JoinToken { ttl, gateway } => {
            let host_key = match &cli.cluster_secret_file {
                Some(file) => {
                    warren_gateway::tier::open_shared_keys(&store, file, &data_dir)
                        .await?
                        .host_key
                }
                None => warren_keys::load_or_generate_host_key(&data_dir.join("host_key"))?,
            };
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
    listen: Listen,
    options: Options,
    tls: Option<warren_keys::tls::TlsIdentity>,
) -> anyhow::Result<()> {
    let mut gateway = Gateway::bind_with(store, data_dir, listen, options).await?;
    let (runners, fingerprint) = gateway.runner_endpoint();
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "gateway ssh on {}, runners on {runners}, {scheme} on {}, host key {fingerprint}",
        gateway.ssh_addr, gateway.http_addr
    );
    if let Some(identity) = tls {
        println!(
            "tls certificate {} ({}), sha256 fingerprint {}; clients: \
             `warren login --cacert {} --url https://…` or `curl --cacert …`",
            identity.cert_path().display(),
            if identity.generated() {
                "self-signed"
            } else {
                "given"
            },
            identity.fingerprint(),
            identity.cert_path().display()
        );
        gateway = gateway.with_tls(identity);
    }
    // SIGINT or SIGTERM: a clean stop (a tier member leaves the set first).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    gateway
        .serve(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
}
