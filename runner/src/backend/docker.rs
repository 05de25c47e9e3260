//! The Docker backend: a sandbox is a hardened container from any local image, with
//! the static agent bind-mounted in as its main process (PID 1, reaping children).
//!
//! Per sandbox `<id>`, everything carries the label [`LABEL_SANDBOX`]:
//! - container `warren-<id>`; its agent listens on `agent.sock` in a runner-owned
//!   directory (`<run-dir>/<id>`, mode 0700) bind-mounted at [`RUN_MOUNT`] — no TCP
//!   port is published;
//! - volume `warren-<id>-workspace` at `/workspace` (survives stop/start);
//! - network `warren-<id>`, a bridge of its own (so sandboxes cannot reach each
//!   other), or none at all.
//!
//! Docker's labels are the backend's state: after a restart the runner adopts what
//! runs and removes what belongs to deleted sandboxes (see [`DockerBackend::adopt`]).

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
    ContainerCreateBody, HostConfig, Ipam, IpamConfig, Mount, MountType, NetworkCreateRequest,
    ResourcesUlimits, VolumeCreateRequest,
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
use crate::protocol::{NetworkPolicy, RepoSpec, SandboxSpec, SandboxStatus};
use crate::state::write_file;

/// Every object Warren makes carries this label, valued with the sandbox id.
pub const LABEL_SANDBOX: &str = "org.warren.sandbox";
/// The runner that made it.
pub const LABEL_RUNNER: &str = "org.warren.runner";
/// The sandbox's idle timeout in seconds (0: never stopped for idleness).
pub const LABEL_IDLE_TIMEOUT: &str = "org.warren.idle-timeout-s";
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
    /// The images a create may name, as patterns for [`image_allowed`] (`image`
    /// is always allowed besides). Default: Warren's own, `warren-*`.
    pub allowed_images: Vec<String>,
}

impl Default for DockerDefaults {
    fn default() -> Self {
        DockerDefaults {
            image: "warren-base:latest".into(),
            memory_mb: 2048,
            millicpus: 2000,
            pids_limit: 1024,
            open_files: 8192,
            runtime: None,
            idle_timeout: Duration::from_secs(30 * 60),
            network_pool: (std::net::Ipv4Addr::new(10, 213, 0, 0), 16),
            host_access: netpolicy::HostAccess::default(),
            allowed_images: DEFAULT_ALLOWED_IMAGES.map(String::from).into(),
        }
    }
}

/// The images a runner allows when its operator names none: Warren's own
/// (`warren-base`, `warren-busybox`, and the test images made from them).
pub const DEFAULT_ALLOWED_IMAGES: [&str; 1] = ["warren-*"];

/// Whether the image reference `image` matches one of `patterns`. A pattern is a
/// reference, matched exactly, or a prefix followed by `*`. A reference naming no
/// tag (nor digest) means `:latest`, in patterns as in `image`. References are
/// compared as written: `python:3.12` is not `docker.io/library/python:3.12`.
pub fn image_allowed(image: &str, patterns: &[String]) -> bool {
    let image = with_tag(image);
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => image.starts_with(prefix),
        None => image == with_tag(p),
    })
}

/// `reference` with `:latest` added when it names neither tag nor digest (a `:`
/// before the last `/` is a registry's port, not a tag).
fn with_tag(reference: &str) -> std::borrow::Cow<'_, str> {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last.contains(':') {
        reference.into()
    } else {
        format!("{reference}:latest").into()
    }
}

/// What a new container is made of.
struct NewContainer<'a> {
    id: &'a SandboxId,
    token_key: &'a str,
    image: &'a str,
    image_user: Option<&'a str>,
    spec: &'a SandboxSpec,
    network_mode: String,
    labels: HashMap<String, String>,
}

pub struct DockerBackend {
    docker: Docker,
    /// Held while a network's subnet is picked and the network made.
    subnet_lock: tokio::sync::Mutex<()>,
    run_dir: PathBuf,
    agent_bin: PathBuf,
    runner: String,
    defaults: DockerDefaults,
}

