//! The system tests' stack: one gateway in-process (the real [`server::Gateway`],
//! without its reconciler: the tests drive runners by hand), real `warren-runner`
//! processes joined to it, sandboxes made through the tunnel.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use tempfile::TempDir;
use warren_gateway::recordings::Recordings;
use warren_gateway::server::{self, Listen, Options};
use warren_gateway::tunnel::RunnerHub;
use warren_keys::{SandboxId, TokenSigner};
use warren_runner::protocol::{Request, Response, SandboxSpec};
use warren_store::{NewSandbox, RunnerId, SandboxState, Store, User};

use crate::process::ChildGuard;
use crate::{Client, Output, Profile, Target, bin_path, build_bin};

/// A runner process in its own process group, killed (group and all) on drop.
pub struct RunnerProc {
    child: ChildGuard,
    pub data: TempDir,
    listen: TempDir,
    pub id: RunnerId,
    /// The runner's stderr (its log), for tests that look for what must not be there.
    pub log: PathBuf,
}

impl RunnerProc {
    /// Kills the runner (and the agents in its process group) and waits for it.
    pub fn kill(&mut self) {
        self.child.kill(Duration::ZERO);
    }

    /// The runner's process id (its memory, for the benches).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The directory given as `--listen-dir` (the docker backend's run directory).
    pub fn listen_dir(&self) -> &Path {
        self.listen.path()
    }

    pub fn sandbox_dir(&self, sandbox: &SandboxId) -> PathBuf {
        self.data.path().join("sandboxes").join(sandbox.as_str())
    }
}

pub struct Stack {
    pub rt: tokio::runtime::Runtime,
    _dir: TempDir,
    pub store: Store,
    pub hub: Arc<RunnerHub>,
    pub ssh_port: u16,
    /// The front door's host key, for clients that pin it.
    pub host_key: russh::keys::PublicKey,
    pub verifier: String,
    /// The front door's live connections, shared with [`Stack::api`]'s state.
    pub live: Arc<warren_gateway::ssh::live::LiveConnections>,
    /// The terminal sessions' recordings (in the stack's data dir).
    pub recordings: Arc<Recordings>,
    /// The build of `warren-runner` and `warren-agent` its runners run.
    profile: Profile,
}

/// `client`'s key logging in to the gateway as `account`: the account console.
pub fn console(stack: &Stack, client: &Client, account: &str) -> Client {
    client
        .clone()
        .with_target(Target::new("127.0.0.1", stack.ssh_port, account))
}

/// `ssh … <line>` with `client`, two minutes at most.
pub fn run(client: &Client, line: &str) -> Result<Output> {
    use anyhow::Context;
    client
        .exec(line)
        .timeout(Duration::from_secs(120))
        .run()
        .with_context(|| format!("ssh … {line}"))
}

/// The store's row of a sandbox the tests make through the tunnel themselves.
pub fn sandbox_row(id: &SandboxId, runner: &RunnerProc, owner: &User) -> NewSandbox {
    NewSandbox {
        id: id.clone(),
        owner_id: owner.id.clone(),
        runner_id: Some(runner.id.clone()),
        image: "process".into(),
        repo: None,
        branch: None,
        forward_agent: false,
        cpus: 1.0,
        memory_mb: 512,
        idle_timeout_s: None,
        ttl_s: None,
        disk_mb: None,
    }
}

impl Stack {
    /// A stack with the gateway's default options: `Stack::builder().start()`.
    pub fn start() -> Result<Stack> {
        Stack::builder().start()
    }

