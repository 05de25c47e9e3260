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

async fn reopening_keeps_data_and_does_not_remigrate(db: &TestDb) {
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    store.close().await;
    let store = db.open().await;
    assert_eq!(store.get_user(&alice.id).await.unwrap(), alice);
    store.close().await;
}

async fn users(db: &TestDb) {
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    let root = store.create_user("root", true).await.unwrap();
    assert!(!alice.is_admin);
    assert!(root.is_admin);
    assert_eq!(store.get_user(&alice.id).await.unwrap(), alice);
    assert_eq!(store.get_user(&root.id).await.unwrap(), root);
    assert_eq!(store.get_user_by_name("root").await.unwrap(), root);
    assert_eq!(store.list_users().await.unwrap(), vec![alice.clone(), root]);
    assert_conflict(store.create_user("alice", true).await);
    assert_not_found(store.get_user(&UserId::generate()).await);
    assert_not_found(store.get_user_by_name("nobody").await);
    assert_invalid(store.create_user("", false).await);
    assert_invalid(store.create_user("has space", false).await);
    assert_eq!(store.list_users().await.unwrap().len(), 2);
}

async fn api_keys_authenticate_until_revoked(db: &TestDb) {
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    let bob = store.create_user("bob", false).await.unwrap();
    let laptop = store.create_api_key(&alice.id, "laptop").await.unwrap();
    let ci = store.create_api_key(&alice.id, "ci").await.unwrap();
    let secret = laptop.secret.expose();
    assert!(secret.starts_with("wk_"));
    assert!(secret.starts_with(&laptop.key.prefix));
    assert_eq!(laptop.key.prefix.len(), 12);

    let owner = store.find_user_by_api_key(secret).await.unwrap().unwrap();
    assert_eq!(owner.user, alice);
    assert_eq!(owner.key_id, laptop.key.id);
    let owner = store
        .find_user_by_api_key(ci.secret.expose())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.key_id, ci.key.id);

    // Same prefix, wrong rest; garbage; empty.
    let mut forged = secret.to_owned();
    let last = if forged.ends_with('A') { "B" } else { "A" };
    forged.replace_range(forged.len() - 1.., last);
    assert_eq!(store.find_user_by_api_key(&forged).await.unwrap(), None);
    assert_eq!(store.find_user_by_api_key("wk_nope").await.unwrap(), None);
    assert_eq!(store.find_user_by_api_key("").await.unwrap(), None);

    let keys = store.list_api_keys(&alice.id).await.unwrap();
    assert_eq!(keys.len(), 2);
    let listed = keys.iter().find(|k| k.id == laptop.key.id).unwrap();
    assert!(listed.last_used_at.is_some(), "use is recorded");
    assert_eq!(listed.revoked_at, None);
    assert!(store.list_api_keys(&bob.id).await.unwrap().is_empty());

    // Only the owner can revoke; revoking twice is fine; a revoked key is refused.
    assert_not_found(store.revoke_api_key(&bob.id, &laptop.key.id).await);
    store
        .revoke_api_key(&alice.id, &laptop.key.id)
        .await
        .unwrap();
    store
        .revoke_api_key(&alice.id, &laptop.key.id)
        .await
        .unwrap();
    assert_eq!(store.find_user_by_api_key(secret).await.unwrap(), None);
    assert!(
        store
            .find_user_by_api_key(ci.secret.expose())
            .await
            .unwrap()
            .is_some()
    );
    let keys = store.list_api_keys(&alice.id).await.unwrap();
    assert!(
        keys.iter()
            .find(|k| k.id == laptop.key.id)
            .unwrap()
            .revoked_at
            .is_some()
    );
    assert_not_found(store.create_api_key(&UserId::generate(), "x").await);
    assert_invalid(store.create_api_key(&alice.id, "").await);
    store.close().await;

    // The secret itself is nowhere in the database files.
    if let Some(path) = db.sqlite_path() {
        for file in [path.clone(), path.with_extension("db-wal")] {
            if let Ok(bytes) = std::fs::read(&file) {
                let needle = secret.as_bytes();
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "secret found in {}",
                    file.display()
                );
            }
        }
    }
}

