//! Snapshots (issue 26): whose they are, which runner keeps them, what they were
//! taken of. Not their env: that stays on the runner with the snapshot.

use sqlx::any::AnyRow;
use warren_keys::{SandboxId, SnapshotId};

use super::ids::{RunnerId, UserId};
use super::model::Timestamp;
use super::{Store, StoreError, row};

/// A snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub owner_id: UserId,
    /// The sandbox it was taken of (which may since have been deleted).
    pub source_id: SandboxId,
    /// The runner that keeps it.
    pub runner_id: RunnerId,
    pub name: Option<String>,
    /// The image its source was made from.
    pub image: String,
    /// The source's spec as JSON, without env or repository token (the gateway
    /// reads it).
    pub spec: String,
    /// The source's repository and branch, if it had one: forks branch from it and
    /// open pull requests against its base.
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub size_bytes: u64,
    /// How long the source was frozen for the capture.
    pub frozen_ms: u64,
    pub created_at: Timestamp,
}

/// What [`Store::create_snapshot`] takes.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub id: SnapshotId,
    pub owner_id: UserId,
    pub source_id: SandboxId,
    pub runner_id: RunnerId,
    pub name: Option<String>,
    pub image: String,
    pub spec: String,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub size_bytes: u64,
    pub frozen_ms: u64,
}

const COLUMNS: &str = "id, owner_id, source_id, runner_id, name, image, spec, repo, branch, \
                       size_bytes, frozen_ms, created_at";

fn from_row(r: &AnyRow) -> Result<Snapshot, sqlx::Error> {
    Ok(Snapshot {
        id: row::parsed(r, "id")?,
        owner_id: row::parsed(r, "owner_id")?,
        source_id: row::parsed(r, "source_id")?,
        runner_id: row::parsed(r, "runner_id")?,
        name: row::opt_text(r, "name")?,
        image: row::text(r, "image")?,
        spec: row::text(r, "spec")?,
        repo: row::opt_text(r, "repo")?,
        branch: row::opt_text(r, "branch")?,
        size_bytes: row::unsigned(r, "size_bytes")?,
        frozen_ms: row::unsigned(r, "frozen_ms")?,
        created_at: row::time(r, "created_at")?,
    })
}

impl Store {
    /// Records a snapshot. A taken id is a `Conflict`; an unknown owner or runner
    /// is `NotFound`.
    pub async fn create_snapshot(&self, new: &NewSnapshot) -> Result<Snapshot, StoreError> {
        if new.image.is_empty() {
            return Err(StoreError::Invalid("image (empty)".into()));
        }
        let now = Timestamp::now();
        sqlx::query(
            "INSERT INTO snapshots (id, owner_id, source_id, runner_id, name, image, spec, \
             repo, branch, size_bytes, frozen_ms, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(new.id.as_str())
        .bind(new.owner_id.as_str())
        .bind(new.source_id.as_str())
        .bind(new.runner_id.as_str())
        .bind(new.name.as_deref())
        .bind(new.image.as_str())
        .bind(new.spec.as_str())
        .bind(new.repo.as_deref())
        .bind(new.branch.as_deref())
        .bind(row::to_i64(new.size_bytes))
        .bind(row::to_i64(new.frozen_ms))
        .bind(now.unix_seconds())
        .execute(&self.pool)
        .await
        .map_err(|e| {
            StoreError::from_write(
                e,
                || format!("snapshot id {} is taken", new.id),
                "owner or runner",
            )
        })?;
        Ok(Snapshot {
            id: new.id.clone(),
            owner_id: new.owner_id.clone(),
            source_id: new.source_id.clone(),
            runner_id: new.runner_id.clone(),
            name: new.name.clone(),
            image: new.image.clone(),
            spec: new.spec.clone(),
            repo: new.repo.clone(),
            branch: new.branch.clone(),
            size_bytes: new.size_bytes,
            frozen_ms: new.frozen_ms,
            created_at: now,
        })
    }

    pub async fn get_snapshot(&self, id: &SnapshotId) -> Result<Snapshot, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM snapshots WHERE id = $1");
        sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| from_row(&r))
            .transpose()?
            .ok_or(StoreError::NotFound("snapshot"))
    }

    /// The snapshots of `owner` (all of them for `None`), newest first.
    pub async fn list_snapshots(
        &self,
        owner: Option<&UserId>,
    ) -> Result<Vec<Snapshot>, StoreError> {
        let rows = match owner {
            Some(owner) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM snapshots WHERE owner_id = $1 \
                     ORDER BY created_at DESC, id DESC"
                );
                sqlx::query(&sql)
                    .bind(owner.as_str())
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql =
                    format!("SELECT {COLUMNS} FROM snapshots ORDER BY created_at DESC, id DESC");
                sqlx::query(&sql).fetch_all(&self.pool).await?
            }
        };
        Ok(rows
            .iter()
            .map(from_row)
            .collect::<Result<Vec<_>, sqlx::Error>>()?)
    }

    /// How many snapshots `owner` has (they count against the owner's quota).
    pub async fn count_snapshots(&self, owner: &UserId) -> Result<u64, StoreError> {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM snapshots WHERE owner_id = $1")
            .bind(owner.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(row::unsigned(&r, "n")?)
    }

    /// Forgets a snapshot; `false` if there was none.
    pub async fn delete_snapshot(&self, id: &SnapshotId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
