//! The benchmarks' gateway path as separate release processes: `warren-gateway serve`
//! and one `warren-runner run` joined to it (process or Docker backend), with
//! sandboxes already running on that runner. So the gateway's and the runner's memory
//! are those processes' own, not the benchmark's.
//!
//! The stack is set up through the gateway's data directory: an in-process
//! `RunnerHub` on the runner port takes the runner's join and the sandboxes'
//! `Create`s, then shuts down, and the real gateway binary takes over the port; the
//! runner reconnects by itself and its sandboxes keep running.
//!
//! Not for tests that need the API or to create sandboxes later: those use the
//! in-process stacks (`tests/tests/common`, [`crate::gateway`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use warren_gateway::tunnel::RunnerHub;
use warren_keys::{SandboxId, TokenSigner};
use warren_runner::protocol::{Request, Response, SandboxSpec};
use warren_store::{NewSandbox, RunnerId, SandboxState, Store};

use crate::util::{self, wait_until};
use crate::{Client, Cmd, Profile, Running, Target, build_bin};

/// Long enough for any run; the processes are killed when the stack is dropped.
const FOREVER: Duration = Duration::from_secs(24 * 3600);

/// Which backend the stack's runner uses.
pub enum Backend {
    /// Agents as plain processes (`WARREN_AGENT_BIN`, a release build).
    Process,
    /// Containers from `image`, with this static agent bind-mounted.
    Docker { agent: PathBuf, image: String },
}

/// What to start.
pub struct StackOptions {
    pub backend: Backend,
    pub sandboxes: usize,
    /// The spec of every sandbox (the Docker image is set from [`Backend::Docker`]).
    pub spec: SandboxSpec,
    /// How many `Create`s are in flight at once.
    pub create_concurrency: usize,
}

/// `warren-gateway serve` and one `warren-runner run`, with sandboxes on it.
pub struct GatewayStack {
    // Killed (process groups and all) when dropped, runner first.
    pub runner: Running,
    pub gateway: Running,
    pub ssh_port: u16,
    pub runner_id: RunnerId,
    pub sandboxes: Vec<SandboxId>,
    docker: bool,
}

impl Drop for GatewayStack {
    fn drop(&mut self) {
        // The sandbox agents are in the runner's process group, but make sure.
        util::kill_descendants(self.runner.pid());
        if self.docker {
            self.remove_docker_objects();
        }
    }
}

