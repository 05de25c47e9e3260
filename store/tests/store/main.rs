//! The store's behaviour, with the same test bodies run against SQLite (a file in a
//! temporary directory) and PostgreSQL (a fresh schema per test in the database at
//! `WARREN_TEST_POSTGRES_URL`; `scripts/test-postgres` starts one).
//!
//! Without `WARREN_TEST_POSTGRES_URL` (or with it empty) the PostgreSQL tests pass
//! with a note, except when `CI` is set: then they fail, so CI cannot skip them
//! silently.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKey};
use sqlx::Connection;
use tempfile::TempDir;
use tokio::sync::Barrier;
use warren_store::{
    Backend, Label, NewRunner, NewSandbox, NewSshSession, RunnerState, SandboxId, SandboxPage,
    SandboxQuery, SandboxState, SessionEnd, SessionExit, Store, StoreError, UserId,
};

mod accounts;
mod audit;
mod runners;
mod sandboxes;

use accounts::*;
use audit::*;
use runners::*;
use sandboxes::*;

const POSTGRES_URL_VAR: &str = "WARREN_TEST_POSTGRES_URL";

/// Where a test's database lives; `open` may be called more than once (a restart).
enum TestDb {
    Sqlite {
        dir: TempDir,
    },
    Postgres {
        url: String,
        admin_url: String,
        schema: String,
    },
}

impl TestDb {
    fn sqlite() -> TestDb {
        TestDb::Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A fresh schema in the test server, or `None` (after a note) when there is no
    /// server and this is not CI.
    async fn postgres() -> Option<TestDb> {
        let admin_url = std::env::var(POSTGRES_URL_VAR).unwrap_or_default();
        if admin_url.is_empty() {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "{POSTGRES_URL_VAR} is not set, but CI is: the PostgreSQL store tests \
                     must run in CI. Start a server with scripts/test-postgres and export \
                     its URL as {POSTGRES_URL_VAR}."
                );
            }
            eprintln!(
                "note: {POSTGRES_URL_VAR} is not set, so this PostgreSQL store test did \
                 nothing; run scripts/test-postgres and export its URL to run it"
            );
            return None;
        }
        // Ids are lowercase base32, so this is a valid unquoted identifier.
        let schema = format!("t_{}", &UserId::generate().as_str()[4..]);
        let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-c%20search_path%3D{schema}");
        Some(TestDb::Postgres {
            url,
            admin_url,
            schema,
        })
    }

    fn sqlite_path(&self) -> Option<PathBuf> {
        match self {
            TestDb::Sqlite { dir } => Some(dir.path().join("data").join("gateway.db")),
            TestDb::Postgres { .. } => None,
        }
    }

    async fn open(&self) -> Store {
        let store = match self {
            TestDb::Sqlite { dir } => Store::open_in_data_dir(&dir.path().join("data"))
                .await
                .unwrap(),
            TestDb::Postgres { url, .. } => Store::open(url).await.unwrap(),
        };
        let want = match self {
            TestDb::Sqlite { .. } => Backend::Sqlite,
            TestDb::Postgres { .. } => Backend::Postgres,
        };
        assert_eq!(store.backend(), want);
        store
    }

    async fn cleanup(self) {
        if let TestDb::Postgres {
            admin_url, schema, ..
        } = self
        {
            let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
    }
}

/// Runs every listed body once per backend: `sqlite::<name>` and `postgres::<name>`.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::sqlite();
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::TestDb::postgres().await else { return };
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

store_tests!(
    reopening_keeps_data_and_does_not_remigrate,
    users,
    api_keys_authenticate_until_revoked,
    ssh_keys,
    join_tokens_are_single_use_and_expire,
    join_token_race_has_one_winner,
    runners_join_once_and_report_state,
    gateway_tier_keys_and_members,
    sandbox_lifecycle_and_events,
    illegal_transitions_change_nothing,
    concurrent_transitions_have_one_winner,
    sandboxes_are_paginated_per_owner,
    a_pages_encoding_lives_until_a_write,
    ssh_session_audit,
    ssh_channel_audit,
    authorized_keys_are_the_owners_and_the_shared_users,
);

fn public_key(seed: u8) -> PublicKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
        .public_key()
        .clone()
}

fn new_sandbox(owner: &UserId, id: &str) -> NewSandbox {
    NewSandbox {
        id: SandboxId::parse(id).unwrap(),
        owner_id: owner.clone(),
        runner_id: None,
        image: "debian:12".into(),
        repo: Some("https://example.com/r.git".into()),
        branch: Some("main".into()),
        forward_agent: false,
        cpus: 1.5,
        memory_mb: 2048,
        idle_timeout_s: Some(900),
        ttl_s: None,
        disk_mb: Some(4096),
    }
}

fn new_runner(name: &str, seed: u8) -> NewRunner {
    NewRunner {
        name: name.into(),
        public_key: public_key(seed),
        labels: vec![
            Label::parse("zone=b").unwrap(),
            Label::parse("gpu").unwrap(),
        ],
        capacity: 8,
    }
}

fn assert_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
}

/// SQLite specifics: the file is created 0600 in a new 0700 data dir, in WAL mode.
#[tokio::test]
async fn sqlite_file_is_private_and_in_wal_mode() {
    use std::os::unix::fs::PermissionsExt;

    let db = TestDb::sqlite();
    let store = db.open().await;
    store.create_user("alice", false).await.unwrap();
    let path = db.sqlite_path().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    conn.close().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn unknown_url_schemes_are_refused_without_echo() {
    let err = Store::open("mysql://root:hunter2@db/warren")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"));
}

#[tokio::test]
async fn data_dir_paths_with_url_characters_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a dir?with#odd%chars");
    let store = Store::open_in_data_dir(&data).await.unwrap();
    store.create_user("alice", false).await.unwrap();
    store.close().await;
    assert!(data.join("gateway.db").is_file());
    let store = Store::open_in_data_dir(&data).await.unwrap();
    assert_eq!(store.list_users().await.unwrap().len(), 1);
}
