//! Snapshots in the store (issue 26), on SQLite and on PostgreSQL (a fresh schema
//! in the server at `WARREN_TEST_POSTGRES_URL`; without it the PostgreSQL case
//! passes with a note, except in CI).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;
use sqlx::Connection;
use warren_store::{NewRunner, NewSnapshot, SandboxId, SnapshotId, Store, StoreError, UserId};

const POSTGRES_URL_VAR: &str = "WARREN_TEST_POSTGRES_URL";

async fn snapshots_are_per_owner_and_deletable(store: &Store) {
    let alice = store.create_user("alice", false).await.unwrap();
    let bob = store.create_user("bob", false).await.unwrap();
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]))
        .public_key()
        .clone();
    let runner = store
        .register_runner(&NewRunner {
            name: "r1".into(),
            public_key: key,
            labels: Vec::new(),
            capacity: 4,
        })
        .await
        .unwrap();
    let new = |owner: &UserId, name: Option<&str>| NewSnapshot {
        id: SnapshotId::generate(),
        owner_id: owner.clone(),
        source_id: SandboxId::generate(),
        runner_id: runner.id.clone(),
        name: name.map(str::to_owned),
        image: "warren-base:latest".into(),
        spec: r#"{"memory_mb":1024}"#.into(),
        repo: Some("https://example.com/o/r.git".into()),
        branch: Some("warren/x".into()),
        size_bytes: 10 << 20,
        frozen_ms: 120,
    };
    let first = store
        .create_snapshot(&new(&alice.id, Some("prepared")))
        .await
        .unwrap();
    let second = store.create_snapshot(&new(&alice.id, None)).await.unwrap();
    let bobs = store.create_snapshot(&new(&bob.id, None)).await.unwrap();

    let got = store.get_snapshot(&first.id).await.unwrap();
    assert_eq!(got, first);
    assert_eq!(got.size_bytes, 10 << 20);
    assert_eq!(got.name.as_deref(), Some("prepared"));

    let alices = store.list_snapshots(Some(&alice.id)).await.unwrap();
    let ids: Vec<&SnapshotId> = alices.iter().map(|s| &s.id).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&&first.id) && ids.contains(&&second.id));
    assert_eq!(store.list_snapshots(None).await.unwrap().len(), 3);
    assert_eq!(store.count_snapshots(&alice.id).await.unwrap(), 2);
    assert_eq!(store.count_snapshots(&bob.id).await.unwrap(), 1);

    // A taken id, an unknown owner or runner.
    let mut taken = new(&alice.id, None);
    taken.id = first.id.clone();
    assert!(matches!(
        store.create_snapshot(&taken).await,
        Err(StoreError::Conflict(_))
    ));
    let nobody = new(&UserId::generate(), None);
    assert!(matches!(
        store.create_snapshot(&nobody).await,
        Err(StoreError::NotFound(_))
    ));
    let mut empty = new(&alice.id, None);
    empty.image.clear();
    assert!(matches!(
        store.create_snapshot(&empty).await,
        Err(StoreError::Invalid(_))
    ));

    // Three snapshots of 10 MiB take 30 MiB of the runner's disk, as quotas do.
    let disk = |mb: u64| {
        vec![(
            runner.id.clone(),
            warren_store::RunnerUsage {
                disk_mb: mb,
                ..Default::default()
            },
        )]
    };
    assert_eq!(store.runner_usage().await.unwrap(), disk(30));
    assert!(store.delete_snapshot(&first.id).await.unwrap());
    assert!(!store.delete_snapshot(&first.id).await.unwrap());
    assert_eq!(store.runner_usage().await.unwrap(), disk(20));
    assert!(matches!(
        store.get_snapshot(&first.id).await,
        Err(StoreError::NotFound("snapshot"))
    ));
    assert_eq!(store.count_snapshots(&alice.id).await.unwrap(), 1);
    assert!(store.get_snapshot(&bobs.id).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_data_dir(&dir.path().join("data"))
        .await
        .unwrap();
    snapshots_are_per_owner_and_deletable(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let admin_url = std::env::var(POSTGRES_URL_VAR).unwrap_or_default();
    if admin_url.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{POSTGRES_URL_VAR} is not set, but CI is"
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
    let url = format!("{admin_url}{sep}options=-c%20search_path%3D{schema}");
    let store = Store::open(&url).await.unwrap();
    snapshots_are_per_owner_and_deletable(&store).await;
    drop(store);
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}
