//! Accounts: users, their API keys and SSH keys, and a store that is reopened.

use super::*;

pub(crate) async fn reopening_keeps_data_and_does_not_remigrate(db: &TestDb) {
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    store.close().await;
    let store = db.open().await;
    assert_eq!(store.get_user(&alice.id).await.unwrap(), alice);
    store.close().await;
}

pub(crate) async fn users(db: &TestDb) {
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

pub(crate) async fn api_keys_authenticate_until_revoked(db: &TestDb) {
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

pub(crate) async fn ssh_keys(db: &TestDb) {
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