/// Capabilities the agent keeps: switching to the sandbox user (SETUID, SETGID),
/// giving it the workspace and the agent-forwarding socket (CHOWN), and signalling
/// its sessions (KILL). Sessions run as that user and so have none (CapEff 0).
const AGENT_CAPS: [&str; 4] = ["CHOWN", "SETUID", "SETGID", "KILL"];

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
        let docker = Docker::connect_with_local_defaults()
            .context("connecting to the Docker engine")?
            .negotiate_version()
            .await
            .context("the Docker engine does not answer")?;
        docker
            .ping()
            .await
            .context("the Docker engine does not answer")?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        Ok(DockerBackend {
            docker,
            subnet_lock: tokio::sync::Mutex::new(()),
            run_dir,
            agent_bin,
            runner,
            defaults,
        })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The sandbox's run directory, mounted into its container: everything in it
    /// is the container's to write, so the runner reads it only through
    /// [`hostile`].
    pub(crate) fn sandbox_run_dir(&self, id: &SandboxId) -> PathBuf {
        self.run_dir.join(id.as_str())
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
    /// container put at the socket's name ([`hostile::connect_socket`]).
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
    ) -> Result<()> {
        warren_keys::TokenVerifier::from_base64(token_key).context("invalid token_key")?;
        super::validate_spec(spec)?;
        let dir = self.sandbox_run_dir(id);
        if self.marked(id, DELETING_MARKER) {
            bail!("sandbox {id} is being deleted");
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        super::write_authorized_keys(&dir, authorized_keys)?;
        let _ = fs::remove_file(self.private_dir(id).join(STOPPED_MARKER));

        let name = container_name(id);
        match self.docker.inspect_container(&name, None).await {
            Ok(existing) => {
                let running = existing.state.and_then(|s| s.running).unwrap_or(false);
                if !running {
                    let _ = fs::remove_file(dir.join("agent.sock"));
                    self.docker
                        .start_container(&name, None)
                        .await
                        .with_context(|| format!("starting {name}"))?;
                    self.wait_for_agent(id).await?;
                    tracing::info!(sandbox = %id, "sandbox started");
                }
                return Ok(());
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).context("asking the Docker engine"),
        }

        let image = spec.image.as_deref().unwrap_or(&self.defaults.image);
        // Whatever fails from here on leaves nothing behind: a half-made sandbox
        // would hold a network, a volume and the runner's capacity for nothing.
        let made = async {
            let image_info = self.image_info(spec).await?;
            self.make(id, token_key, image, image_info, spec, &name)
                .await
        }
        .await;
        if let Err(e) = made {
            if let Err(cleanup) = self.remove_all(id).await {
                tracing::warn!(sandbox = %id, error = %format!("{cleanup:#}"), "cleaning up a failed create");
            }
            return Err(e);
        }
        tracing::info!(sandbox = %id, image, "sandbox created");
        Ok(())
    }

    /// The image `spec` names (or the default one), which must be allowed on this
    /// runner (`allowed_images`) and be on this engine.
    pub(crate) async fn image_info(
        &self,
        spec: &SandboxSpec,
    ) -> Result<bollard::models::ImageInspect> {
        let image = spec.image.as_deref().unwrap_or(&self.defaults.image);
        let is_default = image == self.defaults.image;
        let allowed = |r: &str| image_allowed(r, &self.defaults.allowed_images);
        // A refused image and a missing one get the same code and message (the
        // gateway makes `image_not_found` a 422): the allow-list is checked before
        // the engine is asked, so whether a refused image exists is never looked
        // up, and the one refusal that comes after the lookup (below) must not
        // tell "exists but refused" from "missing". A code of its own would add
        // nothing a tenant can act on that the message does not already say.
        let unavailable = || {
            let mut shown = vec![self.defaults.image.as_str()];
            shown.extend(self.defaults.allowed_images.iter().map(String::as_str));
            crate::git::refuse(
                "image_not_found",
                format!(
                    "image {image:?} is not on this runner (allowed here: {}); its operator \
                     builds or loads images (images/build-base, docker load) and allows \
                     others with --allow-image",
                    shown.join(", ")
                ),
            )
        };
        if !is_default && !allowed(image) {
            return Err(unavailable());
        }
        let info = self.docker.inspect_image(image).await.map_err(|e| {
            if is_not_found(&e) {
                unavailable()
            } else {
                anyhow::Error::new(e).context("inspecting the image")
            }
        })?;
        // The engine also finds images by (a prefix of) their id: `deadbeef` may
        // match a pattern `dead*` and be some other image. What was found must
        // itself carry an allowed name.
        let mut names = info.repo_tags.iter().chain(&info.repo_digests).flatten();
        if !is_default && !names.any(|n| allowed(n)) {
            return Err(unavailable());
        }
        Ok(info)
    }

    /// Makes and starts a new sandbox's volume, network, firewall rules and
    /// container, waits for its agent and clones its repository.
    async fn make(
        &self,
        id: &SandboxId,
        token_key: &str,
        image: &str,
        image_info: bollard::models::ImageInspect,
        spec: &SandboxSpec,
        name: &str,
    ) -> Result<()> {
        let image_user = image_info
            .config
            .and_then(|c| c.user)
            .filter(|u| !u.is_empty() && u != "root" && u != "0" && !u.starts_with("0:"));

        let labels = self.labels(id);
        let mut container_labels = labels.clone();
        let idle = spec
            .idle_timeout_s
            .unwrap_or(self.defaults.idle_timeout.as_secs());
        container_labels.insert(LABEL_IDLE_TIMEOUT.to_owned(), idle.to_string());
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(volume_name(id)),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .context("creating the workspace volume")?;
        let network_mode = match &spec.network {
            NetworkPolicy::None => "none".to_owned(),
            NetworkPolicy::All | NetworkPolicy::Allow { .. } => {
                let net = network_name(id);
                self.create_network(id, &net, &labels).await?;
                netpolicy::apply(id, &spec.network, &self.defaults.host_access)
                    .await
                    .context("firewall rules for the sandbox's network")?;
                net
            }
        };

        let config = self.container_config(NewContainer {
            id,
            token_key,
            image,
            image_user: image_user.as_deref(),
            spec,
            network_mode,
            labels: container_labels,
        });
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_owned()),
                    ..Default::default()
                }),
                config,
            )
            .await
            .with_context(|| format!("creating container {name}"))?;
        self.docker
            .start_container(name, None)
            .await
            .with_context(|| format!("starting {name}"))?;
        self.wait_for_agent(id).await?;
        if let Some(repo) = &spec.repo {
            self.clone_repo(id, repo).await?;
        }
        Ok(())
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

    /// Makes the sandbox's bridge on the first free /28 of the network pool.
    async fn create_network(
        &self,
        id: &SandboxId,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        let _held = self.subnet_lock.lock().await;
        // Another runner on this engine may take the same subnet at the same moment:
        // Docker refuses the overlap, and we look again.
        let mut attempts = 0;
        loop {
            let subnet = self.free_subnet().await?;
            let request = NetworkCreateRequest {
                name: name.to_owned(),
                driver: Some("bridge".into()),
                labels: Some(labels.clone()),
                ipam: Some(Ipam {
                    driver: Some("default".into()),
                    config: Some(vec![IpamConfig {
                        subnet: Some(subnet),
                        ..Default::default()
                    }]),
                    options: None,
                }),
                options: Some(HashMap::from([
                    (
                        "com.docker.network.bridge.enable_icc".to_owned(),
                        "false".to_owned(),
                    ),
                    (
                        "com.docker.network.bridge.name".to_owned(),
                        netpolicy::bridge_name(id),
                    ),
                ])),
                ..Default::default()
            };
            match self.docker.create_network(request).await {
                Ok(_) => return Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError { message, .. })
                    if message.contains("overlaps") && attempts < 20 =>
                {
                    attempts += 1;
                    let pause = 10 + u64::from(std::process::id() % 40);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(e).context("creating the sandbox's network"),
            }
        }
    }

    /// The first /28 of the network pool that no Docker network uses.
    async fn free_subnet(&self) -> Result<String> {
        let taken: std::collections::HashSet<String> = self
            .docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .context("listing networks")?
            .into_iter()
            .flat_map(|n| n.ipam.and_then(|i| i.config).unwrap_or_default())
            .filter_map(|c| c.subnet)
            .collect();
        let (base, bits) = self.defaults.network_pool;
        let count = 1u32 << (28 - u32::from(bits.min(28)));
        let base = u32::from(base) & !(u32::MAX.checked_shr(u32::from(bits)).unwrap_or(0));
        (0..count)
            .map(|i| format!("{}/28", std::net::Ipv4Addr::from(base + i * 16)))
            .find(|s| !taken.contains(s))
            .context("the sandbox network pool is exhausted")
    }

    fn labels(&self, id: &SandboxId) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_SANDBOX.to_owned(), id.as_str().to_owned()),
            (LABEL_RUNNER.to_owned(), self.runner.clone()),
        ])
    }

    fn container_config(&self, new: NewContainer<'_>) -> ContainerCreateBody {
        let NewContainer {
            id,
            token_key,
            image,
            image_user,
            spec,
            network_mode,
            labels,
        } = new;
        let d = &self.defaults;
        let memory = i64::try_from(spec.memory_mb.unwrap_or(d.memory_mb))
            .unwrap_or(i64::MAX / (1 << 20))
            * (1 << 20);
        let nano_cpus = i64::from(spec.millicpus.unwrap_or(d.millicpus)) * 1_000_000;
        let pids = i64::from(spec.pids_limit.unwrap_or(d.pids_limit));
        let files = i64::from(d.open_files);
        let mut env = vec![
            format!("WARREN_SANDBOX_ID={}", id.as_str()),
            format!("WARREN_AGENT_LISTEN=unix:{RUN_MOUNT}/agent.sock"),
            format!("WARREN_AGENT_HOST_KEY={RUN_MOUNT}/host_key"),
            format!("WARREN_AUTHORIZED_KEYS={RUN_MOUNT}/authorized_keys"),
            format!("WARREN_TOKEN_KEY={token_key}"),
            format!("WARREN_USER_FILE={RUN_MOUNT}/user"),
            format!("WARREN_ACTIVITY_FILE={RUN_MOUNT}/activity"),
            format!("WARREN_SANDBOX_USER={}", image_user.unwrap_or("auto")),
            format!("WARREN_WORKDIR={WORKSPACE}"),
            "WARREN_OWN_WORKDIR=true".to_owned(),
            // Reached only through the runner's encrypted tunnel.
            "WARREN_AGENT_ALLOW_UNENCRYPTED=true".to_owned(),
        ];
        if !spec.env.is_empty() {
            let names: Vec<&str> = spec.env.keys().map(String::as_str).collect();
            env.push(format!("WARREN_PASS_ENV={}", names.join(",")));
            env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        let agent = self.agent_bin.display();
        let run = self.sandbox_run_dir(id);
        let host_config = HostConfig {
            binds: Some(vec![
                format!("{agent}:{AGENT_MOUNT}:ro"),
                format!("{agent}:{ASKPASS_MOUNT}:ro"),
                format!("{}:{RUN_MOUNT}:rw", run.display()),
            ]),
            mounts: Some(vec![Mount {
                target: Some(WORKSPACE.into()),
                source: Some(volume_name(id)),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            }]),
            network_mode: Some(network_mode),
            privileged: Some(false),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(AGENT_CAPS.iter().map(|c| (*c).to_owned()).collect()),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some(nano_cpus),
            pids_limit: Some(pids),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(files),
                hard: Some(files),
            }]),
            readonly_rootfs: Some(spec.read_only_root),
            tmpfs: spec.read_only_root.then(|| {
                HashMap::from([("/tmp".to_owned(), "rw,nosuid,nodev,size=512m".to_owned())])
            }),
            runtime: self.defaults.runtime.clone(),
            init: Some(false),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(image.to_owned()),
            hostname: Some(id.as_str().to_owned()),
            user: Some("0:0".into()),
            entrypoint: Some(vec![AGENT_MOUNT.into(), "serve".into()]),
            cmd: Some(vec![]),
            env: Some(env),
            working_dir: Some("/".into()),
            labels: Some(labels),
            stop_signal: Some("SIGTERM".into()),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Waits until the agent accepts connections, or fails with the container's own
    /// words when it exits first.
    async fn wait_for_agent(&self, id: &SandboxId) -> Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut checks = 0u32;
        loop {
            if self.connect_agent(id).await.is_some() {
                return Ok(());
            }
            checks += 1;
            if checks.is_multiple_of(10) {
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
                bail!("the sandbox's agent did not start listening within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
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

    /// Clones `repo` into the workspace as the sandbox user and checks out its
    /// branch. A token goes to git only through the exec's environment and the
    /// askpass helper: never into the volume, the container's config or logs.
    async fn clone_repo(&self, id: &SandboxId, repo: &RepoSpec) -> Result<()> {
        let user = self.session_user(id)?;
        let mut clone = vec!["git", "clone", "--quiet"];
        if let Some(base) = &repo.base {
            clone.extend(["--branch", base.as_str()]);
        }
        clone.extend(["--", repo.url.as_str(), WORKSPACE]);
        self.exec_as(id, &user, &clone, repo.token.as_deref())
            .await
            .with_context(|| format!("cloning {}", redact_url(&repo.url)))?;
        self.exec_as(
            id,
            &user,
            &[
                "git",
                "-C",
                WORKSPACE,
                "checkout",
                "--quiet",
                "-b",
                &repo.branch,
            ],
            None,
        )
        .await
        .with_context(|| format!("checking out branch {}", repo.branch))?;
        Ok(())
    }

    /// Runs `argv` in the sandbox as `user` and fails with its stderr unless it
    /// exits 0.
    pub async fn exec_as(
        &self,
        id: &SandboxId,
        user: &str,
        argv: &[&str],
        git_password: Option<&str>,
    ) -> Result<String> {
        let out = self.exec_output(id, user, argv, git_password, "/").await?;
        let code = out.code;
        if code != 0 {
            let mut message = out.stderr.trim().to_owned();
            if let Some(password) = git_password {
                message = message.replace(password, "<redacted>");
            }
            if message.contains("executable file not found") || code == 126 || code == 127 {
                bail!("{} is not in the image (exit {code}): {message}", argv[0]);
            }
            bail!("exit {code}: {message}");
        }
        Ok(out.stdout)
    }

    /// Runs `argv` in the sandbox as `user` in `working_dir` and returns its exit
    /// code and output, whatever the code (the environment as [`Self::exec_as`]'s).
    pub async fn exec_output(
        &self,
        id: &SandboxId,
        user: &str,
        argv: &[&str],
        git_password: Option<&str>,
        working_dir: &str,
    ) -> Result<git::GitOutput> {
        let mut env = vec![
            format!("GIT_ASKPASS={ASKPASS_MOUNT}"),
            "GIT_TERMINAL_PROMPT=0".to_owned(),
            "HOME=/tmp".to_owned(),
            "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
        ];
        if let Some(password) = git_password {
            env.push(format!("WARREN_GIT_PASSWORD={password}"));
        }
        let exec = self
            .docker
            .create_exec(
                &container_name(id),
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    user: Some(user.to_owned()),
                    env: Some(env),
                    cmd: Some(argv.iter().map(|s| (*s).to_owned()).collect()),
                    working_dir: Some(working_dir.to_owned()),
                    ..Default::default()
                },
            )
            .await
            .context("docker exec")?;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, None).await?
        {
            while let Some(chunk) = output.next().await {
                match chunk? {
                    LogOutput::StdOut { message } => stdout.extend_from_slice(&message),
                    LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                    _ => {}
                }
            }
        }
        let code = self
            .docker
            .inspect_exec(&exec.id)
            .await?
            .exit_code
            .unwrap_or(-1);
        Ok(git::GitOutput {
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Commits the workspace's changes as the sandbox user and pushes them (see
    /// [`git::commit_and_push`]); the sandbox must be running.
    pub async fn commit_and_push(
        &self,
        id: &SandboxId,
        req: &git::CommitPush<'_>,
    ) -> Result<git::Pushed> {
        let user = self
            .session_user(id)
            .with_context(|| format!("unknown or never started sandbox {id}"))?;
        let exec = ContainerGit {
            backend: self,
            id,
            user,
        };
        git::commit_and_push(&exec, req).await
    }

    /// Stops the container gracefully (SIGTERM, SIGKILL after 10 s), keeping its
    /// workspace. Stopping a stopped sandbox is fine; an unknown one is an error.
    pub async fn stop(&self, id: &SandboxId) -> Result<()> {
        self.stop_for(id, "").await
    }

    /// Stops the sandbox, remembering `reason` (empty: a user's request) for
    /// [`list`](Self::list).
    async fn stop_for(&self, id: &SandboxId, reason: &str) -> Result<()> {
        if self.sandbox_run_dir(id).is_dir() {
            self.mark(id, STOPPED_MARKER, reason.as_bytes())?;
        }
        match self
            .docker
            .stop_container(
                &container_name(id),
                Some(StopContainerOptions {
                    t: Some(STOP_GRACE_SECS),
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => bail!("unknown sandbox {id}"),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => return Err(e).context("stopping the container"),
        }
        let _ = fs::remove_file(self.sandbox_run_dir(id).join(AGENT_SOCKET));
        tracing::info!(sandbox = %id, "sandbox stopped");
        Ok(())
    }

    /// Removes the container, its workspace volume, network and run directory.
    pub async fn delete(&self, id: &SandboxId) -> Result<()> {
        let dir = self.sandbox_run_dir(id);
        let known = dir.is_dir()
            || self
                .docker
                .inspect_container(&container_name(id), None)
                .await
                .is_ok();
        if !known {
            bail!("unknown sandbox {id}");
        }
        // The marker makes a delete that a crash interrupts finish at the next start.
        self.mark(id, DELETING_MARKER, b"")?;
        self.remove_all(id).await?;
        tracing::info!(sandbox = %id, "sandbox deleted");
        Ok(())
    }

    async fn remove_all(&self, id: &SandboxId) -> Result<()> {
        match self
            .docker
            .remove_container(
                &container_name(id),
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).context("removing the container"),
        }
        match self
            .docker
            .remove_volume(&volume_name(id), Some(RemoveVolumeOptions { force: true }))
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).context("removing the workspace volume"),
        }
        match self.docker.remove_network(&network_name(id)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).context("removing the network"),
        }
        netpolicy::remove(id).await;
        // remove_dir_all does not follow links, whatever the container left there.
        for dir in [self.sandbox_run_dir(id), self.private_dir(id)] {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
            }
        }
        Ok(())
    }

    /// Docker's filter for the objects this runner made.
    fn runner_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_RUNNER}={}", self.runner)],
        )])
    }

    /// This runner's containers: all of them, or only the running ones.
    async fn containers(&self, all: bool) -> Result<Vec<bollard::models::ContainerSummary>> {
        self.docker
            .list_containers(Some(ListContainersOptions {
                all,
                filters: Some(self.runner_filter()),
                ..Default::default()
            }))
            .await
            .context("listing containers")
    }

    /// Every sandbox container of this runner, running or not. One that stopped on
    /// its own says why: `oom` (the kernel killed its agent) or `exited`.
    pub async fn list(&self) -> Result<Vec<SandboxStatus>> {
        let containers = self.containers(true).await?;
        let mut out = Vec::new();
        for c in containers {
            let Some(id) = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SANDBOX))
                .and_then(|v| SandboxId::parse(v).ok())
            else {
                continue;
            };
            if self.marked(&id, DELETING_MARKER) {
                continue;
            }
            let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
            let stopped_reason = if running {
                None
            } else {
                self.stopped_reason(&id).await
            };
            out.push(SandboxStatus {
                sandbox: id,
                running,
                stopped_reason,
            });
        }
        out.sort_by(|a, b| a.sandbox.cmp(&b.sandbox));
        Ok(out)
    }

    async fn stopped_reason(&self, id: &SandboxId) -> Option<String> {
        let state = self
            .docker
            .inspect_container(&container_name(id), None)
            .await
            .ok()?
            .state?;
        if state.oom_killed == Some(true) {
            return Some("oom".into());
        }
        if let Ok(reason) = fs::read_to_string(self.private_dir(id).join(STOPPED_MARKER)) {
            return (!reason.is_empty()).then_some(reason);
        }
        (state.started_at.is_some()).then(|| "exited".into())
    }

    /// The environment given at create: the entries of the container's config that
    /// `WARREN_PASS_ENV` names (Docker keeps the config across stops and runner
    /// restarts).
    pub async fn env(&self, id: &SandboxId) -> Result<BTreeMap<String, String>> {
        let info = match self
            .docker
            .inspect_container(&container_name(id), None)
            .await
        {
            Ok(info) => info,
            Err(e) if is_not_found(&e) => bail!("unknown sandbox {id}"),
            Err(e) => return Err(e).context("asking the Docker engine"),
        };
        let config = info.config.unwrap_or_default();
        let ours = config
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_RUNNER))
            .is_some_and(|r| *r == self.runner);
        if !ours {
            bail!("unknown sandbox {id}");
        }
        Ok(passed_env(&config.env.unwrap_or_default()))
    }

    /// Counts as activity (the API's keepalive).
    pub async fn keepalive(&self, id: &SandboxId) -> Result<()> {
        let dir = self.sandbox_run_dir(id);
        if !dir.is_dir() {
            bail!("unknown sandbox {id}");
        }
        write_file(&dir.join("activity"), b"")
    }

    /// Stops every running sandbox that has been idle for longer than its idle
    /// timeout: no session data, nothing running (the agent's activity file) and no
    /// keepalive. Returns the sandboxes it stopped.
    pub async fn reap_idle(&self) -> Result<Vec<SandboxId>> {
        let running = self.containers(false).await?;
        let mut stopped = Vec::new();
        for c in running {
            let labels = c.labels.unwrap_or_default();
            let Some(id) = labels
                .get(LABEL_SANDBOX)
                .and_then(|v| SandboxId::parse(v).ok())
            else {
                continue;
            };
            let timeout = labels
                .get(LABEL_IDLE_TIMEOUT)
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(self.defaults.idle_timeout, Duration::from_secs);
            if timeout.is_zero() {
                continue;
            }
            // No activity file yet: the agent is starting; its first tick writes one.
            let Ok(idle_for) = hostile::modified(&self.sandbox_run_dir(&id), "activity")
                .map(|t| t.elapsed().unwrap_or_default())
            else {
                continue;
            };
            if idle_for > timeout {
                tracing::info!(sandbox = %id, ?idle_for, "stopping an idle sandbox");
                self.stop_for(&id, "idle").await?;
                stopped.push(id);
            }
        }
        Ok(stopped)
    }

    /// At runner start: removes what belongs to deleted sandboxes (a delete the
    /// runner did not finish, or objects whose run directory is gone) and reports
    /// the running sandboxes it adopts.
    pub async fn adopt(&self) -> Result<Vec<SandboxId>> {
        let filter = self.runner_filter();
        let mut ids = std::collections::BTreeSet::new();
        let containers = self.containers(true).await?;
        ids.extend(
            containers
                .iter()
                .filter_map(|c| c.labels.as_ref()?.get(LABEL_SANDBOX).cloned()),
        );
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filter.clone()),
            }))
            .await?;
        ids.extend(
            volumes
                .volumes
                .unwrap_or_default()
                .iter()
                .filter_map(|v| v.labels.get(LABEL_SANDBOX).cloned()),
        );
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filter),
            }))
            .await?;
        ids.extend(
            networks
                .iter()
                .filter_map(|n| n.labels.as_ref()?.get(LABEL_SANDBOX).cloned()),
        );
        let mut adopted = Vec::new();
        for id in ids.iter().filter_map(|i| SandboxId::parse(i).ok()) {
            let dir = self.sandbox_run_dir(&id);
            if !dir.is_dir() || self.marked(&id, DELETING_MARKER) {
                tracing::info!(sandbox = %id, "removing the remains of a deleted sandbox");
                if let Err(e) = self.remove_all(&id).await {
                    tracing::warn!(sandbox = %id, error = %format!("{e:#}"), "could not remove");
                }
                continue;
            }
            let running = containers.iter().any(|c| {
                c.labels.as_ref().and_then(|l| l.get(LABEL_SANDBOX)) == Some(&id.to_string())
                    && c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            });
            if running {
                tracing::info!(sandbox = %id, "adopted a running sandbox");
                adopted.push(id);
            }
        }
        Ok(adopted)
    }
}