async fn ssh_keys(db: &TestDb) {
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    let bob = store.create_user("bob", false).await.unwrap();
    let mut with_comment = public_key(1);
    with_comment.set_comment("alice@laptop");
    let key = store
        .add_ssh_key(&alice.id, "laptop", &with_comment)
        .await
        .unwrap();
    assert_eq!(key.public_key, public_key(1), "comment dropped");
    assert!(key.fingerprint.starts_with("SHA256:"));
    assert_eq!(
        store.list_ssh_keys(&alice.id).await.unwrap(),
        vec![key.clone()]
    );

    // Same key again for alice: refused. The same key for bob: allowed.
    assert_conflict(store.add_ssh_key(&alice.id, "again", &public_key(1)).await);
    let bobs = store
        .add_ssh_key(&bob.id, "shared", &public_key(1))
        .await
        .unwrap();
    store
        .add_ssh_key(&bob.id, "other", &public_key(2))
        .await
        .unwrap();
    assert_eq!(
        store.find_users_by_ssh_key(&public_key(1)).await.unwrap(),
        vec![alice.clone(), bob.clone()]
    );
    assert_eq!(
        store.find_users_by_ssh_key(&public_key(2)).await.unwrap(),
        vec![bob.clone()]
    );
    assert!(
        store
            .find_users_by_ssh_key(&public_key(3))
            .await
            .unwrap()
            .is_empty()
    );

    // Only the owner deletes; foreign keys are enforced (unknown user).
    assert_not_found(store.delete_ssh_key(&alice.id, &bobs.id).await);
    store.delete_ssh_key(&bob.id, &bobs.id).await.unwrap();
    assert_not_found(store.delete_ssh_key(&bob.id, &bobs.id).await);
    assert_eq!(
        store.find_users_by_ssh_key(&public_key(1)).await.unwrap(),
        vec![alice.clone()]
    );
    assert_eq!(store.list_ssh_keys(&bob.id).await.unwrap().len(), 1);
    assert_not_found(
        store
            .add_ssh_key(&UserId::generate(), "x", &public_key(4))
            .await,
    );
}

async fn join_tokens_are_single_use_and_expire(db: &TestDb) {
    let store = db.open().await;
    let token = store
        .create_join_token(Duration::from_secs(600))
        .await
        .unwrap();
    assert!(token.secret.expose().starts_with("wj_"));
    assert_eq!(
        store
            .consume_join_token(token.secret.expose())
            .await
            .unwrap(),
        token.id
    );
    let again = store.consume_join_token(token.secret.expose()).await;
    assert!(
        matches!(&again, Err(StoreError::Conflict(m)) if m.contains("used")),
        "{again:?}"
    );
    assert_not_found(store.consume_join_token("wj_unknown").await);

    // Expires at creation time + ttl; with ttl 0 it is expired at once.
    let expired = store.create_join_token(Duration::ZERO).await.unwrap();
    let r = store.consume_join_token(expired.secret.expose()).await;
    assert!(
        matches!(&r, Err(StoreError::Conflict(m)) if m.contains("expired")),
        "{r:?}"
    );
}

