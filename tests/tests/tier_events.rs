//! Several gateways on one PostgreSQL act as one: what one decides (a share taken
//! back, a key deleted, tokens rotated, an API key revoked) ends the sessions held
//! through another within a second; the other's caches follow at once; the
//! periodic work runs on one gateway at a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use warren_keys::SandboxId;
use warren_store::events::{Delivery, TierEvent};
use warren_store::{ApiKeyId, SandboxState, Store};
use warren_tests::stack::{Stack, postgres_schema};
use warren_tests::{Client, Running, Target};

/// How soon a session held through one gateway must end after another gateway's
/// revocation returned.
const WITHIN: Duration = Duration::from_secs(1);
/// No reconciling in the revocation tests (the lease test sets its own).
const NO_RECONCILE: Duration = Duration::from_secs(3600);

/// A long command through `client`, once its first line is there.
fn started(client: &Client) -> Result<Running> {
    let mut running = client
        .exec("echo started; sleep 30; echo survived")
        .stream_stdout()
        .spawn()?;
    let mut stdout = running.take_stdout().context("stdout")?;
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut stdout, &mut first)?;
    ensure!(&first == b"started\n", "the session did not start");
    Ok(running)
}

/// `session` ends within [`WITHIN`] of the other gateway's answer to the
/// revocation (`answered`; `asked`: just before it was asked for).
fn ends_within(session: Running, asked: Instant, answered: Instant, what: &str) -> Result<()> {
    let out = session.wait_timeout(Duration::from_secs(20))?;
    let took = answered.elapsed();
    ensure!(
        !out.stdout_str().contains("survived") && took < WITHIN,
        "{what}: the session through the other gateway lived on ({took:?}):\n{out}"
    );
    eprintln!(
        "{what}: ended {took:?} after the other gateway answered, {:?} after it was asked",
        asked.elapsed()
    );
    Ok(())
}

