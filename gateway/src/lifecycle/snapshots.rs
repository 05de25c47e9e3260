//! Snapshots and forks (issue 26): capture a running sandbox's file system on its
//! runner, create sandboxes from it there, and fork a sandbox into several at
//! once, each with its own id, token, network and git branch.
//!
//! A snapshot lives on the runner that took it: a create from it is placed there,
//! and a runner that is full or offline is a 503 saying so (moving snapshots between
//! runners can come later: the store records the runner, a move would change it).
//! Its create-time env (secrets) stays on that runner with it, never in the store.
//! Processes are not captured: a fork starts with no session running.
//!
//! Owners see and use only theirs; admins see and delete all.

use std::sync::Arc;

pub use warren_api::{ForkSandbox, MAX_FORKS, SnapshotView, TakeSnapshot};
use warren_keys::{SandboxId, Scope, SnapshotId};
use warren_protocol::{Request, Response as RunnerResponse, SandboxSpec};

use super::access::SnapshotAccess;
use super::error::ErrorCode;
use super::placement::{Demand, Disk, room_on};
use super::specs::{default_branch, millicpus, remembered_spec};
use super::{Created, Error, Lifecycle, Result, SANDBOX_TOKEN_TTL, detached, validate};
use warren_store::{NewSandbox, NewSnapshot, RunnerId, Sandbox, SandboxState, Snapshot, User};

/// The longest snapshot name.
const MAX_NAME: usize = 128;

/// A create's overrides when it names a snapshot (`POST /v1/sandboxes` with
/// `snapshot`): what the snapshot does not fix.
#[derive(Debug, Default)]
pub struct FromSnapshot {
    pub branch: Option<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub cpus: Option<f64>,
    pub memory_mb: Option<u32>,
    pub idle_timeout_s: Option<u32>,
    pub ttl_s: Option<u32>,
    pub forward_agent: bool,
}

/// Forks made: the snapshot they came from (deleted already: its storage goes
/// with the last fork) and each new sandbox with its token.
pub struct Forked {
    pub snapshot: Snapshot,
    pub forks: Vec<Created>,
}

impl Lifecycle {
    /// Snapshots `caller`'s running sandbox `id`.
    pub async fn snapshot(
        self: &Arc<Self>,
        caller: &User,
        id: &str,
        body: TakeSnapshot,
    ) -> Result<Snapshot> {
        if let Some(name) = &body.name
            && (name.is_empty()
                || name.chars().count() > MAX_NAME
                || name.chars().any(char::is_control))
        {
            return Err(Error::invalid(format!(
                "name must be 1 to {MAX_NAME} characters, none of them control characters"
            )));
        }
        let sandbox = self.managed(caller, id).await?;
        let lc = self.clone();
        let owner = caller.clone();
        detached(async move {
            let _guard = lc.lock(&sandbox.id).await;
            let sandbox = lc.store.get_sandbox(&sandbox.id).await?;
            lc.take_snapshot(&owner, &sandbox, body.name).await
        })
        .await
    }