async fn join_token_race_has_one_winner(db: &TestDb) {
    let store = db.open().await;
    for _ in 0..25 {
        let token = store
            .create_join_token(Duration::from_secs(600))
            .await
            .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                let barrier = barrier.clone();
                let secret = token.secret.expose().to_owned();
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.consume_join_token(&secret).await
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(id) => {
                    assert_eq!(id, token.id);
                    wins += 1;
                }
                Err(StoreError::Conflict(_)) => {}
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        assert_eq!(wins, 1);
    }
    // The same race through join_runner: one runner registered, the other refused.
    let token = store
        .create_join_token(Duration::from_secs(600))
        .await
        .unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let tasks: Vec<_> = (0..2u8)
        .map(|i| {
            let store = store.clone();
            let barrier = barrier.clone();
            let secret = token.secret.expose().to_owned();
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .join_runner(&secret, &new_runner(&format!("racer-{i}"), 10 + i))
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.list_runners().await.unwrap().len(), 1);
}

async fn runners_join_once_and_report_state(db: &TestDb) {
    let store = db.open().await;
    let token = store
        .create_join_token(Duration::from_secs(600))
        .await
        .unwrap();
    let secret = token.secret.expose();
    let runner = store
        .join_runner(secret, &new_runner("east", 1))
        .await
        .unwrap();
    assert_eq!(runner.state, RunnerState::Offline);
    assert_eq!(runner.last_seen_at, None);
    let labels: Vec<&str> = runner.labels.iter().map(Label::as_str).collect();
    assert_eq!(labels, ["gpu", "zone=b"]);
    assert_eq!(store.get_runner(&runner.id).await.unwrap(), runner);
    assert_conflict(store.join_runner(secret, &new_runner("west", 2)).await);
    assert_not_found(
        store
            .join_runner("wj_unknown", &new_runner("west", 2))
            .await,
    );

    // A refused registration leaves the token unused.
    let token = store
        .create_join_token(Duration::from_secs(600))
        .await
        .unwrap();
    assert_conflict(
        store
            .join_runner(token.secret.expose(), &new_runner("east", 3))
            .await,
    );
    assert_conflict(
        store
            .join_runner(token.secret.expose(), &new_runner("other", 1))
            .await,
    );
    let west = store
        .join_runner(token.secret.expose(), &new_runner("west", 2))
        .await
        .unwrap();

    let direct = store
        .register_runner(&new_runner("direct", 4))
        .await
        .unwrap();
    assert_conflict(store.register_runner(&new_runner("direct", 5)).await);
    assert_invalid(store.register_runner(&new_runner("", 6)).await);

    store
        .set_runner_state(&runner.id, RunnerState::Online)
        .await
        .unwrap();
    let seen = store.get_runner(&runner.id).await.unwrap();
    assert_eq!(seen.state, RunnerState::Online);
    assert!(seen.last_seen_at.is_some());
    store.touch_runner(&west.id).await.unwrap();
    let west_seen = store.get_runner(&west.id).await.unwrap();
    assert_eq!(west_seen.state, RunnerState::Offline);
    assert!(west_seen.last_seen_at.is_some());
    let missing = warren_store::RunnerId::generate();
    assert_not_found(store.set_runner_state(&missing, RunnerState::Online).await);
    assert_not_found(store.touch_runner(&missing).await);

    let names: Vec<String> = store
        .list_runners()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["direct", "east", "west"]);
    assert_eq!(
        store.find_runner_by_key(&public_key(4)).await.unwrap(),
        Some(direct)
    );
    assert_eq!(
        store.find_runner_by_key(&public_key(9)).await.unwrap(),
        None
    );
}

