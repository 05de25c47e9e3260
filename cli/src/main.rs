//! `warren`: the command people use. `warren up` runs a whole installation on this
//! machine; the other commands talk to a gateway's HTTP API (`warren login` first,
//! or after `warren up`, which logs the CLI in).

mod client;
mod env;
mod local_dial;
mod sync;
mod up;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Api, Config};

#[derive(Parser)]
#[command(name = "warren", version, about = "Disposable SSH sandboxes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine: gateway, a local runner, SQLite, a first
    /// admin and sandbox. Stops on Ctrl-C; a second `up` keeps everything.
    Up {
        /// Where everything is kept (default: ~/.local/share/warren).
        #[arg(long, env = "WARREN_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, env = "WARREN_SSH_LISTEN", default_value = "127.0.0.1:2222")]
        ssh_listen: SocketAddr,
        #[arg(long, env = "WARREN_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
        http_listen: SocketAddr,
        #[arg(long, env = "WARREN_RUNNER_LISTEN", default_value = "127.0.0.1:2223")]
        runner_listen: SocketAddr,
        /// The static warren-agent (scripts/build-static-agent).
        #[arg(long, env = "WARREN_AGENT_BIN")]
        agent_bin: Option<PathBuf>,
        /// Run sandboxes as local processes instead of Docker containers (NO
        /// ISOLATION; without it, `up` needs root and a Docker engine).
        #[arg(long)]
        process_backend: bool,
        /// Stop sandboxes idle for this many seconds (0: never) unless their create
        /// request says otherwise.
        #[arg(long, default_value_t = 1800)]
        idle_timeout_s: u64,
        /// How often the idle reaper looks, in seconds.
        #[arg(long, default_value_t = 10)]
        reap_interval_s: u64,
        /// Started sandboxes of the default image kept waiting, so a create is a
        /// claim (0: none). Docker only; counted against the capacity.
        #[arg(long, default_value_t = 2)]
        pool_size: usize,
        /// What the pool may grow to while creates come in bursts (one waiting
        /// sandbox per create in the last minute); it shrinks back to
        /// `--pool-size` a minute after they stop.
        #[arg(long, default_value_t = 8)]
        pool_max: usize,
        /// Docker: the disk quota of sandboxes whose create request names none, in
        /// MiB (their workspace, /tmp, /var/tmp and writable layer).
        #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(64..=16 << 20))]
        disk_mb: u64,
        /// Docker: the disk quotas of all sandboxes may add up to this, in MiB
        /// (default: what the data directory's file system has free at start).
        #[arg(long)]
        capacity_disk_mb: Option<u64>,
        #[command(flatten)]
        recording: warren_gateway::recordings::RecordingArgs,
        #[command(flatten)]
        admission: warren_gateway::ssh::AdmissionArgs,
    },
    /// Save a gateway's API URL and your API key (read from WARREN_API_KEY or stdin).
    Login {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A PEM certificate to trust for HTTPS: the gateway's self-signed one
        /// (`warren-gateway serve` prints where it is and its fingerprint).
        #[arg(long, value_name = "PEM")]
        cacert: Option<PathBuf>,
    },
    /// Create a sandbox and print how to reach it.
    Create {
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        branch: Option<String>,
        /// Let your own `ssh -A` sessions forward your SSH agent into the sandbox.
        #[arg(long)]
        forward_agent: bool,
        /// A variable for every session (repeatable): `NAME` takes its value from
        /// your environment (keeping secrets out of argv), `NAME=VALUE` is given.
        #[arg(long = "env", value_name = "NAME[=VALUE]")]
        env: Vec<String>,
        /// A file of `NAME=VALUE` lines (repeatable; `#` comments, an optional
        /// `export `, values optionally in quotes). `--env` wins over it.
        #[arg(long = "env-file", value_name = "PATH")]
        env_files: Vec<PathBuf>,
        #[arg(long)]
        cpus: Option<f64>,
        #[arg(long)]
        memory_mb: Option<u32>,
        /// Disk quota in MiB (the workspace, /tmp and everything it writes;
        /// default: the runner's).
        #[arg(long)]
        disk_mb: Option<u32>,
        #[arg(long)]
        idle_timeout_s: Option<u32>,
        #[arg(long)]
        ttl_s: Option<u32>,
    },
    /// Your sandboxes.
    List,
    /// ssh into a sandbox (runs the system ssh; extra arguments follow `--`).
    Ssh {
        id: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
    Stop {
        id: String,
    },
    Start {
        id: String,
    },
    /// Delete a sandbox and its workspace.
    Rm {
        id: String,
    },
    /// Commit the sandbox's changes, push its branch and open a pull request.
    Pr {
        id: String,
        #[arg(long)]
        title: String,
        #[arg(long)]
        body: Option<String>,
        #[arg(long)]
        base: Option<String>,
    },
    /// Send a local directory to a sandbox (`warren sync ./dir <id>:/workspace/dir`),
    /// with progress; run again to resume.
    Sync(sync::SyncArgs),
    /// Keep a local directory like a sandbox's, live (`warren mirror <id>:/workspace
    /// ./dir`); Ctrl-C stops.
    Mirror(sync::MirrorArgs),
    /// Write a Host entry per sandbox into ~/.ssh/config (VS Code Remote-SSH lists them).
    ConfigSsh {
        #[arg(long)]
        ssh_config: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(cli.command))
}

