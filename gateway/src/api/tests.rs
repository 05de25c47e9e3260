//! The store's counts and token queries the API uses (`store/src/usage.rs`,
//! `store/src/sandboxes.rs`), on SQLite and, when `WARREN_TEST_POSTGRES_URL` is set
//! (`scripts/test-postgres`), on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use sqlx::Connection;
use warren_keys::SandboxId;

use warren_store::{
    NewRunner, NewSandbox, NewSshSession, SandboxState, SessionEnd, Store, Timestamp, UserId,
};

const POSTGRES_URL_VAR: &str = "WARREN_TEST_POSTGRES_URL";

async fn exercise(store: &Store) {
    let user = store.create_user("alice", false).await.unwrap();
    let key = russh::keys::PrivateKey::from(
        russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[7; 32]),
    );
    let runner = store
        .register_runner(&NewRunner {
            name: "r1".into(),
            public_key: key.public_key().clone(),
            labels: vec![],
            capacity: 4,
        })
        .await
        .unwrap();
    let new = |ttl_s| NewSandbox {
        id: SandboxId::generate(),
        owner_id: user.id.clone(),
        runner_id: Some(runner.id.clone()),
        image: "default".into(),
        repo: None,
        branch: None,
        forward_agent: false,
        cpus: 1.0,
        memory_mb: 512,
        idle_timeout_s: None,
        ttl_s,
        disk_mb: None,
    };
    let a = store.create_sandbox(&new(Some(60))).await.unwrap();
    let b = store.create_sandbox(&new(None)).await.unwrap();
    store
        .set_sandbox_state(&b.id, SandboxState::Running, "t")
        .await
        .unwrap();

    assert_eq!(
        store.count_sandboxes_by_runner().await.unwrap(),
        vec![(runner.id.clone(), 2)]
    );
    let mut by_state = store.count_sandboxes_by_state().await.unwrap();
    by_state.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        by_state,
        vec![(SandboxState::Creating, 1), (SandboxState::Running, 1)]
    );
    let now = Timestamp::now();
    assert!(store.list_expired_sandboxes(now).await.unwrap().is_empty());
    let later = Timestamp::from_unix_seconds(now.unix_seconds() + 61);
    let expired = store.list_expired_sandboxes(later).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id, a.id);

    let totals = store.ssh_totals().await.unwrap();
    assert_eq!((totals.sessions, totals.open, totals.bytes_in), (0, 0, 0));
    let addr: SocketAddr = "127.0.0.1:5555".parse().unwrap();
    let s1 = store
        .open_ssh_session(&NewSshSession {
            user_id: Some(user.id.clone()),
            sandbox_id: b.id.clone(),
            source_addr: addr,
        })
        .await
        .unwrap();
    store
        .open_ssh_session(&NewSshSession {
            user_id: None,
            sandbox_id: b.id.clone(),
            source_addr: addr,
        })
        .await
        .unwrap();
    store
        .close_ssh_session(
            &s1.id,
            &SessionEnd {
                bytes_in: 5_000_000_000,
                bytes_out: 7,
                exit: None,
            },
        )
        .await
        .unwrap();
    let totals = store.ssh_totals().await.unwrap();
    assert_eq!(totals.sessions, 2);
    assert_eq!(totals.open, 1);
    assert_eq!(totals.bytes_in, 5_000_000_000);
    assert_eq!(totals.bytes_out, 7);
}

#[tokio::test]
async fn api_queries_on_sqlite() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = Store::open_in_data_dir(dir.path()).await.unwrap();
    exercise(&store).await;
}

#[tokio::test]
async fn api_queries_on_postgres() {
    let admin_url = std::env::var(POSTGRES_URL_VAR).unwrap_or_default();
    if admin_url.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{POSTGRES_URL_VAR} must be set in CI"
        );
        eprintln!("note: {POSTGRES_URL_VAR} is not set; this PostgreSQL test did nothing");
        return;
    }
    let schema = format!("t_{}", &UserId::generate().as_str()[4..]);
    let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let sep = if admin_url.contains('?') { '&' } else { '?' };
    let store = Store::open(&format!(
        "{admin_url}{sep}options=-c%20search_path%3D{schema}"
    ))
    .await
    .unwrap();
    exercise(&store).await;
    store.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}