async fn sandbox_lifecycle_and_events(db: &TestDb) {
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    let runner = store.register_runner(&new_runner("r1", 1)).await.unwrap();
    let mut new = new_sandbox(&alice.id, "sbx-one");
    new.runner_id = Some(runner.id.clone());
    new.ttl_s = Some(86_400);
    let sandbox = store.create_sandbox(&new).await.unwrap();
    assert_eq!(sandbox.state, SandboxState::Creating);
    assert_eq!(sandbox.cpus, 1.5);
    assert_eq!(sandbox.ttl_s, Some(86_400));
    assert_eq!(sandbox.disk_mb, Some(4096));
    assert_eq!(store.get_sandbox(&sandbox.id).await.unwrap(), sandbox);
    let usage = |sandboxes, memory_mb, disk_mb| {
        vec![(
            runner.id.clone(),
            warren_store::RunnerUsage {
                sandboxes,
                memory_mb,
                disk_mb,
            },
        )]
    };
    assert_eq!(store.runner_usage().await.unwrap(), usage(1, 2048, 4096));
    assert_eq!(
        store.list_runner_sandboxes(&runner.id).await.unwrap(),
        vec![sandbox.clone()]
    );
    assert_conflict(store.create_sandbox(&new).await);
    assert_not_found(
        store
            .create_sandbox(&new_sandbox(&UserId::generate(), "sbx-two"))
            .await,
    );
    let mut bad = new_sandbox(&alice.id, "sbx-three");
    bad.cpus = 0.0;
    assert_invalid(store.create_sandbox(&bad).await);
    bad.cpus = f64::NAN;
    assert_invalid(store.create_sandbox(&bad).await);
    assert_not_found(
        store
            .get_sandbox(&SandboxId::parse("sbx-two").unwrap())
            .await,
    );

    let steps = [
        (SandboxState::Running, "agent up"),
        (SandboxState::Stopped, "idle"),
        (SandboxState::Running, "ssh login"),
        (SandboxState::Stopped, "user stop"),
        (SandboxState::Deleted, "user delete"),
    ];
    for (to, reason) in steps {
        let after = store
            .set_sandbox_state(&sandbox.id, to, reason)
            .await
            .unwrap();
        assert_eq!(after.state, to);
        assert_eq!(store.get_sandbox(&sandbox.id).await.unwrap(), after);
        // A stopped sandbox keeps its disk, not its memory.
        let expected = match to {
            SandboxState::Running => usage(1, 2048, 4096),
            SandboxState::Stopped => usage(0, 0, 4096),
            _ => vec![],
        };
        assert_eq!(store.runner_usage().await.unwrap(), expected, "{reason}");
    }
    let events = store.list_sandbox_events(&sandbox.id).await.unwrap();
    let got: Vec<(u32, Option<SandboxState>, SandboxState, &str)> = events
        .iter()
        .map(|e| (e.seq, e.from_state, e.to_state, e.reason.as_str()))
        .collect();
    use SandboxState::*;
    assert_eq!(
        got,
        [
            (1, None, Creating, "created"),
            (2, Some(Creating), Running, "agent up"),
            (3, Some(Running), Stopped, "idle"),
            (4, Some(Stopped), Running, "ssh login"),
            (5, Some(Running), Stopped, "user stop"),
            (6, Some(Stopped), Deleted, "user delete"),
        ]
    );
    assert!(events.iter().all(|e| e.sandbox_id == sandbox.id));
    assert_not_found(
        store
            .list_sandbox_events(&SandboxId::parse("sbx-two").unwrap())
            .await,
    );

    // Failure from anywhere but deleted, then deleted.
    let other = store
        .create_sandbox(&new_sandbox(&alice.id, "sbx-four"))
        .await
        .unwrap();
    store
        .set_sandbox_state(&other.id, Failed, "image pull failed")
        .await
        .unwrap();
    store
        .set_sandbox_state(&other.id, Deleted, "cleanup")
        .await
        .unwrap();

    let on_runner = store.list_runner_sandboxes(&runner.id).await.unwrap();
    assert!(on_runner.is_empty(), "deleted sandboxes are not listed");
}

