//! `warren`: the command people use. `warren up` runs a whole installation on this
//! machine; the other commands talk to a gateway's HTTP API (`warren login` first,
//! or after `warren up`, which logs the CLI in).

mod client;
mod devcontainer;
mod env;
mod fork;
mod local_dial;
mod show;
mod sync;
mod up;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde::Serialize;
use warren_api::{CreatePullRequest, CreateSandbox, ListSandboxes, SandboxView};
use warren_client::Client;
use warren_runner::protocol::forwards;

use crate::client::Config;

#[derive(Parser)]
#[command(
    name = "warren",
    version,
    about = "Disposable SSH sandboxes",
    after_help = "`warren up` runs everything on this machine and logs you in; the other \
        commands talk to a gateway's HTTP API (`warren login`, or WARREN_URL and \
        WARREN_API_KEY)."
)]
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
        /// Where the SSH gateway listens (`ssh <sandbox-id>@host -p PORT`).
        #[arg(long, env = "WARREN_SSH_LISTEN", default_value = "127.0.0.1:2222")]
        ssh_listen: SocketAddr,
        /// Where the HTTP API listens.
        #[arg(long, env = "WARREN_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
        http_listen: SocketAddr,
        /// Where runners' tunnels connect (the local runner's included).
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
        #[arg(long, default_value_t = 6)]
        pool_size: usize,
        /// What the pool may grow to while creates come in bursts (`--pool-size`
        /// plus one waiting sandbox per create in the last minute); it shrinks back to
        /// `--pool-size` a minute after they stop.
        #[arg(long, default_value_t = 12)]
        pool_max: usize,
        /// How many pool members (and spare networks) are started at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        pool_fill_parallel: u16,
        /// Docker: the disk quota of sandboxes whose create request names none, in
        /// MiB (their workspace, /tmp, /var/tmp and writable layer).
        #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(64..=16 << 20))]
        disk_mb: u64,
        /// Docker: the disk quotas of all sandboxes may add up to this, in MiB
        /// (default: what the data directory's file system has free at start).
        #[arg(long)]
        capacity_disk_mb: Option<u64>,
        /// Docker: build a repository's devcontainer.json `build.dockerfile`
        /// (tenant code on this machine: no network, 1 CPU, 1 GiB, from allowed
        /// local images only). Off by default.
        #[arg(long)]
        allow_builds: bool,
        /// Docker: remove a built image once no sandbox has used it for this many
        /// seconds (it is built again from the same inputs when needed).
        #[arg(long, default_value_t = 3600)]
        keep_unused_builds_s: u64,
        #[command(flatten)]
        recording: warren_gateway::recordings::RecordingArgs,
        #[command(flatten)]
        admission: warren_gateway::ssh::AdmissionArgs,
    },
    /// Save a gateway's API URL and your API key (read from WARREN_API_KEY or stdin).
    Login {
        /// The gateway's HTTP API.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A PEM certificate to trust for HTTPS: the gateway's self-signed one
        /// (`warren-gateway serve` prints where it is and its fingerprint).
        #[arg(long, value_name = "PEM")]
        cacert: Option<PathBuf>,
    },
    /// Create a sandbox and print how to reach it.
    Create {
        /// An image reference (default: the runner's base image).
        #[arg(long)]
        image: Option<String>,
        /// An https:// repository to clone into the workspace (pull requests push
        /// there).
        #[arg(long)]
        repo: Option<String>,
        /// The branch made for the sandbox's work (default `warren/<sandbox-id>`;
        /// needs --repo).
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
        /// CPUs, 0.1 to 16 (default 1).
        #[arg(long)]
        cpus: Option<f64>,
        /// Memory in MiB, 128 to 65536 (default 1024).
        #[arg(long)]
        memory_mb: Option<u32>,
        /// Disk quota in MiB (the workspace, /tmp and everything it writes;
        /// default: the runner's).
        #[arg(long)]
        disk_mb: Option<u32>,
        /// Stop it after this many seconds without activity, 60 to 604800 (default:
        /// the runner's).
        #[arg(long)]
        idle_timeout_s: Option<u32>,
        /// Delete it this many seconds after creation, 60 to 31536000 (default:
        /// never).
        #[arg(long)]
        ttl_s: Option<u32>,
        /// Make it from this snapshot of yours (`snp_…`, `warren snapshots`): its
        /// files, image, limits, network and env. Not with --image, --repo or
        /// --disk-mb; the other flags override.
        #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["image", "repo", "disk_mb"])]
        snapshot: Option<String>,
        /// Print the API's answer as JSON (its token included) instead.
        #[arg(long)]
        json: bool,
    },
    /// Your sandboxes, newest first (the first 50).
    List {
        /// Print the API's JSON (`GET /v1/sandboxes`; times in Unix seconds).
        #[arg(long)]
        json: bool,
    },
    /// ssh into a sandbox (runs the system ssh; extra arguments follow `--`). The
    /// ports its devcontainer.json forwards are forwarded while the session lasts
    /// (`-L`, each on your loopback to the same port in the sandbox).
    Ssh {
        /// The sandbox's id (`sbx-…`).
        id: String,
        /// Do not forward the devcontainer.json's ports.
        #[arg(long)]
        no_forwards: bool,
        /// Arguments for ssh, after `--` (e.g. `-- -A`, or a command to run).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Stop a running sandbox; its workspace is kept for `warren start`.
    Stop {
        /// The sandbox's id (`sbx-…`).
        id: String,
    },
    /// Start a stopped sandbox again, with its workspace as it was.
    Start {
        /// The sandbox's id (`sbx-…`).
        id: String,
    },
    /// Delete a sandbox and its workspace.
    Rm {
        /// The sandbox's id (`sbx-…`).
        id: String,
    },
    /// Commit the sandbox's changes, push its branch and open a pull request.
    Pr {
        /// The sandbox's id (`sbx-…`).
        id: String,
        /// The pull request's title, also the commit's subject.
        #[arg(long)]
        title: String,
        /// Its description (Markdown), also the commit's body.
        #[arg(long)]
        body: Option<String>,
        /// The branch to merge into (default: the repository's default branch).
        #[arg(long)]
        base: Option<String>,
    },
    /// Fork a running sandbox into new ones, each its own SSH host with its own
    /// copy of the files and git branch (processes are not carried over).
    Fork(fork::ForkArgs),
    /// Snapshot a running sandbox's files (workspace and what was installed) to
    /// make sandboxes of later (`warren create --snapshot`).
    Snapshot(fork::SnapshotArgs),
    /// Your snapshots (`warren snapshots rm <id>` deletes one).
    Snapshots(fork::SnapshotsArgs),
    /// Send a local directory to a sandbox (`warren sync ./dir <id>:/workspace/dir`),
    /// with progress; run again to resume.
    Sync(sync::SyncArgs),
    /// Keep a local directory like a sandbox's, live (`warren mirror <id>:/workspace
    /// ./dir`); Ctrl-C stops.
    Mirror(sync::MirrorArgs),
    /// Write a Host entry per sandbox into ~/.ssh/config (VS Code Remote-SSH lists them).
    ConfigSsh {
        /// The SSH config file to update (default: ~/.ssh/config).
        #[arg(long, value_name = "PATH")]
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

fn api() -> anyhow::Result<Client> {
    Config::load()?.client()
}

/// Prints a view as the API's JSON (a reader that stopped early, as `| head`
/// does, is no error).
fn print_json(view: &impl Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut text = serde_json::to_string_pretty(view)?;
    text.push('\n');
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
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
            pool_fill_parallel,
            disk_mb,
            capacity_disk_mb,
            allow_builds,
            keep_unused_builds_s,
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
                pool_fill_parallel: usize::from(pool_fill_parallel),
                disk_mb,
                capacity_disk_mb,
                allow_builds,
                keep_unused_builds: std::time::Duration::from_secs(keep_unused_builds_s),
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
            let first = ListSandboxes {
                limit: Some(1),
                ..ListSandboxes::default()
            };
            config
                .client()?
                .list_sandboxes(&first)
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
            snapshot,
            json,
        } => {
            let env = env::collect(&env_files, &env, |name| std::env::var_os(name))?;
            let repo_watched = repo.is_some();
            let request = CreateSandbox {
                image,
                repo,
                branch,
                forward_agent,
                env,
                cpus,
                memory_mb,
                idle_timeout_s,
                ttl_s,
                disk_mb,
                snapshot,
                // With a repository, the create is watched as it goes: its clone,
                // build and devcontainer.json's commands show as they happen.
                wait: (repo_watched && !json).then_some(false),
                ..CreateSandbox::default()
            };
            eprintln!("creating a sandbox (the first from an image can take a while)…");
            let api = api()?;
            let mut created = api.create_sandbox(&request).await?;
            if json {
                return print_json(&created);
            }
            if request.wait == Some(false) {
                created.sandbox = devcontainer::watch_create(&api, &created.sandbox.id).await?;
            }
            let sandbox = &created.sandbox;
            println!("sandbox {} ({})", sandbox.id, sandbox.state);
            println!("{}", ssh_line(sandbox));
            println!(
                "token (shown once; as password or `{}#<token>` user): {}",
                sandbox.id, created.token
            );
            Ok(())
        }
        Command::List { json } => {
            // Every page, not the first 50.
            let list = warren_api::SandboxList {
                sandboxes: api()?.all_sandboxes(false).await?,
                next_cursor: None,
            };
            if json {
                return print_json(&list);
            }
            let now = show::now();
            println!("{:<18} {:<9} {:<28} CREATED", "ID", "STATE", "IMAGE");
            for s in &list.sandboxes {
                println!(
                    "{:<18} {:<9} {:<28} {}",
                    s.id,
                    s.state,
                    s.image,
                    show::when(s.created_at, now)
                );
            }
            Ok(())
        }
        Command::Ssh {
            id,
            no_forwards,
            args,
        } => {
            let api = api()?;
            let sandbox = api.get_sandbox(&id).await?;
            let port = sandbox.ssh.port.to_string();
            let target = format!("{}@{}", sandbox.ssh.user, sandbox.ssh.host);
            let forwards = if no_forwards {
                Vec::new()
            } else {
                forwards::ports_of_config(&api.ssh_config(&id).await?)
            };
            if !forwards.is_empty() {
                let shown: Vec<String> =
                    forwards.iter().map(|p| format!("127.0.0.1:{p}")).collect();
                eprintln!(
                    "forwarding {} to the sandbox while this session lasts (--no-forwards: none)",
                    shown.join(", ")
                );
            }
            let err = std::process::Command::new("ssh")
                .args(["-p", &port])
                .args(forward_options(&forwards))
                .arg(&target)
                .args(&args)
                .exec();
            bail!("cannot run ssh: {err}")
        }
        Command::Stop { id } => {
            api()?.stop_sandbox(&id).await?;
            println!("{id} stopped");
            Ok(())
        }
        Command::Start { id } => {
            api()?.start_sandbox(&id).await?;
            println!("{id} started");
            Ok(())
        }
        Command::Rm { id } => {
            api()?.delete_sandbox(&id).await?;
            println!("{id} deleted");
            Ok(())
        }
        Command::Pr {
            id,
            title,
            body,
            base,
        } => {
            let request = CreatePullRequest { title, body, base };
            eprintln!("committing, pushing and opening the pull request…");
            let pr = api()?.create_pull_request(&id, &request).await?;
            println!("pull request #{}: {}", pr.number, pr.url);
            Ok(())
        }
        Command::Fork(args) => fork::fork(api()?, args).await,
        Command::Snapshot(args) => fork::snapshot(api()?, args).await,
        Command::Snapshots(args) => fork::snapshots(api()?, args).await,
        Command::ConfigSsh { ssh_config } => config_ssh(ssh_config).await,
        Command::Sync(args) => sync::sync(args).await,
        Command::Mirror(args) => sync::mirror(args).await,
    }
}

