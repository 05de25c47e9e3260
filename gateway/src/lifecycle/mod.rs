//! The sandbox lifecycle, behind both the HTTP API ([`crate::api`]) and the SSH
//! console ([`crate::ssh::console`]): one set of rules for who may do what, one
//! validation, one set of errors ([`Error`]).
//!
//! - [`access`]: who may do what with a sandbox ([`Access`]), the one rule.
//! - [`sandboxes`]: create, list, stop, start, delete, keepalive,
//!   events — each change under the sandbox's lock, in a task of its own (a client
//!   hanging up never leaves a change half done).
//! - [`placement`]: which runner has room for a new sandbox.
//! - [`runner_calls`]: the control requests, with their answers matched once.
//! - [`specs`]: the spec a sandbox runs with, kept in memory (env secrets included).
//! - [`keys`]: an account's SSH keys.
//! - [`agent_keys`]: the SSH keys each sandbox's agent accepts, synced to runners.
//! - [`pulls`]: commit, push and open (or merge) a GitHub pull request.
//! - [`reconcile`]: the store kept in step with the runners; TTL reaping.
//! - [`snapshots`]: snapshots of a sandbox, sandboxes made from them, forks.
//! - [`events`]: the other gateways' decisions (and this one's) applied here.
//!
//! Secrets (sandbox tokens, `env` values) are returned once and never logged; `env`
//! values live only in memory here and in the runner, never in the store.

pub mod access;
pub mod agent_keys;
pub mod audit;
mod error;
pub mod events;
pub mod keys;
pub mod live;
mod placement;
pub mod pulls;
pub mod reconcile;
pub mod request;
mod runner_calls;
pub mod sandboxes;
pub mod shares;
pub mod snapshots;
mod specs;
mod tokens;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use warren_keys::{SandboxId, TokenSigner};
use warren_protocol::{RunnerCapacity, SandboxSpec};
use warren_store::{RunnerId, Store};

pub use self::access::{Access, Principal};
pub use self::error::{Error, ErrorCode, Result};
pub use self::reconcile::{RECONCILE_EVERY, reconcile_once, spawn_reconciler};
pub use self::sandboxes::{CreateSandbox, Created, DEFAULT_IMAGE};

use crate::tunnel::RunnerHub;

/// How long the sandbox token returned at create stays valid.
pub const SANDBOX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What the lifecycle works with, shared by the API and the SSH console.
pub struct Lifecycle {
    pub store: Store,
    pub hub: Arc<RunnerHub>,
    pub signer: Arc<TokenSigner>,
    /// The SSH front door as users reach it, for `ssh` commands and known_hosts lines.
    pub ssh_host: String,
    pub ssh_port: u16,
    /// The gateway's host key, `ssh-ed25519 AAAA…` (no host part, no comment).
    pub host_key_line: String,
    /// The spec each sandbox was created with (env secrets included), to start it
    /// again with the same; memory only: after a gateway restart it is rebuilt from
    /// the store and the runner's answer to `env` ([`specs`]).
    specs: Mutex<HashMap<SandboxId, SandboxSpec>>,
    /// The authorized keys last sent for each sandbox ([`agent_keys`]).
    sent_keys: Mutex<agent_keys::SentKeys>,
    /// One key sync per runner at a time ([`agent_keys::sync_runner`]).
    key_sync_locks: KeyedLocks<RunnerId>,
    /// One lifecycle change at a time per sandbox (API, console and the reconciler).
    locks: KeyedLocks<SandboxId>,
    /// GitHub's REST API base for pull requests ([`crate::github`]).
    github_api: Mutex<String>,
    /// Whether `http://` repositories are accepted ([`Self::allows_http_repos`]).
    http_repos: std::sync::atomic::AtomicBool,
    /// What each runner said it has room for, and when ([`placement`]).
    capacities: Mutex<HashMap<RunnerId, (Instant, RunnerCapacity)>>,
    /// The front door's logged-in connections: revoking access ends them.
    pub live: Arc<live::LiveConnections>,
    /// The terminal sessions' recordings (the front door writes them).
    pub recordings: Arc<crate::recordings::Recordings>,
    /// Reconciler rounds this gateway ran (as the tier's leaseholder).
    pub rounds: std::sync::atomic::AtomicU64,
    /// A sandbox `creating` longer than this (seconds) is no create under way on
    /// any gateway (its gateway stopped mid-create): the reconciler removes it.
    abandoned_create_s: std::sync::atomic::AtomicU64,
}

/// Far longer than any create's control exchange may last (a devcontainer's is
/// cut at 180 s), so a create still under way is never taken for abandoned.
const ABANDONED_CREATE_S: u64 = 600;

