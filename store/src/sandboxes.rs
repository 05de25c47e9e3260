//! Sandboxes and their state history.

use std::sync::Arc;

use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use warren_keys::SandboxId;

use super::events::TierEvent;
use super::ids::{RunnerId, UserId};
use super::model::{
    NewSandbox, Sandbox, SandboxCursor, SandboxEvent, SandboxPage, SandboxQuery, SandboxState,
    Timestamp,
};
use super::{Backend, Store, StoreError, row};

const SANDBOX_COLUMNS: &str = "id, owner_id, runner_id, image, repo, branch, forward_agent, \
     state, cpus, memory_mb, idle_timeout_s, ttl_s, disk_mb, created_at, updated_at";

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
        forward_agent: row::flag(r, "forward_agent")?,
        state: row::parsed(r, "state")?,
        cpus: sqlx::Row::try_get(r, "cpus")?,
        memory_mb: row::unsigned(r, "memory_mb")?,
        idle_timeout_s: row::opt_unsigned(r, "idle_timeout_s")?,
        ttl_s: row::opt_unsigned(r, "ttl_s")?,
        disk_mb: row::opt_unsigned(r, "disk_mb")?,
        created_at: row::time(r, "created_at")?,
        updated_at: row::time(r, "updated_at")?,
    })
}

/// On SQLite, a page of sandboxes comes back as one JSON text value (an array of
/// arrays, in [`sandboxes_from_json`]'s order) rather than one row per sandbox: sqlx's
/// SQLite driver copies every column of every row (`sqlite3_value_dup`, through
/// SQLite's global allocator lock) on its worker thread and hands rows over one at a
/// time through a channel, which made a page of 50 cost some 650 locked allocations
/// and as many frees and many thread wake-ups. `cpus` is passed as text with 17
/// significant digits, which parses back to the same `f64` (SQLite's JSON would round
/// it to 15). The aggregate's order is not guaranteed, so the page is sorted again.
/// `owner_id` is left out: it is the owner asked for.
const SQLITE_PAGE_JSON: &str = "json_group_array(json_array(id, runner_id, image, repo, \
     branch, forward_agent, state, printf('%!.17g', cpus), memory_mb, idle_timeout_s, ttl_s, \
     created_at, updated_at, disk_mb))";

/// One sandbox of [`SQLITE_PAGE_JSON`].
type SandboxJson = (
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    i64,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
    Option<i64>,
);

