//! The spec a sandbox runs with: kept in memory from its create (env secrets
//! included), else rebuilt from the store and the env its runner holds.

use warren_keys::SandboxId;
use warren_protocol::{RepoSpec, Request, SandboxSpec};
use warren_store::Sandbox;

use super::{DEFAULT_IMAGE, Lifecycle};

/// The runner's view of a stored sandbox, when the create-time spec is not in
/// memory (no env, no repository token).
fn spec_from_store(sandbox: &Sandbox) -> SandboxSpec {
    SandboxSpec {
        image: (sandbox.image != DEFAULT_IMAGE).then(|| sandbox.image.clone()),
        repo: sandbox.repo.as_ref().map(|url| RepoSpec {
            url: url.clone(),
            branch: sandbox
                .branch
                .clone()
                .unwrap_or_else(|| default_branch(&sandbox.id)),
            base: None,
            token: None,
        }),
        millicpus: Some(millicpus(sandbox.cpus)),
        memory_mb: Some(u64::from(sandbox.memory_mb)),
        idle_timeout_s: sandbox.idle_timeout_s.map(u64::from),
        disk_mb: sandbox.disk_mb.map(u64::from),
        ..SandboxSpec::default()
    }
}

/// The spec `sandbox` was created with. The gateway keeps create-time env (secrets
/// included) in memory only; after a restart it rebuilds the spec from the store and
/// asks the runner for the env, which it holds where the sandbox runs. A runner
/// that cannot say leaves the env empty (logged; the caller decides what that means).
pub(super) async fn remembered_spec(lc: &Lifecycle, sandbox: &Sandbox) -> SandboxSpec {
    let known = lc.specs().get(&sandbox.id).cloned();
    if let Some(spec) = known {
        return spec;
    }
    let mut spec = spec_from_store(sandbox);
    let Some(runner) = &sandbox.runner_id else {
        return spec;
    };
    let request = Request::Env {
        sandbox: sandbox.id.clone(),
    };
    match lc.hub.control(runner, &request).await {
        Ok(warren_protocol::Response::Env { env }) => {
            spec.env = env;
            lc.specs().insert(sandbox.id.clone(), spec.clone());
        }
        Ok(warren_protocol::Response::Error { message }) => {
            tracing::warn!(sandbox = %sandbox.id, %message, "the runner does not know the sandbox's env");
        }
        Ok(other) => {
            tracing::warn!(sandbox = %sandbox.id, answer = ?other, "unexpected answer to env");
        }
        Err(e) => {
            tracing::warn!(sandbox = %sandbox.id, error = %e, "could not ask the runner for the sandbox's env");
        }
    }
    spec
}

pub(super) fn millicpus(cpus: f64) -> u32 {
    // In range (0.1..=16 checked at create), so the cast cannot truncate.
    (cpus * 1000.0).round() as u32
}

pub(super) fn default_branch(id: &SandboxId) -> String {
    format!("warren/{id}")
}
