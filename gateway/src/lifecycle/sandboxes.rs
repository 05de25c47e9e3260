//! A sandbox's life: create, list, stop, start, delete, keepalive
//! and its events, for an owner. Every change runs under the sandbox's lock in a
//! task of its own ([`super::detached`]).

use std::future::Future;
use std::sync::Arc;

use warren_keys::{SandboxId, SandboxToken, Scope};
use warren_protocol::{NetworkPolicy, RepoSpec, Request, SandboxSpec, Secret};
use warren_store::events::TierEvent;
use warren_store::{
    NewSandbox, Sandbox, SandboxEvent, SandboxPage, SandboxQuery, SandboxState, User,
};

use super::placement::{Demand, Disk, pick_runner, room_on};
use super::runner_calls::{check_on_runner, expect_ok, run_on_runner};
use super::specs::{default_branch, millicpus, remembered_spec};
use super::{Error, Lifecycle, Result, SANDBOX_TOKEN_TTL, detached, validate};

/// What the store records as the image when the request names none: the runner's
/// default image.
pub const DEFAULT_IMAGE: &str = "default";
/// The env variable whose value, if given, is offered to git when cloning `repo`.
const REPO_TOKEN_ENV: &str = "GITHUB_TOKEN";

/// What to create (the API's request body; the console builds one too).
pub use warren_api::CreateSandbox;

/// Checks every field of a create request; nothing is touched before this passes.
pub fn check_create(body: &CreateSandbox) -> Result<(), Error> {
    if let Some(image) = &body.image {
        validate::image(image)?;
    }
    if let Some(repo) = &body.repo {
        validate::repo(repo)?;
    }
    if let Some(branch) = &body.branch {
        if body.repo.is_none() {
            return Err(Error::invalid("branch needs repo"));
        }
        validate::branch(branch)?;
    }
    validate::env(&body.env)?;
    if let Some(cpus) = body.cpus {
        validate::range("cpus", cpus, validate::CPUS)?;
    }
    if let Some(memory) = body.memory_mb {
        validate::range("memory_mb", memory, validate::MEMORY_MB)?;
    }
    if let Some(idle) = body.idle_timeout_s {
        validate::range("idle_timeout_s", idle, validate::IDLE_TIMEOUT_S)?;
    }
    if let Some(ttl) = body.ttl_s {
        validate::range("ttl_s", ttl, validate::TTL_S)?;
    }
    if let Some(disk) = body.disk_mb {
        validate::range("disk_mb", disk, validate::DISK_MB)?;
    }
    if let Some(network) = &body.network {
        validate::network(&network_policy(network))?;
    }
    Ok(())
}

/// The API's network policy as the tunnel says it.
fn network_policy(policy: &warren_api::NetworkPolicy) -> NetworkPolicy {
    match policy {
        warren_api::NetworkPolicy::All => NetworkPolicy::All,
        warren_api::NetworkPolicy::None => NetworkPolicy::None,
        warren_api::NetworkPolicy::Allow { cidrs } => NetworkPolicy::Allow {
            cidrs: cidrs.clone(),
        },
    }
}

/// A new sandbox, and its token (shown once).
pub struct Created {
    pub sandbox: Sandbox,
    pub token: SandboxToken,
}

/// A user's stop or start: from one state to the other.
struct Step {
    from: SandboxState,
    to: SandboxState,
    /// The past participle for messages ("stopped").
    done: &'static str,
}