impl Lifecycle {
    pub fn new(
        store: Store,
        hub: Arc<RunnerHub>,
        signer: Arc<TokenSigner>,
        ssh_host: String,
        ssh_port: u16,
        host_key_line: String,
    ) -> Lifecycle {
        Lifecycle {
            store,
            hub,
            signer,
            ssh_host,
            ssh_port,
            host_key_line,
            specs: Mutex::default(),
            sent_keys: Mutex::default(),
            key_sync_locks: Mutex::default(),
            locks: Mutex::default(),
            github_api: Mutex::new(crate::github::api_base_from_env()),
            http_repos: std::sync::atomic::AtomicBool::new(http_repos_from_env()),
            capacities: Mutex::default(),
            live: Arc::default(),
            recordings: Arc::new(crate::recordings::Recordings::off()),
            rounds: std::sync::atomic::AtomicU64::new(0),
            abandoned_create_s: std::sync::atomic::AtomicU64::new(ABANDONED_CREATE_S),
        }
    }

    /// How long a sandbox may stay `creating` before the reconciler takes its
    /// create for abandoned (tests shorten it).
    pub fn set_abandoned_create_after(&self, after: Duration) {
        self.abandoned_create_s
            .store(after.as_secs(), std::sync::atomic::Ordering::Relaxed);
    }

    fn abandoned_create_after(&self) -> u64 {
        self.abandoned_create_s
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where pull requests are opened: `https://api.github.com` (the default, or
    /// `WARREN_GITHUB_API`), `https://HOST/api/v3` for GitHub Enterprise.
    pub fn set_github_api(&self, base: &str) {
        *crate::unpoisoned(&self.github_api) = base.to_owned();
    }

    /// Plain `http://` repositories: off unless the operator sets
    /// `WARREN_ALLOW_HTTP_REPOS=1` (a Git server on a trusted network; tests), since
    /// the push token would cross the network in the clear.
    pub fn allows_http_repos(&self) -> bool {
        self.http_repos.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_allow_http_repos(&self, allow: bool) {
        self.http_repos
            .store(allow, std::sync::atomic::Ordering::Relaxed);
    }

    fn github(&self) -> crate::github::GitHub {
        crate::github::GitHub::new(&crate::unpoisoned(&self.github_api))
    }

    fn capacities(&self) -> MutexGuard<'_, HashMap<RunnerId, (Instant, RunnerCapacity)>> {
        crate::unpoisoned(&self.capacities)
    }

    fn specs(&self) -> MutexGuard<'_, HashMap<SandboxId, SandboxSpec>> {
        crate::unpoisoned(&self.specs)
    }

    fn sent_keys(&self) -> MutexGuard<'_, agent_keys::SentKeys> {
        crate::unpoisoned(&self.sent_keys)
    }

    /// Holds `runner`'s key-sync lock until the guard drops.
    async fn key_sync_lock(&self, runner: &RunnerId) -> tokio::sync::OwnedMutexGuard<()> {
        lock_keyed(&self.key_sync_locks, runner).await
    }

    /// Holds `sandbox`'s lifecycle lock until the guard drops.
    async fn lock(&self, sandbox: &SandboxId) -> tokio::sync::OwnedMutexGuard<()> {
        lock_keyed(&self.locks, sandbox).await
    }

    fn forget(&self, sandbox: &SandboxId) {
        self.specs().remove(sandbox);
        self.sent_keys().remove(sandbox);
        crate::unpoisoned(&self.locks).remove(sandbox);
    }

    /// `[host]:port` as known_hosts and `ssh-keyscan` write it (plain `host` on 22).
    pub fn known_hosts_host(&self) -> String {
        let host = self.ssh_host.trim_start_matches('[').trim_end_matches(']');
        if self.ssh_port == 22 && !host.contains(':') {
            host.to_owned()
        } else {
            format!("[{host}]:{}", self.ssh_port)
        }
    }
}

/// `WARREN_ALLOW_HTTP_REPOS` set to `1` or `true`.
fn http_repos_from_env() -> bool {
    std::env::var("WARREN_ALLOW_HTTP_REPOS")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true"))
}

/// Runs `work` in its own task, so a client that hangs up mid-request does not
/// leave a lifecycle change half done.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!("a lifecycle task failed: {e}");
            Err(Error::internal())
        }
    }
}

/// Named async locks: one per key, made on first use.
type KeyedLocks<K> = Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>;

async fn lock_keyed<K: std::hash::Hash + Eq + Clone>(
    locks: &KeyedLocks<K>,
    key: &K,
) -> tokio::sync::OwnedMutexGuard<()> {
    let lock = crate::unpoisoned(locks)
        .entry(key.clone())
        .or_default()
        .clone();
    lock.lock_owned().await
}
