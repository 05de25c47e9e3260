//! A gateway tier (issue 29): three `warren-gateway serve` processes on one
//! PostgreSQL store and two Docker runners, each runner joined through one gateway
//! and holding a tunnel to all three. Every gateway serves every sandbox with the
//! same host key and token key; a key revoked through one gateway ends a session
//! held through another within a second; a gateway killed mid-transfer costs
//! nothing to a transfer through another, and comes back; a rolling restart of all
//! three is invisible to a client that retries through the others; PostgreSQL
//! restarted under them stops no live session and no gateway.
//!
//! Needs a Docker engine, root and PostgreSQL installed (scripts/test-postgres;
//! the restart test runs a server of its own) and `WARREN_TEST_POSTGRES_URL`
//! (skipped without them outside CI; a failure in CI).

use std::io::Write;
use std::process::ChildStdin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use warren_keys::SandboxId;
use warren_tests::stack::{PrivatePostgres, Stack, TierStack};
use warren_tests::util::{random_file, sha256_hex, wait_for, wait_until};
use warren_tests::{Client, Cmd, Running, Tmux, persistent};

/// How soon a session held through one gateway must end after another gateway
/// answered a revocation.
const WITHIN: Duration = Duration::from_secs(1);

fn echo(c: &Client, what: &str) -> Result<()> {
    let out = c
        .exec(&format!("echo {what}"))
        .timeout(Duration::from_secs(30))
        .run()?;
    ensure!(
        out.status.success() && out.stdout_trimmed() == what,
        "{}:\n{out}",
        c.target().user
    );
    Ok(())
}

/// ssh, scp both ways and `-J` to `sandbox` through gateway `g`.
fn reach(tier: &TierStack, g: usize, sandbox: &SandboxId) -> Result<()> {
    let relay = tier.relay(g, sandbox);
    echo(&relay, &format!("relay-{g}")).with_context(|| format!("ssh via gateway {g}"))?;
    let local = relay.dir().join(format!("up-{g}-{sandbox}"));
    let sum = random_file(&local, 256 * 1024)?;
    let remote = format!("/tmp/up-{g}");
    relay
        .scp(&[], &[&local.to_string_lossy(), &relay.remote(&remote)])
        .timeout(Duration::from_secs(60))
        .run()?
        .success()
        .with_context(|| format!("scp up via gateway {g}"))?;
    let back = relay.dir().join(format!("down-{g}-{sandbox}"));
    relay
        .scp(&[], &[&relay.remote(&remote), &back.to_string_lossy()])
        .timeout(Duration::from_secs(60))
        .run()?
        .success()
        .with_context(|| format!("scp down via gateway {g}"))?;
    ensure!(
        sha256_hex(&std::fs::read(&back)?) == sum,
        "scp through gateway {g} changed the file"
    );
    echo(&tier.jump(g, sandbox), &format!("jump-{g}"))
        .with_context(|| format!("-J via gateway {g}"))?;
    Ok(())
}

/// An API key made through gateway `made`, the password of a session held
/// through gateway `held`, revoked through gateway `revoked`: the session ends
/// within [`WITHIN`] of that gateway's answer. Returns how long it took.
fn revocation_crosses(
    tier: &TierStack,
    sandbox: &SandboxId,
    [made, held, revoked]: [usize; 3],
) -> Result<Duration> {
    let name = format!("held-{held}");
    let (status, key) = tier.call(made, "POST", "/v1/api-keys", Some(json!({"name": name})))?;
    ensure!(
        status == 201,
        "an API key through gateway {made}: {status} {key}"
    );
    let secret = key["api_key"].as_str().context("api_key")?;
    let key_id = key["id"].as_str().context("id")?;
    let session = tier
        .relay(held, sandbox)
        .with_password(secret)?
        .exec("echo started; sleep 30; echo survived")
        .timeout(Duration::from_secs(60))
        .spawn()?;
    session
        .stdout()
        .wait_for(b"started", Duration::from_secs(30))
        .with_context(|| format!("a session by API key through gateway {held}"))?;
    let path = format!("/v1/api-keys/{key_id}");
    let (status, body) = tier.call(revoked, "DELETE", &path, None)?;
    ensure!(
        status == 204,
        "revoking through gateway {revoked}: {status} {body}"
    );
    let answered = Instant::now();
    let out = session.wait_timeout(Duration::from_secs(20))?;
    let took = answered.elapsed();
    ensure!(
        took < WITHIN && !out.stdout_str().contains("survived"),
        "a key revoked through gateway {revoked}: the session through gateway {held} \
         lived on {took:?}:\n{out}"
    );
    eprintln!(
        "a key made via {made}, revoked via {revoked}: the session via {held} ended {took:?} after"
    );
    Ok(took)
}

