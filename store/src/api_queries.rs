//! The few queries the HTTP API needs beyond the others: placement counts,
//! sandboxes past their time to live, and the figures `/metrics` reports.

use warren_keys::SandboxId;

use super::ids::RunnerId;
use super::model::SandboxState;
use super::model::{Sandbox, Timestamp};
use super::{Store, StoreError, row};

/// What a runner's live sandboxes (creating or running) take of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnerUsage {
    pub sandboxes: u64,
    /// The sum of their memory limits.
    pub memory_mb: u64,
    /// The sum of the disk quotas of its sandboxes that hold a disk: the live ones
    /// and the stopped ones (a stopped sandbox keeps its workspace).
    pub disk_mb: u64,
}

impl Store {
    /// What the live (creating or running) sandboxes of each runner take; stopped
    /// ones take only their disk, failed and deleted ones nothing (runners with none
    /// are absent).
    pub async fn runner_usage(&self) -> Result<Vec<(RunnerId, RunnerUsage)>, StoreError> {
        let rows = sqlx::query(
            "SELECT runner_id, \
             COUNT(CASE WHEN state <> 'stopped' THEN 1 END) AS n, \
             CAST(COALESCE(SUM(CASE WHEN state <> 'stopped' THEN memory_mb END), 0) AS BIGINT) \
             AS memory, \
             CAST(COALESCE(SUM(disk_mb), 0) AS BIGINT) AS disk \
             FROM sandboxes \
             WHERE runner_id IS NOT NULL AND state IN ('creating', 'running', 'stopped') \
             GROUP BY runner_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    row::parsed(r, "runner_id")?,
                    RunnerUsage {
                        sandboxes: row::unsigned(r, "n")?,
                        memory_mb: row::unsigned(r, "memory")?,
                        disk_mb: row::unsigned(r, "disk")?,
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// How many sandboxes that are not deleted each runner holds (runners with none
    /// are absent).
    pub async fn count_sandboxes_by_runner(&self) -> Result<Vec<(RunnerId, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT runner_id, COUNT(*) AS n FROM sandboxes \
             WHERE runner_id IS NOT NULL AND state <> 'deleted' GROUP BY runner_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((row::parsed(r, "runner_id")?, row::unsigned(r, "n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Records that `sandbox`'s tokens minted up to `at` are revoked.
    pub async fn revoke_sandbox_tokens(
        &self,
        sandbox: &SandboxId,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE sandboxes SET tokens_revoked_at = $1 WHERE id = $2")
            .bind(at.unix_seconds())
            .bind(sandbox.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("sandbox"));
        }
        Ok(())
    }

    /// When `sandbox`'s tokens were last revoked, if ever.
    pub async fn sandbox_tokens_revoked_at(
        &self,
        sandbox: &SandboxId,
    ) -> Result<Option<Timestamp>, StoreError> {
        let row = sqlx::query("SELECT tokens_revoked_at FROM sandboxes WHERE id = $1")
            .bind(sandbox.as_str())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(row::opt_time(&r, "tokens_revoked_at")?),
            None => Err(StoreError::NotFound("sandbox")),
        }
    }

    /// Sandboxes not yet deleted whose `ttl_s` has run out at `now`, oldest first.
    pub async fn list_expired_sandboxes(&self, now: Timestamp) -> Result<Vec<Sandbox>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM sandboxes WHERE state <> 'deleted' AND ttl_s IS NOT NULL \
             AND created_at + ttl_s <= $1 ORDER BY created_at, id",
        )
        .bind(now.unix_seconds())
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: SandboxId = row::parsed(r, "id")?;
            out.push(self.get_sandbox(&id).await?);
        }
        Ok(out)
    }
}

/// The SSH audit trail's totals, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SshTotals {
    /// Sessions recorded, ever.
    pub sessions: u64,
    /// Sessions not yet ended.
    pub open: u64,
    /// Bytes from clients to sandboxes, over ended sessions.
    pub bytes_in: u64,
    /// Bytes from sandboxes to clients, over ended sessions.
    pub bytes_out: u64,
}

impl Store {
    /// How many sandboxes are in each state (states with none are absent).
    pub async fn count_sandboxes_by_state(&self) -> Result<Vec<(SandboxState, u64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM sandboxes GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((row::parsed(r, "state")?, row::unsigned(r, "n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn ssh_totals(&self) -> Result<SshTotals, StoreError> {
        let r = sqlx::query(
            // CAST: PostgreSQL sums BIGINTs into NUMERIC, which the Any driver
            // cannot read.
            "SELECT COUNT(*) AS sessions, \
             CAST(COALESCE(SUM(CASE WHEN ended_at IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT) \
             AS open, \
             CAST(COALESCE(SUM(bytes_in), 0) AS BIGINT) AS bytes_in, \
             CAST(COALESCE(SUM(bytes_out), 0) AS BIGINT) AS bytes_out FROM ssh_sessions",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(SshTotals {
            sessions: row::unsigned(&r, "sessions")?,
            open: row::unsigned(&r, "open")?,
            bytes_in: row::unsigned(&r, "bytes_in")?,
            bytes_out: row::unsigned(&r, "bytes_out")?,
        })
    }
}