async fn illegal_transitions_change_nothing(db: &TestDb) {
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    let sandbox = store
        .create_sandbox(&new_sandbox(&alice.id, "sbx-one"))
        .await
        .unwrap();
    use SandboxState::*;
    let check_refused = |from: SandboxState, to: SandboxState| {
        let store = store.clone();
        let id = sandbox.id.clone();
        async move {
            let before = store.get_sandbox(&id).await.unwrap();
            let events = store.list_sandbox_events(&id).await.unwrap();
            match store.set_sandbox_state(&id, to, "nope").await {
                Err(StoreError::InvalidTransition { from: f, to: t }) => {
                    assert_eq!((f, t), (from, to));
                }
                other => panic!("{from} -> {to}: {other:?}"),
            }
            assert_eq!(store.get_sandbox(&id).await.unwrap(), before);
            assert_eq!(store.list_sandbox_events(&id).await.unwrap(), events);
        }
    };
    for to in [Creating, Stopped, Deleted] {
        check_refused(Creating, to).await;
    }
    store
        .set_sandbox_state(&sandbox.id, Running, "up")
        .await
        .unwrap();
    for to in [Creating, Running, Deleted] {
        check_refused(Running, to).await;
    }
    store
        .set_sandbox_state(&sandbox.id, Stopped, "down")
        .await
        .unwrap();
    store
        .set_sandbox_state(&sandbox.id, Deleted, "gone")
        .await
        .unwrap();
    for to in [Creating, Running, Stopped, Deleted, Failed] {
        check_refused(Deleted, to).await;
    }
    assert_not_found(
        store
            .set_sandbox_state(&SandboxId::parse("sbx-none").unwrap(), Running, "x")
            .await,
    );
}

async fn concurrent_transitions_have_one_winner(db: &TestDb) {
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    for i in 0..10 {
        let sandbox = store
            .create_sandbox(&new_sandbox(&alice.id, &format!("sbx-race-{i}")))
            .await
            .unwrap();
        store
            .set_sandbox_state(&sandbox.id, SandboxState::Running, "up")
            .await
            .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                let barrier = barrier.clone();
                let id = sandbox.id.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .set_sandbox_state(&id, SandboxState::Stopped, "stop")
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => wins += 1,
                Err(StoreError::InvalidTransition { from, to }) => {
                    assert_eq!((from, to), (SandboxState::Stopped, SandboxState::Stopped));
                }
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        assert_eq!(wins, 1);
        let events = store.list_sandbox_events(&sandbox.id).await.unwrap();
        assert_eq!(events.len(), 3, "one event per real change: {events:?}");
    }
}

async fn sandboxes_are_paginated_per_owner(db: &TestDb) {
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    let bob = store.create_user("bob", false).await.unwrap();
    for i in 0..7 {
        store
            .create_sandbox(&new_sandbox(&alice.id, &format!("sbx-a{i}")))
            .await
            .unwrap();
    }
    for i in 0..2 {
        store
            .create_sandbox(&new_sandbox(&bob.id, &format!("sbx-b{i}")))
            .await
            .unwrap();
    }
    let mut query = SandboxQuery {
        limit: 3,
        ..SandboxQuery::default()
    };
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = store.list_sandboxes(&alice.id, &query).await.unwrap();
        sizes.push(page.sandboxes.len());
        seen.extend(page.sandboxes.iter().cloned());
        match &page.next {
            // Cursors survive a round trip through text, as in an HTTP query.
            Some(next) => query.after = Some(next.to_string().parse().unwrap()),
            None => break,
        }
    }
    assert_eq!(sizes, [3, 3, 1]);
    assert!(seen.iter().all(|s| s.owner_id == alice.id));
    let mut ids: Vec<&str> = seen.iter().map(|s| s.id.as_str()).collect();
    // Newest first, ties (same second) by id descending.
    assert!(
        seen.windows(2)
            .all(|w| (w[0].created_at, &w[0].id) > (w[1].created_at, &w[1].id))
    );
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 7);

    // Deleted ones are hidden unless asked for.
    let gone = SandboxId::parse("sbx-a3").unwrap();
    for (to, why) in [(SandboxState::Failed, "x"), (SandboxState::Deleted, "y")] {
        store.set_sandbox_state(&gone, to, why).await.unwrap();
    }
    let all = SandboxQuery {
        limit: 100,
        ..SandboxQuery::default()
    };
    let page = store.list_sandboxes(&alice.id, &all).await.unwrap();
    assert_eq!(page.sandboxes.len(), 6);
    assert!(page.next.is_none());
    assert!(page.sandboxes.iter().all(|s| s.id != gone));
    let with_deleted = SandboxQuery {
        include_deleted: true,
        ..all
    };
    assert_eq!(
        store
            .list_sandboxes(&alice.id, &with_deleted)
            .await
            .unwrap()
            .sandboxes
            .len(),
        7
    );
    assert_eq!(
        store
            .list_sandboxes(&bob.id, &SandboxQuery::default())
            .await
            .unwrap()
            .sandboxes
            .len(),
        2
    );
    // A limit of 0 is read as 1.
    let one = SandboxQuery {
        limit: 0,
        ..SandboxQuery::default()
    };
    let page = store.list_sandboxes(&alice.id, &one).await.unwrap();
    assert_eq!(page.sandboxes.len(), 1);
    assert!(page.next.is_some());
}

