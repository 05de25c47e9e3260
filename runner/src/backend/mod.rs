//! Where sandboxes run: [`process::ProcessBackend`] (agent processes on the host, no
//! isolation; for development and tests) or [`docker::DockerBackend`] (hardened
//! containers from any image).

pub mod docker;
mod hostile;
pub mod process;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use warren_keys::SandboxId;

use crate::Result;
use crate::protocol::{SandboxSpec, SandboxStatus, Secret};

/// One of the backends; the tunnel serves whichever the runner was started with.
// One per runner, behind an `Arc`: boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Process(process::ProcessBackend),
    Docker(docker::DockerBackend),
}

impl Backend {
    pub async fn agent_socket(&self, id: &SandboxId) -> Option<PathBuf> {
        match self {
            Backend::Process(b) => b.agent_socket(id).await,
            Backend::Docker(b) => b.agent_socket(id).await,
        }
    }

    /// A connection to the sandbox's agent, if it runs.
    pub async fn connect_agent(&self, id: &SandboxId) -> Option<tokio::net::UnixStream> {
        match self {
            Backend::Process(b) => {
                let path = b.agent_socket(id).await?;
                tokio::net::UnixStream::connect(path).await.ok()
            }
            Backend::Docker(b) => b.connect_agent(id).await,
        }
    }

    pub async fn create(
        &self,
        id: &SandboxId,
        token_key: &str,
        authorized_keys: &[String],
        spec: &SandboxSpec,
    ) -> Result<()> {
        match self {
            Backend::Process(b) => {
                no_disk_quota(spec)?;
                b.create(id, token_key, authorized_keys, spec).await
            }
            Backend::Docker(b) => b.create(id, token_key, authorized_keys, spec).await,
        }
    }

    /// Whether a create from `spec` could work here (the spec's fields, and on
    /// Docker its image), without making anything. A refusal has code
    /// `invalid_spec` or `image_not_found`.
    pub async fn check(&self, spec: &SandboxSpec) -> Result<()> {
        validate_spec(spec)?;
        match self {
            Backend::Process(_) => no_disk_quota(spec),
            Backend::Docker(b) => b.image_info(spec).await.map(|_| ()),
        }
    }

    pub async fn stop(&self, id: &SandboxId) -> Result<()> {
        Ok(match self {
            Backend::Process(b) => b.stop(id).await,
            Backend::Docker(b) => b.stop(id).await,
        }?)
    }

    pub async fn delete(&self, id: &SandboxId) -> Result<()> {
        Ok(match self {
            Backend::Process(b) => b.delete(id).await,
            Backend::Docker(b) => b.delete(id).await,
        }?)
    }

    pub async fn list(&self) -> Result<Vec<SandboxStatus>> {
        Ok(match self {
            Backend::Process(b) => b.list().await,
            Backend::Docker(b) => b.list().await,
        }?)
    }

    /// Replaces the keys the sandbox's agent accepts (it reads the file at every
    /// login). A sandbox this runner does not have is left alone.
    pub async fn set_authorized_keys(&self, id: &SandboxId, keys: &[String]) -> Result<()> {
        let dir = match self {
            Backend::Process(b) => b.sandbox_dir(id),
            Backend::Docker(b) => b.sandbox_run_dir(id),
        };
        if dir.is_dir() {
            write_authorized_keys(&dir, keys)?;
        }
        Ok(())
    }

    /// The environment the sandbox was created with (its secrets included).
    pub async fn env(&self, id: &SandboxId) -> Result<BTreeMap<String, Secret>> {
        Ok(match self {
            Backend::Process(b) => b.env(id).await,
            Backend::Docker(b) => b.env(id).await,
        }?)
    }

    /// Commits the sandbox's workspace and pushes it (the API's pull requests).
    pub async fn commit_and_push(
        &self,
        id: &SandboxId,
        req: &crate::git::CommitPush<'_>,
    ) -> Result<crate::git::Pushed> {
        match self {
            Backend::Process(b) => b.commit_and_push(id, req).await,
            Backend::Docker(b) => b.commit_and_push(id, req).await,
        }
    }

    /// Activity for the idle reaper (the process backend has no reaper).
    pub async fn keepalive(&self, id: &SandboxId) -> Result<()> {
        Ok(match self {
            Backend::Process(b) => b
                .agent_socket(id)
                .await
                .map(|_| ())
                .ok_or_else(|| anyhow::anyhow!("unknown or stopped sandbox {id}")),
            Backend::Docker(b) => b.keepalive(id).await,
        }?)
    }