impl Lifecycle {
    /// Creates a sandbox for `owner` on the online runner with room for it.
    /// Nothing is stored unless every field passes and the runner could create it;
    /// a runner failing the create is an upstream error that leaves nothing in the
    /// owner's list ([`Self::discard_failed_create`]).
    pub async fn create(self: &Arc<Self>, owner: &User, body: CreateSandbox) -> Result<Created> {
        if body.snapshot.is_some() {
            return self.create_from(owner, body).await;
        }
        check_create(&body)?;
        let transport = body.repo.as_deref().map(validate::repo).transpose()?;
        if transport == Some(validate::RepoTransport::Http) && !self.allows_http_repos() {
            return Err(Error::invalid(
                "repo must be an https:// URL (http:// would send the token in the clear)",
            ));
        }
        let id = SandboxId::generate();
        let cpus = body
            .cpus
            .unwrap_or(f64::from(warren_protocol::DEFAULT_MILLICPUS) / 1000.0);
        let memory_mb = body.memory_mb.unwrap_or(warren_protocol::DEFAULT_MEMORY_MB);
        let demand = Demand {
            sandboxes: 1,
            memory_mb: u64::from(memory_mb),
            millicpus: millicpus(cpus),
            disk: body
                .disk_mb
                .map_or(Disk::Default, |mb| Disk::Asks(u64::from(mb))),
        };
        let (runner, disk_mb) = pick_runner(self, demand).await?;
        let devcontainer =
            body.repo.is_some() && body.image.is_none() && body.devcontainer != Some(false);
        let branch = body
            .repo
            .as_ref()
            .map(|_| body.branch.clone().unwrap_or_else(|| default_branch(&id)));
        let spec = SandboxSpec {
            image: body.image.clone(),
            repo: body.repo.as_ref().map(|url| RepoSpec {
                url: url.clone(),
                branch: branch.clone().unwrap_or_else(|| default_branch(&id)),
                base: None,
                token: body.env.get(REPO_TOKEN_ENV).cloned().map(Secret::from),
            }),
            env: body
                .env
                .into_iter()
                .map(|(k, v)| (k, Secret::from(v)))
                .collect(),
            millicpus: Some(millicpus(cpus)),
            memory_mb: Some(u64::from(memory_mb)),
            idle_timeout_s: body.idle_timeout_s.map(u64::from),
            network: body
                .network
                .as_ref()
                .map(network_policy)
                .unwrap_or_default(),
            disk_mb,
            devcontainer,
            // A devcontainer.json's hostRequirements replace the defaults, not
            // limits the create named.
            default_cpus: devcontainer && body.cpus.is_none(),
            default_memory: devcontainer && body.memory_mb.is_none(),
            // Its steps and their output become events as they happen.
            progress: devcontainer,
            ..SandboxSpec::default()
        };
        check_on_runner(self, &runner, &spec).await?;
        let new = NewSandbox {
            id: id.clone(),
            owner_id: owner.id.clone(),
            runner_id: Some(runner),
            image: body.image.unwrap_or_else(|| DEFAULT_IMAGE.to_owned()),
            repo: body.repo,
            branch,
            forward_agent: body.forward_agent,
            cpus,
            memory_mb,
            idle_timeout_s: body.idle_timeout_s,
            ttl_s: body.ttl_s,
            disk_mb: disk_mb.and_then(|mb| u32::try_from(mb).ok()),
        };
        let lc = self.clone();
        // With `wait: false` the answer is the stored sandbox (`creating`); the
        // runner's work goes on in the task.
        let (stored, stored_sandbox) = tokio::sync::oneshot::channel();
        let waited = detached(async move {
            let guard = lc.lock(&new.id).await;
            let sandbox = lc.store.create_sandbox(&new).await?;
            lc.specs().insert(sandbox.id.clone(), spec.clone());
            let _ = stored.send(sandbox.clone());
            let made = run_on_runner(&lc, &sandbox, spec, "created").await;
            if made.is_err() {
                lc.discard_failed_create(&sandbox).await;
                drop(guard);
                lc.forget(&sandbox.id);
            }
            made
        });
        let sandbox = if body.wait == Some(false) {
            let task = tokio::spawn(waited);
            match stored_sandbox.await {
                Ok(sandbox) => {
                    tokio::spawn(async move {
                        if let Ok(Err(e)) = task.await {
                            tracing::info!("a create not waited for failed: {}", e.message);
                        }
                    });
                    sandbox
                }
                // Not stored: the task's error says why.
                Err(_) => {
                    let failed = task.await.unwrap_or_else(|_| Err(Error::internal()));
                    return Err(failed.err().unwrap_or_else(Error::internal));
                }
            }
        } else {
            waited.await?
        };
        let token = self.signer.mint(&sandbox.id, Scope::Ssh, SANDBOX_TOKEN_TTL);
        Ok(Created { sandbox, token })
    }

