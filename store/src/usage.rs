//! Counts and totals over many rows: what each runner's sandboxes take of it (for
//! placement), and the figures `/metrics` reports. Not for: one sandbox's or one
//! session's rows (`sandboxes.rs`, `sessions.rs`).

use super::ids::RunnerId;
use super::model::SandboxState;
use super::{Store, StoreError, row};

/// What a runner's live sandboxes (creating or running) take of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnerUsage {
    pub sandboxes: u64,
    /// The sum of their memory limits.
    pub memory_mb: u64,
    /// The sum of the disk quotas of its sandboxes that hold a disk (the live ones
    /// and the stopped ones: a stopped sandbox keeps its workspace), and the size of
    /// the snapshots it keeps.
    pub disk_mb: u64,
}

impl Store {
    /// What the live (creating or running) sandboxes of each runner take; stopped
    /// ones take only their disk, failed and deleted ones nothing, snapshots their
    /// size on disk (runners with none of these are absent).
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
        let mut usage = rows
            .iter()
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
            .collect::<Result<Vec<(RunnerId, RunnerUsage)>, sqlx::Error>>()?;
        // A snapshot's copy of its source's disk and its root layer stay on the
        // runner (forks share them): they take its disk as a sandbox's quota does.
        let snapshots = sqlx::query(
            "SELECT runner_id, CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) AS bytes \
             FROM snapshots GROUP BY runner_id",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &snapshots {
            let runner: RunnerId = row::parsed(r, "runner_id")?;
            let mb = row::unsigned::<u64>(r, "bytes")?.div_ceil(1 << 20);
            match usage.iter_mut().find(|(id, _)| *id == runner) {
                Some((_, used)) => used.disk_mb = used.disk_mb.saturating_add(mb),
                None => usage.push((
                    runner,
                    RunnerUsage {
                        disk_mb: mb,
                        ..RunnerUsage::default()
                    },
                )),
            }
        }
        Ok(usage)
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
