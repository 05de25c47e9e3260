//! PostgreSQL restarted under a gateway that stays up: the live session carries
//! on, a login while the database is down is told so ("store unavailable") within
//! the login grace time (an API request gets 503 `store_unavailable`), logins work again once it is back, and the other
//! gateways' revocations reach it again (its listener reconnected).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use warren_store::Store;
use warren_tests::stack::{PrivatePostgres, Stack, check_error};
use warren_tests::util::wait_for;
use warren_tests::{Client, Target};

#[test]
fn a_postgres_restart_needs_no_gateway_restart() -> Result<()> {
    let Some(pg) = PrivatePostgres::start()? else {
        return Ok(());
    };
    let stack = Stack::builder().on_postgres(&pg.url).start()?;
    let runner = stack.runner("r1")?;
    let client = Client::new(Target::new("127.0.0.1", stack.ssh_port, "x"))?;
    let alice = stack.user("alice", &client)?;
    let id = stack.sandbox(&runner, &alice)?;
    let ssh = client.clone().with_target(stack.target(&id));
    let api = stack.api(Duration::from_secs(3600))?;
    let api_key = stack
        .rt
        .block_on(stack.store.create_api_key(&alice.id, "api"))?;
    let listed = stack.call(
        &api,
        "GET",
        "/v1/sandboxes",
        Some(api_key.secret.expose()),
        None,
    )?;
    ensure!(listed.status == 200, "{listed:?}");

    // A session that ticks through the outage.
    let live = ssh
        .exec("echo started; for i in $(seq 1 40); do echo tick $i; sleep 0.25; done; echo done")
        .timeout(Duration::from_secs(120))
        .spawn()?;
    live.stdout()
        .wait_for(b"started", Duration::from_secs(30))?;
    pg.stop()?;

    // A new login while PostgreSQL is down: told why, well within the grace time.
    let asked = Instant::now();
    let out = ssh.exec("true").timeout(Duration::from_secs(60)).run()?;
    let took = asked.elapsed();
    ensure!(
        out.code() == Some(255) && out.stderr_str().contains("store unavailable"),
        "a login during the outage:\n{out}"
    );
    ensure!(took < Duration::from_secs(20), "the refusal took {took:?}");
    eprintln!("a login during the outage was told in {took:?}");
    // The API says so too.
    let listed = stack.call(
        &api,
        "GET",
        "/v1/sandboxes",
        Some(api_key.secret.expose()),
        None,
    )?;
    check_error(&listed, 503, "store_unavailable")?;

    // The live session carried on to its end.
    let done = live.wait_timeout(Duration::from_secs(60))?;
    ensure!(
        done.code() == Some(0) && done.stdout_str().contains("tick 40\ndone"),
        "the live session did not carry on:\n{done}"
    );

    // PostgreSQL back: logins work again, no gateway restart.
    pg.start_again()?;
    let back = Instant::now();
    wait_for("a login after the restart", Duration::from_secs(30), || {
        let out = ssh.exec("true").timeout(Duration::from_secs(30)).run();
        Ok(out.is_ok_and(|out| out.code() == Some(0)))
    })?;
    eprintln!("logins worked again {:?} after the restart", back.elapsed());

    // Another gateway's revocation reaches this one again: its listener is back.
    let (key, other) = stack.rt.block_on(async {
        let key = stack.store.create_api_key(&alice.id, "ssh").await?;
        let other = Store::open(&pg.url).await?;
        anyhow::Ok((key, other))
    })?;
    let by_key = Client::new(stack.target(&id))?.with_password(key.secret.expose())?;
    let mut session = by_key
        .exec("echo started; sleep 30; echo survived")
        .timeout(Duration::from_secs(60))
        .spawn()?;
    session
        .stdout()
        .wait_for(b"started", Duration::from_secs(30))?;
    let revoked = Instant::now();
    stack
        .rt
        .block_on(other.revoke_api_key(&alice.id, &key.key.id))?;
    wait_for("the session to end", Duration::from_secs(5), || {
        Ok(session.try_wait().is_some())
    })?;
    let took = revoked.elapsed();
    ensure!(
        took < Duration::from_secs(1),
        "the other gateway's revocation took {took:?} after the restart"
    );
    Ok(())
}