    /// A create the runner failed (now `failed`, its reason in the events): the
    /// caller never got its id, so whatever the runner made of it is removed and it
    /// is `deleted` at once; the list shows it only with `include_deleted`. Runs
    /// under the sandbox's lock.
    pub(super) async fn discard_failed_create(&self, sandbox: &Sandbox) {
        if let Some(runner) = &sandbox.runner_id {
            let request = Request::Delete {
                sandbox: sandbox.id.clone(),
            };
            if let Err(e) = expect_ok(self, runner, request).await {
                // Usually nothing was made (the runner undoes a create it fails).
                tracing::info!(sandbox = %sandbox.id, "removing a failed create: {}", e.message);
            }
        }
        let reason = "create failed; removed";
        if let Err(e) = self
            .store
            .set_sandbox_state(&sandbox.id, SandboxState::Deleted, reason)
            .await
        {
            tracing::warn!(sandbox = %sandbox.id, "discarding a failed create: {e}");
        }
    }

    /// `owner`'s sandboxes, newest first, a page at a time.
    pub async fn list(&self, owner: &User, query: &SandboxQuery) -> Result<Arc<SandboxPage>> {
        Ok(self.store.list_sandboxes(&owner.id, query).await?)
    }

    /// Stops a running sandbox, keeping its workspace (a stopped one is fine);
    /// logins to it end.
    pub async fn stop(self: &Arc<Self>, owner: &User, id: &str) -> Result<Sandbox> {
        let step = Step {
            from: SandboxState::Running,
            to: SandboxState::Stopped,
            done: "stopped",
        };
        self.change_state(owner, id, step, |lc, sandbox| async move {
            let runner = sandbox
                .runner_id
                .clone()
                .ok_or_else(|| Error::conflict("the sandbox has no runner"))?;
            let request = Request::Stop {
                sandbox: sandbox.id.clone(),
            };
            expect_ok(&lc, &runner, request).await?;
            let stopped = lc
                .store
                .set_sandbox_state(&sandbox.id, SandboxState::Stopped, "stopped by user")
                .await?;
            lc.store
                .publish(TierEvent::SandboxStopped {
                    sandbox: sandbox.id.clone(),
                })
                .await;
            Ok(stopped)
        })
        .await
    }

    /// Starts a stopped sandbox again (a running one is fine), if its runner has
    /// room for it now.
    pub async fn start(self: &Arc<Self>, owner: &User, id: &str) -> Result<Sandbox> {
        let step = Step {
            from: SandboxState::Stopped,
            to: SandboxState::Running,
            done: "started",
        };
        self.change_state(owner, id, step, |lc, sandbox| async move {
            if let Some(runner) = &sandbox.runner_id {
                let demand = Demand {
                    sandboxes: 1,
                    memory_mb: u64::from(sandbox.memory_mb),
                    millicpus: millicpus(sandbox.cpus),
                    // A stopped sandbox's disk is counted already.
                    disk: Disk::Held,
                };
                room_on(&lc, runner, demand).await?;
            }
            let spec = remembered_spec(&lc, &sandbox).await;
            run_on_runner(&lc, &sandbox, spec, "started by user").await
        })
        .await
    }

    /// The shape stop and start share: under the sandbox's lifecycle lock, in a
    /// task of its own, re-read the sandbox; one already in `step.to` is answered as
    /// it is, one in any state but `step.from` is a conflict, and `act` makes the
    /// change.
    async fn change_state<F, Fut>(
        self: &Arc<Self>,
        owner: &User,
        id: &str,
        step: Step,
        act: F,
    ) -> Result<Sandbox>
    where
        F: FnOnce(Arc<Lifecycle>, Sandbox) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Sandbox>> + Send,
    {
        let sandbox = self.managed(owner, id).await?;
        let lc = self.clone();
        detached(async move {
            let _guard = lc.lock(&sandbox.id).await;
            let sandbox = lc.store.get_sandbox(&sandbox.id).await?;
            if sandbox.state == step.to {
                return Ok(sandbox);
            }
            if sandbox.state != step.from {
                return Err(Error::conflict(format!(
                    "a sandbox in state {} cannot be {}",
                    sandbox.state, step.done
                )));
            }
            act(lc.clone(), sandbox).await
        })
        .await
    }

    /// Deletes `owner`'s sandbox and its workspace (a deleted one is fine).
    pub async fn delete(self: &Arc<Self>, owner: &User, id: &str) -> Result<()> {
        let sandbox = self.managed(owner, id).await?;
        let lc = self.clone();
        detached(async move { lc.delete_sandbox(&sandbox.id, "deleted by user").await }).await
    }

