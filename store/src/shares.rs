//! Sharing a sandbox: users other than its owner who may ssh into it; and the keys
//! that follow from that for the agents' own checks (jump mode).

use std::collections::{BTreeMap, BTreeSet};

use warren_keys::SandboxId;

use super::ids::{RunnerId, UserId};
use super::model::Timestamp;
use super::{Store, StoreError, row};

/// The agent's authorized-keys option for a key whose sessions do not get the
/// sandbox's secrets (`agent/src/auth.rs` reads it).
pub const NO_SECRETS_OPTION: &str = "warren-no-secrets";
/// The option before the owner's keys when the sandbox lets the owner forward an
/// SSH agent (`forward_agent`); the agent refuses `ssh -A` to every other key.
pub const FORWARD_AGENT_OPTION: &str = "warren-forward-agent";

impl Store {
    /// Lets `user` ssh into `sandbox`, with its create-time environment (secrets)
    /// in their sessions or not. Sharing again updates `secrets`.
    pub async fn share_sandbox(
        &self,
        sandbox: &SandboxId,
        user: &UserId,
        secrets: bool,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO sandbox_shares (sandbox_id, user_id, created_at, secrets) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (sandbox_id, user_id) DO UPDATE SET secrets = excluded.secrets",
        )
        .bind(sandbox.as_str())
        .bind(user.as_str())
        .bind(Timestamp::now().unix_seconds())
        .bind(i64::from(secrets))
        .execute(&self.pool)
        .await;
        match done {
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the share back; `false` if there was none.
    pub async fn unshare_sandbox(
        &self,
        sandbox: &SandboxId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM sandbox_shares WHERE sandbox_id = $1 AND user_id = $2")
            .bind(sandbox.as_str())
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The users `sandbox` is shared with that get its secrets too.
    pub async fn sandbox_shared_with_secrets(
        &self,
        sandbox: &SandboxId,
    ) -> Result<Vec<UserId>, StoreError> {
        self.shares_where(sandbox, "AND secrets = 1").await
    }

    /// The users `sandbox` is shared with.
    pub async fn sandbox_shared_with(
        &self,
        sandbox: &SandboxId,
    ) -> Result<Vec<UserId>, StoreError> {
        self.shares_where(sandbox, "").await
    }

    /// `sandbox`'s shares' users, oldest first; `and` is a fixed extra condition.
    async fn shares_where(
        &self,
        sandbox: &SandboxId,
        and: &str,
    ) -> Result<Vec<UserId>, StoreError> {
        let sql = format!(
            "SELECT user_id FROM sandbox_shares WHERE sandbox_id = $1 {and} \
             ORDER BY created_at, user_id"
        );
        let rows = sqlx::query(&sql)
            .bind(sandbox.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| row::parsed(r, "user_id"))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The OpenSSH key lines that may log in to each of `runner`'s sandboxes (not
    /// deleted) at its agent, as in jump mode: its owner's keys and those of the
    /// users it is shared with. Every such sandbox is in the map, with no keys if
    /// none of them has one.
    pub async fn runner_authorized_keys(
        &self,
        runner: &RunnerId,
    ) -> Result<BTreeMap<SandboxId, BTreeSet<String>>, StoreError> {
        self.authorized_keys_where("s.runner_id = $1", runner.as_str())
            .await
    }

    /// The same for one sandbox (an empty map if it is deleted or unknown).
    pub async fn sandbox_authorized_keys(
        &self,
        sandbox: &SandboxId,
    ) -> Result<BTreeSet<String>, StoreError> {
        let mut all = self
            .authorized_keys_where("s.id = $1", sandbox.as_str())
            .await?;
        Ok(all.remove(sandbox).unwrap_or_default())
    }

    /// The runners holding sandboxes (not deleted) that `user` owns or that are
    /// shared with them: where a change to the user's keys must reach.
    pub async fn runners_of_user_sandboxes(
        &self,
        user: &UserId,
    ) -> Result<Vec<RunnerId>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT runner_id FROM sandboxes \
             WHERE runner_id IS NOT NULL AND state <> 'deleted' AND (owner_id = $1 \
             OR id IN (SELECT sandbox_id FROM sandbox_shares WHERE user_id = $1)) \
             ORDER BY runner_id",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| row::parsed(r, "runner_id"))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// `filter` is a fixed condition on `sandboxes s` with one parameter, `value`.
    async fn authorized_keys_where(
        &self,
        filter: &str,
        value: &str,
    ) -> Result<BTreeMap<SandboxId, BTreeSet<String>>, StoreError> {
        let live = format!("{filter} AND s.state <> 'deleted'");
        let mut keys: BTreeMap<SandboxId, BTreeSet<String>> = BTreeMap::new();
        let sql = format!("SELECT s.id AS sandbox_id FROM sandboxes s WHERE {live}");
        for r in &sqlx::query(&sql).bind(value).fetch_all(&self.pool).await? {
            keys.insert(row::parsed(r, "sandbox_id")?, BTreeSet::new());
        }
        let with_keys = [
            // The owner's keys.
            format!(
                "SELECT s.id AS sandbox_id, k.public_key, s.forward_agent FROM sandboxes s \
                 JOIN ssh_keys k ON k.user_id = s.owner_id WHERE {live}"
            ),
            // The keys of the users it is shared with; without the sandbox's
            // secrets unless the share gives them.
            format!(
                "SELECT s.id AS sandbox_id, k.public_key, sh.secrets FROM sandboxes s \
                 JOIN sandbox_shares sh ON sh.sandbox_id = s.id \
                 JOIN ssh_keys k ON k.user_id = sh.user_id WHERE {live}"
            ),
        ];
        for sql in &with_keys {
            for r in &sqlx::query(sql).bind(value).fetch_all(&self.pool).await? {
                let sandbox: SandboxId = row::parsed(r, "sandbox_id")?;
                let key = row::text(r, "public_key")?;
                let withheld = sql.contains("sh.secrets") && !row::flag(r, "secrets")?;
                let forwards = !sql.contains("sh.secrets") && row::flag(r, "forward_agent")?;
                let line = if withheld {
                    format!("{NO_SECRETS_OPTION} {key}")
                } else if forwards {
                    format!("{FORWARD_AGENT_OPTION} {key}")
                } else {
                    key
                };
                keys.entry(sandbox).or_default().insert(line);
            }
        }
        Ok(keys)
    }
}
