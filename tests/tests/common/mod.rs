//! The stack the system tests share: one gateway in-process (the real
//! [`server::Gateway`], without its reconciler: the tests drive runners by hand),
//! real `warren-runner` processes joined to it, sandboxes made through the tunnel.

#![allow(dead_code)]

pub mod docker;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use tempfile::TempDir;
use warren_gateway::recordings::{RecordingPolicy, Recordings};
use warren_gateway::server::{self, Listen, Options};
use warren_gateway::tunnel::RunnerHub;
use warren_keys::{SandboxId, TokenSigner};
use warren_runner::protocol::{Request, Response, SandboxSpec};
use warren_store::{NewSandbox, RunnerId, SandboxState, Store, User};
use warren_tests::{Client, Output, Target, bin_path};

fn runner_bin() -> std::path::PathBuf {
    bin_path("warren-runner")
}

/// A runner process in its own process group, killed (group and all) on drop.
pub struct RunnerProc {
    pub child: std::process::Child,
    pub data: TempDir,
    _listen: TempDir,
    pub id: RunnerId,
    /// The runner's stderr (its log), for tests that look for what must not be there.
    pub log: PathBuf,
}

impl RunnerProc {
    pub fn kill(&mut self) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// The directory given as `--listen-dir` (the docker backend's run directory).
    pub fn listen_dir(&self) -> &Path {
        self._listen.path()
    }

    pub fn sandbox_dir(&self, sandbox: &SandboxId) -> PathBuf {
        self.data.path().join("sandboxes").join(sandbox.as_str())
    }
}

impl Drop for RunnerProc {
    fn drop(&mut self) {
        self.kill();
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
    pub fn start() -> Result<Stack> {
        Stack::start_recording(RecordingPolicy::default())
    }

    /// A stack whose gateway records by `policy`.
    pub fn start_recording(policy: RecordingPolicy) -> Result<Stack> {
        Stack::start_with(Options {
            recording: policy,
            ..Options::default()
        })
    }

    /// A stack whose gateway runs with `options` (never its reconciler).
    pub fn start_with(options: Options) -> Result<Stack> {
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
            let store = Store::open_in_data_dir(dir.path()).await?;
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
        let out = std::process::Command::new(runner_bin())
            .args(["join", "--gateway", &self.hub.local_addr().to_string()])
            .args([
                "--token",
                token.secret.expose(),
                "--fingerprint",
                self.hub.fingerprint(),
            ])
            .args(["--name", name, "--data-dir"])
            .arg(data.path())
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "join: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let identity: warren_runner::state::Identity =
            serde_json::from_slice(&std::fs::read(data.path().join("runner.json"))?)?;
        let id = RunnerId::parse(&identity.runner_id)?;
        let log = data.path().join("runner.log");
        let mut runner = RunnerProc {
            child: spawn_runner(data.path(), Some(listen.path()), args, &log)?,
            data,
            _listen: listen,
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
        runner.child = spawn_runner(
            runner.data.path(),
            Some(runner._listen.path()),
            args,
            &runner.log,
        )?;
        self.wait_online(runner, "restarted")
    }

    fn wait_online(&self, runner: &mut RunnerProc, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.hub.is_online(&runner.id) {
            if let Ok(Some(status)) = runner.child.try_wait() {
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

/// `warren-runner run` on `data`, its stderr appended to `log`.
/// The runner's log filter for its Docker backend in tests.
const DOCKER_DEBUG: &str = "warren_runner::backend::docker=debug";

fn spawn_runner(
    data: &Path,
    listen: Option<&Path>,
    args: &[&str],
    log: &Path,
) -> Result<std::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = std::process::Command::new(runner_bin());
    cmd.args(["run", "--data-dir"]).arg(data);
    if let Some(listen) = listen {
        cmd.arg("--listen-dir").arg(listen);
    }
    if std::env::var_os("WARREN_AGENT_BIN").is_none() {
        cmd.env("WARREN_AGENT_BIN", bin_path("warren-agent"));
    }
    if !args.contains(&"--backend") {
        cmd.args(["--backend", "process"]);
    }
    // The Docker backend's debug lines say when a pool member or a spare network
    // can be taken, which the pool tests wait for (and which explain a failure).
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    cmd.env("RUST_LOG", format!("{filter},{DOCKER_DEBUG}"));
    Ok(cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()?)
}

/// The HTTP API on a [`Stack`]'s gateway, with a reqwest client for it.
pub struct Api {
    pub base: String,
    pub state: Arc<warren_gateway::api::ApiState>,
    pub http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    reconciler: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
        self.reconciler.abort();
    }
}

/// One HTTP exchange, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub request_id: Option<String>,
    pub content_type: Option<String>,
    pub text: String,
}

impl Reply {
    /// The body as JSON (`null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or(serde_json::Value::Null)
    }

    /// `error.code` of an error reply.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Stack {
    /// Starts the HTTP API on 127.0.0.1 (a free port), sharing this stack's store,
    /// runner hub, token signer and host key; the reconciler runs every
    /// `reconcile_every`.
    pub fn api(&self, reconcile_every: Duration) -> Result<Api> {
        use warren_gateway::api;
        self.rt.block_on(async {
            let key = warren_keys::load_or_generate_host_key(&self._dir.path().join("host_key"))?;
            let host_key_line =
                russh::keys::PublicKey::new(key.public_key().key_data().clone(), "")
                    .to_openssh()?;
            let signer = TokenSigner::load_or_generate(&self._dir.path().join("token_signer"))?;
            let mut lifecycle = warren_gateway::lifecycle::Lifecycle::new(
                self.store.clone(),
                self.hub.clone(),
                Arc::new(signer),
                "127.0.0.1".into(),
                self.ssh_port,
                host_key_line,
            );
            lifecycle.live = self.live.clone();
            lifecycle.recordings = self.recordings.clone();
            let state = Arc::new(api::ApiState::over(Arc::new(lifecycle)));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let base = format!("http://{}", listener.local_addr()?);
            let router = api::router(state.clone());
            let server = tokio::spawn(async move {
                let _ = api::serve(listener, router).await;
            });
            let reconciler = warren_gateway::lifecycle::spawn_reconciler(
                state.lifecycle.clone(),
                reconcile_every,
            );
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()?;
            anyhow::Ok(Api {
                base,
                state,
                http,
                server,
                reconciler,
            })
        })
    }

    /// An admin account made through the store; returns its API key.
    pub fn admin(&self, name: &str) -> Result<String> {
        self.rt.block_on(async {
            let user = self.store.create_user(name, true).await?;
            let key = self.store.create_api_key(&user.id, "test").await?;
            anyhow::Ok(key.secret.expose().to_owned())
        })
    }

    /// One request to `api`: `body` is sent as JSON when given.
    pub fn call(
        &self,
        api: &Api,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Result<Reply> {
        let mut request = api.http.request(
            reqwest::Method::from_bytes(method.as_bytes())?,
            format!("{}{path}", api.base),
        );
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request)
    }

    /// Sends a request built by hand (raw bodies, odd headers).
    pub fn send(&self, request: reqwest::RequestBuilder) -> Result<Reply> {
        self.rt.block_on(async {
            let response = request.send().await?;
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let request_id = header("x-request-id");
            let content_type = header("content-type");
            let status = response.status().as_u16();
            let text = response.text().await?;
            anyhow::Ok(Reply {
                status,
                request_id,
                content_type,
                text,
            })
        })
    }
}
