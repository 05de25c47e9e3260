//! warren-agent: the SSH server inside each sandbox.
//!
//! It authenticates sandbox tokens (verified offline with the gateway's public key)
//! and authorized public keys, and serves shells, exec, SFTP and forwarding as the
//! sandbox's unprivileged user. It is built as a static binary so that it runs in any
//! image, even one with nothing but busybox.

mod activity;
mod auth;
mod chunks;
mod forward;
mod handler;
mod identity;
mod init;
mod persistent;
mod process;
mod pty;
mod pump;
mod server;
mod session;
mod sftp;
mod unpack;
mod user;
mod watch;

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
    /// A `GIT_ASKPASS` helper: answers git's username prompt with
    /// `$WARREN_GIT_USERNAME` (default `x-access-token`) and its password prompt with
    /// `$WARREN_GIT_PASSWORD`, so a clone's credentials live only in its environment.
    Askpass { prompt: Option<String> },
    /// Chunk hashes of files named on stdin, for `warren sync` (see chunks.rs).
    Chunks {
        #[arg(long, default_value_t = 1024 * 1024)]
        chunk_size: u64,
    },
    /// Stream changes under a directory, for `warren mirror` (see watch.rs).
    Watch { dir: PathBuf },
    /// Write a batch of small files read from stdin, for `warren sync` (see unpack.rs).
    Unpack,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The sandbox this agent serves; tokens must name it.
    #[arg(
        long,
        env = "WARREN_SANDBOX_ID",
        required_unless_present = "identity_file"
    )]
    sandbox_id: Option<String>,
    /// A pooled agent: set up, then wait for this file (the sandbox id, token key
    /// and env, as JSON), read it once and remove it, and only then listen.
    #[arg(long, env = "WARREN_IDENTITY_FILE", conflicts_with = "sandbox_id")]
    identity_file: Option<PathBuf>,
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
    /// agent runs as root, each session switches to this user. `auto` picks the
    /// image's `sandbox` user or first ordinary user, or creates `sandbox` (uid 1000).
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
    /// Names of variables in the agent's own environment that every session gets
    /// (the sandbox's environment, e.g. API keys given at create time).
    #[arg(long = "pass-env", env = "WARREN_PASS_ENV", value_delimiter = ',')]
    pass_env: Vec<String>,
    /// Give the working directory to the sandbox user when it is root's (a fresh
    /// volume mounted over it).
    #[arg(long, env = "WARREN_OWN_WORKDIR")]
    own_workdir: bool,
    /// Write `uid:gid` of the sandbox user here once chosen (for the runner, which
    /// runs setup commands such as a git clone as that user).
    #[arg(long, env = "WARREN_USER_FILE")]
    user_file: Option<PathBuf>,
    /// Touch this file (every 5 s at most) while sessions pass data or commands
    /// run, for the runner's idle reaper.
    #[arg(long, env = "WARREN_ACTIVITY_FILE")]
    activity_file: Option<PathBuf>,
    /// Also accept the `none` cipher, listed last (OpenSSH clients never offer it).
    /// Only for a unix socket reached through the runner's encrypted tunnel: the
    /// gateway's inner connection then skips a second layer of encryption.
    #[arg(long, env = "WARREN_AGENT_ALLOW_UNENCRYPTED")]
    allow_unencrypted: bool,
    /// End a persistent session (`<sandbox-id>+<name>` logins) after this many
    /// seconds with no client attached (default, or 0: it lives until its shell
    /// exits or the sandbox stops).
    #[arg(long, env = "WARREN_SESSION_DETACHED_TTL_S")]
    session_detached_ttl_s: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    // Mounted a second time as `askpass`, the binary is git's GIT_ASKPASS helper
    // (git passes the prompt as the only argument).
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new("askpass")) {
        askpass(&std::env::args().nth(1).unwrap_or_default());
        return Ok(());
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            process::remember_agent_binary();
            init::become_init_if_pid1();
            init_logging();
            runtime()?.block_on(serve(*args))
        }
        Command::SftpServer => runtime()?.block_on(sftp::serve_stdio()),
        Command::Askpass { prompt } => {
            askpass(prompt.as_deref().unwrap_or(""));
            Ok(())
        }
        Command::Chunks { chunk_size } => chunks::run(chunk_size),
        Command::Watch { dir } => watch::run(&dir),
        Command::Unpack => unpack::run(),
    }
}

fn askpass(prompt: &str) {
    // A runner's push names the only place the password is for; git asks with the
    // URL it is talking to ("Password for 'https://user@host': "), which a
    // redirect or a rewritten URL would change.
    if let Ok(origin) = std::env::var("WARREN_GIT_ORIGIN")
        && prompt_origin(prompt).as_deref() != Some(origin.as_str())
    {
        eprintln!("askpass: no credentials for this host");
        std::process::exit(1);
    }
    let answer = if prompt.to_ascii_lowercase().starts_with("username") {
        std::env::var("WARREN_GIT_USERNAME").unwrap_or_else(|_| "x-access-token".into())
    } else {
        std::env::var("WARREN_GIT_PASSWORD").unwrap_or_default()
    };
    println!("{answer}");
}