impl GatewayStack {
    /// Starts the stack in `work` (a scratch directory), with the sandboxes' owner
    /// logging in with `client`'s key.
    pub fn start(work: &Path, client: &Client, opts: StackOptions) -> Result<GatewayStack> {
        eprintln!("building warren-gateway and warren-runner (release)…");
        let gateway_bin = build_bin("warren-gateway", "warren-gateway", Profile::Release)?;
        let runner_bin = build_bin("warren-runner", "warren-runner", Profile::Release)?;
        let data = work.join("gateway-data");
        let runner_data = work.join("runner-data");
        let runner_sockets = work.join("runner-sockets");
        for d in [&data, &runner_data, &runner_sockets] {
            std::fs::create_dir(d)?;
        }
        let runner_port = util::free_port()?;
        let ssh_port = util::free_port()?;
        let http_port = util::free_port()?;
        let runner_addr = format!("127.0.0.1:{runner_port}");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;

        // Phase 1: an in-process hub on the gateway's data dir and runner port.
        let key = russh::keys::PublicKey::from_openssh(client.public_key().trim())?;
        let (store, hub, verifier, user, token) = rt.block_on(async {
            let store = Store::open_in_data_dir(&data).await?;
            let host_key = warren_keys::load_or_generate_host_key(&data.join("host_key"))?;
            let signer = TokenSigner::load_or_generate(&data.join("token_signer"))?;
            let verifier = signer.verifier().to_base64();
            let hub = RunnerHub::bind(store.clone(), host_key, runner_addr.parse()?).await?;
            let user = store.create_user("bench", false).await?;
            store.add_ssh_key(&user.id, "bench", &key).await?;
            let token = store.create_join_token(Duration::from_secs(600)).await?;
            anyhow::Ok((store, hub, verifier, user, token))
        })?;
        Cmd::new(&runner_bin)
            .args(["join", "--gateway", &runner_addr, "--token"])
            .arg(token.secret.expose())
            .args(["--fingerprint", hub.fingerprint(), "--name", "bench"])
            .arg("--data-dir")
            .arg(&runner_data)
            .timeout(Duration::from_secs(60))
            .run()?
            .success()
            .context("warren-runner join")?;
        let mut runner = Cmd::new(&runner_bin)
            .arg("run")
            .arg("--data-dir")
            .arg(&runner_data)
            .env("RUST_LOG", "warn")
            .timeout(FOREVER);
        let (image, spec) = match &opts.backend {
            Backend::Process => {
                let agent = build_bin("warren-agent", "warren-agent", Profile::Release)?;
                runner = runner
                    .args(["--backend", "process", "--listen-dir"])
                    .arg(&runner_sockets)
                    .env("WARREN_AGENT_BIN", agent);
                ("process".to_owned(), opts.spec.clone())
            }
            Backend::Docker { agent, image } => {
                runner = runner
                    .args(["--backend", "docker", "--agent-bin"])
                    .arg(agent);
                let spec = SandboxSpec {
                    image: Some(image.clone()),
                    ..opts.spec.clone()
                };
                (image.clone(), spec)
            }
        };
        let runner = runner.spawn()?;
        let runner_id = rt
            .block_on(store.list_runners())?
            .into_iter()
            .find(|r| r.name == "bench")
            .context("the joined runner is not in the store")?
            .id;
        ensure!(
            wait_until(Duration::from_secs(30), || hub.is_online(&runner_id)),
            "the runner never came online:\n{}",
            runner.stderr().contents_str()
        );
        let sandboxes: Vec<SandboxId> = (0..opts.sandboxes.max(1))
            .map(|_| SandboxId::generate())
            .collect();
        // From here on the stack owns the runner, so a failed create cleans up.
        let mut stack = GatewayStack {
            runner,
            // Replaced by the real gateway below; until then a placeholder that exits.
            gateway: Cmd::new("true").spawn()?,
            ssh_port,
            runner_id: runner_id.clone(),
            sandboxes: sandboxes.clone(),
            docker: matches!(opts.backend, Backend::Docker { .. }),
        };
        let hub = Arc::new(hub);
        let created = rt.block_on(create_all(
            &store,
            &hub,
            &runner_id,
            &user.id,
            &verifier,
            &image,
            &spec,
            &sandboxes,
            opts.create_concurrency.max(1),
        ));
        let hub = Arc::into_inner(hub).context("the hub is still shared")?;
        rt.block_on(async {
            hub.shutdown().await;
            store.close().await;
        });
        drop(rt);
        created?;

        // Phase 2: the real gateway on the same data dir and ports.
        stack.gateway = Cmd::new(&gateway_bin)
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--ssh-listen", &format!("127.0.0.1:{ssh_port}")])
            .args(["--runner-listen", &runner_addr])
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .env("RUST_LOG", "warn")
            .timeout(FOREVER)
            .spawn()?;
        let probe = stack.client(client, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = probe.exec("true").timeout(Duration::from_secs(20)).run()?;
            if out.status.success() {
                break;
            }
            if let Some(status) = stack.gateway.try_wait() {
                bail!(
                    "warren-gateway exited ({status}):\n{}",
                    stack.gateway.stderr().contents_str()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "no session through the gateway within 60 s:\n{out}\ngateway: {}\nrunner: {}",
                stack.gateway.stderr().contents_str(),
                stack.runner.stderr().contents_str()
            );
            thread::sleep(Duration::from_millis(250));
        }
        Ok(stack)
    }

    /// `client`'s identity aimed at sandbox number `i` through the gateway.
    pub fn client(&self, client: &Client, i: usize) -> Client {
        client.clone().with_target(Target::new(
            "127.0.0.1",
            self.ssh_port,
            self.sandboxes[i].as_str(),
        ))
    }

    /// Every container, volume and network of this runner, and the sandboxes'
    /// firewall rules (the runner, killed, leaves them).
    fn remove_docker_objects(&self) {
        let label = format!("label=org.warren.runner={}", self.runner_id);
        let docker = |args: &[&str]| {
            Cmd::new("docker")
                .args(args.iter().copied())
                .timeout(Duration::from_secs(300))
                .run()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| o.stdout_trimmed().to_owned())
        };
        for (list, rm) in [
            (vec!["ps", "-aq", "--filter"], vec!["rm", "-f", "-v"]),
            (
                vec!["volume", "ls", "-q", "--filter"],
                vec!["volume", "rm", "-f"],
            ),
            (
                vec!["network", "ls", "-q", "--filter"],
                vec!["network", "rm"],
            ),
        ] {
            let mut argv = list;
            argv.push(&label);
            let Some(ids) = docker(&argv) else { continue };
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut argv = rm.clone();
                argv.extend(ids);
                let _ = docker(&argv);
            }
        }
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            for id in &self.sandboxes {
                rt.block_on(warren_runner::netpolicy::remove(id));
            }
        }
    }
}

