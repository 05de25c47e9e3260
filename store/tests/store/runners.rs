//! Runners: join tokens (single use, raced) and the runners they register.

use super::*;

pub(crate) async fn join_tokens_are_single_use_and_expire(db: &TestDb) {
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

pub(crate) async fn join_token_race_has_one_winner(db: &TestDb) {
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

pub(crate) async fn runners_join_once_and_report_state(db: &TestDb) {
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

/// A gateway tier's rows: sealed keys written once (the first write wins), members
/// heartbeating, leaving, and expiring when silent.
pub(crate) async fn gateway_tier_keys_and_members(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.sealed_gateway_key("host_key").await.unwrap(), None);
    store
        .put_sealed_gateway_key_if_absent("host_key", "ws1.first")
        .await
        .unwrap();
    store
        .put_sealed_gateway_key_if_absent("host_key", "ws1.second")
        .await
        .unwrap();
    assert_eq!(
        store
            .sealed_gateway_key("host_key")
            .await
            .unwrap()
            .as_deref(),
        Some("ws1.first")
    );

    let now = warren_store::now_ms();
    let member = |id: &str, heartbeat_at_ms: i64| warren_store::GatewayMember {
        id: id.into(),
        ssh_address: format!("{id}.example:2222"),
        runner_address: format!("{id}.example:2223"),
        heartbeat_at_ms,
    };
    store.heartbeat_gateway(&member("gw-a", now)).await.unwrap();
    store.heartbeat_gateway(&member("gw-b", now)).await.unwrap();
    // Silent for 20 s: not in the set; for two minutes: deleted.
    store
        .heartbeat_gateway(&member("gw-c", now - 20_000))
        .await
        .unwrap();
    store
        .heartbeat_gateway(&member("gw-d", now - 120_000))
        .await
        .unwrap();
    let live = |fresh: u64| {
        let store = store.clone();
        async move {
            store
                .live_gateways(Duration::from_secs(fresh), Duration::from_secs(60))
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(live(10).await, ["gw-a", "gw-b"]);
    // gw-d was deleted by the look above; gw-c is kept (not yet a minute). Oldest
    // start first.
    assert_eq!(live(3600).await, ["gw-c", "gw-a", "gw-b"]);
    // A heartbeat refreshes; leaving removes.
    store.heartbeat_gateway(&member("gw-c", now)).await.unwrap();
    store.remove_gateway("gw-a").await.unwrap();
    assert_eq!(live(10).await, ["gw-c", "gw-b"]);
    assert_invalid(store.heartbeat_gateway(&member("", now)).await.map(|_| ()));
    let mut spaced = member("gw-e", now);
    spaced.runner_address = "a b:1".into();
    assert_invalid(store.heartbeat_gateway(&spaced).await);
    store.ping().await.unwrap();
}
