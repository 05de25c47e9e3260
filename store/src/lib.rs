//! The gateway's state: users and their SSH and API keys, runners and their join
//! tokens, sandboxes and their state history, and the SSH session audit trail.
//!
//! For: everything the gateway must remember across restarts, behind a typed async
//! API ([`Store`]). Not for: secrets (API keys and join tokens are stored only as
//! [`warren_keys::SecretHash`]; the secret exists once, in the value returned at
//! creation), authorization policy (the store answers "whose key is this", the caller
//! decides what that allows), or anything per-connection that need not survive a
//! restart.
//!
//! # Backends
//!
//! SQLite by default: one file in the data dir ([`Store::open_in_data_dir`]), created
//! on first start (mode 0600), in WAL mode with foreign keys enforced. PostgreSQL when
//! the database URL says `postgres://` or `postgresql://` ([`Store::open`]). One set of
//! migrations (`store/migrations/`, portable SQL) is applied at open on both.
//!
//! # Why `sqlx::AnyPool`, not an enum over `SqlitePool` and `PgPool`
//!
//! sqlx types every query by its database. With an enum, each operation is either
//! written once per backend (a `match` with two copies of every query and row
//! mapping) or made generic over `sqlx::Database`, which drags a wall of
//! higher-ranked bounds (`for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>`,
//! `String: Encode<'q, DB> + Type<DB>`, one per bound type, …) onto every function.
//! `AnyPool` instead runs one query text on either driver: the schema is deliberately
//! plain (TEXT, BIGINT, DOUBLE PRECISION) and the SQL portable, including
//! `$1`-style placeholders, which sqlx's SQLite driver numbers like PostgreSQL does.
//! So every operation below exists once, and the two backends differ only in the
//! connection URL and the SQLite pragmas set at connect.
//!
//! The price, all of it small here: rows are copied into `AnyRow` (negligible next to
//! the disk or network round trip), only basic Rust types bind (ids and times are text
//! and integers anyway), and flags are BIGINT 0/1 rather than BOOLEAN, because the Any
//! driver cannot read a SQLite column declared BOOLEAN.
//!
//! # Concurrency
//!
//! Every change that must be all-or-nothing is one statement or one transaction whose
//! first statement writes, so SQLite takes its write lock up front and waits (busy
//! timeout 5 s) instead of failing on a stale read snapshot. Consuming a join token
//! is a single conditional `UPDATE … RETURNING`, so of two concurrent consumers
//! exactly one wins. Sandbox state changes are compare-and-set on the old state, with
//! the event row in the same transaction, retried on a lost race.

mod error;
pub mod events;
mod gateways;
mod ids;
mod key_cache;
mod keys;
mod leases;
mod migrations;
mod model;
mod page_cache;
mod recordings;
mod row;
mod runners;
mod sandboxes;
mod sessions;
mod shares;
mod snapshots;
mod usage;
mod users;

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Once;

use sqlx::AnyPool;
use sqlx::Executor;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
pub use warren_keys::SandboxId;

pub use self::error::StoreError;
pub use self::gateways::{GatewayMember, now_ms};
pub use self::ids::{ApiKeyId, JoinTokenId, ParseError, RunnerId, SshKeyId, SshSessionId, UserId};
pub use self::leases::Lease;
pub use self::model::{
    ApiKey, ApiKeyOwner, ChannelKind, CreatedApiKey, CreatedJoinToken, Label, NewRunner,
    NewSandbox, NewSshChannel, NewSshSession, Runner, RunnerState, Sandbox, SandboxCursor,
    SandboxEvent, SandboxPage, SandboxQuery, SandboxState, SessionEnd, SessionExit, SshChannel,
    SshKey, SshSession, Timestamp, User,
};
pub use self::recordings::CHUNK as RECORDING_CHUNK;
pub use self::snapshots::{NewSnapshot, Snapshot};
pub use self::usage::{RunnerUsage, SshTotals};
pub use warren_keys::SnapshotId;