/// A page listed again while nothing changed is the same page, its encoding
/// made once; a write gives the next listing a fresh page, encoded afresh.
async fn a_pages_encoding_lives_until_a_write(db: &TestDb) {
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    let sandbox = store
        .create_sandbox(&new_sandbox(&alice.id, "sbx-cached"))
        .await
        .unwrap();
    let query = SandboxQuery::default();
    let encode = |page: &SandboxPage| format!("{:?}", page.sandboxes[0].state).into_bytes();
    let first = store.list_sandboxes(&alice.id, &query).await.unwrap();
    let body = first.rendered(encode);
    let again = store.list_sandboxes(&alice.id, &query).await.unwrap();
    let reused = again.rendered(|_| unreachable!("encoded again"));
    assert!(Arc::ptr_eq(&body, &reused));

    store
        .set_sandbox_state(&sandbox.id, SandboxState::Failed, "test")
        .await
        .unwrap();
    let after = store.list_sandboxes(&alice.id, &query).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &after));
    assert_eq!(&*after.rendered(encode), b"Failed");
    assert_eq!(&*body, b"Creating");
}

async fn ssh_session_audit(db: &TestDb) {
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    let sandbox = store
        .create_sandbox(&new_sandbox(&alice.id, "sbx-one"))
        .await
        .unwrap();
    let v4: SocketAddr = "203.0.113.7:52144".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:40022".parse().unwrap();
    let shell = store
        .open_ssh_session(&NewSshSession {
            user_id: Some(alice.id.clone()),
            sandbox_id: sandbox.id.clone(),
            source_addr: v4,
        })
        .await
        .unwrap();
    let by_token = store
        .open_ssh_session(&NewSshSession {
            user_id: None,
            sandbox_id: sandbox.id.clone(),
            source_addr: v6,
        })
        .await
        .unwrap();
    let forward = store
        .open_ssh_session(&NewSshSession {
            user_id: Some(alice.id.clone()),
            sandbox_id: sandbox.id.clone(),
            source_addr: v4,
        })
        .await
        .unwrap();
    assert_eq!(shell.ended_at, None);

    let big = u64::from(u32::MAX) * 10;
    store
        .close_ssh_session(
            &shell.id,
            &SessionEnd {
                bytes_in: 1234,
                bytes_out: big,
                exit: Some(SessionExit::Status(3)),
            },
        )
        .await
        .unwrap();
    store
        .close_ssh_session(
            &by_token.id,
            &SessionEnd {
                bytes_in: 1,
                bytes_out: 2,
                exit: Some(SessionExit::Signal("KILL".into())),
            },
        )
        .await
        .unwrap();
    assert_conflict(
        store
            .close_ssh_session(&shell.id, &SessionEnd::default())
            .await,
    );
    assert_not_found(
        store
            .close_ssh_session(
                &warren_store::SshSessionId::generate(),
                &SessionEnd::default(),
            )
            .await,
    );

    let sessions = store.list_ssh_sessions(&sandbox.id).await.unwrap();
    assert_eq!(sessions.len(), 3);
    let get = |id| sessions.iter().find(|s| &s.id == id).unwrap();
    let s = get(&shell.id);
    assert_eq!(s.user_id.as_ref(), Some(&alice.id));
    assert_eq!(s.source_addr, v4);
    assert!(s.ended_at.is_some());
    assert_eq!((s.bytes_in, s.bytes_out), (1234, big));
    assert_eq!(s.exit, Some(SessionExit::Status(3)));
    let s = get(&by_token.id);
    assert_eq!(s.user_id, None);
    assert_eq!(s.source_addr, v6);
    assert_eq!(s.exit, Some(SessionExit::Signal("KILL".into())));
    let s = get(&forward.id);
    assert_eq!(s, &forward);

    assert_not_found(
        store
            .open_ssh_session(&NewSshSession {
                user_id: None,
                sandbox_id: SandboxId::parse("sbx-none").unwrap(),
                source_addr: v4,
            })
            .await,
    );
}

