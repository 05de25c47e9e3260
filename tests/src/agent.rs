//! The `Agent` fixture: a real `warren-agent serve` process in a temporary directory.
//!
//! Each fixture gets its own host key, token signer, authorized_keys file and workdir,
//! listens on 127.0.0.1:0 (or a unix socket), and is killed — with every process it
//! started — on drop. Its stderr is kept and printed on drop so a failing test shows
//! the agent's side of the story (test runners hide it for passing tests).

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use warren_keys::{SandboxId, SandboxToken, Scope, TokenSigner};

use crate::binaries::bin_path;
use crate::client::{Client, Target};
use crate::process::{Cmd, Running, SharedBuf};
use crate::util::{self, kill_descendants};

/// How long the agent may take to print `listening on`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for starting an agent. `Agent::builder()` gives the defaults.
#[derive(Clone, Debug, Default)]
pub struct AgentBuilder {
    binary: Option<PathBuf>,
    sandbox_id: Option<SandboxId>,
    listen: Option<String>,
    user: Option<String>,
    passwd_file: Option<PathBuf>,
    group_file: Option<PathBuf>,
    workdir: Option<PathBuf>,
    allow_env: Vec<String>,
    envs: Vec<(String, String)>,
    args: Vec<String>,
    dir_mode: Option<u32>,
    wrapper: Vec<String>,
    quiet: bool,
    signer_file: Option<PathBuf>,
}

impl AgentBuilder {
    /// Use the token signer persisted in this file (made if missing), so that another
    /// process under test (the gateway) mints tokens this agent accepts.
    pub fn signer_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.signer_file = Some(path.into());
        self
    }

    /// Run this binary instead of the debug build of `warren-agent`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    pub fn sandbox_id(mut self, id: SandboxId) -> Self {
        self.sandbox_id = Some(id);
        self
    }

    /// `--listen` value; default `127.0.0.1:0`. `{dir}` stands for the fixture's
    /// tempdir, e.g. `unix:{dir}/agent.sock`.
    pub fn listen(mut self, listen: impl Into<String>) -> Self {
        self.listen = Some(listen.into());
        self
    }

    /// `--user`: the sandbox user sessions run as.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn passwd_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.passwd_file = Some(path.into());
        self
    }

    pub fn group_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.group_file = Some(path.into());
        self
    }

    /// `--workdir`; default: `<tempdir>/work`.
    pub fn workdir(mut self, path: impl Into<PathBuf>) -> Self {
        self.workdir = Some(path.into());
        self
    }

    /// `--allow-env NAME` (repeatable).
    pub fn allow_env(mut self, name: impl Into<String>) -> Self {
        self.allow_env.push(name.into());
        self
    }

    /// An environment variable for the agent process itself.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Any further argument after `serve`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// chmod the fixture's temporary directory (e.g. 0o755 so a dropped-privilege
    /// sandbox user can reach a home inside it).
    pub fn dir_mode(mut self, mode: u32) -> Self {
        self.dir_mode = Some(mode);
        self
    }

    /// Start the agent through this command, e.g. `["unshare", "--pid", "--fork"]` to
    /// make it PID 1 of a new namespace. [`Agent::pid`] is then the wrapper's pid.
    pub fn wrapper<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.wrapper = argv.into_iter().map(Into::into).collect();
        self
    }

    /// Don't print the agent's stderr on drop (for the benchmark).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    pub fn start(self) -> Result<Agent> {
        Agent::start_with(self)
    }
}

/// A running `warren-agent serve`.
pub struct Agent {
    process: Option<Running>,
    listen: String,
    sandbox_id: SandboxId,
    signer: TokenSigner,
    authorized_keys: PathBuf,
    host_key: PathBuf,
    workdir: PathBuf,
    log: SharedBuf,
    quiet: bool,
    // Last: removed after the process is gone.
    dir: TempDir,
}