    /// Under the sandbox's lock: asks its runner for the snapshot and records it.
    async fn take_snapshot(
        &self,
        owner: &User,
        sandbox: &Sandbox,
        name: Option<String>,
    ) -> Result<Snapshot> {
        if sandbox.state != SandboxState::Running {
            return Err(Error::conflict(format!(
                "a sandbox in state {} cannot be snapshotted: start it first",
                sandbox.state
            )));
        }
        let runner = sandbox
            .runner_id
            .clone()
            .ok_or_else(|| Error::conflict("the sandbox has no runner"))?;
        let mut spec = remembered_spec(self, sandbox).await;
        // Neither goes to the store: the runner keeps the env with the snapshot.
        spec.env.clear();
        if let Some(repo) = &mut spec.repo {
            repo.token = None;
        }
        spec.devcontainer = false;
        let id = SnapshotId::generate();
        let request = Request::Snapshot {
            sandbox: sandbox.id.clone(),
            snapshot: id.clone(),
        };
        let taken = match self.hub.control(&runner, &request).await? {
            RunnerResponse::Snapshot(taken) => taken,
            RunnerResponse::Refused { code, message } if code == "not_supported" => {
                return Err(Error::new(ErrorCode::Conflict, message));
            }
            RunnerResponse::Refused { code, message } if code == "not_running" => {
                return Err(Error::new(ErrorCode::Conflict, message));
            }
            RunnerResponse::Refused { message, .. } => return Err(Error::conflict(message)),
            RunnerResponse::Error { message } if message.contains("unknown variant") => {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    "the sandbox's runner is too old to take snapshots",
                ));
            }
            RunnerResponse::Error { message } => return Err(Error::runner(message)),
            other => {
                return Err(Error::runner(format!(
                    "unexpected answer from the runner: {other:?}"
                )));
            }
        };
        let new = NewSnapshot {
            id: id.clone(),
            owner_id: owner.id.clone(),
            source_id: sandbox.id.clone(),
            runner_id: runner.clone(),
            name,
            image: sandbox.image.clone(),
            spec: serde_json::to_string(&spec).map_err(|_| Error::internal())?,
            repo: sandbox.repo.clone(),
            branch: sandbox.branch.clone(),
            size_bytes: taken.size_bytes,
            frozen_ms: taken.frozen_ms,
        };
        match self.store.create_snapshot(&new).await {
            Ok(snapshot) => {
                tracing::info!(sandbox = %sandbox.id, snapshot = %id, frozen_ms = taken.frozen_ms, "snapshot taken");
                Ok(snapshot)
            }
            Err(e) => {
                self.forget_on_runner(&runner, &id).await;
                Err(e.into())
            }
        }
    }

    /// Asks `runner` to forget a snapshot (logged if it cannot).
    async fn forget_on_runner(&self, runner: &RunnerId, id: &SnapshotId) {
        let request = Request::DeleteSnapshot {
            snapshot: id.clone(),
        };
        if let Err(e) = super::runner_calls::expect_ok(self, runner, request).await {
            tracing::warn!(snapshot = %id, "the runner could not delete a snapshot: {}", e.message);
        }
    }

    /// The snapshots `caller` may see: their own, or every one for an admin.
    pub async fn snapshots(&self, caller: &User) -> Result<Vec<Snapshot>> {
        let owner = SnapshotAccess::listed_owner(caller);
        Ok(self.store.list_snapshots(owner).await?)
    }

    /// Deletes a snapshot. Sandboxes made from it are not touched: its runner keeps
    /// what they use until the last of them is deleted.
    pub async fn delete_snapshot(self: &Arc<Self>, caller: &User, id: &str) -> Result<()> {
        let snapshot = self.visible_snapshot(caller, id).await?;
        let lc = self.clone();
        detached(async move {
            if lc.store.delete_snapshot(&snapshot.id).await? {
                lc.forget_on_runner(&snapshot.runner_id, &snapshot.id).await;
            }
            Ok(())
        })
        .await
    }

    /// `POST /v1/sandboxes` naming a snapshot: the fields a snapshot fixes are
    /// refused, the others override.
    pub(super) async fn create_from(
        self: &Arc<Self>,
        owner: &User,
        body: super::CreateSandbox,
    ) -> Result<Created> {
        let fixed = [
            ("image", body.image.is_some()),
            ("repo", body.repo.is_some()),
            ("network", body.network.is_some()),
            ("disk_mb", body.disk_mb.is_some()),
            ("devcontainer", body.devcontainer.is_some()),
        ];
        if let Some((field, _)) = fixed.iter().find(|(_, set)| *set) {
            return Err(Error::invalid(format!(
                "{field} cannot be given with snapshot: the snapshot fixes it"
            )));
        }
        let snapshot = body.snapshot.unwrap_or_default();
        let overrides = FromSnapshot {
            branch: body.branch,
            env: body.env,
            cpus: body.cpus,
            memory_mb: body.memory_mb,
            idle_timeout_s: body.idle_timeout_s,
            ttl_s: body.ttl_s,
            forward_agent: body.forward_agent,
        };
        self.create_from_snapshot(owner, &snapshot, overrides).await
    }

    /// Creates a sandbox for `owner` from their snapshot `snapshot`, on the runner
    /// that keeps it.
    pub async fn create_from_snapshot(
        self: &Arc<Self>,
        owner: &User,
        snapshot: &str,
        body: FromSnapshot,
    ) -> Result<Created> {
        let snapshot = self.own_snapshot(owner, snapshot).await?;
        validate::env(&body.env)?;
        if let Some(branch) = &body.branch {
            validate::branch(branch)?;
        }
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
        let mut forks = self
            .make_from_snapshot(owner, &snapshot, vec![body])
            .await?;
        forks.pop().ok_or_else(Error::internal)
    }

    /// Forks `owner`'s running sandbox `id` `count` times: a snapshot, then the
    /// forks made from it at once. The snapshot is deleted as soon as they are made
    /// (its runner keeps what they use). Either every fork is made, or none is left.
    pub async fn fork(
        self: &Arc<Self>,
        owner: &User,
        id: &str,
        body: ForkSandbox,
    ) -> Result<Forked> {
        if !(1..=MAX_FORKS).contains(&body.count) {
            return Err(Error::invalid(format!(
                "count must be 1 to {MAX_FORKS} (got {})",
                body.count
            )));
        }
        let branches: Vec<Option<String>> = match &body.branch_prefix {
            Some(prefix) => {
                let names: Vec<String> =
                    (1..=body.count).map(|n| format!("{prefix}-{n}")).collect();
                for name in &names {
                    validate::branch(name)?;
                }
                names.into_iter().map(Some).collect()
            }
            None => vec![None; body.count as usize],
        };
        let began = std::time::Instant::now();
        let source = self.managed(owner, id).await?;
        // Room for all of them, before anything is made. Forks go only where their
        // source is, so a full runner is the request's conflict, not a wait (4xx).
        if let Some(runner) = &source.runner_id {
            let count = u64::from(body.count);
            let demand = Demand {
                sandboxes: count,
                memory_mb: u64::from(source.memory_mb) * count,
                millicpus: millicpus(source.cpus),
                disk: source
                    .disk_mb
                    .map_or(Disk::Default, |mb| Disk::Asks(u64::from(mb) * count)),
            };
            room_on(self, runner, demand).await.map_err(|e| {
                if e.code == ErrorCode::NoCapacity {
                    Error::conflict(format!(
                        "{} (forks are made on their source's runner: fork fewer, or \
                         delete or stop sandboxes there)",
                        e.message
                            .replace("for it now", &format!("for {count} forks now"))
                    ))
                } else {
                    e
                }
            })?;
        }
        let checked = began.elapsed();
        let snapshot = {
            let lc = self.clone();
            let owner = owner.clone();
            detached(async move {
                let _guard = lc.lock(&source.id).await;
                let source = lc.store.get_sandbox(&source.id).await?;
                lc.take_snapshot(&owner, &source, Some(format!("fork of {}", source.id)))
                    .await
            })
            .await?
        };
        let asks = branches
            .into_iter()
            .map(|branch| FromSnapshot {
                branch,
                ..FromSnapshot::default()
            })
            .collect();
        let snapshotted = began.elapsed();
        let made = self.make_from_snapshot(owner, &snapshot, asks).await;
        let forked = began.elapsed();
        // The forks keep what they use; nobody else asked for this snapshot.
        if let Err(e) = self.store.delete_snapshot(&snapshot.id).await {
            tracing::warn!(snapshot = %snapshot.id, "deleting a fork's snapshot: {e}");
        } else {
            self.forget_on_runner(&snapshot.runner_id, &snapshot.id)
                .await;
        }
        // Where a fork's time goes, for whoever tunes it.
        tracing::info!(
            sandbox = %snapshot.source_id,
            snapshot = %snapshot.id,
            count = body.count,
            checks_ms = checked.as_millis(),
            snapshot_ms = (snapshotted - checked).as_millis(),
            forks_ms = (forked - snapshotted).as_millis(),
            forget_ms = (began.elapsed() - forked).as_millis(),
            "forked"
        );
        Ok(Forked {
            snapshot,
            forks: made?,
        })
    }

    /// Makes one sandbox per entry of `asks` from `snapshot`, at once. If any
    /// fails, those made are deleted and the first failure is the answer.
    async fn make_from_snapshot(
        self: &Arc<Self>,
        owner: &User,
        snapshot: &Snapshot,
        asks: Vec<FromSnapshot>,
    ) -> Result<Vec<Created>> {
        let base: SandboxSpec = serde_json::from_str(&snapshot.spec).map_err(|e| {
            tracing::error!(snapshot = %snapshot.id, "a stored snapshot spec is unreadable: {e}");
            Error::internal()
        })?;
        let runner = snapshot.runner_id.clone();
        if !self.hub.online_runners().contains(&runner) {
            return Err(Error::new(
                ErrorCode::RunnerOffline,
                format!(
                    "the runner that keeps snapshot {} is offline; sandboxes from it can be \
                     made only there",
                    snapshot.id
                ),
            ));
        }
        let mut news = Vec::new();
        for ask in asks {
            let id = SandboxId::generate();
            let cpus = ask
                .cpus
                .unwrap_or_else(|| f64::from(base.millicpus.unwrap_or(1000)) / 1000.0);
            let memory_mb = ask.memory_mb.unwrap_or_else(|| {
                base.memory_mb
                    .and_then(|m| u32::try_from(m).ok())
                    .unwrap_or(1024)
            });
            // The workspace's repository, if it has one, switches to it (with or
            // without a repo given at create: a `git init` counts too).
            let branch = Some(ask.branch.clone().unwrap_or_else(|| default_branch(&id)));
            let spec = SandboxSpec {
                env: ask
                    .env
                    .into_iter()
                    .map(|(k, v)| (k, warren_protocol::Secret::new(v)))
                    .collect(),
                millicpus: Some(millicpus(cpus)),
                memory_mb: Some(u64::from(memory_mb)),
                idle_timeout_s: ask.idle_timeout_s.map(u64::from).or(base.idle_timeout_s),
                repo: None,
                image: None,
                devcontainer: false,
                ..base.clone()
            };
            let new = NewSandbox {
                id,
                owner_id: owner.id.clone(),
                runner_id: Some(runner.clone()),
                image: snapshot.image.clone(),
                repo: snapshot.repo.clone(),
                branch,
                forward_agent: ask.forward_agent,
                cpus,
                memory_mb,
                idle_timeout_s: ask
                    .idle_timeout_s
                    .or_else(|| base.idle_timeout_s.and_then(|s| u32::try_from(s).ok())),
                ttl_s: ask.ttl_s,
                disk_mb: base.disk_mb.and_then(|mb| u32::try_from(mb).ok()),
            };
            news.push((new, spec));
        }
        let total_memory: u64 = news.iter().map(|(n, _)| u64::from(n.memory_mb)).sum();
        let total_disk: Option<u64> = base.disk_mb.map(|mb| mb * news.len() as u64);
        let demand = Demand {
            sandboxes: news.len() as u64,
            memory_mb: total_memory,
            millicpus: news
                .iter()
                .map(|(n, _)| millicpus(n.cpus))
                .max()
                .unwrap_or(0),
            disk: total_disk.map_or(Disk::Default, Disk::Asks),
        };
        room_on(self, &runner, demand).await?;
        // Each in a task of its own: made at once, and finished whatever the
        // client does.
        let tasks: Vec<_> = news
            .into_iter()
            .map(|(new, spec)| {
                let lc = self.clone();
                let snapshot = snapshot.id.clone();
                tokio::spawn(async move { lc.make_one_from_snapshot(new, spec, snapshot).await })
            })
            .collect();
        let mut created = Vec::new();
        let mut failure = None;
        for task in tasks {
            match task.await {
                Ok(Ok(sandbox)) => created.push(sandbox),
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    tracing::error!("a fork's task failed: {e}");
                    failure.get_or_insert(Error::internal());
                }
            }
        }
        if let Some(failure) = failure {
            for sandbox in &created {
                if let Err(e) = self
                    .delete_sandbox(&sandbox.id, "a fork beside it failed")
                    .await
                {
                    tracing::warn!(sandbox = %sandbox.id, "removing a fork: {}", e.message);
                }
            }
            return Err(failure);
        }
        Ok(created
            .into_iter()
            .map(|sandbox| {
                let token = self.signer.mint(&sandbox.id, Scope::Ssh, SANDBOX_TOKEN_TTL);
                Created { sandbox, token }
            })
            .collect())
    }

    /// Stores one sandbox and has the runner make it from `snapshot`.
    async fn make_one_from_snapshot(
        self: Arc<Self>,
        new: NewSandbox,
        spec: SandboxSpec,
        snapshot: SnapshotId,
    ) -> Result<Sandbox> {
        let began = std::time::Instant::now();
        let guard = self.lock(&new.id).await;
        let sandbox = self.store.create_sandbox(&new).await?;
        let Some(runner) = sandbox.runner_id.clone() else {
            return Err(Error::internal());
        };
        let request = Request::CreateFromSnapshot {
            sandbox: sandbox.id.clone(),
            snapshot: snapshot.clone(),
            token_key: self.signer.verifier().to_base64(),
            authorized_keys: super::agent_keys::for_sandbox(&self, &sandbox.id).await,
            spec,
            branch: sandbox.branch.clone(),
        };
        let stored = began.elapsed();
        let failure = match self.hub.control(&runner, &request).await {
            Ok(RunnerResponse::Ok) => {
                let made = began.elapsed();
                let reason = format!("created from snapshot {snapshot}");
                let sandbox = self
                    .store
                    .set_sandbox_state(&sandbox.id, SandboxState::Running, &reason)
                    .await?;
                tracing::info!(
                    sandbox = %sandbox.id,
                    %snapshot,
                    store_ms = stored.as_millis(),
                    runner_ms = (made - stored).as_millis(),
                    running_ms = (began.elapsed() - made).as_millis(),
                    "created from a snapshot"
                );
                return Ok(sandbox);
            }
            Ok(RunnerResponse::Refused { code, message }) if code == "snapshot_not_found" => {
                Error::new(ErrorCode::Conflict, message)
            }
            Ok(RunnerResponse::Refused { message, .. }) => Error::invalid(message),
            Ok(RunnerResponse::Error { message }) => Error::runner(message),
            Ok(other) => Error::runner(format!("unexpected answer from the runner: {other:?}")),
            Err(e) => Error::from(e),
        };
        let _ = self
            .store
            .set_sandbox_state(
                &sandbox.id,
                SandboxState::Failed,
                &format!("create failed: {}", failure.message),
            )
            .await;
        self.discard_failed_create(&sandbox).await;
        drop(guard);
        self.forget(&sandbox.id);
        Err(failure)
    }
}
