//! Starting a runner: the one way to bring up its pieces — the backend (Docker or
//! processes), adopting what a previous start left running, the idle reaper, the
//! capacity it reports, and the tunnel. `warren-runner run` and `warren up` both
//! call [`Runner::start`] then [`Runner::run`], so the two cannot drift apart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::backend::Backend;
use crate::backend::docker::{DockerBackend, DockerDefaults};
use crate::backend::process::ProcessBackend;
use crate::protocol::RunnerCapacity;
use crate::state::DataDir;

/// Where sandboxes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Agent processes on this host: NO ISOLATION (development and tests).
    Process,
    /// Hardened Docker containers (needs root and a Docker engine).
    Docker,
}

/// Operator overrides of what the host's resources give.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapacityLimits {
    /// The memory all sandboxes' limits may add up to (default: the host's memory).
    pub memory_mb: Option<u64>,
    /// At most this many sandboxes (default: as many as the memory allows).
    pub max_sandboxes: Option<u32>,
    /// The disk quotas of all sandboxes may add up to this, in MiB (Docker; default:
    /// what the run directory's file system has free for them).
    pub disk_mb: Option<u64>,
}

/// How to start a runner.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    pub backend: BackendKind,
    /// Agent sockets (process backend) or per-sandbox run directories (Docker);
    /// default: under the data directory.
    pub listen_dir: Option<PathBuf>,
    /// The agent binary; the Docker backend needs a static one.
    pub agent_bin: PathBuf,
    pub docker: DockerDefaults,
    /// How often the Docker backend's idle reaper looks.
    pub reap_interval: Duration,
    pub capacity: CapacityLimits,
    /// Agents end persistent sessions nobody attached for this long (`None`: they
    /// live until their shell exits or the sandbox stops).
    pub session_detached_ttl: Option<Duration>,
}

/// A started backend, ready to serve the gateway over the tunnel.
pub struct Runner {
    backend: Arc<Backend>,
    capacity: RunnerCapacity,
    reap_interval: Duration,
}

impl Runner {
    /// Connects the backend, adopts the sandboxes a previous start left running
    /// (Docker) and works out the capacity to report.
    pub async fn start(data: &DataDir, opts: RunnerOptions) -> Result<Runner> {
        let mut reserve = (0, 0);
        // Docker: (the disk all quotas may add up to, the default quota).
        let mut disk = None;
        let (backend, host) = match opts.backend {
            BackendKind::Process => {
                let listen_dir = opts
                    .listen_dir
                    .unwrap_or_else(|| data.root().join("sockets"));
                let backend = ProcessBackend::new(data.sandboxes(), listen_dir, opts.agent_bin)?
                    .with_session_detached_ttl(opts.session_detached_ttl);
                (Backend::Process(backend), host_resources())
            }
            BackendKind::Docker => {
                let (identity, _) = data.load_identity()?;
                let docker = DockerBackend::connect(
                    opts.listen_dir.unwrap_or_else(|| data.sandboxes()),
                    opts.agent_bin,
                    identity.runner_id.clone(),
                    opts.docker,
                )
                .await?
                .with_session_detached_ttl(opts.session_detached_ttl);
                let adopted = docker.adopt().await.context("adopting sandboxes")?;
                tracing::info!(adopted = adopted.len(), "docker backend ready");
                let host = docker.host_resources().await;
                reserve = docker.pool_reserve();
                let total = opts
                    .capacity
                    .disk_mb
                    .unwrap_or_else(|| docker.disk_capacity_mb());
                disk = Some((total, docker.default_disk_mb()));
                (Backend::Docker(docker), host)
            }
        };
        // The warm pool's members are counted against the capacity: the gateway
        // places sandboxes in what is left.
        let (pool_memory_mb, pool_members) = reserve;
        let capacity = RunnerCapacity {
            memory_mb: opts
                .capacity
                .memory_mb
                .unwrap_or(host.memory_mb)
                .saturating_sub(pool_memory_mb),
            millicpus: host.millicpus,
            max_sandboxes: opts
                .capacity
                .max_sandboxes
                .map(|n| n.saturating_sub(pool_members)),
            disk_mb: disk.map(|(total, _)| total),
            default_disk_mb: disk.map(|(_, default)| default),
        };
        tracing::info!(
            memory_mb = capacity.memory_mb,
            millicpus = capacity.millicpus,
            max_sandboxes = ?capacity.max_sandboxes,
            disk_mb = ?capacity.disk_mb,
            pool_members,
            "capacity"
        );
        Ok(Runner {
            backend: Arc::new(backend),
            capacity,
            reap_interval: opts.reap_interval.max(Duration::from_secs(1)),
        })
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    pub fn capacity(&self) -> RunnerCapacity {
        self.capacity
    }

    /// What a person should be told the sandboxes are.
    pub fn describe(&self) -> &'static str {
        match &*self.backend {
            Backend::Docker(_) => "Docker containers",
            Backend::Process(_) => "processes, NO ISOLATION",
        }
    }