/// A session through gateway `g` that echoes every line it is sent.
fn echoing(tier: &TierStack, g: usize, sandbox: &SandboxId) -> Result<(Running, ChildStdin)> {
    let mut session = tier
        .relay(g, sandbox)
        .exec("echo started; while read line; do echo \"got $line\"; done; echo done")
        .stdin_piped()
        .timeout(Duration::from_secs(300))
        .spawn()?;
    session
        .stdout()
        .wait_for(b"started", Duration::from_secs(30))
        .with_context(|| format!("a session through gateway {g}"))?;
    let stdin = session.take_stdin().context("stdin")?;
    Ok((session, stdin))
}

/// `line` goes through every live session and comes back.
fn echo_through(live: &mut [(Running, ChildStdin)], line: &str) -> Result<()> {
    for (g, (session, stdin)) in live.iter_mut().enumerate() {
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        session
            .stdout()
            .wait_for(format!("got {line}").as_bytes(), Duration::from_secs(10))
            .with_context(|| format!("{line}: the live session through gateway {g}"))?;
    }
    Ok(())
}

/// PostgreSQL stopped and started again under the tier, none of whose gateways
/// restarts: a session held through each carries data both ways throughout; new
/// logins through each are told "store unavailable" while it is down (the API
/// says 503 `store_unavailable`) and work again once it is back; and a revocation
/// still crosses the tier (every gateway's listener is back).
fn postgres_restart_under_load(
    tier: &mut TierStack,
    pg: &PrivatePostgres,
    on: &[SandboxId],
) -> Result<()> {
    // The three of the tier (a fourth came and left).
    let pids: Vec<Option<u32>> = tier.gateways[..3].iter_mut().map(|g| g.pid()).collect();
    let mut live = (0..3)
        .map(|g| echoing(tier, g, &on[g % on.len()]))
        .collect::<Result<Vec<_>>>()?;
    echo_through(&mut live, "before")?;

    // Down for 12 s, past the membership's 10 s freshness: when it is back, every
    // gateway's row is stale at first, and none may be dropped from the runners'
    // set for it (their tunnels, and the sessions in them, would close).
    let stopped = Instant::now();
    pg.stop()?;
    let logins: Vec<Running> = (0..3)
        .map(|g| {
            tier.relay(g, &on[g % on.len()])
                .exec("true")
                .timeout(Duration::from_secs(60))
                .spawn()
        })
        .collect::<Result<_>>()?;
    echo_through(&mut live, "during")?;
    let (status, body) = tier.call(1, "GET", "/v1/sandboxes", None)?;
    ensure!(
        status == 503 && body["error"]["code"] == "store_unavailable",
        "the API during the outage: {status} {body}"
    );
    for (g, login) in logins.into_iter().enumerate() {
        let out = login.wait()?;
        ensure!(
            out.code() == Some(255)
                && out.stderr_str().contains("store unavailable")
                && out.elapsed < Duration::from_secs(20),
            "a login through gateway {g} during the outage:\n{out}"
        );
    }
    while stopped.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_millis(500));
    }
    echo_through(&mut live, "late in the outage")?;
    pg.start_again()?;
    let down_for = stopped.elapsed();
    let back = Instant::now();
    for g in 0..3 {
        let client = tier.relay(g, &on[g % on.len()]);
        wait_for(
            &format!("a login through gateway {g} after the restart"),
            Duration::from_secs(30),
            || {
                let out = client.exec("true").timeout(Duration::from_secs(30)).run();
                Ok(out.is_ok_and(|out| out.code() == Some(0)))
            },
        )?;
    }
    eprintln!(
        "PostgreSQL down for {down_for:?}; logins through all three worked again {:?} after",
        back.elapsed()
    );
    echo_through(&mut live, "after")?;
    for (g, (session, stdin)) in live.into_iter().enumerate() {
        drop(stdin);
        let out = session.wait_timeout(Duration::from_secs(30))?;
        ensure!(
            out.code() == Some(0) && out.stdout_str().contains("done"),
            "the live session through gateway {g}:\n{out}"
        );
    }
    let now: Vec<Option<u32>> = tier.gateways[..3].iter_mut().map(|g| g.pid()).collect();
    ensure!(
        now == pids && pids.iter().all(Option::is_some),
        "a gateway restarted: {pids:?} then {now:?}"
    );
    revocation_crosses(tier, &on[0], [2, 0, 1])?;
    Ok(())
}

