//! Keeping each agent's authorized keys in step with the store.
//!
//! In jump mode (`ssh -J user@gateway <sandbox-id>`) the agent checks the user's
//! key itself, against the file its runner keeps: the owner's SSH keys and those
//! of the users the sandbox is shared with. A key removed or a share taken back
//! must stop working there too, so changes are pushed to the runners: at once when
//! made through the API, and on every reconciler round for the rest (operator
//! commands, a gateway restart, a runner that was offline). The gateway remembers
//! what it sent, so a round without changes sends nothing.

use std::collections::BTreeSet;

use anyhow::bail;
use warren_protocol::{MAX_CONTROL_LINE, Request, Response, SandboxKeys};
use warren_store::{RunnerId, Sandbox, SandboxId, UserId};

use super::Lifecycle;

/// Sends `runner` the keys of its sandboxes whose keys changed since last sent.
///
/// One sync per runner at a time, reading the store only once it holds the lock:
/// otherwise a reconciler round that read the keys before a removal could send
/// them after the API's sync and put the removed key back until the next round.
pub(super) async fn sync_runner(lc: &Lifecycle, runner: &RunnerId) -> anyhow::Result<()> {
    let _one_at_a_time = lc.key_sync_lock(runner).await;
    let wanted = lc.store.runner_authorized_keys(runner).await?;
    let changed: Vec<SandboxKeys> = {
        let sent = lc.sent_keys();
        wanted
            .into_iter()
            .filter(|(id, keys)| sent.get(id) != Some(keys))
            .map(|(sandbox, keys)| SandboxKeys {
                sandbox,
                keys: keys.into_iter().collect(),
            })
            .collect()
    };
    for batch in batches(changed) {
        let request = Request::AuthorizedKeys {
            sandboxes: batch.clone(),
        };
        match lc.hub.control(runner, &request).await? {
            Response::Ok => {}
            other => bail!("unexpected answer to authorized_keys: {other:?}"),
        }
        tracing::debug!(runner = %runner, sandboxes = batch.len(), "authorized keys sent");
        let mut sent = lc.sent_keys();
        for s in batch {
            sent.insert(s.sandbox, s.keys.into_iter().collect());
        }
    }
    Ok(())
}

/// Key bytes per request: well inside the control protocol's line limit
/// (`MAX_CONTROL_LINE`, 1 MiB), with room for the JSON around them.
const BATCH_BYTES: usize = MAX_CONTROL_LINE / 4;

/// `changed` cut into requests of at most [`BATCH_BYTES`] of keys (a sandbox whose
/// keys alone are more goes in a request of its own; the runner says if too big).
fn batches(changed: Vec<SandboxKeys>) -> Vec<Vec<SandboxKeys>> {
    let mut out: Vec<Vec<SandboxKeys>> = Vec::new();
    let mut size = 0;
    for s in changed {
        let bytes: usize = s.keys.iter().map(|k| k.len() + 8).sum::<usize>() + 64;
        if out.is_empty() || size + bytes > BATCH_BYTES {
            out.push(Vec::new());
            size = 0;
        }
        size += bytes;
        if let Some(last) = out.last_mut() {
            last.push(s);
        }
    }
    out
}

/// After `user`'s keys changed through the API: [`sync_runner`] for the runners of
/// the sandboxes they own or share, so it holds before the API answers. Failures
/// are logged; the reconciler retries.
pub async fn sync_user(lc: &Lifecycle, user: &UserId) {
    match lc.store.runners_of_user_sandboxes(user).await {
        Ok(runners) => sync_runners(lc, &runners).await,
        Err(e) => tracing::warn!("listing the runners of a user's sandboxes: {e}"),
    }
}

/// After a share changed: [`sync_runner`] for the sandbox's runner.
pub async fn sync_sandbox(lc: &Lifecycle, sandbox: &Sandbox) {
    if let Some(runner) = &sandbox.runner_id {
        sync_runners(lc, std::slice::from_ref(runner)).await;
    }
}

async fn sync_runners(lc: &Lifecycle, runners: &[RunnerId]) {
    for runner in runners.iter().filter(|r| lc.hub.is_online(r)) {
        if let Err(e) = sync_runner(lc, runner).await {
            tracing::warn!(runner = %runner, "sending authorized keys: {e:#}");
        }
    }
}

/// The keys `sandbox`'s agent should accept now, for a create or start.
pub(super) async fn for_sandbox(lc: &Lifecycle, sandbox: &SandboxId) -> Vec<String> {
    match lc.store.sandbox_authorized_keys(sandbox).await {
        Ok(keys) => {
            let lines = keys.iter().cloned().collect();
            lc.sent_keys().insert(sandbox.clone(), keys);
            lines
        }
        Err(e) => {
            tracing::warn!(sandbox = %sandbox, "listing authorized keys: {e}");
            lc.sent_keys().remove(sandbox);
            Vec::new()
        }
    }
}

pub(super) type SentKeys = std::collections::HashMap<SandboxId, BTreeSet<String>>;

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_under_the_control_line_limit() {
        let key = format!("ssh-rsa {}", "A".repeat(700));
        let changed: Vec<SandboxKeys> = (0..2000)
            .map(|_| SandboxKeys {
                sandbox: SandboxId::generate(),
                keys: vec![key.clone(); 3],
            })
            .collect();
        let batches = batches(changed);
        assert!(batches.len() > 1);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 2000);
        for batch in &batches {
            let line = serde_json::to_string(&Request::AuthorizedKeys {
                sandboxes: batch.clone(),
            })
            .expect("json");
            assert!(line.len() < MAX_CONTROL_LINE, "{} bytes", line.len());
        }
        assert!(super::batches(Vec::new()).is_empty());
    }
}
