//! The Docker backend: a sandbox is a hardened container from any image the
//! operator allows, with the static agent bind-mounted in as its main process (PID 1,
//! reaping children).
//!
//! Here: the backend, creating a sandbox (`create`, `make`); beside it `container`
//! (the hardened container's configuration), [`images`] (the allow-list, image
//! lookup, the static agent), `network` (its bridge), `exec` (git in the
//! container), `disk` (its disk quota: a loop-mounted file system and a watcher),
//! `lifecycle` (stop, delete, list, the idle reaper, adoption),
//! [`pool`] (started containers waiting to be claimed) and `spare` (networks made
//! ahead for cold creates).
//!
//! Per sandbox `<id>`, everything carries the label [`LABEL_SANDBOX`]:
//! - container `warren-<id>`; its agent listens on `agent.sock` in a runner-owned
//!   directory (`<run-dir>/<id>`, mode 0700) bind-mounted at [`RUN_MOUNT`] — no TCP
//!   port is published;
//! - its disk, `<run-dir>/.disks/<id>.img`, a file system of its quota whose
//!   directories are `/workspace`, `/tmp` and `/var/tmp` (survives stop/start; see
//!   [`disk`]);
//! - network `warren-<id>`, a bridge of its own (so sandboxes cannot reach each
//!   other), or none at all.
//!
//! Docker's labels are the backend's state: after a restart the runner adopts what
//! runs and removes what belongs to deleted sandboxes (see [`DockerBackend::adopt`]).
//! A sandbox claimed from the warm pool keeps the objects of its pool member (a
//! *slot*, itself a sandbox id, with [`LABEL_POOL`]); the runner's private markers
//! map the sandbox to its slot and back (see [`pool`]). A cold sandbox made on a
//! spare network has that slot's network and chains (its disk is keyed by that
//! slot too), and its own container
//! and run directory.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Ipam, IpamConfig, Mount, MountType,
    NetworkCreateRequest, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    RemoveContainerOptions, RemoveVolumeOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use warren_keys::SandboxId;

use super::hostile;
use crate::git;
use crate::netpolicy;
use crate::protocol::{NetworkPolicy, RepoSpec, SandboxSpec, SandboxStatus, Secret};
use crate::state::write_file;

pub mod build;
mod container;
mod devcontainer;
pub mod disk;
mod exec;
mod held;
mod hostname;
pub mod images;
mod lifecycle;
mod network;
pub mod pool;
mod snapshot;
mod spare;

use container::NewContainer;
pub use devcontainer::{Account, find_account};
pub use images::{DEFAULT_ALLOWED_IMAGES, ensure_static, image_allowed};
pub use pool::PoolSize;

/// Every object Warren makes carries this label, valued with the sandbox id.
pub const LABEL_SANDBOX: &str = "org.warren.sandbox";
/// The runner that made it.
pub const LABEL_RUNNER: &str = "org.warren.runner";
/// The sandbox's idle timeout in seconds (0: never stopped for idleness).
pub const LABEL_IDLE_TIMEOUT: &str = "org.warren.idle-timeout-s";
/// The sandbox's disk quota in MiB (see [`disk`]).
pub const LABEL_DISK_MB: &str = "org.warren.disk-mb";
/// Made for the warm pool (valued with the pool's image): its sandbox label is a
/// slot, which becomes a sandbox only when claimed.
pub const LABEL_POOL: &str = "org.warren.pool";
/// Where the sandbox's run directory (agent socket, keys) appears in the container.
pub const RUN_MOUNT: &str = "/.warren/run";
/// Where the static agent appears (read-only); also mounted as the git askpass.
pub const AGENT_MOUNT: &str = "/.warren/bin/warren-agent";
pub const ASKPASS_MOUNT: &str = "/.warren/bin/askpass";
const WORKSPACE: &str = "/workspace";
/// The marker a delete leaves until everything of the sandbox is gone.
const DELETING_MARKER: &str = "deleting";
/// The marker of a sandbox the runner stopped (so a stop is not reported as a crash).
const STOPPED_MARKER: &str = "stopped-by-runner";
/// The directory beside the run directories where the runner keeps its markers.
const PRIVATE_DIR: &str = ".runner";
/// The agent's socket, in the run directory.
const AGENT_SOCKET: &str = "agent.sock";