impl Agent {
    /// An agent with all defaults.
    pub fn start() -> Result<Agent> {
        Self::builder().start()
    }

    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    fn start_with(opts: AgentBuilder) -> Result<Agent> {
        let binary = match opts.binary {
            Some(b) => b,
            None => bin_path("warren-agent"),
        };
        let dir = tempfile::Builder::new()
            .prefix("warren-agent-")
            .tempdir()
            .context("creating the agent's tempdir")?;
        if let Some(mode) = opts.dir_mode {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode))?;
        }
        let sandbox_id = opts.sandbox_id.unwrap_or_else(SandboxId::generate);
        let signer = match &opts.signer_file {
            Some(path) => {
                TokenSigner::load_or_generate(path).context("loading the token signer")?
            }
            None => TokenSigner::generate().context("generating a token signer")?,
        };
        let host_key = dir.path().join("host_key");
        let authorized_keys = dir.path().join("authorized_keys");
        fs::write(&authorized_keys, "")?;
        let workdir = match opts.workdir {
            Some(w) => w,
            None => {
                let w = dir.path().join("work");
                fs::create_dir(&w)?;
                w
            }
        };
        let listen = opts
            .listen
            .unwrap_or_else(|| "127.0.0.1:0".to_owned())
            .replace("{dir}", &dir.path().to_string_lossy());

        // `--flag=value` throughout: a base64url key may start with '-'.
        let flag = |name: &str, value: &dyn AsRef<std::ffi::OsStr>| {
            let mut arg = std::ffi::OsString::from(format!("--{name}="));
            arg.push(value.as_ref());
            arg
        };
        let mut cmd = match opts.wrapper.split_first() {
            Some((program, args)) => Cmd::new(program).args(args).arg(&binary),
            None => Cmd::new(&binary),
        };
        cmd = cmd
            .arg("serve")
            .arg(flag("sandbox-id", &sandbox_id.as_str()))
            .arg(flag("token-key", &signer.verifier().to_base64()))
            .arg(flag("authorized-keys", &authorized_keys))
            .arg(flag("listen", &listen))
            .arg(flag("host-key", &host_key))
            .arg(flag("workdir", &workdir))
            .stream_stdout()
            .timeout(Duration::from_secs(24 * 3600));
        if let Some(user) = &opts.user {
            cmd = cmd.arg(flag("user", user));
        }
        if let Some(p) = &opts.passwd_file {
            cmd = cmd.arg(flag("passwd-file", p));
        }
        if let Some(p) = &opts.group_file {
            cmd = cmd.arg(flag("group-file", p));
        }
        for name in &opts.allow_env {
            cmd = cmd.arg(flag("allow-env", name));
        }
        cmd = cmd.args(&opts.args);
        // Nothing from the test environment leaks into the agent's configuration.
        for var in [
            "WARREN_SANDBOX_ID",
            "WARREN_TOKEN_KEY",
            "WARREN_AUTHORIZED_KEYS",
            "WARREN_AGENT_LISTEN",
            "WARREN_AGENT_HOST_KEY",
            "WARREN_SANDBOX_USER",
            "WARREN_WORKDIR",
            "WARREN_ALLOW_ENV",
        ] {
            cmd = cmd.env_remove(var);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd = cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &opts.envs {
            cmd = cmd.env(k, v);
        }

        let mut process = cmd.spawn()?;
        // Keep the last 1 MiB of the agent's log.
        let log = SharedBuf::bounded(1 << 20);
        {
            let stderr = process.stderr().clone();
            let log = log.clone();
            thread::spawn(move || {
                // Move the captured stderr into the bounded log as it arrives.
                while let Ok(chunk) = stderr.wait_for(b"\n", Duration::from_secs(24 * 3600)) {
                    log.push(&chunk);
                }
                log.push(&stderr.contents());
            });
        }
        let stdout = process.take_stdout().context("agent stdout is not piped")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if !sent {
                    let _ = tx.send(line);
                    sent = true;
                }
                // Keep draining so the agent never blocks on a full stdout pipe.
            }
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let out = process.kill();
                bail!(
                    "warren-agent did not print `listening on` within {READY_TIMEOUT:?} \
                     (exit: {})\nits log:\n{}",
                    out.status,
                    log.contents_str()
                );
            }
        };
        let Some(bound) = line.strip_prefix("listening on ") else {
            let out = process.kill();
            bail!(
                "warren-agent's first stdout line was {line:?}, not `listening on <addr>` \
                 (exit: {})\nits log:\n{}",
                out.status,
                log.contents_str()
            );
        };
        Ok(Agent {
            process: Some(process),
            listen: bound.trim().to_owned(),
            sandbox_id,
            signer,
            authorized_keys,
            host_key,
            workdir,
            log,
            quiet: opts.quiet,
            dir,
        })
    }

    /// What the agent said it listens on, e.g. `127.0.0.1:40123` or `unix:/…/agent.sock`.
    pub fn listen_addr(&self) -> &str {
        &self.listen
    }

    /// The socket path when listening on a unix socket.
    pub fn socket_path(&self) -> Option<PathBuf> {
        let path = self.listen.strip_prefix("unix:").unwrap_or(&self.listen);
        path.starts_with('/').then(|| PathBuf::from(path))
    }

    /// The TCP port (panics for a unix-socket agent).
    pub fn port(&self) -> u16 {
        self.listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("agent listens on {:?}, not TCP", self.listen))
    }

    /// Where a client connects: 127.0.0.1, the agent's port, the sandbox id as user.
    pub fn target(&self) -> Target {
        Target::new("127.0.0.1", self.port(), self.sandbox_id.as_str())
    }

    pub fn sandbox_id(&self) -> &SandboxId {
        &self.sandbox_id
    }

    /// The key that signs tokens this agent accepts.
    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    /// A fresh SSH token for this sandbox, valid for an hour.
    pub fn token(&self) -> SandboxToken {
        self.signer
            .mint(&self.sandbox_id, Scope::Ssh, Duration::from_secs(3600))
    }

    /// Append a public key line to the agent's authorized_keys file.
    pub fn authorize(&self, public_key: &str) -> Result<()> {
        let mut f = OpenOptions::new()
            .append(true)
            .open(&self.authorized_keys)?;
        writeln!(f, "{}", public_key.trim())?;
        Ok(())
    }

    /// A client with a fresh key that this agent authorizes.
    pub fn client(&self) -> Result<Client> {
        let client = Client::new(self.target())?;
        self.authorize(client.public_key())?;
        Ok(client)
    }

    /// A client that logs in with a fresh token as its password.
    pub fn token_client(&self) -> Result<Client> {
        Client::new(self.target())?.with_password(self.token().expose())
    }

    /// The fixture's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The sandbox workdir (`--workdir`).
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn host_key_path(&self) -> &Path {
        &self.host_key
    }

    pub fn authorized_keys_path(&self) -> &Path {
        &self.authorized_keys
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Running::pid)
    }

    /// The agent's resident memory now, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        util::rss_kib(self.pid())
    }

    /// Everything the agent logged so far (the last MiB).
    pub fn log(&self) -> String {
        self.log.contents_str()
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| p.try_wait().is_none())
    }

    /// Stop the agent with SIGTERM (graceful shutdown) and return its exit output.
    pub fn stop(&mut self) -> Option<crate::process::Output> {
        let process = self.process.take()?;
        let pid = process.pid();
        let out = process.kill();
        kill_descendants(pid);
        Some(out)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            // Sessions may have left processes behind (that is allowed): reap them too.
            process.kill_tree();
        }
        if !self.quiet {
            eprintln!(
                "----- warren-agent log ({}) -----\n{}----- end of agent log -----",
                self.listen,
                self.log.contents_str()
            );
        }
    }
}
