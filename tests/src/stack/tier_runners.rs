//! The tier's runners ([`super::TierStack`]): `warren-runner run` processes on the
//! Docker backend (busybox containers, the static agent bind-mounted), as the
//! tests run them, or on the process backend (agents as plain processes), as the
//! scale benchmark runs fifty of them; and the binaries of the build they use.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;
use tempfile::TempDir;
use warren_keys::SandboxId;
use warren_store::RunnerId;

use super::docker::{docker_available, image, remove_runner_objects, static_agent, unmount_disks};
use crate::util::{kill_descendants, prerequisite, running_as_root};
use crate::{ChildGuard, Profile, build_bin};

/// The image the tier's Docker runners give sandboxes.
const IMAGE: &str = "warren-busybox:latest";

/// What the tier's runners run sandboxes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierBackend {
    /// Containers (needs a Docker engine and root).
    Docker,
    /// Agents as plain processes of the runner's.
    Process,
}

/// The tier's binaries, of one build.
pub(super) struct Binaries {
    pub gateway: PathBuf,
    pub runner: PathBuf,
    /// The agent: static (bind-mounted into containers) for Docker.
    pub agent: PathBuf,
    pub backend: TierBackend,
}

impl Binaries {
    /// Builds (or finds) what `backend` needs, the image included (no agent nor
    /// image for a tier without runners); `None` when Docker or root is missing
    /// outside CI.
    pub fn for_tier(
        backend: TierBackend,
        profile: Profile,
        runners: usize,
    ) -> Result<Option<Binaries>> {
        let agent = match backend {
            _ if runners == 0 => PathBuf::new(),
            TierBackend::Docker => {
                if !prerequisite(docker_available(), "a Docker engine")?
                    || !prerequisite(running_as_root(), "root (the docker backend needs it)")?
                {
                    return Ok(None);
                }
                let agent = static_agent()?;
                image("build-busybox")?;
                agent
            }
            TierBackend::Process => build_bin("warren-agent", "warren-agent", profile)?,
        };
        Ok(Some(Binaries {
            gateway: build_bin("warren-gateway", "warren-gateway", profile)?,
            runner: build_bin("warren-runner", "warren-runner", profile)?,
            agent,
            backend,
        }))
    }
}

/// One runner of the tier.
pub struct TierRunner {
    pub(super) child: ChildGuard,
    pub data: TempDir,
    pub(super) listen: TempDir,
    pub id: RunnerId,
    pub log: PathBuf,
    pub(super) backend: TierBackend,
}

impl TierRunner {
    /// The runner process's id (for its memory in /proc).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Kills the runner and what it started (a process backend's agents).
    pub(super) fn stop(&mut self) {
        if self.child.try_wait().is_none() {
            kill_descendants(self.child.pid());
        }
        self.child.kill(Duration::ZERO);
    }

    /// The Docker objects a killed runner leaves (containers, networks, disks).
    pub(super) fn remove_objects(&self, rt: &tokio::runtime::Runtime, made: &[SandboxId]) {
        if self.backend == TierBackend::Docker {
            remove_runner_objects(rt, &self.id, made);
            unmount_disks(self.listen.path());
        }
    }
}

/// `warren-runner run` (the n-th of the tier) on `data`, its stderr appended to
/// `log`.
pub(super) fn spawn_runner(
    bins: &Binaries,
    log_filter: String,
    data: &Path,
    listen: &Path,
    n: usize,
    log: &Path,
) -> Result<ChildGuard> {
    let (mut cmd, log) = super::in_process::runner_run(&bins.runner, data, listen, log)?;
    match bins.backend {
        TierBackend::Docker => {
            // Each runner its own network block, so two runners never race for a
            // subnet.
            let pool = format!("10.231.{}.0/20", n * 16);
            cmd.args(["--backend", "docker", "--agent-bin"])
                .arg(&bins.agent)
                .args(["--default-image", IMAGE, "--network-pool", &pool]);
        }
        TierBackend::Process => {
            cmd.args(["--backend", "process"])
                .env("WARREN_AGENT_BIN", &bins.agent);
        }
    }
    ChildGuard::spawn(
        cmd.env("RUST_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log),
    )
}