/// `-L` options forwarding each port on this machine's loopback to the same port
/// in the sandbox.
fn forward_options(ports: &[u16]) -> Vec<String> {
    ports
        .iter()
        .flat_map(|p| ["-L".to_owned(), format!("127.0.0.1:{p}:127.0.0.1:{p}")])
        .collect()
}

/// `ssh -p PORT USER@HOST` for a sandbox.
fn ssh_line(sandbox: &SandboxView) -> String {
    format!(
        "ssh -p {} {}@{}",
        sandbox.ssh.port, sandbox.ssh.user, sandbox.ssh.host
    )
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
    let known = api.host_keys().await?;
    let known_path = home.join(".ssh/warren_known_hosts");
    if let Some(dir) = known_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&known_path, known)?;
    let sandboxes = api.all_sandboxes(false).await?;
    let mut block = format!("{BEGIN}\n");
    let mut count = 0;
    for s in &sandboxes {
        if s.state == "deleted" || s.state == "failed" {
            continue;
        }
        let host = api.ssh_config(&s.id).await?;
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `path`'s commands and arguments that say nothing in `--help`.
    fn silent(command: &clap::Command, path: &str, found: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                found.push(format!("{path} {id}"));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            let name = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                found.push(name.clone());
            }
            silent(sub, &name, found);
        }
    }

    #[test]
    fn every_command_and_flag_says_what_it_does() {
        let mut found = Vec::new();
        silent(&Cli::command(), "warren", &mut found);
        assert!(found.is_empty(), "no help text: {found:?}");
    }
}
