//! Sandboxes and their state history.

use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use warren_keys::SandboxId;

use super::ids::{RunnerId, UserId};
use super::model::{
    NewSandbox, Sandbox, SandboxCursor, SandboxEvent, SandboxPage, SandboxQuery, SandboxState,
    Timestamp,
};
use super::{Store, StoreError, row};

const SANDBOX_COLUMNS: &str = "id, owner_id, runner_id, image, repo, branch, state, cpus, \
     memory_mb, idle_timeout_s, ttl_s, created_at, updated_at";

/// How often a state change re-reads and retries after losing a race to another
/// change of the same sandbox before giving up with `Conflict`.
const STATE_CHANGE_ATTEMPTS: usize = 8;

fn sandbox_from_row(r: &AnyRow) -> Result<Sandbox, sqlx::Error> {
    Ok(Sandbox {
        id: row::parsed(r, "id")?,
        owner_id: row::parsed(r, "owner_id")?,
        runner_id: row::opt_parsed(r, "runner_id")?,
        image: row::text(r, "image")?,
        repo: row::opt_text(r, "repo")?,
        branch: row::opt_text(r, "branch")?,
        state: row::parsed(r, "state")?,
        cpus: sqlx::Row::try_get(r, "cpus")?,
        memory_mb: row::unsigned(r, "memory_mb")?,
        idle_timeout_s: row::opt_unsigned(r, "idle_timeout_s")?,
        ttl_s: row::opt_unsigned(r, "ttl_s")?,
        created_at: row::time(r, "created_at")?,
        updated_at: row::time(r, "updated_at")?,
    })
}

fn event_from_row(r: &AnyRow) -> Result<SandboxEvent, sqlx::Error> {
    Ok(SandboxEvent {
        sandbox_id: row::parsed(r, "sandbox_id")?,
        seq: row::unsigned(r, "seq")?,
        at: row::time(r, "at")?,
        from_state: row::opt_parsed(r, "from_state")?,
        to_state: row::parsed(r, "to_state")?,
        reason: row::text(r, "reason")?,
    })
}

/// Appends the next event of `sandbox`. Callers hold the sandbox's row (they wrote
/// it earlier in the same transaction), so no other event for it is being numbered.
async fn append_event(
    conn: &mut AnyConnection,
    sandbox: &SandboxId,
    at: Timestamp,
    from: Option<SandboxState>,
    to: SandboxState,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sandbox_events (sandbox_id, seq, at, from_state, to_state, reason) \
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 \
         FROM sandbox_events WHERE sandbox_id = $1",
    )
    .bind(sandbox.as_str())
    .bind(at.unix_seconds())
    .bind(from.map(SandboxState::as_str))
    .bind(to.as_str())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

fn check_new_sandbox(new: &NewSandbox) -> Result<(), StoreError> {
    if new.image.is_empty() {
        return Err(StoreError::Invalid("image (empty)".into()));
    }
    if !(new.cpus.is_finite() && new.cpus > 0.0) {
        return Err(StoreError::Invalid("CPU limit (must be positive)".into()));
    }
    if new.memory_mb == 0 {
        return Err(StoreError::Invalid(
            "memory limit (must be positive)".into(),
        ));
    }
    Ok(())
}