/// The `NAME=value` entries of a container's environment that its
/// `WARREN_PASS_ENV` list names: the create request's env, without Warren's own.
fn passed_env(entries: &[String]) -> BTreeMap<String, String> {
    let pairs = entries.iter().filter_map(|e| e.split_once('='));
    let Some((_, names)) = pairs.clone().find(|(k, _)| *k == "WARREN_PASS_ENV") else {
        return BTreeMap::new();
    };
    let names: Vec<&str> = names.split(',').filter(|n| !n.is_empty()).collect();
    pairs
        .filter(|(k, _)| names.contains(k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The agent runs in images without a libc: it must be a static executable (an ELF
/// file without a PT_INTERP program header).
pub fn ensure_static(agent: &std::path::Path) -> Result<()> {
    let elf = fs::read(agent).with_context(|| format!("reading {}", agent.display()))?;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        bail!("{} is not a 64-bit ELF executable", agent.display());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{} is truncated", agent.display());
    };
    const PT_INTERP: u32 = 3;
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff).unwrap_or(usize::MAX) + i * usize::from(phentsize);
        let p_type = elf
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if p_type == Some(PT_INTERP) {
            bail!(
                "{} is dynamically linked; the docker backend needs the static agent \
                 (scripts/build-static-agent prints its path)",
                agent.display()
            );
        }
    }
    Ok(())
}

/// Git in a sandbox's container, as its user, in `/workspace`.
struct ContainerGit<'a> {
    backend: &'a DockerBackend,
    id: &'a SandboxId,
    user: String,
}

