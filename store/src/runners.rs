//! Runners and the one-time join tokens they register with.

use std::time::Duration;

use russh::keys::PublicKey;
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use warren_keys::{generate_secret, hash_secret};

use super::ids::{JoinTokenId, ParseError, RunnerId};
use super::model::{CreatedJoinToken, Label, NewRunner, Runner, RunnerState, Timestamp};
use super::{Store, StoreError, check_name, row};

/// What [`warren_keys::generate_secret`] puts in front of join tokens.
const JOIN_TOKEN_KIND: &str = "wj";

const RUNNER_COLUMNS: &str =
    "id, name, public_key, labels, capacity, state, last_seen_at, created_at";

/// Labels are stored sorted and comma-separated (a [`Label`] has no commas).
fn encode_labels(labels: &[Label]) -> (Vec<Label>, String) {
    let mut labels = labels.to_vec();
    labels.sort();
    labels.dedup();
    let text = labels
        .iter()
        .map(Label::as_str)
        .collect::<Vec<_>>()
        .join(",");
    (labels, text)
}

fn decode_labels(text: &str) -> Result<Vec<Label>, ParseError> {
    text.split(',')
        .filter(|l| !l.is_empty())
        .map(Label::parse)
        .collect()
}

fn runner_from_row(r: &AnyRow) -> Result<Runner, sqlx::Error> {
    let labels = row::text(r, "labels")?;
    Ok(Runner {
        id: row::parsed(r, "id")?,
        name: row::text(r, "name")?,
        public_key: row::public_key(r, "public_key")?,
        labels: decode_labels(&labels).map_err(|e| sqlx::Error::ColumnDecode {
            index: "labels".into(),
            source: Box::new(e),
        })?,
        capacity: row::unsigned(r, "capacity")?,
        state: row::parsed(r, "state")?,
        last_seen_at: row::opt_time(r, "last_seen_at")?,
        created_at: row::time(r, "created_at")?,
    })
}