impl Store {
    /// Creates a sandbox in state `creating`, with its first event ("created"). A
    /// taken id is a `Conflict`; an unknown owner or runner is `NotFound`.
    pub async fn create_sandbox(&self, new: &NewSandbox) -> Result<Sandbox, StoreError> {
        check_new_sandbox(new)?;
        let now = Timestamp::now();
        let sandbox = Sandbox {
            id: new.id.clone(),
            owner_id: new.owner_id.clone(),
            runner_id: new.runner_id.clone(),
            image: new.image.clone(),
            repo: new.repo.clone(),
            branch: new.branch.clone(),
            state: SandboxState::Creating,
            cpus: new.cpus,
            memory_mb: new.memory_mb,
            idle_timeout_s: new.idle_timeout_s,
            ttl_s: new.ttl_s,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sandboxes (id, owner_id, runner_id, image, repo, branch, state, cpus, \
             memory_mb, idle_timeout_s, ttl_s, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
        )
        .bind(sandbox.id.as_str())
        .bind(sandbox.owner_id.as_str())
        .bind(sandbox.runner_id.as_ref().map(RunnerId::as_str))
        .bind(sandbox.image.as_str())
        .bind(sandbox.repo.as_deref())
        .bind(sandbox.branch.as_deref())
        .bind(sandbox.state.as_str())
        .bind(sandbox.cpus)
        .bind(i64::from(sandbox.memory_mb))
        .bind(sandbox.idle_timeout_s.map(i64::from))
        .bind(sandbox.ttl_s.map(i64::from))
        .bind(now.unix_seconds())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            StoreError::from_write(
                e,
                || format!("sandbox id {} is taken", new.id),
                "owner or runner",
            )
        })?;
        append_event(&mut tx, &sandbox.id, now, None, sandbox.state, "created").await?;
        tx.commit().await?;
        Ok(sandbox)
    }

    pub async fn get_sandbox(&self, id: &SandboxId) -> Result<Sandbox, StoreError> {
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = $1");
        sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| sandbox_from_row(&r))
            .transpose()?
            .ok_or(StoreError::NotFound("sandbox"))
    }

    /// One page of `owner`'s sandboxes, newest first (ties broken by id, so pages
    /// never skip or repeat a sandbox).
    pub async fn list_sandboxes(
        &self,
        owner: &UserId,
        query: &SandboxQuery,
    ) -> Result<SandboxPage, StoreError> {
        let limit = query.limit.clamp(1, SandboxQuery::MAX_LIMIT);
        // Without a cursor, start past every real row: nothing is created at i64::MAX.
        let (after_time, after_id) = match &query.after {
            Some(c) => (c.created_at.unix_seconds(), c.id.as_str()),
            None => (i64::MAX, ""),
        };
        let sql = format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes \
             WHERE owner_id = $1 AND ($2 OR state <> 'deleted') \
             AND (created_at < $3 OR (created_at = $3 AND id < $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        );
        let rows = sqlx::query(&sql)
            .bind(owner.as_str())
            .bind(query.include_deleted)
            .bind(after_time)
            .bind(after_id)
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        let mut sandboxes = rows
            .iter()
            .map(sandbox_from_row)
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let more = sandboxes.len() > limit as usize;
        sandboxes.truncate(limit as usize);
        let next = if more {
            sandboxes.last().map(SandboxCursor::after)
        } else {
            None
        };
        Ok(SandboxPage { sandboxes, next })
    }

    /// The sandboxes placed on `runner` that are not deleted, oldest first.
    pub async fn list_runner_sandboxes(
        &self,
        runner: &RunnerId,
    ) -> Result<Vec<Sandbox>, StoreError> {
        let sql = format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes \
             WHERE runner_id = $1 AND state <> 'deleted' ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(runner.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(sandbox_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Moves a sandbox to state `to`, recording an event with `reason` in the same
    /// transaction. A step the state machine forbids (see [`SandboxState`]) is
    /// `InvalidTransition` and changes nothing; so is losing a race to a concurrent
    /// change that leaves the sandbox where `to` is no longer allowed.
    pub async fn set_sandbox_state(
        &self,
        id: &SandboxId,
        to: SandboxState,
        reason: &str,
    ) -> Result<Sandbox, StoreError> {
        for _ in 0..STATE_CHANGE_ATTEMPTS {
            let current = self.get_sandbox(id).await?;
            let from = current.state;
            if !from.can_become(to) {
                return Err(StoreError::InvalidTransition { from, to });
            }
            let now = Timestamp::now();
            let mut tx = self.pool.begin().await?;
            // Compare-and-set on the state just read; writing first also takes
            // SQLite's write lock before anything is read in this transaction.
            let done = sqlx::query(
                "UPDATE sandboxes SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
            )
            .bind(to.as_str())
            .bind(now.unix_seconds())
            .bind(id.as_str())
            .bind(from.as_str())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                // Changed since we read it: read again and re-check.
                tx.rollback().await?;
                continue;
            }
            append_event(&mut tx, id, now, Some(from), to, reason).await?;
            tx.commit().await?;
            return Ok(Sandbox {
                state: to,
                updated_at: now,
                ..current
            });
        }
        Err(StoreError::Conflict(
            "the sandbox's state kept changing; try again".into(),
        ))
    }

    /// A sandbox's history, oldest first; `NotFound` for an unknown sandbox (every
    /// sandbox has at least its creation event).
    pub async fn list_sandbox_events(
        &self,
        id: &SandboxId,
    ) -> Result<Vec<SandboxEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT sandbox_id, seq, at, from_state, to_state, reason FROM sandbox_events \
             WHERE sandbox_id = $1 ORDER BY seq",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(StoreError::NotFound("sandbox"));
        }
        Ok(rows
            .iter()
            .map(event_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }
}