/// The sandboxes of a [`SQLITE_PAGE_JSON`] value, all owned by `owner`, newest first.
fn sandboxes_from_json(owner: &UserId, json: &str) -> Result<Vec<Sandbox>, sqlx::Error> {
    fn invalid(col: &str, e: impl Into<sqlx::error::BoxDynError>) -> sqlx::Error {
        sqlx::Error::ColumnDecode {
            index: col.to_owned(),
            source: e.into(),
        }
    }
    fn parse<T>(col: &str, s: &str) -> Result<T, sqlx::Error>
    where
        T: std::str::FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        s.parse().map_err(|e| invalid(col, Box::new(e)))
    }
    fn unsigned(col: &str, v: i64) -> Result<u32, sqlx::Error> {
        u32::try_from(v).map_err(|_| invalid(col, "value out of range"))
    }
    let items: Vec<SandboxJson> = serde_json::from_str(json).map_err(|e| invalid("page", e))?;
    let mut out = items
        .into_iter()
        .map(|item| {
            let (
                id,
                runner,
                image,
                repo,
                branch,
                forward_agent,
                state,
                cpus,
                memory,
                idle,
                ttl,
                created,
                updated,
                disk,
            ) = item;
            Ok(Sandbox {
                id: parse("id", &id)?,
                owner_id: owner.clone(),
                runner_id: runner.map(|r| parse("runner_id", &r)).transpose()?,
                image,
                repo,
                branch,
                forward_agent: forward_agent != 0,
                state: parse("state", &state)?,
                cpus: parse("cpus", &cpus)?,
                memory_mb: unsigned("memory_mb", memory)?,
                idle_timeout_s: idle.map(|v| unsigned("idle_timeout_s", v)).transpose()?,
                ttl_s: ttl.map(|v| unsigned("ttl_s", v)).transpose()?,
                disk_mb: disk.map(|v| unsigned("disk_mb", v)).transpose()?,
                created_at: Timestamp::from_unix_seconds(created),
                updated_at: Timestamp::from_unix_seconds(updated),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    out.sort_by(|a, b| {
        (b.created_at.unix_seconds(), b.id.as_str())
            .cmp(&(a.created_at.unix_seconds(), a.id.as_str()))
    });
    Ok(out)
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
    if new.disk_mb == Some(0) {
        return Err(StoreError::Invalid("disk quota (must be positive)".into()));
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
            forward_agent: new.forward_agent,
            state: SandboxState::Creating,
            cpus: new.cpus,
            memory_mb: new.memory_mb,
            idle_timeout_s: new.idle_timeout_s,
            ttl_s: new.ttl_s,
            disk_mb: new.disk_mb,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sandboxes (id, owner_id, runner_id, image, repo, branch, state, cpus, \
             memory_mb, idle_timeout_s, ttl_s, created_at, updated_at, forward_agent, disk_mb) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13, $14)",
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
        .bind(i64::from(sandbox.forward_agent))
        .bind(sandbox.disk_mb.map(i64::from))
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
        let committed = tx.commit().await;
        self.pages.invalidate();
        committed?;
        self.publish(TierEvent::SandboxesChanged).await;
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
    ) -> Result<Arc<SandboxPage>, StoreError> {
        let limit = query.limit.clamp(1, SandboxQuery::MAX_LIMIT);
        // Without a cursor, start past every real row: nothing is created at i64::MAX.
        let (after_time, after_id) = match &query.after {
            Some(c) => (c.created_at.unix_seconds(), c.id.as_str()),
            None => (i64::MAX, ""),
        };
        let key = (
            owner.as_str().to_owned(),
            limit,
            query.include_deleted,
            after_time,
            after_id.to_owned(),
        );
        if let Some(page) = self.pages.get(&key) {
            return Ok(page);
        }
        let generation = self.pages.generation();
        let page = format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes \
             WHERE owner_id = $1 AND ($2 OR state <> 'deleted') \
             AND (created_at < $3 OR (created_at = $3 AND id < $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        );
        let sql = match self.backend {
            Backend::Sqlite => format!("SELECT {SQLITE_PAGE_JSON} AS page FROM ({page}) AS p"),
            _ => page,
        };
        let query_rows = sqlx::query(&sql)
            .bind(owner.as_str())
            .bind(query.include_deleted)
            .bind(after_time)
            .bind(after_id)
            .bind(i64::from(limit) + 1);
        let mut sandboxes = match self.backend {
            Backend::Sqlite => {
                let r = query_rows.fetch_one(&self.pool).await?;
                sandboxes_from_json(owner, &row::text(&r, "page")?)?
            }
            _ => query_rows
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(sandbox_from_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()?,
        };
        let more = sandboxes.len() > limit as usize;
        sandboxes.truncate(limit as usize);
        let next = if more {
            sandboxes.last().map(SandboxCursor::after)
        } else {
            None
        };
        let page = Arc::new(SandboxPage::new(sandboxes, next));
        self.pages.put(key, page.clone(), generation);
        Ok(page)
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
            let committed = tx.commit().await;
            self.pages.invalidate();
            committed?;
            self.publish(TierEvent::SandboxesChanged).await;
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

    /// Sets a sandbox's CPU and memory limits (a devcontainer.json's
    /// `hostRequirements` chose them on its runner).
    pub async fn set_sandbox_limits(
        &self,
        id: &SandboxId,
        cpus: f64,
        memory_mb: u32,
    ) -> Result<(), StoreError> {
        if !(cpus.is_finite() && cpus > 0.0) || memory_mb == 0 {
            return Err(StoreError::Invalid("limits must be positive".into()));
        }
        let done = sqlx::query(
            "UPDATE sandboxes SET cpus = $1, memory_mb = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(cpus)
        .bind(i64::from(memory_mb))
        .bind(Timestamp::now().unix_seconds())
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        self.pages.invalidate();
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("sandbox"));
        }
        self.publish(TierEvent::SandboxesChanged).await;
        Ok(())
    }

    /// Adds a line to a sandbox's history without changing its state (what a
    /// create's devcontainer.json did, say).
    pub async fn note_sandbox_event(&self, id: &SandboxId, reason: &str) -> Result<(), StoreError> {
        let current = self.get_sandbox(id).await?;
        let mut conn = self.pool.acquire().await?;
        let state = current.state;
        append_event(&mut conn, id, Timestamp::now(), Some(state), state, reason).await?;
        Ok(())
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

/// Token revocation and time to live.
impl Store {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A SQLite page (one JSON value) reads back exactly what `get_sandbox` reads,
    /// CPU limits to the last bit included.
    #[tokio::test]
    async fn sqlite_pages_match_single_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_data_dir(dir.path()).await.unwrap();
        let owner = store.create_user("alice", false).await.unwrap();
        let cpus = [
            0.1,
            1.0 / 3.0,
            0.300_000_000_000_000_04,
            15.999_999_999_999_998,
            2.0,
        ];
        for (i, cpus) in cpus.into_iter().enumerate() {
            store
                .create_sandbox(&NewSandbox {
                    id: SandboxId::generate(),
                    owner_id: owner.id.clone(),
                    runner_id: None,
                    image: format!("img \"{i}\"\n\\é"),
                    repo: (i % 2 == 0).then(|| format!("https://example.com/{i}.git")),
                    branch: (i == 2).then(|| "main".to_owned()),
                    forward_agent: i == 4,
                    cpus,
                    memory_mb: 512 + u32::try_from(i).unwrap(),
                    idle_timeout_s: (i == 1).then_some(60),
                    ttl_s: (i == 3).then_some(u32::MAX),
                    disk_mb: (i == 4).then_some(2048),
                })
                .await
                .unwrap();
        }
        let page = store
            .list_sandboxes(&owner.id, &SandboxQuery::default())
            .await
            .unwrap();
        assert_eq!(page.sandboxes.len(), cpus.len());
        assert!(page.next.is_none());
        for s in &page.sandboxes {
            let single = store.get_sandbox(&s.id).await.unwrap();
            assert_eq!(format!("{s:?}"), format!("{single:?}"));
            assert_eq!(s.cpus.to_bits(), single.cpus.to_bits());
        }
        let empty = store
            .list_sandboxes(
                &store.create_user("bob", false).await.unwrap().id,
                &SandboxQuery::default(),
            )
            .await
            .unwrap();
        assert!(empty.sandboxes.is_empty() && empty.next.is_none());
    }
}