    /// Runs the idle reaper and the warm pool's filler (Docker) and keeps the
    /// tunnel up until `shutdown`; then the pool's members are removed.
    pub async fn run(self, data: &DataDir, shutdown: watch::Receiver<bool>) -> Result<()> {
        let filler = matches!(&*self.backend, Backend::Docker(_)).then(|| {
            let backend = self.backend.clone();
            tokio::spawn(async move {
                if let Backend::Docker(docker) = &*backend {
                    docker.keep_pool_filled().await;
                }
            })
        });
        let reaper = matches!(&*self.backend, Backend::Docker(_)).then(|| {
            let backend = self.backend.clone();
            let every = self.reap_interval;
            tokio::spawn(async move {
                let Backend::Docker(docker) = &*backend else {
                    return;
                };
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = docker.reap_idle().await {
                        tracing::warn!(error = %format!("{e:#}"), "idle reaper");
                    }
                    if let Err(e) = docker.remove_unused_builds().await {
                        tracing::warn!(error = %format!("{e:#}"), "removing unused builds");
                    }
                }
            })
        });
        let disk_watcher = matches!(&*self.backend, Backend::Docker(_)).then(|| {
            let backend = self.backend.clone();
            tokio::spawn(async move {
                let Backend::Docker(docker) = &*backend else {
                    return;
                };
                loop {
                    tokio::time::sleep(crate::backend::docker::disk::WATCH_EVERY).await;
                    if let Err(e) = docker.enforce_disk_quotas().await {
                        tracing::warn!(error = %format!("{e:#}"), "disk quota watcher");
                    }
                }
            })
        });
        let result = crate::mesh::run(data, self.backend.clone(), self.capacity, shutdown).await;
        for task in [reaper, disk_watcher].into_iter().flatten() {
            task.abort();
        }
        // The tunnel's end drained the pool, which stops the filler (after it
        // removes a member it was making).
        if let Some(filler) = filler {
            let _ = tokio::time::timeout(Duration::from_secs(60), filler).await;
        }
        result
    }
}

/// Memory and CPUs of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    pub memory_mb: u64,
    pub millicpus: u32,
}

/// This host's memory (`/proc/meminfo`) and CPUs (the ones this process may use).
pub fn host_resources() -> HostResources {
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_kib(&text))
        .map_or(1024, |kib| kib / 1024);
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    HostResources {
        memory_mb,
        millicpus: u32::try_from(cpus).unwrap_or(u32::MAX / 1000) * 1000,
    }
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read() {
        let text = "MemTotal:       24585736 kB\nMemFree:        1000 kB\n";
        assert_eq!(mem_total_kib(text), Some(24_585_736));
        assert_eq!(mem_total_kib("nothing"), None);
        let host = host_resources();
        assert!(host.memory_mb > 0 && host.millicpus >= 1000);
    }
}