    /// Starts the gateway with `options` (never its reconciler); its runners run
    /// the `profile` build. Its store is the PostgreSQL database at `postgres` (a
    /// tier of gateways shares one: `shared_store`), or SQLite in its data dir.
    pub(super) fn start_on(
        options: Options,
        profile: Profile,
        postgres: Option<&str>,
    ) -> Result<Stack> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let dir = TempDir::new()?;
        let listen = Listen::loopback();
        let options = Options {
            reconcile_every: None,
            ..options
        };
        // The account console is the gateway's lifecycle; the API of `Stack::api`
        // has its own, so that a test can "restart" the API and lose its memory.
        let (store, hub, ssh_port, host_key, verifier, live, recordings) = rt.block_on(async {
            let store = match postgres {
                Some(url) => Store::open(url).await?,
                None => Store::open_in_data_dir(dir.path()).await?,
            };
            let gateway =
                server::Gateway::bind_with(store.clone(), dir.path(), listen, options).await?;
            let parts = (
                store,
                gateway.hub.clone(),
                gateway.ssh_addr.port(),
                gateway.host_key().clone(),
                gateway.signer.verifier().to_base64(),
                gateway.api.lifecycle.live.clone(),
                gateway.api.lifecycle.recordings.clone(),
            );
            tokio::spawn(gateway.serve(std::future::pending()));
            anyhow::Ok(parts)
        })?;
        Ok(Stack {
            rt,
            _dir: dir,
            store,
            hub,
            ssh_port,
            host_key,
            verifier,
            live,
            recordings,
            profile,
        })
    }

    /// The gateway's data directory (keys, the store, `recordings/`).
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().to_owned()
    }

    /// The gateway's token signer (the front door's own, loaded again), to mint
    /// tokens as the API does.
    pub fn signer(&self) -> Result<TokenSigner> {
        Ok(TokenSigner::load_or_generate(
            &self._dir.path().join("token_signer"),
        )?)
    }

    /// Joins a runner with a fresh token and starts it; returns once it is online.
    pub fn runner(&self, name: &str) -> Result<RunnerProc> {
        self.runner_with(name, &[])
    }

    /// A runner started with `args` added to `warren-runner run`.
    pub fn runner_with(&self, name: &str, args: &[&str]) -> Result<RunnerProc> {
        let data = TempDir::new()?;
        let listen = TempDir::new()?;
        let token = self
            .rt
            .block_on(self.store.create_join_token(Duration::from_secs(600)))?;
        let id = join_runner(
            &self.runner_bin()?,
            &self.hub.local_addr().to_string(),
            token.secret.expose(),
            self.hub.fingerprint(),
            name,
            data.path(),
        )?;
        let log = data.path().join("runner.log");
        let mut runner = RunnerProc {
            child: self.spawn_runner(data.path(), listen.path(), args, &log)?,
            data,
            listen,
            id,
            log,
        };
        self.wait_online(&mut runner, name)?;
        Ok(runner)
    }

    /// Starts `runner` again (same data directory) after it was killed.
    pub fn restart(&self, runner: &mut RunnerProc, args: &[&str]) -> Result<()> {
        runner.kill();
        // The hub notices the dead tunnel a moment after the process is gone; until it
        // does, `is_online` still answers for the old tunnel and the wait below would
        // return before the new runner has connected.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.hub.is_online(&runner.id) {
            ensure!(
                Instant::now() < deadline,
                "the gateway never noticed the killed runner"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        runner.child =
            self.spawn_runner(runner.data.path(), runner.listen.path(), args, &runner.log)?;
        self.wait_online(runner, "restarted")
    }

    fn wait_online(&self, runner: &mut RunnerProc, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.hub.is_online(&runner.id) {
            if let Some(status) = runner.child.try_wait() {
                let log = std::fs::read_to_string(&runner.log).unwrap_or_default();
                anyhow::bail!("runner {name} exited ({status}):\n{log}");
            }
            ensure!(Instant::now() < deadline, "runner {name} never came online");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// A running sandbox of `owner` on `runner`, its agent trusting the gateway.
    pub fn sandbox(&self, runner: &RunnerProc, owner: &User) -> Result<SandboxId> {
        self.sandbox_with(runner, owner, SandboxSpec::default())
    }

    /// The same, made from `spec`.
    pub fn sandbox_with(
        &self,
        runner: &RunnerProc,
        owner: &User,
        spec: SandboxSpec,
    ) -> Result<SandboxId> {
        let id = SandboxId::generate();
        self.sandbox_from(runner, sandbox_row(&id, runner, owner), spec, false)?;
        Ok(id)
    }

    /// A running sandbox of the store row `row` (its id, owner, `forward_agent`)
    /// made from `spec`; its agent trusts the keys the store says (for jump mode) if
    /// `with_keys`, none otherwise.
    pub fn sandbox_from(
        &self,
        runner: &RunnerProc,
        row: NewSandbox,
        spec: SandboxSpec,
        with_keys: bool,
    ) -> Result<SandboxId> {
        let id = row.id.clone();
        self.rt.block_on(async {
            self.store.create_sandbox(&row).await?;
            let authorized_keys = if with_keys {
                self.store
                    .sandbox_authorized_keys(&id)
                    .await?
                    .into_iter()
                    .collect()
            } else {
                vec![]
            };
            let created = self
                .hub
                .control(
                    &runner.id,
                    &Request::Create {
                        sandbox: id.clone(),
                        token_key: self.verifier.clone(),
                        authorized_keys,
                        spec,
                    },
                )
                .await?;
            ensure!(created == Response::Ok, "create: {created:?}");
            self.store
                .set_sandbox_state(&id, SandboxState::Running, "test")
                .await?;
            anyhow::Ok(())
        })?;
        Ok(id)
    }

    pub fn user(&self, name: &str, client: &Client) -> Result<User> {
        let key = russh::keys::PublicKey::from_openssh(client.public_key().trim())?;
        self.rt.block_on(async {
            let user = self.store.create_user(name, false).await?;
            self.store.add_ssh_key(&user.id, "test", &key).await?;
            anyhow::Ok(user)
        })
    }

    pub fn target(&self, sandbox: &SandboxId) -> Target {
        Target::new("127.0.0.1", self.ssh_port, sandbox.as_str())
    }
}

/// The runner's log filter for its Docker backend in tests.
const DOCKER_DEBUG: &str = "warren_runner::backend::docker=debug";

impl Stack {
    /// The `warren-runner` binary of the stack's build.
    fn runner_bin(&self) -> Result<PathBuf> {
        match self.profile {
            Profile::Debug => Ok(bin_path("warren-runner")),
            Profile::Release => build_bin("warren-runner", "warren-runner", Profile::Release),
        }
    }

    /// `warren-runner run` on `data`, its stderr appended to `log`.
    fn spawn_runner(
        &self,
        data: &Path,
        listen: &Path,
        args: &[&str],
        log: &Path,
    ) -> Result<ChildGuard> {
        let (mut cmd, log) = runner_run(&self.runner_bin()?, data, listen, log)?;
        if std::env::var_os("WARREN_AGENT_BIN").is_none() {
            let agent = match self.profile {
                Profile::Debug => bin_path("warren-agent"),
                Profile::Release => build_bin("warren-agent", "warren-agent", Profile::Release)?,
            };
            cmd.env("WARREN_AGENT_BIN", agent);
        }
        if !args.contains(&"--backend") {
            cmd.args(["--backend", "process"]);
        }
        // The Docker backend's debug lines say when a pool member or a spare network
        // can be taken, which the pool tests wait for (and which explain a failure).
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
        cmd.env("RUST_LOG", format!("{filter},{DOCKER_DEBUG}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        ChildGuard::spawn(&mut cmd)
    }
}

/// `warren-runner run` of `bin` with its data and listen directories, and `log`
/// opened for appending (for its stderr).
pub(super) fn runner_run(
    bin: &Path,
    data: &Path,
    listen: &Path,
    log: &Path,
) -> Result<(Command, std::fs::File)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--data-dir"])
        .arg(data)
        .arg("--listen-dir")
        .arg(listen);
    Ok((cmd, log))
}

/// `warren-runner join` with a join token; returns the runner's id (from its
/// `runner.json` in `data`).
pub fn join_runner(
    runner_bin: &Path,
    gateway: &str,
    token: &str,
    fingerprint: &str,
    name: &str,
    data: &Path,
) -> Result<RunnerId> {
    let out = Command::new(runner_bin)
        .args(["join", "--gateway", gateway, "--token", token])
        .args(["--fingerprint", fingerprint, "--name", name, "--data-dir"])
        .arg(data)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let identity: warren_runner::state::Identity =
        serde_json::from_slice(&std::fs::read(data.join("runner.json"))?)?;
    Ok(RunnerId::parse(&identity.runner_id)?)
}
