//! An account's SSH keys: the keys it logs in with, which its sandboxes' agents
//! accept too (synced to the runners, [`super::agent_keys`]); removing one ends the
//! logins made with it. Its API keys' revocation, which ends theirs.

use russh::keys::PublicKey;
use warren_store::events::TierEvent;
use warren_store::{ApiKeyId, SshKey, SshKeyId, User};

use super::{Error, Lifecycle, Result, validate};

/// Longest public key line accepted (RSA 16384-bit keys fit).
pub const MAX_PUBLIC_KEY: usize = 16 * 1024;

impl Lifecycle {
    /// Registers the OpenSSH public key `line` for `owner`, named `name` (default:
    /// the key's comment, else "key").
    pub async fn add_ssh_key(
        &self,
        owner: &User,
        line: &str,
        name: Option<String>,
    ) -> Result<SshKey> {
        let line = line.trim();
        if line.len() > MAX_PUBLIC_KEY {
            return Err(Error::invalid("public_key is too long"));
        }
        let key = PublicKey::from_openssh(line)
            .map_err(|_| Error::invalid("public_key is not an OpenSSH public key line"))?;
        let comment: &str = key.comment().as_ref();
        let name = match name {
            Some(name) => name,
            None if !comment.is_empty() => comment.to_owned(),
            None => "key".to_owned(),
        };
        validate::name("name", &name)?;
        let added = self.store.add_ssh_key(&owner.id, &name, &key).await?;
        super::agent_keys::sync_user(self, &owner.id).await;
        Ok(added)
    }

    /// `owner`'s SSH keys.
    pub async fn ssh_keys(&self, owner: &User) -> Result<Vec<SshKey>> {
        Ok(self.store.list_ssh_keys(&owner.id).await?)
    }

    /// Removes `owner`'s key `id` (`ssk-…`, or its `SHA256:…` fingerprint); the
    /// logins made with it end.
    pub async fn remove_ssh_key(&self, owner: &User, id: &str) -> Result<()> {
        let not_found = || Error::not_found("SSH key");
        let keys = self.store.list_ssh_keys(&owner.id).await?;
        let key = match SshKeyId::parse(id) {
            Ok(parsed) => keys.into_iter().find(|k| k.id == parsed),
            Err(_) => keys.into_iter().find(|k| k.fingerprint == id),
        }
        .ok_or_else(not_found)?;
        self.store.delete_ssh_key(&owner.id, &key.id).await?;
        super::agent_keys::sync_user(self, &owner.id).await;
        self.store
            .publish(TierEvent::SshKeyDeleted {
                user: owner.id.clone(),
                fingerprint: key.fingerprint,
            })
            .await;
        Ok(())
    }

    /// Revokes `owner`'s API key `id` (`apk-…`); the logins made with it end.
    pub async fn revoke_api_key(&self, owner: &User, id: &str) -> Result<()> {
        let id = ApiKeyId::parse(id).map_err(|_| Error::not_found("API key"))?;
        // The store tells every gateway (`TierEvent::ApiKeyRevoked`).
        self.store.revoke_api_key(&owner.id, &id).await?;
        Ok(())
    }
}