/// How long a new container's agent may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Graceful stop: SIGTERM, then SIGKILL after this many seconds.
const STOP_GRACE_SECS: i32 = 10;

/// Defaults for what a create request leaves out.
#[derive(Debug, Clone)]
pub struct DockerDefaults {
    pub image: String,
    pub memory_mb: u64,
    pub millicpus: u32,
    pub pids_limit: u32,
    pub open_files: u32,
    /// An OCI runtime for every sandbox of this runner (e.g. `runsc`).
    pub runtime: Option<String>,
    /// Idle sandboxes are stopped after this long (zero: never).
    pub idle_timeout: Duration,
    /// The IPv4 block sandbox networks get their /28 subnets from. Docker's own
    /// default pools hold only about 30 networks, far too few for one per sandbox.
    pub network_pool: (std::net::Ipv4Addr, u8),
    /// What of the runner host sandboxes may reach (default: nothing).
    pub host_access: netpolicy::HostAccess,
    /// Started sandboxes kept waiting per image (default: none).
    pub pool: Vec<PoolSize>,
    /// How often the pool looks whether an image changed (members are also checked
    /// at each claim).
    pub pool_check_interval: Duration,
    /// A pool with a range (`IMAGE=MIN..MAX`) keeps one member for each create of
    /// its image within this window.
    pub pool_demand_window: Duration,
    /// How many members (and spare networks) are made at once.
    pub pool_fill_parallel: usize,
    /// Networks (with their rules) kept made ahead for cold creates
    /// (see [`spare`]).
    pub spare_networks: usize,
    /// The images a create may name, as patterns for [`image_allowed`] (`image`
    /// is always allowed besides). Default: Warren's own, `warren-*`.
    pub allowed_images: Vec<String>,
    /// The disk quota of a sandbox whose spec names none, in MiB.
    pub disk_mb: u64,
    /// Whether a devcontainer.json's `build` is built (see [`build`]); off
    /// unless the operator turns it on.
    pub allow_builds: bool,
    /// A built image no container has used for this long is removed.
    pub keep_unused_builds: Duration,
}

impl Default for DockerDefaults {
    fn default() -> Self {
        DockerDefaults {
            image: "warren-base:latest".into(),
            memory_mb: u64::from(warren_protocol::DEFAULT_MEMORY_MB),
            millicpus: warren_protocol::DEFAULT_MILLICPUS,
            pids_limit: 1024,
            open_files: 8192,
            runtime: None,
            idle_timeout: Duration::from_secs(30 * 60),
            network_pool: (std::net::Ipv4Addr::new(10, 213, 0, 0), 16),
            host_access: netpolicy::HostAccess::default(),
            pool: Vec::new(),
            pool_check_interval: Duration::from_secs(30),
            pool_demand_window: Duration::from_secs(60),
            pool_fill_parallel: 3,
            spare_networks: 2,
            allowed_images: DEFAULT_ALLOWED_IMAGES.map(String::from).into(),
            disk_mb: 4 * 1024,
            allow_builds: false,
            keep_unused_builds: Duration::from_secs(3600),
        }
    }
}

/// Who a new container's agent serves.
#[derive(Clone, Copy)]
enum Serves<'a> {
    /// A sandbox: its identity is in the container's config.
    Sandbox { token_key: &'a str },
    /// A pool member: it waits for its identity (see [`pool`]).
    Pool,
    /// A sandbox made from a snapshot (see `snapshot`): its image and disk are
    /// the snapshot's.
    Fork {
        token_key: &'a str,
        fork: &'a snapshot::Fork,
    },
}