fn api() -> anyhow::Result<Api> {
    Api::new(&Config::load()?)
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            data_dir,
            ssh_listen,
            http_listen,
            runner_listen,
            agent_bin,
            process_backend,
            idle_timeout_s,
            reap_interval_s,
            pool_size,
            pool_max,
            disk_mb,
            capacity_disk_mb,
            recording,
            admission,
        } => {
            // Only `warren up` relays sandboxes' bytes; the client commands keep
            // glibc's defaults.
            warren_runner::stream::keep_freed_buffers();
            // One process relays every connection: as many descriptors as allowed.
            warren_gateway::ssh::raise_open_file_limit();
            up::up(up::UpOptions {
                admission,
                recording: recording.policy(),
                data_dir: data_dir.unwrap_or_else(warren_gateway::server::default_data_dir),
                ssh: ssh_listen,
                http: http_listen,
                runners: runner_listen,
                agent_bin,
                process_backend,
                idle_timeout: std::time::Duration::from_secs(idle_timeout_s),
                reap_interval: std::time::Duration::from_secs(reap_interval_s),
                pool_size,
                pool_max,
                disk_mb,
                capacity_disk_mb,
            })
            .await
        }
        Command::Login { url, cacert } => {
            let api_key = match std::env::var("WARREN_API_KEY") {
                Ok(key) => key,
                Err(_) => {
                    eprint!("API key: ");
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim().to_owned()
                }
            };
            let ca_cert = match cacert {
                Some(path) => Some(
                    std::fs::canonicalize(&path)
                        .with_context(|| format!("finding {}", path.display()))?,
                ),
                None => None,
            };
            let config = Config {
                url,
                api_key,
                ca_cert,
            };
            Api::new(&config)?
                .call(Method::GET, "/v1/sandboxes?limit=1", None)
                .await
                .context("logging in")?;
            let path = config.save()?;
            println!("logged in; saved to {}", path.display());
            Ok(())
        }
        Command::Create {
            image,
            repo,
            branch,
            forward_agent,
            env,
            env_files,
            cpus,
            memory_mb,
            disk_mb,
            idle_timeout_s,
            ttl_s,
        } => {
            let vars = env::collect(&env_files, &env, |name| std::env::var_os(name))?;
            let mut body = json!({});
            let fields = [
                ("image", image.map(Value::from)),
                ("repo", repo.map(Value::from)),
                ("branch", branch.map(Value::from)),
                ("forward_agent", forward_agent.then_some(Value::Bool(true))),
                ("cpus", cpus.map(Value::from)),
                ("memory_mb", memory_mb.map(Value::from)),
                ("disk_mb", disk_mb.map(Value::from)),
                ("idle_timeout_s", idle_timeout_s.map(Value::from)),
                ("ttl_s", ttl_s.map(Value::from)),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    body[name] = value;
                }
            }
            if !vars.is_empty() {
                body["env"] = json!(vars);
            }
            eprintln!("creating a sandbox (the first from an image can take a while)…");
            let created = api()?
                .json(Method::POST, "/v1/sandboxes", Some(&body))
                .await?;
            let id = created["id"].as_str().unwrap_or_default();
            let ssh = &created["ssh"];
            println!(
                "sandbox {id} ({})",
                created["state"].as_str().unwrap_or("?")
            );
            println!(
                "ssh -p {} {}@{}",
                ssh["port"],
                ssh["user"].as_str().unwrap_or(id),
                ssh["host"].as_str().unwrap_or("localhost")
            );
            if let Some(token) = created["token"].as_str() {
                println!("token (shown once; as password or `{id}#<token>` user): {token}");
            }
            Ok(())
        }
        Command::List => {
            let list = api()?.json(Method::GET, "/v1/sandboxes", None).await?;
            println!("{:<18} {:<9} {:<28} created", "ID", "STATE", "IMAGE");
            for s in list["sandboxes"].as_array().into_iter().flatten() {
                println!(
                    "{:<18} {:<9} {:<28} {}",
                    s["id"].as_str().unwrap_or(""),
                    s["state"].as_str().unwrap_or(""),
                    s["image"].as_str().unwrap_or(""),
                    s["created_at"]
                );
            }
            Ok(())
        }
        Command::Ssh { id, args } => {
            let sandbox = api()?
                .json(Method::GET, &format!("/v1/sandboxes/{id}"), None)
                .await?;
            let ssh = &sandbox["ssh"];
            let port = ssh["port"].to_string();
            let target = format!(
                "{}@{}",
                ssh["user"].as_str().unwrap_or(&id),
                ssh["host"].as_str().unwrap_or("localhost")
            );
            let err = std::process::Command::new("ssh")
                .args(["-p", &port, &target])
                .args(&args)
                .exec();
            bail!("cannot run ssh: {err}")
        }
        Command::Stop { id } => lifecycle(&id, Method::POST, "/stop", "stopped").await,
        Command::Start { id } => lifecycle(&id, Method::POST, "/start", "started").await,
        Command::Rm { id } => lifecycle(&id, Method::DELETE, "", "deleted").await,
        Command::Pr {
            id,
            title,
            body,
            base,
        } => {
            let mut request = json!({ "title": title });
            if let Some(body) = body {
                request["body"] = body.into();
            }
            if let Some(base) = base {
                request["base"] = base.into();
            }
            eprintln!("committing, pushing and opening the pull request…");
            let pr = api()?
                .json(
                    Method::POST,
                    &format!("/v1/sandboxes/{id}/pull-requests"),
                    Some(&request),
                )
                .await?;
            println!(
                "pull request #{}: {}",
                pr["number"],
                pr["url"].as_str().unwrap_or("")
            );
            Ok(())
        }
        Command::ConfigSsh { ssh_config } => config_ssh(ssh_config).await,
        Command::Sync(args) => sync::sync(args).await,
        Command::Mirror(args) => sync::mirror(args).await,
    }
}