/// Marks the join token whose secret hashes to `hash` used, if it is unused and
/// unexpired, in one conditional statement (so of concurrent consumers exactly one
/// wins). Otherwise says why not.
async fn consume_join_token(
    conn: &mut AnyConnection,
    secret: &str,
) -> Result<JoinTokenId, StoreError> {
    // Looked up by hash: the hash of a 256-bit random secret reveals nothing useful,
    // so the database's ordinary (not constant-time) comparison is fine here.
    let hash = hash_secret(secret);
    let now = Timestamp::now().unix_seconds();
    let consumed = sqlx::query(
        "UPDATE join_tokens SET used_at = $1 \
         WHERE hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING id",
    )
    .bind(now)
    .bind(hash.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(r) = consumed {
        return Ok(row::parsed(&r, "id")?);
    }
    let token = sqlx::query("SELECT used_at FROM join_tokens WHERE hash = $1")
        .bind(hash.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    Err(match token {
        None => StoreError::NotFound("join token"),
        Some(r) if row::opt_int(&r, "used_at")?.is_some() => {
            StoreError::Conflict("join token already used".into())
        }
        Some(_) => StoreError::Conflict("join token expired".into()),
    })
}

async fn insert_runner(conn: &mut AnyConnection, new: &NewRunner) -> Result<Runner, StoreError> {
    check_name("runner name", &new.name)?;
    let line = row::openssh_line(&new.public_key)?;
    let (labels, labels_text) = encode_labels(&new.labels);
    let runner = Runner {
        id: RunnerId::generate(),
        name: new.name.clone(),
        public_key: PublicKey::new(new.public_key.key_data().clone(), ""),
        labels,
        capacity: new.capacity,
        state: RunnerState::Offline,
        last_seen_at: None,
        created_at: Timestamp::now(),
    };
    sqlx::query(
        "INSERT INTO runners (id, name, public_key, labels, capacity, state, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(runner.id.as_str())
    .bind(runner.name.as_str())
    .bind(line.as_str())
    .bind(labels_text.as_str())
    .bind(i64::from(runner.capacity))
    .bind(runner.state.as_str())
    .bind(runner.created_at.unix_seconds())
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        StoreError::from_write(
            e,
            || "a runner with this name or key is already registered".into(),
            "runner",
        )
    })?;
    Ok(runner)
}

impl Store {
    /// Creates a one-time join token (`wj_…`) valid for `ttl`. The secret is in the
    /// result only; the database keeps its hash.
    pub async fn create_join_token(&self, ttl: Duration) -> Result<CreatedJoinToken, StoreError> {
        let (secret, hash) = generate_secret(JOIN_TOKEN_KIND);
        let now = Timestamp::now();
        let token = CreatedJoinToken {
            id: JoinTokenId::generate(),
            expires_at: now.saturating_add(ttl),
            secret,
        };
        sqlx::query(
            "INSERT INTO join_tokens (id, hash, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token.id.as_str())
        .bind(hash.as_str())
        .bind(now.unix_seconds())
        .bind(token.expires_at.unix_seconds())
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Uses up a join token: `NotFound` if there is no such token, `Conflict` if it
    /// is used or expired (a token expires at `expires_at`, not a second later).
    pub async fn consume_join_token(&self, secret: &str) -> Result<JoinTokenId, StoreError> {
        let mut conn = self.pool.acquire().await?;
        consume_join_token(&mut conn, secret).await
    }

    /// A runner joining: consumes the join token and registers the runner, in one
    /// transaction, so a refused registration (name or key taken) leaves the token
    /// unused, and a refused token registers nothing.
    pub async fn join_runner(&self, secret: &str, new: &NewRunner) -> Result<Runner, StoreError> {
        let mut tx = self.pool.begin().await?;
        let token = consume_join_token(&mut tx, secret).await?;
        let runner = insert_runner(&mut tx, new).await?;
        sqlx::query("UPDATE join_tokens SET runner_id = $1 WHERE id = $2")
            .bind(runner.id.as_str())
            .bind(token.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(runner)
    }

    /// Registers a runner without a join token (for operators and tests). It starts
    /// `Offline`. A taken name or key is a `Conflict`.
    pub async fn register_runner(&self, new: &NewRunner) -> Result<Runner, StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_runner(&mut conn, new).await
    }

    pub async fn get_runner(&self, id: &RunnerId) -> Result<Runner, StoreError> {
        let sql = format!("SELECT {RUNNER_COLUMNS} FROM runners WHERE id = $1");
        sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| runner_from_row(&r))
            .transpose()?
            .ok_or(StoreError::NotFound("runner"))
    }

    /// The runner that authenticates with `public_key`, if any.
    pub async fn find_runner_by_key(
        &self,
        public_key: &PublicKey,
    ) -> Result<Option<Runner>, StoreError> {
        let sql = format!("SELECT {RUNNER_COLUMNS} FROM runners WHERE public_key = $1");
        Ok(sqlx::query(&sql)
            .bind(row::openssh_line(public_key)?)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| runner_from_row(&r))
            .transpose()?)
    }

    /// All runners, by name.
    pub async fn list_runners(&self) -> Result<Vec<Runner>, StoreError> {
        let sql = format!("SELECT {RUNNER_COLUMNS} FROM runners ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(runner_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Records a runner's tunnel going up or down, and that it was seen now.
    pub async fn set_runner_state(
        &self,
        id: &RunnerId,
        state: RunnerState,
    ) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE runners SET state = $1, last_seen_at = $2 WHERE id = $3")
            .bind(state.as_str())
            .bind(Timestamp::now().unix_seconds())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("runner"));
        }
        Ok(())
    }

    /// Records that a runner was seen now (a keepalive answered), state unchanged.
    pub async fn touch_runner(&self, id: &RunnerId) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE runners SET last_seen_at = $1 WHERE id = $2")
            .bind(Timestamp::now().unix_seconds())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("runner"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_deduplicated_and_round_trip() {
        let labels: Vec<Label> = ["zone=b", "gpu", "gpu", "arch:amd64"]
            .iter()
            .map(|l| Label::parse(l).unwrap())
            .collect();
        let (sorted, text) = encode_labels(&labels);
        assert_eq!(text, "arch:amd64,gpu,zone=b");
        assert_eq!(decode_labels(&text).unwrap(), sorted);
        assert_eq!(encode_labels(&[]).1, "");
        assert!(decode_labels("").unwrap().is_empty());
        assert!(decode_labels("a,b c").is_err());
    }
}