#[test]
fn three_gateways_serve_every_sandbox_and_survive_each_others_death() -> Result<()> {
    let started = Instant::now();
    // A server of the tier's own, which the test restarts under it.
    let Some(pg) = PrivatePostgres::start()? else {
        return Ok(());
    };
    eprintln!("PostgreSQL of the tier's own up in {:?}", started.elapsed());
    let Some(mut tier) = Stack::builder().on_postgres(&pg.url).tier(3, 2)? else {
        return Ok(());
    };
    eprintln!("tier up in {:?}", started.elapsed());

    // One host key for all: known_hosts holds whichever gateway answers.
    let keys: Vec<String> = (0..3)
        .map(|g| {
            let (status, body) = tier.call(g, "GET", "/v1/host-keys", None)?;
            ensure!(status == 200, "host keys via {g}: {status}");
            Ok(body
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" "))
        })
        .collect::<Result<_>>()?;
    ensure!(
        keys.iter().all(|k| k == &keys[0] && !k.is_empty()),
        "{keys:?}"
    );

    // A sandbox on each runner, each created through another gateway, listed and
    // reachable through the others at once.
    let mut on: Vec<(SandboxId, String)> = Vec::new();
    for attempt in 0..6 {
        let g = attempt % 3;
        let (id, runner, token) = tier.create(g)?;
        // Listed by every gateway. Each store keeps a listed page for up to 2 s
        // (`store/src/page_cache.rs`) and drops it on its own writes only, so
        // another gateway's create shows within that bound until caches are
        // invalidated across the tier (LISTEN/NOTIFY).
        for other in 0..3 {
            let listed = wait_until(Duration::from_millis(2500), || {
                tier.listed(other)
                    .is_ok_and(|l| l.contains(&id.as_str().to_owned()))
            });
            ensure!(listed, "created via {g}, not listed via {other}");
        }
        let other = (g + 1) % 3;
        echo(&tier.relay(other, &id), "at-once")
            .with_context(|| format!("created via {g}, reached via {other}"))?;
        // The token gateway g signed opens the sandbox through another gateway.
        let bearer = tier.relay((g + 2) % 3, &id).with_password(&token)?;
        echo(&bearer, "token").context("a token through another gateway")?;
        if !on.iter().any(|(_, r)| *r == runner.as_str()) {
            on.push((id, runner.as_str().to_owned()));
        }
        if on.len() == 2 {
            break;
        }
    }
    ensure!(on.len() == 2, "placement never used both runners: {on:?}");
    eprintln!("sandboxes on both runners at {:?}", started.elapsed());

    for g in 0..3 {
        for (id, _) in &on {
            reach(&tier, g, id)?;
        }
    }
    eprintln!(
        "ssh, scp, -J through each gateway at {:?}",
        started.elapsed()
    );

    // What one gateway decides, the others honour at once.
    revocation_crosses(&tier, &on[1].0, [0, 1, 2])?;
    eprintln!("a revocation crossed the tier at {:?}", started.elapsed());

    // kill -9 of gateway 0 during a transfer through gateway 1, with a persistent
    // session held through gateway 0.
    let tmux = Tmux::new();
    let held = persistent::as_session(&tier.relay(0, &on[1].0), "build");
    persistent::start_ticking(&tmux, "a", &held)?;
    let data = tier.client.dir().join("transfer");
    let sum = random_file(&data, 24 << 20)?;
    let transfer = tier
        .relay(1, &on[0].0)
        .ssh(&[], "sleep 1; sha256sum")
        .stdin(std::fs::read(&data)?)
        .timeout(Duration::from_secs(120))
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    tier.kill_gateway(0);
    let out = transfer.wait()?;
    ensure!(
        out.status.success() && out.stdout_str().split_whitespace().next() == Some(sum.as_str()),
        "the transfer through gateway 1 while gateway 0 died:\n{out}"
    );
    for g in [1, 2] {
        for (id, _) in &on {
            echo(&tier.relay(g, id), "survivor")?;
        }
    }
    // The persistent session's client lost gateway 0; it re-attaches through
    // gateway 1 and finds its program still running.
    persistent::wait_dead(&tmux, "a")?;
    let before = persistent::last_tick(&tmux.screen("a")?);
    let again = persistent::as_session(&tier.relay(1, &on[1].0), "build");
    persistent::reattach_sees_it_kept_running(&tmux, "b", &again, before)?;
    // Gateway 0 comes back, the runners reconnect to it, and it serves again.
    tier.start_gateway(0)?;
    tier.wait_ready(0)?;
    for (id, _) in &on {
        reach(&tier, 0, id)?;
    }
    eprintln!("kill -9 and restart at {:?}", started.elapsed());

    // A fourth gateway no runner joined through: the runners learn of it and open
    // a tunnel to it; it serves at once. Stopped for good, it leaves the set and
    // the runners close their tunnels to it.
    let fourth = tier.add_gateway()?;
    for (id, _) in &on {
        echo(&tier.relay(fourth, id), "fourth")?;
    }
    tier.stop_gateway(fourth)?;
    ensure!(
        wait_until(Duration::from_secs(10), || tier
            .runner_logged("gateway left the set", fourth)),
        "the runners kept a tunnel to a gateway that left"
    );
    eprintln!("a gateway joined and left at {:?}", started.elapsed());

    // A rolling restart of all three, under a client that retries through the
    // others: no command fails.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<Vec<Client>> = on
        .iter()
        .map(|(id, _)| (0..3).map(|g| tier.relay(g, id)).collect())
        .collect();
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<(usize, usize)> {
            let (mut done, mut retried) = (0usize, 0usize);
            let mut next = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let per_sandbox = &clients[done % clients.len()];
                let mut ok = false;
                let mut errors = Vec::new();
                for attempt in 0..per_sandbox.len() * 2 {
                    let c = &per_sandbox[(next + attempt) % per_sandbox.len()];
                    let out = c
                        .exec("echo rolling")
                        .timeout(Duration::from_secs(30))
                        .run()?;
                    if out.status.success() && out.stdout_trimmed() == "rolling" {
                        ok = true;
                        retried += usize::from(attempt > 0);
                        break;
                    }
                    errors.push(format!("{out}"));
                }
                ensure!(ok, "a command failed through every gateway: {errors:#?}");
                done += 1;
                next += 1;
            }
            Ok((done, retried))
        })
    };
    for g in 0..3 {
        tier.stop_gateway(g)?;
        std::thread::sleep(Duration::from_millis(300));
        tier.start_gateway(g)?;
        tier.wait_ready(g)?;
    }
    stop.store(true, Ordering::Relaxed);
    let (done, retried) = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the client panicked"))??;
    ensure!(done >= 6, "only {done} commands during the rolling restart");
    eprintln!(
        "rolling restart: {done} commands, {retried} retried, none failed, at {:?}",
        started.elapsed()
    );

    let sandboxes: Vec<SandboxId> = on.iter().map(|(id, _)| id.clone()).collect();
    postgres_restart_under_load(&mut tier, &pg, &sandboxes)?;
    eprintln!(
        "PostgreSQL restarted under load; total {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn a_wrong_cluster_secret_is_refused_at_start() -> Result<()> {
    let Some(tier) = Stack::builder().tier(1, 0)? else {
        return Ok(());
    };
    let wrong = tier.client.dir().join("wrong-secret");
    std::fs::write(&wrong, "x".repeat(64))?;
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let data = tempfile::TempDir::new()?;
    let out = Cmd::new(warren_tests::bin_path("warren-gateway"))
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--database-url",
            tier.database_url(),
            "--cluster-secret-file",
        ])
        .arg(&wrong)
        .args([
            "serve",
            "--ssh-listen",
            "127.0.0.1:0",
            "--runner-listen",
            "127.0.0.1:0",
        ])
        .args(["--http-listen", "127.0.0.1:0"])
        .timeout(Duration::from_secs(30))
        .run()?;
    ensure!(
        !out.status.success() && out.stderr_str().contains("does not open the gateway keys"),
        "{out}"
    );
    // A loose secret file is refused too, as a loose host key is.
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let out = Cmd::new(warren_tests::bin_path("warren-gateway"))
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--database-url",
            tier.database_url(),
            "--cluster-secret-file",
        ])
        .arg(&wrong)
        .args(["join-token"])
        .timeout(Duration::from_secs(30))
        .run()?;
    ensure!(
        !out.status.success() && out.stderr_str().contains("chmod 600"),
        "{out}"
    );
    // Not ready without a runner: a load balancer sends it nobody.
    let (status, body) = tier.readiness(0)?;
    ensure!(
        status == 503 && body["reason"] == "no runner connected",
        "{status} {body}"
    );
    Ok(())
}