async fn ssh_channel_audit(db: &TestDb) {
    use warren_store::{ChannelKind, NewSshChannel};
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    let sandbox = store
        .create_sandbox(&new_sandbox(&alice.id, "sbx-chan"))
        .await
        .unwrap();
    let session = store
        .open_ssh_session(&NewSshSession {
            user_id: Some(alice.id.clone()),
            sandbox_id: sandbox.id.clone(),
            source_addr: "203.0.113.7:52144".parse().unwrap(),
        })
        .await
        .unwrap();
    assert_eq!(store.get_ssh_session(&session.id).await.unwrap(), session);
    let channel = |seq, kind, command: Option<&str>, terminal| NewSshChannel {
        session_id: session.id.clone(),
        seq,
        kind,
        command: command.map(str::to_owned),
        terminal,
    };
    // A command line is kept as given, quotes and all.
    let exec = channel(1, ChannelKind::Exec, Some("make test 'a b' ☃"), false);
    store.open_ssh_channel(&exec).await.unwrap();
    store
        .open_ssh_channel(&channel(2, ChannelKind::Shell, None, true))
        .await
        .unwrap();
    store
        .open_ssh_channel(&channel(3, ChannelKind::Subsystem, Some("sftp"), false))
        .await
        .unwrap();
    assert_conflict(store.open_ssh_channel(&exec).await);
    let unknown = NewSshChannel {
        session_id: warren_store::SshSessionId::generate(),
        ..exec.clone()
    };
    assert_not_found(store.open_ssh_channel(&unknown).await);

    let end = SessionEnd {
        bytes_in: 5,
        bytes_out: u64::from(u32::MAX) * 3,
        exit: Some(SessionExit::Status(2)),
    };
    store.close_ssh_channel(&session.id, 1, &end).await.unwrap();
    // The first record stands; an unknown channel is not found.
    assert_not_found(
        store
            .close_ssh_channel(&session.id, 1, &SessionEnd::default())
            .await,
    );
    assert_not_found(
        store
            .close_ssh_channel(&session.id, 9, &SessionEnd::default())
            .await,
    );

    let channels = store.list_ssh_channels(&session.id).await.unwrap();
    let seqs: Vec<u32> = channels.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let first = &channels[0];
    assert_eq!(first.kind, ChannelKind::Exec);
    assert_eq!(first.command.as_deref(), Some("make test 'a b' ☃"));
    assert!(!first.terminal && first.ended_at.is_some());
    assert_eq!(
        (first.bytes_in, first.bytes_out),
        (end.bytes_in, end.bytes_out)
    );
    assert_eq!(first.exit, Some(SessionExit::Status(2)));
    assert!(channels[1].terminal && channels[1].ended_at.is_none());
    assert_eq!(channels[2].command.as_deref(), Some("sftp"));
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

/// What each agent on a runner should accept: its owner's keys and those of the
/// users it is shared with; and which runners a user's key change must reach.
async fn authorized_keys_are_the_owners_and_the_shared_users(db: &TestDb) {
    let store = db.open().await;
    let token = store
        .create_join_token(Duration::from_secs(600))
        .await
        .unwrap();
    let east = store
        .join_runner(token.secret.expose(), &new_runner("east", 1))
        .await
        .unwrap();
    let alice = store.create_user("alice", false).await.unwrap();
    let bob = store.create_user("bob", false).await.unwrap();
    let carol = store.create_user("carol", false).await.unwrap();
    store
        .add_ssh_key(&alice.id, "a", &public_key(10))
        .await
        .unwrap();
    store
        .add_ssh_key(&bob.id, "b1", &public_key(11))
        .await
        .unwrap();
    store
        .add_ssh_key(&bob.id, "b2", &public_key(12))
        .await
        .unwrap();
    let line = |seed| {
        PublicKey::new(public_key(seed).key_data().clone(), "")
            .to_openssh()
            .unwrap()
    };
    let place = |owner: &UserId, id: &str| {
        let mut new = new_sandbox(owner, id);
        new.runner_id = Some(east.id.clone());
        new
    };
    let shared = store
        .create_sandbox(&place(&alice.id, "sbx-aaaaaaaaaaaa"))
        .await
        .unwrap();
    let keyless = store
        .create_sandbox(&place(&carol.id, "sbx-cccccccccccc"))
        .await
        .unwrap();
    // Bob's own sandbox, not placed yet: no runner to reach.
    store
        .create_sandbox(&new_sandbox(&bob.id, "sbx-bbbbbbbbbbbb"))
        .await
        .unwrap();
    store
        .share_sandbox(&shared.id, &bob.id, false)
        .await
        .unwrap();

    // Bob's keys come without the sandbox's secrets; shared again with them, plain.
    let keys = store.runner_authorized_keys(&east.id).await.unwrap();
    let withheld = |n| format!("warren-no-secrets {}", line(n));
    let want: BTreeSet<String> = [line(10), withheld(11), withheld(12)].into();
    assert_eq!(keys.get(&shared.id), Some(&want));
    assert!(
        store
            .sandbox_shared_with_secrets(&shared.id)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .share_sandbox(&shared.id, &bob.id, true)
        .await
        .unwrap();
    assert_eq!(
        store.sandbox_shared_with_secrets(&shared.id).await.unwrap(),
        vec![bob.id.clone()]
    );
    assert_eq!(
        store.sandbox_shared_with(&shared.id).await.unwrap().len(),
        1
    );
    let keys = store.runner_authorized_keys(&east.id).await.unwrap();
    let want_shared: BTreeSet<String> = [line(10), line(11), line(12)].into();
    assert_eq!(keys.get(&shared.id), Some(&want_shared));
    assert_eq!(
        keys.get(&keyless.id),
        Some(&BTreeSet::new()),
        "carol has no keys"
    );
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(
        store.sandbox_authorized_keys(&shared.id).await.unwrap(),
        want_shared
    );
    assert_eq!(
        store.runners_of_user_sandboxes(&bob.id).await.unwrap(),
        vec![east.id.clone()],
        "bob's own sandbox has no runner; the one shared with him does"
    );
    assert!(
        store
            .runners_of_user_sandboxes(&UserId::generate())
            .await
            .unwrap()
            .is_empty()
    );

    // Unshared: bob's keys go; deleted: the sandbox goes.
    store.unshare_sandbox(&shared.id, &bob.id).await.unwrap();
    let keys = store.runner_authorized_keys(&east.id).await.unwrap();
    assert_eq!(keys.get(&shared.id), Some(&[line(10)].into()));
    assert!(
        store
            .runners_of_user_sandboxes(&bob.id)
            .await
            .unwrap()
            .is_empty()
    );
    for to in [SandboxState::Failed, SandboxState::Deleted] {
        store
            .set_sandbox_state(&keyless.id, to, "test")
            .await
            .unwrap();
    }
    let keys = store.runner_authorized_keys(&east.id).await.unwrap();
    assert_eq!(keys.keys().collect::<Vec<_>>(), [&shared.id]);
}