    /// Deletes a sandbox (on its runner, then in the store) with `reason`; a
    /// deleted sandbox is left as it is. Shared with the TTL reaper.
    pub(super) async fn delete_sandbox(&self, id: &SandboxId, reason: &str) -> Result<()> {
        let guard = self.lock(id).await;
        let sandbox = self.store.get_sandbox(id).await?;
        match sandbox.state {
            SandboxState::Deleted => return Ok(()),
            SandboxState::Creating => {
                return Err(Error::conflict(
                    "the sandbox is still being created; try again in a moment",
                ));
            }
            SandboxState::Running | SandboxState::Stopped | SandboxState::Failed => {}
        }
        let removed = match &sandbox.runner_id {
            Some(runner) => {
                let request = Request::Delete {
                    sandbox: sandbox.id.clone(),
                };
                expect_ok(self, runner, request).await
            }
            None => Ok(()),
        };
        match removed {
            Ok(()) => {}
            // A failed create may have left nothing to remove, or its runner may be gone.
            Err(e) if sandbox.state == SandboxState::Failed => {
                tracing::info!(sandbox = %id, "deleting a failed sandbox: {}", e.message);
            }
            Err(e) => return Err(e),
        }
        if sandbox.state == SandboxState::Running {
            self.store
                .set_sandbox_state(id, SandboxState::Stopped, reason)
                .await?;
        }
        self.store
            .set_sandbox_state(id, SandboxState::Deleted, reason)
            .await?;
        drop(guard);
        self.forget(id);
        self.store
            .publish(TierEvent::SandboxDeleted {
                sandbox: id.clone(),
            })
            .await;
        Ok(())
    }

    /// Counts as activity for the idle reaper of a running sandbox.
    pub async fn keepalive(&self, owner: &User, id: &str) -> Result<()> {
        let sandbox = self.managed(owner, id).await?;
        if sandbox.state != SandboxState::Running {
            return Err(Error::conflict(format!(
                "a sandbox in state {} cannot be kept alive",
                sandbox.state
            )));
        }
        let runner = sandbox
            .runner_id
            .clone()
            .ok_or_else(|| Error::conflict("the sandbox has no runner"))?;
        let request = Request::Keepalive {
            sandbox: sandbox.id.clone(),
        };
        expect_ok(self, &runner, request).await
    }

    /// The sandbox's lifecycle changes with their reasons, oldest first.
    pub async fn events(&self, owner: &User, id: &str) -> Result<Vec<SandboxEvent>> {
        let sandbox = self.managed(owner, id).await?;
        Ok(self.store.list_sandbox_events(&sandbox.id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> CreateSandbox {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn create_checks() {
        assert!(check_create(&body("{}")).is_ok());
        assert!(
            check_create(&body(
                r#"{"image":"debian:12","repo":"https://github.com/o/r","branch":"x",
                    "env":{"A":"1"},"cpus":0.5,"memory_mb":512,"idle_timeout_s":60,
                    "ttl_s":3600,"network":{"mode":"none"},"disk_mb":1024}"#
            ))
            .is_ok()
        );
        for bad in [
            r#"{"cpus":0}"#,
            r#"{"cpus":16.5}"#,
            r#"{"memory_mb":64}"#,
            r#"{"disk_mb":0}"#,
            r#"{"disk_mb":1048577}"#,
            r#"{"idle_timeout_s":59}"#,
            r#"{"ttl_s":1}"#,
            r#"{"branch":"x"}"#,
            r#"{"image":"'; DROP TABLE sandboxes; --"}"#,
            r#"{"repo":"../../etc"}"#,
            r#"{"env":{"WARREN_SANDBOX_ID":"x"}}"#,
            r#"{"network":{"mode":"allow","cidrs":["nope"]}}"#,
        ] {
            assert!(check_create(&body(bad)).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<CreateSandbox>(r#"{"imag":"x"}"#).is_err());
    }

    #[test]
    fn millicpus_round() {
        assert_eq!(millicpus(0.1), 100);
        assert_eq!(millicpus(1.0), 1000);
        assert_eq!(millicpus(16.0), 16000);
    }
}
