//! Keeping the store in step with the runners, and the TTL reaper.
//!
//! Every [`RECONCILE_EVERY`], for each online runner: `List`, and a sandbox the
//! store has `running` that the runner reports stopped becomes `stopped`, with the
//! runner's reason (`idle`, `oom`, `exited`) as the event's reason (`lost` if the
//! runner no longer has it at all). A sandbox changed since the list was asked for
//! is left for the next round, so a start racing the list is never undone. A
//! sandbox `creating` far longer than any create takes (its gateway stopped
//! mid-create) fails and is removed. Then
//! every sandbox past its `ttl_s` is deleted (reason `ttl`). Each round also sends
//! runners the authorized keys that changed ([`super::agent_keys`]). Of several
//! gateways on one database only the lease's holder runs rounds, and it reconciles
//! the runners it reaches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use warren_protocol::{Request, Response};
use warren_store::{RunnerId, SandboxState, Timestamp};

use super::Lifecycle;

/// How often the reconciler runs.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// Runs [`reconcile_once`] every `every`, until the task is aborted, on the one
/// gateway of the tier that holds the `reconcile` lease (`warren_store::Lease`;
/// on SQLite, always this one).
pub fn spawn_reconciler(lc: Arc<Lifecycle>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let lease = lc.store.lease("reconcile");
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if lease.held().await {
                lc.rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                reconcile_once(&lc).await;
            }
        }
    })
}

/// One round: every online runner, then the TTL reaper. Errors are logged and the
/// rest carries on.
pub async fn reconcile_once(lc: &Lifecycle) {
    for runner in lc.hub.online_runners() {
        if let Err(e) = reconcile_runner(lc, &runner).await {
            tracing::warn!(runner = %runner, "reconciling: {e}");
        }
        if let Err(e) = super::agent_keys::sync_runner(lc, &runner).await {
            tracing::warn!(runner = %runner, "sending authorized keys: {e:#}");
        }
    }
    reap_expired(lc).await;
    sweep_stored_recordings(lc).await;
}

/// Deletes the recordings the store keeps for the tier once past the retention
/// (each gateway sweeps its own files).
async fn sweep_stored_recordings(lc: &Lifecycle) {
    let Some(store) = lc.recordings.archive() else {
        return;
    };
    let retention = lc.recordings.policy().retention.as_secs();
    let now = Timestamp::now().unix_seconds();
    let before =
        Timestamp::from_unix_seconds(now - i64::try_from(retention).unwrap_or(i64::MAX / 2));
    match store.delete_stored_recordings(before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(pieces = n, "expired stored recordings deleted"),
        Err(e) => tracing::warn!("deleting expired stored recordings: {e}"),
    }
}

async fn reconcile_runner(lc: &Lifecycle, runner: &RunnerId) -> anyhow::Result<()> {
    // Whole seconds, rounded down: anything updated in this second or later is newer
    // than the list, or may be.
    let asked_at = Timestamp::now();
    let reported = match lc.hub.control(runner, &Request::List).await? {
        Response::Sandboxes { sandboxes } => sandboxes,
        other => anyhow::bail!("unexpected answer to list: {other:?}"),
    };
    let reported: HashMap<_, _> = reported
        .into_iter()
        .map(|s| (s.sandbox.clone(), s))
        .collect();
    for sandbox in lc.store.list_runner_sandboxes(runner).await? {
        if sandbox.state == SandboxState::Creating {
            let age = asked_at.unix_seconds() - sandbox.created_at.unix_seconds();
            if u64::try_from(age).is_ok_and(|age| age > lc.abandoned_create_after()) {
                abandon_create(lc, &sandbox).await?;
            }
            continue;
        }
        if sandbox.state != SandboxState::Running || sandbox.updated_at >= asked_at {
            continue;
        }
        let reason = match reported.get(&sandbox.id) {
            Some(status) if status.running => continue,
            Some(status) => status
                .stopped_reason
                .clone()
                .unwrap_or_else(|| "exited".to_owned()),
            None => "lost".to_owned(),
        };
        let _guard = lc.lock(&sandbox.id).await;
        // Re-read under the lock: an API call may have moved it meanwhile.
        let now = lc.store.get_sandbox(&sandbox.id).await?;
        if now.state != SandboxState::Running || now.updated_at >= asked_at {
            continue;
        }
        lc.store
            .set_sandbox_state(&sandbox.id, SandboxState::Stopped, &reason)
            .await?;
        tracing::info!(sandbox = %sandbox.id, %reason, "sandbox stopped by its runner");
    }
    Ok(())
}

/// A create whose gateway stopped before the runner answered (a restart during a
/// `wait: false` create, say) would stay `creating` for good, holding its room,
/// and could not be deleted: it fails, saying so, and whatever the runner made of
/// it is removed, as for any failed create.
async fn abandon_create(lc: &Lifecycle, sandbox: &warren_store::Sandbox) -> anyhow::Result<()> {
    let guard = lc.lock(&sandbox.id).await;
    let now = lc.store.get_sandbox(&sandbox.id).await?;
    if now.state != SandboxState::Creating {
        return Ok(());
    }
    let reason = "create failed: it never finished (the gateway running it stopped)";
    let failed = lc
        .store
        .set_sandbox_state(&sandbox.id, SandboxState::Failed, reason)
        .await?;
    lc.discard_failed_create(&failed).await;
    drop(guard);
    lc.forget(&sandbox.id);
    tracing::info!(sandbox = %sandbox.id, "an abandoned create removed");
    Ok(())
}

async fn reap_expired(lc: &Lifecycle) {
    let expired = match lc.store.list_expired_sandboxes(Timestamp::now()).await {
        Ok(expired) => expired,
        Err(e) => {
            tracing::warn!("listing expired sandboxes: {e}");
            return;
        }
    };
    for sandbox in expired {
        if sandbox.state == SandboxState::Creating {
            continue;
        }
        match lc.delete_sandbox(&sandbox.id, "ttl").await {
            Ok(()) => tracing::info!(sandbox = %sandbox.id, "sandbox deleted: ttl"),
            Err(e) => tracing::warn!(sandbox = %sandbox.id, "deleting after ttl: {}", e.message),
        }
    }
}
