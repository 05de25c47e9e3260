//! The whole path, as a user meets it: `ssh <sandbox-id>@gateway` through the
//! gateway's front door, over a runner's reverse tunnel, to the agent of a sandbox
//! that runner started. One gateway (in-process), two real `warren-runner`s with
//! the process backend, the real OpenSSH clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use tempfile::TempDir;
use warren_gateway::dial::TunnelDialer;
use warren_gateway::ssh::{self, FailureLimiter, FrontDoor};
use warren_gateway::store::{NewSandbox, RunnerId, SandboxState, Store, User};
use warren_gateway::tunnel::RunnerHub;
use warren_keys::{SandboxId, TokenSigner};
use warren_runner::protocol::{Request, Response};
use warren_tests::{Client, Target, bin_path, scenarios};

const RUNNER: &str = env!("CARGO_BIN_EXE_warren-runner");

/// A runner process in its own process group, killed (group and all) on drop.
struct RunnerProc {
    child: std::process::Child,
    data: TempDir,
    _listen: TempDir,
    id: RunnerId,
}

impl RunnerProc {
    fn kill(&mut self) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    fn sandbox_dir(&self, sandbox: &SandboxId) -> PathBuf {
        self.data.path().join("sandboxes").join(sandbox.as_str())
    }
}

impl Drop for RunnerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Stack {
    rt: tokio::runtime::Runtime,
    _dir: TempDir,
    store: Store,
    hub: Arc<RunnerHub>,
    ssh_port: u16,
    verifier: String,
}

impl Stack {
    fn start() -> Result<Stack> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let dir = TempDir::new()?;
        let (store, hub, ssh_port, verifier) = rt.block_on(async {
            let store = Store::open_in_data_dir(dir.path()).await?;
            let key = warren_keys::load_or_generate_host_key(&dir.path().join("host_key"))?;
            let hub = Arc::new(
                RunnerHub::bind(store.clone(), key.clone(), "127.0.0.1:0".parse()?).await?,
            );
            let signer = TokenSigner::load_or_generate(&dir.path().join("token_signer"))?;
            let verifier = signer.verifier().to_base64();
            let door = Arc::new(FrontDoor {
                store: store.clone(),
                signer,
                dialer: Arc::new(TunnelDialer::new(hub.clone())),
                limiter: FailureLimiter::default(),
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            tokio::spawn(ssh::serve(listener, ssh::ssh_config(key), door));
            anyhow::Ok((store, hub, port, verifier))
        })?;
        Ok(Stack {
            rt,
            _dir: dir,
            store,
            hub,
            ssh_port,
            verifier,
        })
    }

    /// Joins a runner with a fresh token and starts it; returns once it is online.
    fn runner(&self, name: &str) -> Result<RunnerProc> {
        let data = TempDir::new()?;
        let listen = TempDir::new()?;
        let token = self
            .rt
            .block_on(self.store.create_join_token(Duration::from_secs(600)))?;
        let out = std::process::Command::new(RUNNER)
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
        let child = std::process::Command::new(RUNNER)
            .args(["run", "--data-dir"])
            .arg(data.path())
            .arg("--listen-dir")
            .arg(listen.path())
            .env("WARREN_AGENT_BIN", bin_path("warren-agent"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let runner = RunnerProc {
            child,
            data,
            _listen: listen,
            id,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.hub.is_online(&runner.id) {
            ensure!(Instant::now() < deadline, "runner {name} never came online");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(runner)
    }

    /// A running sandbox of `owner` on `runner`, its agent trusting the gateway.
    fn sandbox(&self, runner: &RunnerProc, owner: &User) -> Result<SandboxId> {
        let id = SandboxId::generate();
        self.rt.block_on(async {
            self.store
                .create_sandbox(&NewSandbox {
                    id: id.clone(),
                    owner_id: owner.id.clone(),
                    runner_id: Some(runner.id.clone()),
                    image: "process".into(),
                    repo: None,
                    branch: None,
                    cpus: 1.0,
                    memory_mb: 512,
                    idle_timeout_s: None,
                    ttl_s: None,
                })
                .await?;
            let created = self
                .hub
                .control(
                    &runner.id,
                    &Request::Create {
                        sandbox: id.clone(),
                        token_key: self.verifier.clone(),
                        authorized_keys: vec![],
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

    fn user(&self, name: &str, client: &Client) -> Result<User> {
        let key = russh::keys::PublicKey::from_openssh(client.public_key().trim())?;
        self.rt.block_on(async {
            let user = self.store.create_user(name, false).await?;
            self.store.add_ssh_key(&user.id, "test", &key).await?;
            anyhow::Ok(user)
        })
    }

    fn target(&self, sandbox: &SandboxId) -> Target {
        Target::new("127.0.0.1", self.ssh_port, sandbox.as_str())
    }
}

fn dir_of(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[test]
fn two_runners_serve_their_sandboxes_and_a_lost_runner_ends_sessions_cleanly() -> Result<()> {
    let stack = Stack::start()?;
    let mut r1 = stack.runner("r1")?;
    let r2 = stack.runner("r2")?;
    let client = Client::new(Target::new("127.0.0.1", stack.ssh_port, "x"))?;
    let alice = stack.user("alice", &client)?;
    let s1 = stack.sandbox(&r1, &alice)?;
    let s2 = stack.sandbox(&r2, &alice)?;

    // Each sandbox answers through its own runner, with files moving both ways.
    for (sandbox, runner) in [(&s1, &r1), (&s2, &r2)] {
        let c = client.clone().with_target(stack.target(sandbox));
        scenarios::exec_exit_codes(&c)?;
        scenarios::scp_both_ways(&c, &dir_of(&runner.sandbox_dir(sandbox)), 20 << 20)?;
        let out = c.exec("pwd").run()?.success()?;
        ensure!(
            out.stdout_trimmed() == dir_of(&runner.sandbox_dir(sandbox)),
            "sandbox {sandbox} ran somewhere else:\n{out}"
        );
    }

    // Bob's key reaches neither.
    let bob = Client::new(stack.target(&s1))?;
    stack.user("bob", &bob)?;
    let out = bob.exec("true").run()?;
    ensure!(out.code() == Some(255), "bob got in:\n{out}");

    // Killing runner 1 mid-session ends that session with an error, not a hang.
    let c1 = client.clone().with_target(stack.target(&s1));
    let session = c1.exec("echo started; sleep 300").spawn()?;
    if let Err(e) = session
        .stdout()
        .wait_for(b"started", Duration::from_secs(20))
    {
        anyhow::bail!("the session never started ({e}):\n{}", session.kill());
    }
    r1.kill();
    let killed_at = Instant::now();
    let out = session.wait_timeout(Duration::from_secs(60))?;
    ensure!(
        out.code() != Some(0),
        "a session on a dead runner ended well:\n{out}"
    );
    ensure!(
        killed_at.elapsed() < Duration::from_secs(45),
        "the session took {:?} to end",
        killed_at.elapsed()
    );

    // New sessions there are told why, at once; the other runner carries on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.hub.is_online(&r1.id) {
        ensure!(
            Instant::now() < deadline,
            "the gateway never noticed runner 1 died"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = c1.exec("true").run()?;
    ensure!(
        out.code() == Some(255) && out.stderr_str().contains("runner offline"),
        "expected 'runner offline':\n{out}"
    );
    let out = client
        .with_target(stack.target(&s2))
        .exec("echo still-here")
        .run()?
        .success()?;
    ensure!(out.stdout_trimmed() == "still-here", "{out}");
    Ok(())
}