pub struct DockerBackend {
    docker: Docker,
    /// Held while a network's subnet is picked.
    subnet_lock: tokio::sync::Mutex<()>,
    /// Subnets picked for networks being made (Docker does not list them yet).
    pending_subnets: std::sync::Mutex<std::collections::HashSet<String>>,
    run_dir: PathBuf,
    agent_bin: PathBuf,
    runner: String,
    defaults: DockerDefaults,
    /// Passed to agents (`WARREN_SESSION_DETACHED_TTL_S`).
    session_detached_ttl: Option<Duration>,
    /// Boxed: it would make `Backend::Docker` much larger than `Backend::Process`.
    pool: Box<pool::Pool>,
    spares: Box<spare::Spares>,
    /// Where each running container's writable layer and cgroup are.
    upper_dirs: std::sync::Mutex<HashMap<String, disk::Layer>>,
}

fn container_name(id: &SandboxId) -> String {
    format!("warren-{}", id.as_str())
}

fn volume_name(id: &SandboxId) -> String {
    format!("warren-{}-workspace", id.as_str())
}

fn network_name(id: &SandboxId) -> String {
    format!("warren-{}", id.as_str())
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerBackend {
    /// Connects to the local engine (negotiating the API version: an engine older
    /// than the client refuses newer versions) and prepares `run_dir` (0700).
    pub async fn connect(
        run_dir: PathBuf,
        agent_bin: PathBuf,
        runner: String,
        defaults: DockerDefaults,
    ) -> Result<Self> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "the docker backend must run as root: it bind-mounts directories that the \
                 container's root-owned agent writes into, and manages firewall rules"
            );
        }
        ensure_static(&agent_bin)?;
        disk::check_tools().await?;
        let docker = Docker::connect_with_local_defaults()
            .context("connecting to the Docker engine")?
            .negotiate_version()
            .await
            .context("the Docker engine does not answer")?;
        docker
            .ping()
            .await
            .context("the Docker engine does not answer")?;
        // Every sandbox bridge is covered from the start, before any sandbox exists.
        netpolicy::ensure_shared()
            .await
            .context("the shared firewall chains for sandbox networks")?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        Ok(DockerBackend {
            docker,
            subnet_lock: tokio::sync::Mutex::new(()),
            pending_subnets: std::sync::Mutex::default(),
            run_dir,
            agent_bin,
            runner,
            pool: Box::new(pool::Pool::new(&defaults.pool)),
            spares: Box::new(spare::Spares::new(defaults.spare_networks)),
            defaults,
            session_detached_ttl: None,
            upper_dirs: std::sync::Mutex::default(),
        })
    }

    /// Agents end persistent sessions nobody attached for `ttl`.
    pub fn with_session_detached_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.session_detached_ttl = ttl;
        self
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The sandbox's run directory, mounted into its container: everything in it
    /// is the container's to write, so the runner reads it only through
    /// [`hostile`].
    pub(crate) fn sandbox_run_dir(&self, id: &SandboxId) -> PathBuf {
        self.run_dir.join(self.slot_of(id).as_str())
    }

    /// Where the runner keeps its own markers of a sandbox: beside the run
    /// directories, never mounted (sandbox ids cannot start with a dot).
    fn private_dir(&self, id: &SandboxId) -> PathBuf {
        self.run_dir.join(PRIVATE_DIR).join(id.as_str())
    }

    /// Writes one of the runner's own markers.
    fn mark(&self, id: &SandboxId, marker: &str, contents: &[u8]) -> Result<()> {
        let dir = self.private_dir(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        write_file(&dir.join(marker), contents)
    }

    fn marked(&self, id: &SandboxId, marker: &str) -> bool {
        self.private_dir(id).join(marker).exists()
    }

    /// Whether the sandbox's container has an agent socket. A stopped container's
    /// socket file may remain; connecting to it then fails, which the tunnel
    /// reports as "no such sandbox".
    pub async fn agent_socket(&self, id: &SandboxId) -> Option<PathBuf> {
        let dir = self.sandbox_run_dir(id);
        hostile::is_socket(&dir, AGENT_SOCKET).then(|| dir.join(AGENT_SOCKET))
    }

    /// A connection to the sandbox's agent, made without following whatever the
    /// container put at the socket's name (`hostile::connect_socket`).
    pub async fn connect_agent(&self, id: &SandboxId) -> Option<tokio::net::UnixStream> {
        hostile::connect_socket(&self.sandbox_run_dir(id), AGENT_SOCKET)
            .await
            .ok()
    }

    /// The `uid:gid` the agent says sessions run as; never root's.
    fn session_user(&self, id: &SandboxId) -> Result<String> {
        let text = hostile::read_small(&self.sandbox_run_dir(id), "user", 64)
            .with_context(|| format!("the agent of {id} did not say which user sessions run as"))?;
        let user = text.trim();
        let ids: Option<Vec<u32>> = user.split(':').map(|n| n.parse().ok()).collect();
        match ids.as_deref() {
            Some([uid, gid]) if *uid != 0 && *gid != 0 => Ok(user.to_owned()),
            _ => bail!("the agent of {id} names an unusable session user {user:?}"),
        }
    }

    /// Creates and starts the sandbox or, if it exists, starts it and updates its
    /// authorized keys. Returns once its agent accepts connections (and the
    /// repository, if any, is cloned).
    pub async fn create(
        &self,
        id: &SandboxId,
        token_key: &str,
        authorized_keys: &[String],
        spec: &SandboxSpec,
    ) -> crate::Result<()> {
        warren_keys::TokenVerifier::from_base64(token_key).context("invalid token_key")?;
        super::validate_spec(spec)?;
        if self.marked(id, DELETING_MARKER) {
            return Err(crate::Error::failed(format_args!(
                "sandbox {id} is being deleted"
            )));
        }
        let _ = fs::remove_file(self.private_dir(id).join(STOPPED_MARKER));

        let name = container_name(id);
        match self.docker.inspect_container(&name, None).await {
            Ok(existing) => {
                let dir = self.sandbox_run_dir(id);
                super::write_authorized_keys(&dir, authorized_keys)?;
                let running = existing.state.and_then(|s| s.running).unwrap_or(false);
                if !running {
                    let _ = fs::remove_file(dir.join("agent.sock"));
                    self.mount_disk(&self.objects_slot(id)).await?;
                    // A sandbox from the pool is told who it is again.
                    self.reissue_identity(id)?;
                    self.docker
                        .start_container(&name, None)
                        .await
                        .with_context(|| format!("starting {name}"))?;
                    self.restore_hostname(id).await?;
                    self.wait_for_agent(id).await?;
                    tracing::info!(sandbox = %id, "sandbox started");
                }
                return Ok(());
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("asking the Docker engine")
                    .into());
            }
        }
        // Held while the sandbox's container is made cold (see `pool::burst`).
        let cold = match self.claim(id, token_key, authorized_keys, spec).await? {
            pool::Claim::Claimed => return Ok(()),
            pool::Claim::Cold(counted) => counted,
        };

        let dir = self.sandbox_run_dir(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        super::write_authorized_keys(&dir, authorized_keys)?;
        let image = spec.image.as_deref().unwrap_or(&self.defaults.image);
        // Whatever fails from here on leaves nothing behind: a half-made sandbox
        // would hold a network, a disk and the runner's capacity for nothing.
        let mut made = self
            .make(id, Serves::Sandbox { token_key }, image, spec, &name)
            .await;
        // Its container is up: the pool may start members again while the
        // repository (of any size) is cloned.
        drop(cold);
        self.refill_spares();
        if made.is_ok()
            && let Some(repo) = &spec.repo
        {
            made = self.clone_repo(id, repo).await.map_err(Into::into);
        }
        if let Err(e) = made {
            if let Err(cleanup) = self.remove_all(id).await {
                tracing::warn!(sandbox = %id, error = %format!("{cleanup:#}"), "cleaning up a failed create");
            }
            return Err(e);
        }
        tracing::info!(sandbox = %id, image, "sandbox created");
        Ok(())
    }

    /// Makes and starts a new sandbox's (or pool member's) disk, network,
    /// firewall rules and container, and waits for its agent: for a sandbox until it
    /// accepts connections (its create then clones its repository), for a pool member until
    /// it has set up its user and waits to be claimed. What does not depend on
    /// each other is made at once: the image lookup with the disk, then the
    /// network, its rules and the container.
    async fn make(
        &self,
        id: &SandboxId,
        serves: Serves<'_>,
        image: &str,
        spec: &SandboxSpec,
        name: &str,
    ) -> crate::Result<()> {
        let mut labels = self.labels(id);
        if matches!(serves, Serves::Pool) {
            labels.insert(LABEL_POOL.to_owned(), image.to_owned());
        }
        let mut container_labels = labels.clone();
        let idle = spec
            .idle_timeout_s
            .unwrap_or(self.defaults.idle_timeout.as_secs());
        container_labels.insert(LABEL_IDLE_TIMEOUT.to_owned(), idle.to_string());
        let disk_mb = self.disk_mb(spec);
        container_labels.insert(LABEL_DISK_MB.to_owned(), disk_mb.to_string());
        if matches!(serves, Serves::Sandbox { .. } | Serves::Fork { .. }) {
            self.take_spare(id, spec)?;
        }
        let slot = self.objects_slot(id);
        // A spare's network and default rules are made already; the disk is
        // made here, of the size the spec asks for.
        let spare = slot != *id;
        let disk = async {
            match serves {
                Serves::Fork { fork, .. } => self.make_fork_disk(&slot, fork, disk_mb).await?,
                _ => self.make_disk(&slot, disk_mb).await?,
            }
            Ok::<_, crate::Error>(())
        };
        let began = std::time::Instant::now();
        let looked_up = async {
            let info = match serves {
                Serves::Fork { fork, .. } => self.snapshot_image_info(fork).await?,
                _ => self.image_info(spec).await?,
            };
            let volumes =
                disk::image_volumes(info.config.as_ref().and_then(|c| c.volumes.as_ref()))?;
            Ok::<_, crate::Error>((info, volumes))
        };
        let ((image_info, volumes), ()) = match tokio::try_join!(looked_up, disk) {
            Ok(found) => found,
            Err(e) => {
                // A refused or missing image has not touched the spare: it goes
                // back, so bad requests cost no networks.
                if spare {
                    // Its disk is this sandbox's, made beside the lookup.
                    if let Err(e) = self.remove_disk(&slot).await {
                        tracing::warn!(slot = %slot, error = %format!("{e:#}"), "removing a disk");
                    }
                    self.return_spare(id, &slot);
                }
                return Err(e);
            }
        };
        let image_user = image_info
            .config
            .and_then(|c| c.user)
            .filter(|u| !u.is_empty() && u != "root" && u != "0" && !u.starts_with("0:"));
        let own_network = spec.network != NetworkPolicy::None;
        let network_mode = if own_network {
            network_name(&slot)
        } else {
            "none".to_owned()
        };
        let network = async {
            match (own_network, spare) {
                (false, _) => {}
                (true, false) => self.make_network(id, &labels, &spec.network).await?,
                // A spare has the default policy's rules; another replaces them.
                (true, true) if spec.network != NetworkPolicy::All => {
                    self.apply_rules(&slot, &spec.network).await?;
                }
                (true, true) => {}
            }
            Ok::<_, crate::Error>(())
        };
        let volumes = self.volume_mounts(&slot, &volumes, &labels)?;
        let config = self.container_config(NewContainer {
            id,
            serves,
            image,
            image_user: image_user.as_deref(),
            volumes,
            spec,
            network_mode,
            labels: container_labels,
        });
        let create = |config| {
            self.docker.create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_owned()),
                    ..Default::default()
                }),
                config,
            )
        };
        // The engine resolves the network at start, so the container is made while
        // the network is.
        let (networked, created) = tokio::join!(network, create(config.clone()));
        let prepared = began.elapsed();
        networked?;
        match created {
            Ok(_) => {}
            // An engine that looks the network up at create found it not made yet.
            Err(e) if own_network && is_not_found(&e) => {
                create(config)
                    .await
                    .with_context(|| format!("creating container {name}"))?;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("creating container {name}"))
                    .into());
            }
        }
        let created = began.elapsed();
        self.docker
            .start_container(name, None)
            .await
            .with_context(|| format!("starting {name}"))?;
        let started = began.elapsed();
        match serves {
            // (A sandbox's repository is cloned by its create, after this.)
            Serves::Sandbox { .. } => self.wait_for_agent(id).await?,
            Serves::Pool => self.wait_for_setup(id).await?,
            Serves::Fork { .. } => self.wait_for_agent(id).await?,
        }
        // Where a create's time goes, for whoever tunes it.
        tracing::debug!(
            sandbox = %id,
            prepared_ms = prepared.as_millis(),
            created_ms = created.as_millis(),
            started_ms = started.as_millis(),
            ready_ms = began.elapsed().as_millis(),
            "made"
        );
        Ok(())
    }

    /// Makes the bridge network of `slot` and its firewall rules for `policy`. The
    /// rules name the bridge, not its address, so they go in while Docker makes it.
    async fn make_network(
        &self,
        slot: &SandboxId,
        labels: &HashMap<String, String>,
        policy: &NetworkPolicy,
    ) -> Result<()> {
        let name = network_name(slot);
        tokio::try_join!(
            self.create_network(slot, &name, labels),
            self.apply_rules(slot, policy)
        )?;
        Ok(())
    }

    /// Installs (or replaces) the firewall rules of `slot`'s network for `policy`.
    async fn apply_rules(&self, slot: &SandboxId, policy: &NetworkPolicy) -> Result<()> {
        netpolicy::apply(slot, policy, &self.defaults.host_access)
            .await
            .context("firewall rules for the sandbox's network")
    }

    /// The memory and CPUs the engine's host has.
    pub async fn host_resources(&self) -> crate::service::HostResources {
        let local = crate::service::host_resources();
        match self.docker.info().await {
            Ok(info) => crate::service::HostResources {
                memory_mb: info
                    .mem_total
                    .and_then(|b| u64::try_from(b).ok())
                    .map_or(local.memory_mb, |b| b >> 20),
                millicpus: info
                    .ncpu
                    .and_then(|n| u32::try_from(n).ok())
                    .map_or(local.millicpus, |n| n.saturating_mul(1000)),
            },
            Err(e) => {
                tracing::warn!(error = %e, "docker info; using this host's resources");
                local
            }
        }
    }

    /// Waits until the agent accepts connections, or fails with the container's own
    /// words when it exits first.
    async fn wait_for_agent(&self, id: &SandboxId) -> Result<()> {
        self.wait_for(id, true).await
    }

    /// Waits until a pool member's agent has set up its user (it then waits for an
    /// identity, not listening).
    async fn wait_for_setup(&self, slot: &SandboxId) -> Result<()> {
        self.wait_for(slot, false).await
    }

    async fn wait_for(&self, id: &SandboxId, listening: bool) -> Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut checks = 0u32;
        loop {
            let ready = if listening {
                self.connect_agent(id).await.is_some()
            } else {
                self.session_user(id).is_ok()
            };
            if ready {
                return Ok(());
            }
            checks += 1;
            // Whether it died, every half second or so: asked every few checks, a
            // burst of creates would keep the engine busy answering.
            if checks.is_multiple_of(100) {
                let state = self
                    .docker
                    .inspect_container(&container_name(id), None)
                    .await
                    .ok()
                    .and_then(|c| c.state);
                if let Some(state) = state
                    && state.running == Some(false)
                {
                    let logs = self.log_tail(id).await;
                    bail!(
                        "the sandbox's agent exited at start (code {}): {logs}",
                        state.exit_code.unwrap_or(-1)
                    );
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the sandbox's agent did not start within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn log_tail(&self, id: &SandboxId) -> String {
        use bollard::query_parameters::LogsOptions;
        let mut logs = self.docker.logs(
            &container_name(id),
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: "5".into(),
                ..Default::default()
            }),
        );
        let mut out = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        out.trim().to_owned()
    }
}