/// `scheme://host[:port]` (lowercase, without a user) of the URL quoted in one of
/// git's credential prompts.
fn prompt_origin(prompt: &str) -> Option<String> {
    let start = prompt.find('\'')? + 1;
    let end = start + prompt[start..].find('\'')?;
    let url = &prompt[start..end];
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some(format!("{scheme}://{host}").to_ascii_lowercase())
}

/// The variables named in `names`, read from this process's environment. A name
/// that is not set is skipped with a warning (never its value).
fn passed_env(names: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in names.iter().filter(|n| !n.is_empty()) {
        match std::env::var(name) {
            Ok(value) => out.push((name.clone(), value)),
            Err(_) => tracing::warn!(name, "--pass-env names a variable that is not set"),
        }
    }
    out
}

/// Gives `dir` to `user` if root owns it (a new volume's root), so the workspace is
/// writable in any image.
fn own_workdir(dir: &std::path::Path, user: &user::SandboxUser) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).with_context(|| format!("workdir {}", dir.display()))?;
    if meta.uid() == 0 && user.uid != 0 {
        // Through a descriptor opened without following links.
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir)
            .and_then(|d| std::os::unix::fs::fchown(&d, Some(user.uid), Some(user.gid)));
        opened.with_context(|| format!("giving {} to {}", dir.display(), user.name))?;
    }
    Ok(())
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
    if args.identity_file.is_none() && args.token_key.is_none() && args.authorized_keys.is_none() {
        bail!("nobody could log in: give --token-key, --authorized-keys or both");
    }
    let db = UserDb {
        passwd: args.passwd_file,
        group: args.group_file,
    };
    let running_as = user::current_user(&db)?;
    let (user, switch_user) = match args.user {
        Some(name) if name == "auto" && running_as.uid == 0 => {
            let home = args.workdir.clone().unwrap_or_else(|| "/".into());
            (db.auto_user(&home)?, true)
        }
        // Root given a user always switches, even to a name that is its own (an
        // image may list `toor:x:0:0` before root): the check below then refuses it.
        Some(name) if running_as.uid == 0 => (db.by_name(&name)?, true),
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
    // An agent that switches users (a sandbox's, run as root) never makes a root
    // session, whatever the account is called: an image whose USER is uid 0 under
    // another name gets the automatic sandbox user instead.
    let user = if switch_user && (user.uid == 0 || user.gid == 0) {
        let home = args.workdir.clone().unwrap_or_else(|| "/".into());
        let auto = db.auto_user(&home)?;
        tracing::warn!(
            refused = %user.name,
            instead = %auto.name,
            "sessions never run as uid or gid 0"
        );
        auto
    } else {
        user
    };
    let mut user = user;
    if switch_user {
        // Nor the root group among its supplementary ones.
        user.groups.retain(|g| *g != 0);
    }
    if user.uid == 0 {
        tracing::warn!("sessions run as root (the agent runs as root without --user)");
    }
    let host_key = warren_keys::load_or_generate_host_key(&args.host_key)
        .with_context(|| format!("host key {}", args.host_key.display()))?;
    let workdir = args.workdir.unwrap_or_else(|| user.home.clone());
    if args.own_workdir {
        own_workdir(&workdir, &user)?;
    }
    if let Some(path) = &args.user_file {
        std::fs::write(path, format!("{}:{}\n", user.uid, user.gid))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(user = %user.name, uid = user.uid, switch_user, workdir = %workdir.display(), "sandbox user");
    // Everything above is the same for every sandbox of an image, so a pooled agent
    // has done it before it is claimed; who it serves comes now.
    let (sandbox_id, token_key, session_env) = match &args.identity_file {
        Some(path) => {
            let identity = identity::wait_for(path).await?;
            let env = identity.env.into_iter().collect();
            (identity.sandbox_id, Some(identity.token_key), env)
        }
        None => (
            args.sandbox_id.unwrap_or_default(),
            args.token_key,
            passed_env(&args.pass_env),
        ),
    };
    let sandbox = SandboxId::parse(&sandbox_id).context("bad sandbox id")?;
    let tokens = token_key
        .as_deref()
        .map(TokenVerifier::from_base64)
        .transpose()
        .context("bad token key")?;
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
        sessions: persistent::Sessions::new(
            args.session_detached_ttl_s
                .filter(|s| *s > 0)
                .map(std::time::Duration::from_secs),
        ),
        session_env,
    };
    if let Some(path) = args.activity_file {
        activity::spawn_publisher(path);
    }
    if args.allow_unencrypted && !matches!(args.listen, ListenAddr::Unix(_)) {
        bail!("--allow-unencrypted needs a unix: --listen address");
    }
    let config = server::ssh_config_with(host_key, args.allow_unencrypted);
    server::serve(args.listen, config, agent).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_name_their_origin() {
        assert_eq!(
            prompt_origin("Username for 'https://github.com': ").as_deref(),
            Some("https://github.com")
        );
        assert_eq!(
            prompt_origin("Password for 'https://x-access-token@GitHub.com:8443': ").as_deref(),
            Some("https://github.com:8443")
        );
        assert_eq!(
            prompt_origin("Password for 'http://evil.example/': ").as_deref(),
            Some("http://evil.example")
        );
        assert_eq!(prompt_origin("Password: "), None);
    }
}