impl git::GitExec for ContainerGit<'_> {
    async fn git(&self, args: &[&str], password: Option<&str>) -> Result<git::GitOutput> {
        let mut argv = vec!["git"];
        argv.extend_from_slice(args);
        self.backend
            .exec_output(self.id, &self.user, &argv, password, WORKSPACE)
            .await
    }
}

/// A URL with any `user:password@` removed, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}<redacted>@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn images_are_allowed_by_exact_reference_or_prefix() {
        let patterns = |ps: &[&str]| ps.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        let default = DockerDefaults::default().allowed_images;
        for ok in [
            "warren-base:latest",
            "warren-base",
            "warren-busybox:latest",
            "warren-test-toor:latest",
        ] {
            assert!(image_allowed(ok, &default), "{ok}");
        }
        for refused in [
            "acme-private:1",
            "acme-private",
            "python:3.12",
            "docker.io/library/warren-base:latest",
            "ghcr.io/acme/warren-base:latest",
            "",
        ] {
            assert!(!image_allowed(refused, &default), "{refused}");
        }

        let p = patterns(&[
            "python:3.12",
            "debian",
            "ghcr.io/acme/*",
            "localhost:5000/x",
        ]);
        assert!(image_allowed("python:3.12", &p));
        assert!(!image_allowed("python:3.13", &p));
        assert!(!image_allowed("python", &p));
        // No tag means `:latest`, in the pattern as in the reference.
        assert!(image_allowed("debian", &p));
        assert!(image_allowed("debian:latest", &p));
        assert!(!image_allowed("debian:12", &p));
        assert!(image_allowed("ghcr.io/acme/tool:1", &p));
        assert!(image_allowed("ghcr.io/acme/team/tool", &p));
        assert!(!image_allowed("ghcr.io/acmeco/tool:1", &p));
        assert!(!image_allowed("ghcr.io/acme", &p));
        // A registry's port is not a tag.
        assert!(image_allowed("localhost:5000/x", &p));
        assert!(image_allowed("localhost:5000/x:latest", &p));
        assert!(!image_allowed("localhost:5000/x:2", &p));
        // A digest is no tag either, and gets no `:latest`.
        assert!(!image_allowed("debian@sha256:0123", &p));
        assert!(image_allowed(
            "debian@sha256:0123",
            &patterns(&["debian@*"])
        ));

        // A tagged prefix pattern, and `*` alone: everything.
        let p = patterns(&["warren-base:*"]);
        assert!(image_allowed("warren-base", &p));
        assert!(image_allowed("warren-base:dev", &p));
        assert!(!image_allowed("warren-based:dev", &p));
        assert!(image_allowed("anything/at:all", &patterns(&["*"])));
        assert!(!image_allowed("warren-base", &[]));
    }

    #[test]
    fn passed_env_is_the_named_entries_only() {
        let entries: Vec<String> = [
            "WARREN_TOKEN_KEY=k",
            "WARREN_PASS_ENV=GITHUB_TOKEN,EMPTY,URL",
            "GITHUB_TOKEN=ghp_x",
            "EMPTY=",
            "URL=a=b",
            "PATH=/bin",
        ]
        .map(String::from)
        .into();
        let env = passed_env(&entries);
        assert_eq!(
            env.into_iter().collect::<Vec<_>>(),
            [("EMPTY", ""), ("GITHUB_TOKEN", "ghp_x"), ("URL", "a=b")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(passed_env(&["A=b".to_owned()]).is_empty());
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("https://x:secret@github.com/a/b"),
            "https://<redacted>@github.com/a/b"
        );
        assert_eq!(
            redact_url("https://github.com/a/b"),
            "https://github.com/a/b"
        );
    }
}