#[test]
fn a_revocation_on_one_gateway_ends_sessions_held_through_another() -> Result<()> {
    let Some(db) = postgres_schema()? else {
        return Ok(());
    };
    let tier = Stack::builder().in_process_tier(&db.url, 2, NO_RECONCILE)?;
    let (a, b) = (&tier.gateways[0], &tier.gateways[1]);
    // Accounts made through A, the sandbox through B (its runner is B's).
    let alice = a.account("alice")?;
    let bob = a.account("bob")?;
    let made = b.create_sandbox(&alice.key, json!({}))?;
    let id = made["id"].as_str().context("id")?.to_owned();
    let sandbox = SandboxId::parse(&id)?;
    let shared = a.share(&alice, &id, json!({"user": "bob"}))?;
    ensure!(shared.status == 201, "{shared:?}");
    let through_b = |client: &Client| client.clone().with_target(b.target(&sandbox));

    // Unshared on A: bob's session through B ends; alice's does not.
    let bobs = started(&through_b(&bob.client))?;
    let mut alices = started(&through_b(&alice.client))?;
    let since = Instant::now();
    let unshared = a.delete(&format!("/v1/sandboxes/{id}/shares/bob"), &alice.key)?;
    ensure!(unshared.status == 204, "{unshared:?}");
    ends_within(bobs, since, Instant::now(), "unshare")?;
    ensure!(alices.try_wait().is_none(), "alice's session ended too");

    // Alice's SSH key deleted on A.
    let keys = a.get("/v1/ssh-keys", &alice.key)?;
    let key_id = keys.json()["ssh_keys"][0]["id"]
        .as_str()
        .context("key id")?
        .to_owned();
    let since = Instant::now();
    let deleted = a.delete(&format!("/v1/ssh-keys/{key_id}"), &alice.key)?;
    ensure!(deleted.status == 204, "{deleted:?}");
    ends_within(alices, since, Instant::now(), "key deleted")?;

    // The sandbox's tokens rotated on A.
    let token = made["token"].as_str().context("token")?;
    let with_token = Client::new(Target::new(
        "127.0.0.1",
        b.ssh_port,
        format!("{id}#{token}"),
    ))?;
    let session = started(&with_token)?;
    let since = Instant::now();
    let rotated = a.post_empty(&format!("/v1/sandboxes/{id}/token"), &alice.key)?;
    ensure!(rotated.status == 201, "{rotated:?}");
    ends_within(session, since, Instant::now(), "tokens rotated")?;

    // An API key, the SSH password through B, revoked on A; B's API forgets it.
    let made_key = a.post("/v1/api-keys", &alice.key, json!({"name": "ssh"}))?;
    ensure!(made_key.status == 201, "{made_key:?}");
    let secret = made_key.json()["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();
    let key_id = made_key.json()["id"].as_str().context("id")?.to_owned();
    let listed = b.get("/v1/sandboxes", &secret)?;
    ensure!(listed.status == 200, "{listed:?}");
    let session = started(&Client::new(b.target(&sandbox))?.with_password(&secret)?)?;
    let since = Instant::now();
    let revoked = a.delete(&format!("/v1/api-keys/{key_id}"), &alice.key)?;
    ensure!(revoked.status == 204, "{revoked:?}");
    ends_within(session, since, Instant::now(), "API key revoked")?;
    let refused = b.get("/v1/sandboxes", &secret)?;
    ensure!(
        refused.status == 401,
        "B still takes the key A revoked ({:?} after): {refused:?}",
        since.elapsed()
    );
    Ok(())
}

#[test]
fn the_other_gateways_caches_follow_at_once() -> Result<()> {
    let Some(db) = postgres_schema()? else {
        return Ok(());
    };
    let tier = Stack::builder().in_process_tier(&db.url, 2, NO_RECONCILE)?;
    let (a, b) = (&tier.gateways[0], &tier.gateways[1]);
    let alice = a.account("alice")?;
    let id = b.sandbox_of(&alice)?;
    // B remembers the page (listed twice) and the key (verified)...
    for _ in 0..2 {
        let states = b.sandbox_states(&alice.key)?;
        ensure!(
            states == vec![format!("\"{id}\":\"running\"")],
            "{states:?}"
        );
    }
    // ...and A writes the sandbox's row: B's next list shows it, long before the
    // page would have expired.
    let sandbox = SandboxId::parse(&id)?;
    a.rt.block_on(
        a.store
            .set_sandbox_state(&sandbox, SandboxState::Stopped, "test"),
    )?;
    let written = Instant::now();
    loop {
        let states = b.sandbox_states(&alice.key)?;
        if states == vec![format!("\"{id}\":\"stopped\"")] {
            break;
        }
        ensure!(
            written.elapsed() < WITHIN,
            "B's page is stale {:?} after A's write: {states:?}",
            written.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("B's page followed A's write within {:?}", written.elapsed());
    Ok(())
}

#[test]
fn periodic_work_runs_on_one_gateway_and_moves_when_it_goes() -> Result<()> {
    let Some(db) = postgres_schema()? else {
        return Ok(());
    };
    let mut tier = Stack::builder().in_process_tier(&db.url, 2, Duration::from_millis(100))?;
    std::thread::sleep(Duration::from_millis(1500));
    let rounds = |i: usize, tier: &warren_tests::stack::Tier| {
        tier.gateways[i]
            .api
            .state
            .lifecycle
            .rounds
            .load(Ordering::Relaxed)
    };
    let (r0, r1) = (rounds(0, &tier), rounds(1, &tier));
    ensure!(
        r0.max(r1) > 0 && r0.min(r1) == 0,
        "both gateways reconciled: {r0} and {r1} rounds"
    );
    // The leaseholder goes: the other takes over within a few rounds.
    let leader = usize::from(r1 > 0);
    drop(tier.gateways.remove(leader));
    let gone = Instant::now();
    let before = rounds(0, &tier);
    while rounds(0, &tier) <= before + 2 {
        ensure!(
            gone.elapsed() < Duration::from_secs(10),
            "no gateway took the lease over"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("the lease moved within {:?}", gone.elapsed());
    Ok(())
}

#[test]
fn events_reach_every_store_on_the_database_and_no_other() -> Result<()> {
    let Some(db) = postgres_schema()? else {
        return Ok(());
    };
    let Some(other_db) = postgres_schema()? else {
        return Ok(());
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let a = Store::open(&db.url).await?;
        let b = Store::open(&db.url).await?;
        let elsewhere = Store::open(&other_db.url).await?;
        let mut from_a = a.subscribe();
        let mut at_b = b.subscribe();
        let mut at_elsewhere = elsewhere.subscribe();
        let event = TierEvent::ApiKeyRevoked {
            key: ApiKeyId::generate(),
        };
        // The listeners connect in the background: publish until B hears it.
        let heard = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                a.publish(event.clone()).await;
                if let Ok(got) = tokio::time::timeout(Duration::from_millis(200), at_b.next()).await
                {
                    return got;
                }
            }
        })
        .await?;
        ensure!(heard == Delivery::Event(event.clone()), "{heard:?}");
        // A hears its own through its own channel, at once.
        ensure!(from_a.next().await == Delivery::Event(event.clone()));
        let nothing = tokio::time::timeout(Duration::from_millis(500), at_elsewhere.next()).await;
        ensure!(
            nothing.is_err(),
            "another tier's store heard it: {nothing:?}"
        );
        anyhow::Ok(())
    })
}

#[test]
fn a_gateway_that_missed_events_checks_its_live_logins_again() -> Result<()> {
    use sqlx::Connection;

    let Some(db) = postgres_schema()? else {
        return Ok(());
    };
    let tier = Stack::builder().in_process_tier(&db.url, 1, NO_RECONCILE)?;
    let g = &tier.gateways[0];
    let alice = g.account("alice")?;
    let id = g.sandbox_of(&alice)?;
    let sandbox = SandboxId::parse(&id)?;
    let made_key = g.post("/v1/api-keys", &alice.key, json!({"name": "ssh"}))?;
    ensure!(made_key.status == 201, "{made_key:?}");
    let secret = made_key.json()["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();
    let key_id = made_key.json()["id"].as_str().context("id")?.to_owned();
    let session = started(&Client::new(g.target(&sandbox))?.with_password(&secret)?)?;
    // The key is revoked behind the gateway's back (no event), and then its
    // listener's connection is cut: once it is back, it checks every live login.
    let listen = format!(
        "LISTEN \"{}\"",
        warren_store::events::channel_for(db.schema())
    );
    let since = Instant::now();
    let cut = g.rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&db.url).await?;
        sqlx::query("UPDATE api_keys SET revoked_at = 1 WHERE id = $1")
            .bind(&key_id)
            .execute(&mut conn)
            .await?;
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1",
        )
        .bind(&listen)
        .fetch_all(&mut conn)
        .await?;
        conn.close().await?;
        anyhow::Ok(cut)
    })?;
    ensure!(!cut.is_empty(), "no listener found ({listen})");
    let out = session.wait_timeout(Duration::from_secs(20))?;
    let took = since.elapsed();
    ensure!(
        !out.stdout_str().contains("survived") && took < Duration::from_secs(5),
        "the login revoked while the listener was away lived on ({took:?}):\n{out}"
    );
    eprintln!("resynced and ended the revoked login in {took:?}");
    Ok(())
}