/// Builds what a Docker runner needs: the static agent (its path is returned) and,
/// for Warren's own images, the image (`images/build-busybox`, `images/build-base`).
pub fn docker_agent_and_image(image: &str) -> Result<PathBuf> {
    let agent = Cmd::new(crate::workspace_root().join("scripts/build-static-agent"))
        .timeout(Duration::from_secs(1800))
        .run()?
        .success()?;
    let agent = crate::workspace_root().join(agent.stdout_str().trim());
    let script = match image {
        i if i.starts_with("warren-busybox") => Some("build-busybox"),
        i if i.starts_with("warren-base") => Some("build-base"),
        _ => None,
    };
    if let Some(script) = script {
        Cmd::new(crate::workspace_root().join("images").join(script))
            .timeout(Duration::from_secs(1800))
            .run()?
            .success()?;
    }
    Ok(agent)
}

/// Stores and creates every sandbox on the runner, `concurrency` at a time.
#[allow(clippy::too_many_arguments)]
async fn create_all(
    store: &Store,
    hub: &Arc<RunnerHub>,
    runner: &RunnerId,
    owner: &warren_store::UserId,
    verifier: &str,
    image: &str,
    spec: &SandboxSpec,
    sandboxes: &[SandboxId],
    concurrency: usize,
) -> Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (i, id) in sandboxes.iter().enumerate() {
        let permit = permits.clone().acquire_owned().await?;
        let (store, hub, runner, owner) =
            (store.clone(), hub.clone(), runner.clone(), owner.clone());
        let (id, verifier, image, spec) = (
            id.clone(),
            verifier.to_owned(),
            image.to_owned(),
            spec.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            store
                .create_sandbox(&NewSandbox {
                    id: id.clone(),
                    owner_id: owner,
                    runner_id: Some(runner.clone()),
                    image,
                    repo: None,
                    branch: None,
                    forward_agent: false,
                    cpus: f64::from(spec.millicpus.unwrap_or(1000)) / 1000.0,
                    memory_mb: spec
                        .memory_mb
                        .and_then(|m| u32::try_from(m).ok())
                        .unwrap_or(512),
                    idle_timeout_s: None,
                    ttl_s: None,
                    disk_mb: None,
                })
                .await?;
            let created = hub
                .control(
                    &runner,
                    &Request::Create {
                        sandbox: id.clone(),
                        token_key: verifier,
                        authorized_keys: vec![],
                        spec,
                    },
                )
                .await?;
            ensure!(created == Response::Ok, "create {id}: {created:?}");
            store
                .set_sandbox_state(&id, SandboxState::Running, "bench")
                .await?;
            anyhow::Ok(())
        });
        if (i + 1) % 10 == 0 {
            eprintln!(
                "  {} of {} sandboxes asked for ({:.0} s)",
                i + 1,
                sandboxes.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}
