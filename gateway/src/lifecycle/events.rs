//! The other half of [`warren_store::events`]: what a gateway does with the tier's
//! events, its own and the other gateways' alike (one code path on SQLite and
//! PostgreSQL). Each event ends the live logins it took away, through
//! [`super::live`]'s revocation paths, with the reason the user sees; a resync
//! (events may have been missed) forgets every cache and checks every live login
//! again against the store.
//!
//! For: applying decisions already made and stored. Not for: making them (the
//! lifecycle's calls in `keys`, `shares`, `tokens` and `sandboxes` write the store,
//! then publish).

use std::sync::Arc;

use warren_store::events::{Delivery, TierEvent};

use super::Lifecycle;
use super::live::{LiveLogin, Via};

/// Applies every event the store delivers, until the task is aborted. Subscribes
/// before it returns, so nothing published after this call is missed.
pub fn spawn_applier(lc: Arc<Lifecycle>) -> tokio::task::JoinHandle<()> {
    let mut events = lc.store.subscribe();
    tokio::spawn(async move {
        loop {
            match events.next().await {
                Delivery::Event(event) => lc.apply(&event),
                Delivery::Resync => lc.resync().await,
            }
        }
    })
}

impl Lifecycle {
    /// Ends the live logins `event` took away (the store's caches are the store's).
    pub fn apply(&self, event: &TierEvent) {
        let live = &self.live;
        match event {
            TierEvent::ApiKeyRevoked { key } => {
                live.end_api_key(key, "the API key was revoked");
            }
            TierEvent::SshKeyDeleted { user, fingerprint } => {
                live.end_key(user, fingerprint, "the SSH key was deleted");
            }
            TierEvent::ShareTaken {
                user,
                sandbox,
                secrets_only,
            } => {
                let reason = if *secrets_only {
                    format!("{sandbox} is now shared with you without its secrets")
                } else {
                    format!("{sandbox} is no longer shared with you")
                };
                live.end_user_on_sandbox(user, sandbox, &reason);
            }
            TierEvent::TokensRevoked { sandbox } => {
                live.end_tokens(sandbox, &format!("the tokens of {sandbox} were revoked"));
            }
            TierEvent::SandboxStopped { sandbox } => {
                live.end_sandbox(sandbox, &format!("{sandbox} was stopped"));
            }
            TierEvent::SandboxDeleted { sandbox } => {
                // Another gateway's delete: what this one remembers of it goes too.
                self.forget(sandbox);
                live.end_sandbox(sandbox, &format!("{sandbox} was deleted"));
            }
            TierEvent::SandboxesChanged => {}
        }
    }

    /// Events may have been missed: forget every cache and end each live login
    /// whose key, API key, token or access no longer holds.
    pub async fn resync(&self) {
        self.store.invalidate_caches();
        let logins = self.live.logins();
        let mut ended = 0;
        for login in logins {
            if !self.still_holds(&login).await {
                ended += self.live.end_login(login.id, "access changed while away");
            }
        }
        tracing::info!(ended, "resynced with the other gateways");
    }

    async fn still_holds(&self, login: &LiveLogin) -> bool {
        if login.sandboxes.is_empty() {
            return self.login_holds(&login.principal, &login.via, None).await;
        }
        for sandbox in &login.sandboxes {
            if !self
                .login_holds(&login.principal, &login.via, Some(sandbox))
                .await
            {
                return false;
            }
            if login.via == Via::Token
                && let Ok(Some(revoked)) = self.store.sandbox_tokens_revoked_at(sandbox).await
                && revoked.unix_seconds() >= login.since
            {
                return false;
            }
        }
        true
    }
}