#[test]
fn a_recording_made_through_one_gateway_is_read_through_another() -> Result<()> {
    let Some(db) = postgres_schema()? else {
        return Ok(());
    };
    let tier = Stack::builder().in_process_tier(&db.url, 2, NO_RECONCILE)?;
    let (a, b) = (&tier.gateways[0], &tier.gateways[1]);
    let alice = a.account("alice")?;
    let id = b.sandbox_of(&alice)?;
    let wait = Duration::from_secs(30);
    // A terminal session through B, recorded by B.
    let mut term = b
        .ssh(&alice, &id)?
        .ssh_on_pty(&["-tt"], "", "xterm", 30, 100)?;
    term.send("printf 'tier-%s\\n' $((6*7))\r")?;
    term.expect("tier-42", wait)?;
    term.send("exit\r")?;
    term.wait(wait)?;
    // A lists it as recorded and serves it.
    let started = Instant::now();
    let session = loop {
        let listing = a.get(&format!("/v1/sandboxes/{id}/sessions"), &alice.key)?;
        ensure!(listing.status == 200, "{listing:?}");
        let recorded = listing.json()["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| {
                s["channels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["recorded"] == true)
            })
            .and_then(|s| s["id"].as_str().map(str::to_owned));
        if let Some(session) = recorded {
            break session;
        }
        ensure!(
            started.elapsed() < wait,
            "A never listed B's recording: {listing:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let cast = a.get(&format!("/v1/sessions/{session}/recording"), &alice.key)?;
    ensure!(
        cast.status == 200 && cast.text.contains("tier-42"),
        "A's answer for B's recording: {cast:?}"
    );
    eprintln!(
        "B's recording ({} bytes) was read through A {:?} after the session",
        cast.text.len(),
        started.elapsed()
    );
    Ok(())
}
