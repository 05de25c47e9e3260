//! The users' live connections, each with what let it in, so that taking that away
//! ends it within moments: unsharing a sandbox, deleting a key or revoking an API
//! key, rotating a sandbox's tokens, stopping or deleting the sandbox.
//!
//! Relay-mode connections name their sandbox at login; jump-host connections
//! record each sandbox they open a channel to. Ending a connection disconnects it
//! with a reason the user sees (`Disconnected from …: access revoked: …`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use warren_keys::SandboxId;

use warren_store::{ApiKeyId, UserId};

use super::{Lifecycle, Principal};

/// What a connection logged in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A public key registered to the user (its SHA-256 fingerprint).
    Key(String),
    /// One of the user's API keys.
    ApiKey(ApiKeyId),
    /// A sandbox token (no account).
    Token,
}

struct Live {
    user: Option<UserId>,
    /// Who logged in, to check again after a resync ([`super::events`]).
    principal: Principal,
    /// When (unix seconds): a token login older than its sandbox's revocation ends.
    since: i64,
    via: Via,
    /// The relay-mode sandbox, and every sandbox a jump-host login reached.
    sandboxes: HashSet<SandboxId>,
    handle: russh::server::Handle,
}

/// A live login as [`LiveConnections::logins`] lists it.
pub(super) struct LiveLogin {
    pub id: u64,
    pub principal: Principal,
    pub since: i64,
    pub via: Via,
    pub sandboxes: Vec<SandboxId>,
}

/// Every logged-in user connection of this gateway.
#[derive(Default)]
pub struct LiveConnections {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
}

/// A connection's place in [`LiveConnections`], removed when dropped.
pub struct LiveEntry {
    id: u64,
    registry: Arc<LiveConnections>,
}

impl Drop for LiveEntry {
    fn drop(&mut self) {
        crate::unpoisoned(&self.registry.live).remove(&self.id);
    }
}

impl LiveEntry {
    /// Records that this connection reached `sandbox` (jump mode).
    pub fn reached(&self, sandbox: &SandboxId) {
        if let Some(live) = crate::unpoisoned(&self.registry.live).get_mut(&self.id) {
            live.sandboxes.insert(sandbox.clone());
        }
    }
}

impl LiveConnections {
    pub fn register(
        self: &Arc<Self>,
        principal: Principal,
        via: Via,
        sandbox: Option<SandboxId>,
        handle: russh::server::Handle,
    ) -> LiveEntry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let live = Live {
            user: principal.user().map(|u| u.id.clone()),
            principal,
            since: warren_store::Timestamp::now().unix_seconds(),
            via,
            sandboxes: sandbox.into_iter().collect(),
            handle,
        };
        crate::unpoisoned(&self.live).insert(id, live);
        LiveEntry {
            id,
            registry: self.clone(),
        }
    }

    /// How many connections are live.
    pub fn len(&self) -> usize {
        crate::unpoisoned(&self.live).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live login as it stands: its place, who, since when, with what, and
    /// the sandboxes it reached.
    pub(super) fn logins(&self) -> Vec<LiveLogin> {
        crate::unpoisoned(&self.live)
            .iter()
            .map(|(id, l)| LiveLogin {
                id: *id,
                principal: l.principal.clone(),
                since: l.since,
                via: l.via.clone(),
                sandboxes: l.sandboxes.iter().cloned().collect(),
            })
            .collect()
    }

    /// Ends the login `id` (of [`Self::logins`]) with `reason`.
    pub(super) fn end_login(&self, id: u64, reason: &str) -> usize {
        self.end_matching(|l_id, _| l_id == id, reason)
    }

    /// Disconnects every connection `matches` picks, telling it `reason`; returns
    /// how many.
    fn end(&self, matches: impl Fn(&Live) -> bool, reason: &str) -> usize {
        self.end_matching(|_, l| matches(l), reason)
    }

    fn end_matching(&self, matches: impl Fn(u64, &Live) -> bool, reason: &str) -> usize {
        let handles: Vec<_> = crate::unpoisoned(&self.live)
            .iter()
            .filter(|(id, l)| matches(**id, l))
            .map(|(_, l)| l.handle.clone())
            .collect();
        let n = handles.len();
        for handle in handles {
            let reason = format!("access revoked: {reason}");
            tokio::spawn(async move {
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, reason, String::new())
                    .await;
            });
        }
        if n > 0 {
            tracing::info!(connections = n, reason, "ended live connections");
        }
        n
    }

    /// `user`'s connections to `sandbox` (unshared).
    pub fn end_user_on_sandbox(&self, user: &UserId, sandbox: &SandboxId, reason: &str) -> usize {
        self.end(
            |l| l.user.as_ref() == Some(user) && l.sandboxes.contains(sandbox),
            reason,
        )
    }

    /// Every connection to `sandbox` (stopped, deleted).
    pub fn end_sandbox(&self, sandbox: &SandboxId, reason: &str) -> usize {
        self.end(|l| l.sandboxes.contains(sandbox), reason)
    }

    /// Token logins to `sandbox` (its tokens were rotated).
    pub fn end_tokens(&self, sandbox: &SandboxId, reason: &str) -> usize {
        self.end(
            |l| l.via == Via::Token && l.sandboxes.contains(sandbox),
            reason,
        )
    }

    /// `user`'s connections that logged in with the key of `fingerprint`.
    pub fn end_key(&self, user: &UserId, fingerprint: &str, reason: &str) -> usize {
        self.end(
            |l| l.user.as_ref() == Some(user) && l.via == Via::Key(fingerprint.to_owned()),
            reason,
        )
    }

    /// Connections that logged in with the API key `key`.
    pub fn end_api_key(&self, key: &ApiKeyId, reason: &str) -> usize {
        self.end(|l| l.via == Via::ApiKey(key.clone()), reason)
    }
}

impl Lifecycle {
    /// Whether what let a live login in still holds, read fresh from the store: its
    /// key or API key, and its access to the sandbox it named (`sandbox`). A store
    /// that cannot say is taken as yes (the login itself just succeeded against it).
    pub async fn login_holds(
        &self,
        who: &Principal,
        via: &Via,
        sandbox: Option<&SandboxId>,
    ) -> bool {
        let store = &self.store;
        match (via, who.user()) {
            (Via::Key(fingerprint), Some(user)) => {
                if let Ok(keys) = store.list_ssh_keys(&user.id).await
                    && !keys.iter().any(|k| &k.fingerprint == fingerprint)
                {
                    return false;
                }
            }
            (Via::ApiKey(id), Some(user)) => {
                if let Ok(keys) = store.list_api_keys(&user.id).await
                    && !keys.iter().any(|k| &k.id == id && k.revoked_at.is_none())
                {
                    return false;
                }
            }
            _ => {}
        }
        if let Some(sandbox) = sandbox
            && let Ok((fresh, access)) = self.access(who, sandbox).await
        {
            return access.logs_in(&fresh);
        }
        true
    }
}