/// How long a query waits for a PostgreSQL connection before it fails.
pub const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The SQLite file's name inside the data dir.
pub const SQLITE_FILE_NAME: &str = "gateway.db";

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The gateway's database. Cheap to clone (a shared connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// API keys verified in the last few seconds (see `key_cache`).
    api_keys: std::sync::Arc<key_cache::KeyCache>,
    /// Sandbox pages listed since the last sandbox write (see `page_cache`).
    pages: std::sync::Arc<page_cache::PageCache>,
    /// The gateways' events (see `events`).
    bus: std::sync::Arc<events::Bus>,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/gateway.db`, creating the data dir
    /// (mode 0700) if it does not exist, and migrates it.
    pub async fn open_in_data_dir(data_dir: &Path) -> Result<Store, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(sqlx::Error::Io)?;
        Store::open_sqlite(&data_dir.join(SQLITE_FILE_NAME)).await
    }

    /// Opens (creating if needed, mode 0600) the SQLite database at `path` and
    /// migrates it. Its directory must exist.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        // Created here rather than by SQLite so it gets 0600 (SQLite gives its -wal
        // and -shm files the same mode as the database).
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(sqlx::Error::Io)?;
        let path = std::path::absolute(path).map_err(sqlx::Error::Io)?;
        let path = path
            .to_str()
            .ok_or_else(|| StoreError::Invalid("SQLite path (not UTF-8)".into()))?;
        let url = format!("sqlite://{}?mode=rwc", percent_encode_path(path));
        Store::connect(Backend::Sqlite, &url).await
    }

    /// Opens the database at `url` and migrates it: PostgreSQL for `postgres://…` or
    /// `postgresql://…`, SQLite for `sqlite:…` (add `?mode=rwc` to create the file).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            // Not echoed: a URL may carry a password.
            return Err(StoreError::Invalid(
                "database URL (expected postgres://, postgresql:// or sqlite:)".into(),
            ));
        };
        Store::connect(backend, url).await
    }

    async fn connect(backend: Backend, url: &str) -> Result<Store, StoreError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(|| {
            // Fails only if something else in the process installed drivers first;
            // then connecting reports any missing driver.
            let _ = sqlx::any::install_drivers(&[
                sqlx::sqlite::any::DRIVER,
                sqlx::postgres::any::DRIVER,
            ]);
        });
        let options: AnyConnectOptions = url.parse()?;
        let pool = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // Per connection. sqlx turns foreign keys on already; say
                            // it here anyway, since the schema relies on them.
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Backend::Postgres => {
                // A restarted server leaves dead connections in the pool: each is
                // pinged before it is handed out (and replaced if it fails). While
                // the server is down a query waits at most `STORE_WAIT` for a
                // connection, then fails ("store unavailable"), well within a
                // login's grace time.
                AnyPoolOptions::new()
                    .max_connections(10)
                    .test_before_acquire(true)
                    .acquire_timeout(STORE_WAIT)
                    .connect_with(options)
                    .await?
            }
        };
        if backend == Backend::Sqlite {
            // Persistent in the file: set once, before anything else writes.
            pool.execute("PRAGMA journal_mode = WAL").await?;
        }
        migrations::migrator()
            .await?
            .run(&pool)
            .await
            .map_err(sqlx::Error::from)?;
        let (url, schema) = match backend {
            Backend::Postgres => {
                let schema: String = sqlx::query_scalar("SELECT CAST(current_schema() AS TEXT)")
                    .fetch_one(&pool)
                    .await?;
                (Some(url.to_owned()), schema)
            }
            Backend::Sqlite => (None, String::new()),
        };
        Ok(Store {
            pool,
            backend,
            api_keys: Default::default(),
            pages: Default::default(),
            bus: std::sync::Arc::new(events::Bus::new(url, schema)),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Percent-encodes everything in a path but unreserved characters and `/`, for a
/// `sqlite://` URL (sqlx decodes it again, so `?`, `#`, `%` and spaces survive).
fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks a user name: 1 to 64 ASCII letters, digits, `.`, `_`, `-`, starting with a
/// letter or digit.
fn check_user_name(name: &str) -> Result<(), StoreError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid("user name".into()))
    }
}

/// Checks a display name (of a key, a runner): 1 to 128 characters, no control
/// characters.
fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    if (1..=128).contains(&name.chars().count()) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(StoreError::Invalid(what.to_owned()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_for_sqlx() {
        assert_eq!(
            percent_encode_path("/data/warren gw/a?b#c%d/é.db"),
            "/data/warren%20gw/a%3Fb%23c%25d/%C3%A9.db"
        );
    }

    #[test]
    fn names() {
        for ok in ["alice", "a", "bob.smith", "ci-bot_2", "0day"] {
            assert!(check_user_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", "-x", ".x", "a b", "é", "a/b", long.as_str()] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("key name", "laptop (work) ✓").is_ok());
        assert!(check_name("key name", "").is_err());
        assert!(check_name("key name", "a\nb").is_err());
    }
}
