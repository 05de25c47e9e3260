//! Sharing a sandbox: users other than its owner who may ssh into it.

use warren_keys::SandboxId;

use super::ids::UserId;
use super::model::Timestamp;
use super::{Store, StoreError, row};

impl Store {
    /// Lets `user` ssh into `sandbox`. Sharing twice is fine.
    pub async fn share_sandbox(
        &self,
        sandbox: &SandboxId,
        user: &UserId,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO sandbox_shares (sandbox_id, user_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (sandbox_id, user_id) DO NOTHING",
        )
        .bind(sandbox.as_str())
        .bind(user.as_str())
        .bind(Timestamp::now().unix_seconds())
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

    /// The users `sandbox` is shared with.
    pub async fn sandbox_shared_with(
        &self,
        sandbox: &SandboxId,
    ) -> Result<Vec<UserId>, StoreError> {
        let rows = sqlx::query(
            "SELECT user_id FROM sandbox_shares WHERE sandbox_id = $1 ORDER BY created_at, user_id",
        )
        .bind(sandbox.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| row::parsed(r, "user_id"))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
