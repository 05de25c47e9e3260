//! Sandboxes: their states and events, pages of them, and who may log in to them.

use super::*;

pub(crate) async fn sandbox_lifecycle_and_events(db: &TestDb) {
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

pub(crate) async fn illegal_transitions_change_nothing(db: &TestDb) {
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

pub(crate) async fn concurrent_transitions_have_one_winner(db: &TestDb) {
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

pub(crate) async fn sandboxes_are_paginated_per_owner(db: &TestDb) {
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
pub(crate) async fn a_pages_encoding_lives_until_a_write(db: &TestDb) {
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

/// What each agent on a runner should accept: its owner's keys and those of the
/// users it is shared with; and which runners a user's key change must reach.
pub(crate) async fn authorized_keys_are_the_owners_and_the_shared_users(db: &TestDb) {
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