async fn lifecycle(id: &str, method: Method, suffix: &str, done: &str) -> anyhow::Result<()> {
    api()?
        .call(method, &format!("/v1/sandboxes/{id}{suffix}"), None)
        .await?;
    println!("{id} {done}");
    Ok(())
}

const BEGIN: &str = "# ------------ BEGIN WARREN (managed by `warren config-ssh`) ------------";
const END: &str = "# ------------ END WARREN ------------";

/// Rewrites the managed block of the SSH config: a Host entry per live sandbox,
/// pinned to the gateway's host keys in a known_hosts file of its own.
async fn config_ssh(path: Option<PathBuf>) -> anyhow::Result<()> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")?;
    let path = path.unwrap_or_else(|| home.join(".ssh/config"));
    let api = api()?;
    let known = api.call(Method::GET, "/v1/host-keys", None).await?;
    let known_path = home.join(".ssh/warren_known_hosts");
    if let Some(dir) = known_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&known_path, known)?;
    let list = api.json(Method::GET, "/v1/sandboxes", None).await?;
    let mut block = format!("{BEGIN}\n");
    let mut count = 0;
    for s in list["sandboxes"].as_array().into_iter().flatten() {
        let (Some(id), Some(state)) = (s["id"].as_str(), s["state"].as_str()) else {
            continue;
        };
        if state == "deleted" || state == "failed" {
            continue;
        }
        let host = api
            .call(Method::GET, &format!("/v1/sandboxes/{id}/ssh-config"), None)
            .await?;
        for line in host.lines().filter(|l| !l.trim_start().starts_with('#')) {
            block.push_str(line);
            block.push('\n');
        }
        block.push_str(&format!(
            "    UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n",
            known_path.display()
        ));
        count += 1;
    }
    block.push_str(END);
    block.push('\n');
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let updated = match (existing.find(BEGIN), existing.find(END)) {
        (Some(start), Some(end)) if end > start => {
            let mut out = existing[..start].to_owned();
            out.push_str(&block);
            out.push_str(existing[end + END.len()..].trim_start_matches('\n'));
            out
        }
        _ if existing.is_empty() => block,
        _ => format!("{}\n\n{block}", existing.trim_end()),
    };
    std::fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
    println!("{count} sandboxes in {}", path.display());
    Ok(())
}