    /// Captures the running sandbox's file system as `snapshot` (Docker only; see
    /// `docker::snapshot`). Its processes are not captured.
    pub async fn snapshot(
        &self,
        id: &SandboxId,
        snapshot: &crate::protocol::SnapshotId,
    ) -> Result<crate::protocol::SnapshotTaken> {
        match self {
            Backend::Process(_) => Err(no_snapshots()),
            Backend::Docker(b) => b.snapshot(id, snapshot).await,
        }
    }

    /// Creates `id` from `snapshot`, switching its repository to `branch` if given.
    pub async fn create_from_snapshot(
        &self,
        id: &SandboxId,
        snapshot: &crate::protocol::SnapshotId,
        token_key: &str,
        authorized_keys: &[String],
        spec: &SandboxSpec,
        branch: Option<&str>,
    ) -> Result<()> {
        match self {
            Backend::Process(_) => Err(no_snapshots()),
            Backend::Docker(b) => {
                b.create_from_snapshot(id, snapshot, token_key, authorized_keys, spec, branch)
                    .await
            }
        }
    }

    /// Forgets `snapshot` (its storage goes with the last sandbox made from it).
    pub async fn delete_snapshot(&self, snapshot: &crate::protocol::SnapshotId) -> Result<()> {
        match self {
            Backend::Process(_) => Err(no_snapshots()),
            Backend::Docker(b) => Ok(b.delete_snapshot(snapshot).await?),
        }
    }

    /// At runner shutdown: process sandboxes die with the runner; containers keep
    /// running and are adopted by the next runner start.
    pub async fn shutdown(&self) {
        match self {
            Backend::Process(b) => b.stop_all().await,
            // Members of the warm pool are no one's: they go.
            Backend::Docker(b) => b.drain_pool().await,
        }
    }
}

/// Writes `keys` (OpenSSH lines) as `dir/authorized_keys`, atomically: the agent may
/// be reading it for a login.
pub(crate) fn write_authorized_keys(
    dir: &Path,
    keys: &[String],
) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("authorized_keys");
    let mut text = keys.join("\n");
    text.push('\n');
    crate::state::write_file(&path, text.as_bytes())?;
    Ok(path)
}

/// Checks what a create request may name before anything is made: the rules the
/// gateway's API applied ([`SandboxSpec::validate`]), again, as a last check (a
/// runner may be driven by another gateway version, or by hand). A refusal has
/// code `invalid_spec`.
pub fn validate_spec(spec: &SandboxSpec) -> Result<()> {
    spec.validate()
        .map_err(|e| crate::Error::refused("invalid_spec", e.to_string()))
}

/// The process backend's sandboxes are plain directories and processes on the
/// host: it keeps no snapshots.
fn no_snapshots() -> crate::Error {
    crate::Error::refused(
        "not_supported",
        "snapshots and forks are not supported on the process backend: use a Docker runner",
    )
}

/// The process backend isolates nothing, so it cannot hold a disk quota: a spec
/// asking for one is refused rather than run without it.
fn no_disk_quota(spec: &SandboxSpec) -> Result<()> {
    match spec.disk_mb {
        None => Ok(()),
        Some(_) => Err(crate::Error::refused(
            "invalid_spec",
            "disk_mb is not enforced by the process backend (no isolation): create the \
             sandbox without it, or on a Docker runner",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        use crate::protocol::{NetworkPolicy, RepoSpec};
        let mut spec = SandboxSpec::default();
        assert!(validate_spec(&spec).is_ok());
        spec.image = Some("--privileged".into());
        assert!(validate_spec(&spec).is_err());
        spec.image = Some("debian:12".into());
        spec.env.insert("WARREN_TOKEN_KEY".into(), Secret::new("x"));
        assert!(validate_spec(&spec).is_err());
        spec.env.clear();
        spec.env
            .insert("ANTHROPIC_API_KEY".into(), Secret::new("x"));
        assert!(validate_spec(&spec).is_ok());
        spec.network = NetworkPolicy::Allow {
            cidrs: vec!["10.0.0.0/33".into()],
        };
        assert!(validate_spec(&spec).is_err());
        // A branch git allows passes here as it does at the API.
        spec.network = NetworkPolicy::All;
        spec.repo = Some(RepoSpec {
            url: "https://example.com/r.git".into(),
            branch: "fix#1".into(),
            base: None,
            token: None,
        });
        assert!(validate_spec(&spec).is_ok());
    }

    #[test]
    fn the_process_backend_refuses_a_disk_quota() {
        let mut spec = SandboxSpec::default();
        assert!(no_disk_quota(&spec).is_ok());
        spec.disk_mb = Some(1024);
        let refused = no_disk_quota(&spec).err().map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|m| m.contains("not enforced by the process backend")),
            "{refused:?}"
        );
        spec.disk_mb = Some(1);
        assert!(validate_spec(&spec).is_err());
    }
}
