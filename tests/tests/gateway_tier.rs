//! A gateway tier (issue 29): three `warren-gateway serve` processes on one
//! PostgreSQL store and two Docker runners, each runner joined through one gateway
//! and holding a tunnel to all three. Every gateway serves every sandbox with the
//! same host key and token key; a gateway killed mid-transfer costs nothing to a
//! transfer through another, and comes back; a rolling restart of all three is
//! invisible to a client that retries through the others.
//!
//! Needs a Docker engine, root and `WARREN_TEST_POSTGRES_URL` (skipped without
//! them outside CI; a failure in CI).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use warren_keys::SandboxId;
use warren_tests::stack::{Stack, TierStack};
use warren_tests::util::{random_file, sha256_hex, wait_until};
use warren_tests::{Client, Cmd, Tmux, persistent};

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

#[test]
fn three_gateways_serve_every_sandbox_and_survive_each_others_death() -> Result<()> {
    let started = Instant::now();
    let Some(mut tier) = Stack::builder().tier(3, 2)? else {
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
        "rolling restart: {done} commands, {retried} retried, none failed; total {:?}",
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
