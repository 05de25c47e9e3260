//! Sharing a sandbox: its owner lets other accounts log in to it (relay and jump
//! mode), with or without its create-time environment (its secrets). What a share
//! allows is [`super::access`]'s; here it is written: the store, the agent's keys
//! (a shared user's keys open the sandbox in jump mode), and the live logins a
//! share taken back (or its secrets) ends. The HTTP API and the console both call
//! these.

use warren_store::events::TierEvent;
use warren_store::{Sandbox, StoreError, User};

use super::access::Shares;
use super::{Error, Lifecycle, Result};

/// Who a sandbox is shared with, by account name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareNames {
    /// Every account it is shared with, oldest share first.
    pub users: Vec<String>,
    /// Those of them whose sessions get its secrets.
    pub with_secrets: Vec<String>,
}

impl Lifecycle {
    /// Shares `owner`'s sandbox `id` with the account `name` (`secrets`: with its
    /// create-time environment); sharing again updates that. Taking the secrets
    /// away ends that user's live logins to it, as an unshare does.
    pub async fn share(
        &self,
        owner: &User,
        id: &str,
        name: &str,
        secrets: bool,
    ) -> Result<ShareNames> {
        let sandbox = self.managed(owner, id).await?;
        let user = self.account(name, "user").await?;
        if user.id == owner.id {
            return Err(Error::invalid("a sandbox is always its owner's"));
        }
        let had_secrets = Shares::read(&self.store, &sandbox.id)
            .await?
            .with_secrets
            .contains(&user.id);
        self.store
            .share_sandbox(&sandbox.id, &user.id, secrets)
            .await?;
        super::agent_keys::sync_sandbox(self, &sandbox).await;
        // Taking secrets away must bite at once, as an unshare does (once the agent's
        // keys changed, so that a jump-mode reconnect meets the new ones).
        if had_secrets && !secrets {
            self.store
                .publish(TierEvent::ShareTaken {
                    user: user.id.clone(),
                    sandbox: sandbox.id.clone(),
                    secrets_only: true,
                })
                .await;
        }
        self.share_names(&sandbox).await
    }

    /// Takes back the share of `owner`'s sandbox `id` with the account `name`; that
    /// user's live logins to it end.
    pub async fn unshare(&self, owner: &User, id: &str, name: &str) -> Result<()> {
        let sandbox = self.managed(owner, id).await?;
        let user = self.account(name, "share").await?;
        if !self.store.unshare_sandbox(&sandbox.id, &user.id).await? {
            return Err(Error::not_found("share"));
        }
        super::agent_keys::sync_sandbox(self, &sandbox).await;
        self.store
            .publish(TierEvent::ShareTaken {
                user: user.id,
                sandbox: sandbox.id,
                secrets_only: false,
            })
            .await;
        Ok(())
    }

    /// Who `owner`'s sandbox `id` is shared with.
    pub async fn shares(&self, owner: &User, id: &str) -> Result<ShareNames> {
        let sandbox = self.managed(owner, id).await?;
        self.share_names(&sandbox).await
    }

    /// The account `name`; an unknown or malformed one is "`what` not found".
    async fn account(&self, name: &str, what: &str) -> Result<User> {
        match self.store.get_user_by_name(name).await {
            Ok(user) => Ok(user),
            Err(StoreError::NotFound(_)) | Err(StoreError::Invalid(_)) => {
                Err(Error::not_found(what))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn share_names(&self, sandbox: &Sandbox) -> Result<ShareNames> {
        let shares = Shares::read(&self.store, &sandbox.id).await?;
        let mut names = ShareNames::default();
        for id in &shares.users {
            names.users.push(self.store.get_user(id).await?.name);
        }
        for id in &shares.with_secrets {
            names.with_secrets.push(self.store.get_user(id).await?.name);
        }
        Ok(names)
    }
}
