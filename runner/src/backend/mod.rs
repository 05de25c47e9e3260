//! Where sandboxes run: [`process::ProcessBackend`] (agent processes on the host, no
//! isolation; for development and tests) or [`docker::DockerBackend`] (hardened
//! containers from any image).

pub mod docker;
pub mod process;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use warren_keys::SandboxId;

use crate::protocol::{SandboxSpec, SandboxStatus};

/// One of the backends; the tunnel serves whichever the runner was started with.
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

    pub async fn create(
        &self,
        id: &SandboxId,
        token_key: &str,
        authorized_keys: &[String],
        spec: &SandboxSpec,
    ) -> Result<()> {
        match self {
            Backend::Process(b) => b.create(id, token_key, authorized_keys, spec).await,
            Backend::Docker(b) => b.create(id, token_key, authorized_keys, spec).await,
        }
    }

    pub async fn stop(&self, id: &SandboxId) -> Result<()> {
        match self {
            Backend::Process(b) => b.stop(id).await,
            Backend::Docker(b) => b.stop(id).await,
        }
    }

    pub async fn delete(&self, id: &SandboxId) -> Result<()> {
        match self {
            Backend::Process(b) => b.delete(id).await,
            Backend::Docker(b) => b.delete(id).await,
        }
    }

    pub async fn list(&self) -> Result<Vec<SandboxStatus>> {
        match self {
            Backend::Process(b) => b.list().await,
            Backend::Docker(b) => b.list().await,
        }
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
    pub async fn env(&self, id: &SandboxId) -> Result<BTreeMap<String, String>> {
        match self {
            Backend::Process(b) => b.env(id).await,
            Backend::Docker(b) => b.env(id).await,
        }
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
        match self {
            Backend::Process(b) => b
                .agent_socket(id)
                .await
                .map(|_| ())
                .ok_or_else(|| anyhow::anyhow!("unknown or stopped sandbox {id}")),
            Backend::Docker(b) => b.keepalive(id).await,
        }
    }

    /// At runner shutdown: process sandboxes die with the runner; containers keep
    /// running and are adopted by the next runner start.
    pub async fn shutdown(&self) {
        match self {
            Backend::Process(b) => b.stop_all().await,
            Backend::Docker(_) => {}
        }
    }
}

/// Writes `keys` (OpenSSH lines) as `dir/authorized_keys`, atomically: the agent may
/// be reading it for a login.
pub(crate) fn write_authorized_keys(dir: &Path, keys: &[String]) -> Result<std::path::PathBuf> {
    let path = dir.join("authorized_keys");
    let mut text = keys.join("\n");
    text.push('\n');
    crate::state::write_file(&path, text.as_bytes())?;
    Ok(path)
}
