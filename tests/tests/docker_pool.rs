//! The warm pool on the real Docker engine: concurrent creates get distinct members,
//! then cold sandboxes; a claimed sandbox has its own id, token, env, limits and
//! network; the pool refills; a changed image replaces its members; claimed
//! sandboxes survive a stop/start and a runner restart, unclaimed members do not.
//! Cold creates take the spare networks made ahead, never one twice; the spares are
//! made again, go with their sandbox's delete, and a restart replaces untaken ones.
//! In CI a missing engine is a failure, not a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use warren_keys::{SandboxId, Scope};
use warren_runner::netpolicy::{HOST_CHAIN, jump_line};
use warren_runner::protocol::{Request, Response, SandboxSpec};
use warren_store::SandboxState;
use warren_tests::stack::sandbox_row;
use warren_tests::stack::{DockerStack, POOL_LABEL, docker, docker_ok, network_of};
use warren_tests::util::wait_until;
use warren_tests::{Cmd, Profile, build_bin};

const BUSYBOX: &str = "warren-busybox:latest";

fn spec(image: &str, who: &str) -> SandboxSpec {
    SandboxSpec {
        image: Some(image.into()),
        env: [("WHO".to_owned(), who.into())].into(),
        memory_mb: Some(512),
        ..SandboxSpec::default()
    }
}

/// Creates one sandbox per spec, all at once, as the gateway would for concurrent
/// API calls (store rows first, so the front door lets the owner in).
fn create_all(d: &DockerStack, specs: Vec<SandboxSpec>) -> Result<Vec<SandboxId>> {
    let ids: Vec<SandboxId> = specs.iter().map(|_| SandboxId::generate()).collect();
    let stack = &d.stack;
    stack.rt.block_on(async {
        for id in &ids {
            stack
                .store
                .create_sandbox(&sandbox_row(id, &d.runner, &d.owner))
                .await?;
        }
        let creates = ids.iter().zip(specs).map(|(id, spec)| async move {
            let request = Request::Create {
                sandbox: id.clone(),
                token_key: stack.verifier.clone(),
                authorized_keys: vec![],
                spec,
            };
            stack.hub.control(&d.runner.id, &request).await
        });
        for answer in futures_util::future::join_all(creates).await {
            let answer = answer?;
            ensure!(answer == Response::Ok, "create: {answer:?}");
        }
        for id in &ids {
            stack
                .store
                .set_sandbox_state(id, SandboxState::Running, "test")
                .await?;
        }
        anyhow::Ok(())
    })?;
    Ok(ids)
}

/// `docker inspect` of one field of a container.
fn inspect(name: &str, format: &str) -> Result<String> {
    docker_ok(&["inspect", "--format", format, name])
}

/// The slot (the member's own sandbox label) of sandbox `id`'s container, if it
/// came from the pool.
fn slot(id: &SandboxId) -> Result<Option<String>> {
    let name = format!("warren-{id}");
    let pool = inspect(
        &name,
        &format!("{{{{index .Config.Labels \"{POOL_LABEL}\"}}}}"),
    )?;
    if pool.is_empty() {
        return Ok(None);
    }
    inspect(&name, "{{index .Config.Labels \"org.warren.sandbox\"}}").map(Some)
}

/// `true` through the gateway as the owner, printing `$WHO`.
fn who(d: &DockerStack, id: &SandboxId) -> Result<String> {
    let c = d.client.clone().with_target(d.stack.target(id));
    let out = c.exec("echo $WHO").run()?.success()?;
    Ok(out.stdout_trimmed().to_owned())
}

/// `hostname` and `/etc/hostname` in the sandbox, which must agree.
fn hostname(d: &DockerStack, id: &SandboxId) -> Result<String> {
    let c = d.client.clone().with_target(d.stack.target(id));
    let out = c.exec("hostname; cat /etc/hostname").run()?.success()?;
    let text = out.stdout_trimmed().to_owned();
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines.len() == 2 && lines[0] == lines[1],
        "hostname and /etc/hostname differ: {lines:?}"
    );
    Ok(lines[0].to_owned())
}

/// `ssh <user>@agent true` straight to the agent of `id` (its socket in the run
/// directory), so the agent itself judges the token in the user name.
fn agent_login(d: &DockerStack, id: &SandboxId, user: &str) -> Result<bool> {
    let slot = slot(id)?.unwrap_or_else(|| id.to_string());
    let socket = d.runner.listen_dir().join(slot).join("agent.sock");
    let proxy = format!(
        "ProxyCommand={} {}",
        build_bin("warren-tests", "unix-connect", Profile::Debug)?.display(),
        socket.display()
    );
    let out = Cmd::new("ssh")
        .args(["-F", "/dev/null", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"])
        .args(["-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no"])
        .args(["-o", "PasswordAuthentication=no", "-o", &proxy])
        .args(["-l", user, "agent", "true"])
        .timeout(Duration::from_secs(30))
        .run()?;
    Ok(out.code() == Some(0))
}

fn listed(d: &DockerStack) -> Result<Vec<SandboxId>> {
    match d.control(Request::List)? {
        Response::Sandboxes { sandboxes } => Ok(sandboxes.into_iter().map(|s| s.sandbox).collect()),
        other => anyhow::bail!("list: {other:?}"),
    }
}

fn container_ip(id: &SandboxId) -> Result<String> {
    inspect(
        &format!("warren-{id}"),
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    )
}

#[test]
fn concurrent_creates_claim_distinct_members_and_each_is_its_own_sandbox() -> Result<()> {
    let pool = format!("{BUSYBOX}=2");
    let Some(d) = DockerStack::start(&["--pool", &pool])? else {
        return Ok(());
    };
    let first = d.wait_for_pool(2, "at start")?;

    // Four creates at once against a pool of two: two claims, two cold creates.
    let specs = (0..4).map(|i| spec(BUSYBOX, &format!("who-{i}"))).collect();
    let ids = create_all(&d, specs)?;
    let mut slots = BTreeSet::new();
    let mut claimed = Vec::new();
    for id in &ids {
        if let Some(s) = slot(id)? {
            ensure!(slots.insert(s.clone()), "member {s} was handed out twice");
            claimed.push(id.clone());
        }
    }
    // (A member the filler finishes meanwhile may serve a third: never twice.)
    ensure!(
        claimed.len() >= 2,
        "{} of 4 creates were claims, not 2:\n{}",
        claimed.len(),
        d.runner_log()
    );
    let from_first = slots
        .iter()
        .filter(|s| first.contains(&format!("warren-{s}")))
        .count();
    ensure!(
        from_first == 2,
        "{from_first} of the 2 waiting members were claimed"
    );

    // Each has its own env, hostname and limits, and the list shows sandboxes, not
    // members.
    for (i, id) in ids.iter().enumerate() {
        ensure!(who(&d, id)? == format!("who-{i}"), "{id} has another's env");
        ensure!(hostname(&d, id)? == id.as_str(), "{id}'s hostname");
        let memory = inspect(&format!("warren-{id}"), "{{.HostConfig.Memory}}")?;
        ensure!(
            memory == (512u64 << 20).to_string(),
            "{id}: memory {memory}"
        );
    }
    let mut want = ids.clone();
    want.sort();
    ensure!(listed(&d)? == want, "the list is not the four sandboxes");

    // The agent knows which sandbox it is: another sandbox's token is refused.
    let signer = d.stack.signer()?;
    let (a, b) = (&claimed[0], &claimed[1]);
    let token = |id: &SandboxId| {
        signer
            .mint(id, Scope::Ssh, Duration::from_secs(300))
            .expose()
            .to_owned()
    };
    ensure!(
        agent_login(&d, b, &format!("{b}#{}", token(b)))?,
        "{b}'s own token is refused by its agent"
    );
    ensure!(
        !agent_login(&d, b, &format!("{b}#{}", token(a)))?,
        "{b}'s agent took {a}'s token"
    );

    // Its own network: A cannot reach a server in B, which B itself can.
    let networks: BTreeSet<String> = claimed
        .iter()
        .map(|id| inspect(&format!("warren-{id}"), "{{.HostConfig.NetworkMode}}"))
        .collect::<Result<_>>()?;
    ensure!(networks.len() == 2, "claimed sandboxes share a network");
    let b_client = d.client.clone().with_target(d.stack.target(b));
    let a_client = d.client.clone().with_target(d.stack.target(a));
    let server = b_client
        .exec("cd /workspace && echo sandbox-b > index.html && exec httpd -f -p 8000 -h .")
        .spawn()?;
    let b_ip = container_ip(b)?;
    let fetch = format!("timeout 4 wget -q -O - http://{b_ip}:8000/index.html");
    ensure!(
        wait_until(Duration::from_secs(20), || {
            b_client
                .exec(&fetch)
                .run()
                .is_ok_and(|o| o.stdout_trimmed() == "sandbox-b")
        }),
        "B's own server never answered"
    );
    let from_a = a_client.exec(&fetch).run()?;
    ensure!(
        from_a.stdout_trimmed() != "sandbox-b",
        "A reached B's server"
    );
    let _ = server.kill();

    // The pool refills with new members.
    let refilled = d.wait_for_pool(2, "after the claims")?;
    ensure!(
        refilled.is_disjoint(&first),
        "the pool still holds a claimed member: {refilled:?}"
    );
    Ok(())
}

/// An image tag of the test's own, removed when dropped.
struct TestImage(String);

impl TestImage {
    fn tag_of(source: &str) -> Result<TestImage> {
        let tag = format!("warren-pooltest-{}:latest", std::process::id());
        docker_ok(&["tag", source, &tag])?;
        Ok(TestImage(tag))
    }

    /// Points the tag at a new image built on `BUSYBOX` (no registry involved).
    fn rebuild(&self) -> Result<String> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!(
                "FROM {BUSYBOX}\nLABEL org.warren.test.pool=\"{}\"\n",
                self.0
            ),
        )?;
        Cmd::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", &self.0])
            .arg(dir.path())
            .timeout(Duration::from_secs(120))
            .run()?
            .success()
            .context("docker build")?;
        self.id()
    }

    fn id(&self) -> Result<String> {
        docker_ok(&["image", "inspect", "--format", "{{.Id}}", &self.0])
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}

#[test]
fn a_changed_image_replaces_the_pool_and_claimed_sandboxes_outlive_restarts() -> Result<()> {
    // Declared first, so it is removed after the stack's containers.
    let image = TestImage::tag_of(BUSYBOX)?;
    let pool = format!("{}=1", image.0);
    let Some(mut d) = DockerStack::start(&["--pool", &pool, "--pool-check-interval-s", "1"])?
    else {
        return Ok(());
    };
    let old = d.wait_for_pool(1, "at start")?;
    let ids = create_all(&d, vec![spec(&image.0, "first")])?;
    let first = &ids[0];
    ensure!(slot(first)?.is_some(), "the create was not a claim");
    ensure!(who(&d, first)? == "first", "the claimed sandbox's env");

    // Stopped and started, it is still itself (the runner tells its agent again).
    ensure!(
        d.control(Request::Stop {
            sandbox: first.clone()
        })? == Response::Ok
    );
    start_again(&d, first, spec(&image.0, "first"))?;
    ensure!(who(&d, first)? == "first", "after a stop and start");
    ensure!(
        hostname(&d, first)? == first.as_str(),
        "hostname after a start"
    );

    // The tag moves to another image: the waiting member is replaced.
    let refilled = d.wait_for_pool(1, "after the claim")?;
    ensure!(refilled.is_disjoint(&old));
    let new_id = image.rebuild()?;
    let mut members = BTreeSet::new();
    let replaced = wait_until(Duration::from_secs(60), || {
        members = d.pool_waiting().unwrap_or_default();
        members.len() == 1
            && members.is_disjoint(&refilled)
            && members
                .iter()
                .all(|m| d.member_waits(m) && inspect(m, "{{.Image}}").is_ok_and(|i| i == new_id))
    });
    ensure!(
        replaced,
        "the pool kept {members:?} after the image changed\n{}",
        d.runner_log()
    );
    let ids = create_all(&d, vec![spec(&image.0, "second")])?;
    let second = &ids[0];
    ensure!(slot(second)?.is_some(), "the second create was not a claim");
    ensure!(inspect(&format!("warren-{second}"), "{{.Image}}")? == new_id);

    // A runner restart adopts both claimed sandboxes and replaces the member.
    let before = d.wait_for_pool(1, "before the restart")?;
    d.restart_runner()?;
    let mut want = vec![first.clone(), second.clone()];
    want.sort();
    ensure!(
        listed(&d)? == want,
        "after the restart the list is not the two sandboxes"
    );
    ensure!(who(&d, first)? == "first" && who(&d, second)? == "second");
    let after = d.wait_for_pool(1, "after the restart")?;
    ensure!(
        after.is_disjoint(&before),
        "an unclaimed member was adopted"
    );
    Ok(())
}

/// Starts a stopped sandbox again (the gateway's start is a create of an existing one).
fn start_again(d: &DockerStack, id: &SandboxId, spec: SandboxSpec) -> Result<()> {
    let answer = d.control(Request::Create {
        sandbox: id.clone(),
        token_key: d.stack.verifier.clone(),
        authorized_keys: vec![],
        spec,
    })?;
    ensure!(answer == Response::Ok, "start: {answer:?}");
    Ok(())
}

/// The runner's spare networks (made ahead for cold creates) nobody took, by slot.
fn untaken_spares(d: &DockerStack) -> Result<BTreeSet<String>> {
    let slots = docker_ok(&[
        "network",
        "ls",
        "--filter",
        &format!("label=org.warren.runner={}", d.runner.id),
        "--filter",
        &format!("label={POOL_LABEL}=spare"),
        "--format",
        "{{.Label \"org.warren.sandbox\"}}",
    ])?;
    let private = d.runner.listen_dir().join(".runner");
    Ok(slots
        .split_whitespace()
        .filter(|slot| !private.join(slot).join("claimed").exists())
        // Its network is listed a moment before the runner offers it.
        .filter(|slot| d.runner_logged("spare network ready", slot))
        .map(str::to_owned)
        .collect())
}

fn wait_for_spares(d: &DockerStack, n: usize, what: &str) -> Result<BTreeSet<String>> {
    let ready = wait_until(Duration::from_secs(60), || {
        untaken_spares(d).is_ok_and(|s| s.len() == n)
    });
    ensure!(
        ready,
        "{what}: not {n} spare networks: {:?}\n{}",
        untaken_spares(d)?,
        d.runner_log()
    );
    untaken_spares(d)
}

/// The host's IPv4 filter rules (`iptables -S`).
fn iptables_rules() -> String {
    Cmd::new("iptables")
        .args(["-w", "-S"])
        .run()
        .map(|o| o.stdout_str().to_owned())
        .unwrap_or_default()
}

#[test]
fn cold_creates_take_spare_networks_and_each_sandbox_still_has_its_own() -> Result<()> {
    let Some(mut d) = DockerStack::start(&["--spare-networks", "2"])? else {
        return Ok(());
    };
    let first = wait_for_spares(&d, 2, "at start")?;

    // A create with a missing image fails and keeps the spares for the next.
    let missing = d.control(Request::Create {
        sandbox: SandboxId::generate(),
        token_key: d.stack.verifier.clone(),
        authorized_keys: vec![],
        spec: spec("warren-not-here:latest", "nobody"),
    })?;
    ensure!(missing != Response::Ok, "a missing image was created");
    ensure!(
        untaken_spares(&d)? == first,
        "a failed create used up a spare"
    );

    // Three cold creates at once against two spares: no spare goes to two.
    let specs = (0..3).map(|i| spec(BUSYBOX, &format!("who-{i}"))).collect();
    let ids = create_all(&d, specs)?;
    let mut networks = BTreeSet::new();
    let mut on_spares = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let network = network_of(id)?;
        ensure!(networks.insert(network.clone()), "{network} serves two");
        if first.iter().any(|s| network == format!("warren-{s}")) {
            on_spares.push((id.clone(), network.trim_start_matches("warren-").to_owned()));
        }
        // Its own identity, hostname, env and run directory, as a cold create has.
        ensure!(who(&d, id)? == format!("who-{i}"), "{id} has another's env");
        ensure!(hostname(&d, id)? == id.as_str(), "{id}'s hostname");
        ensure!(slot(id)?.is_none(), "{id} looks like a pool claim");
    }
    ensure!(
        on_spares.len() == 2,
        "{} of 3 creates took the 2 spares:\n{}",
        on_spares.len(),
        d.runner_log()
    );
    // Each spare's bridge is a Warren bridge, which the shared chains guard.
    let rules = iptables_rules();
    ensure!(
        rules.contains(&jump_line("INPUT", HOST_CHAIN)),
        "no jump to the shared host chain:\n{rules}"
    );
    for (id, slot) in &on_spares {
        let short = slot.trim_start_matches("sbx-");
        ensure!(
            std::path::Path::new(&format!("/sys/class/net/wr-{short}")).exists(),
            "{id} on spare {slot} has no bridge wr-{short}"
        );
    }

    // The spares are made again.
    let again = wait_for_spares(&d, 2, "after the creates")?;
    ensure!(again.is_disjoint(&first), "a taken spare is offered again");

    // A delete takes the spare's volume, network and rules with it.
    let (gone, gone_slot) = &on_spares[0];
    ensure!(
        d.control(Request::Delete {
            sandbox: gone.clone()
        })? == Response::Ok,
        "delete"
    );
    for what in ["network", "volume"] {
        let left = docker_ok(&[
            what,
            "ls",
            "-q",
            "--filter",
            &format!("label=org.warren.sandbox={gone_slot}"),
        ])?;
        ensure!(left.is_empty(), "the deleted sandbox's {what} is left");
    }
    let short = gone_slot.trim_start_matches("sbx-");
    ensure!(
        !iptables_rules().contains(&format!("WARREN-{short}")),
        "the deleted sandbox's chains are left"
    );

    // A restart removes the spares nobody took and makes new ones; the sandbox on
    // a spare is adopted and works.
    d.restart_runner()?;
    let (kept, kept_slot) = &on_spares[1];
    let fresh = wait_for_spares(&d, 2, "after the restart")?;
    ensure!(
        fresh.is_disjoint(&again),
        "untaken spares outlived the restart"
    );
    for slot in &again {
        let left = docker_ok(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=org.warren.sandbox={slot}"),
        ])?;
        ensure!(left.is_empty(), "untaken spare {slot} is left");
    }
    let i = ids.iter().position(|id| id == kept).unwrap();
    ensure!(
        who(&d, kept)? == format!("who-{i}"),
        "{kept} after the restart"
    );
    ensure!(
        network_of(kept)? == format!("warren-{kept_slot}"),
        "{kept} changed network"
    );
    Ok(())
}

/// A pool with a range follows demand: a burst of 32 creates at once claims every
/// waiting member exactly once (the rest start cold, in parallel), each sandbox is
/// its own, the pool grows to its maximum, and it shrinks back to its minimum once
/// the demand window has passed.
#[test]
fn a_burst_grows_the_pool_without_handing_a_member_out_twice_and_it_shrinks_back() -> Result<()> {
    let pool = format!("{BUSYBOX}=3..5");
    let Some(d) = DockerStack::start(&[
        "--pool",
        &pool,
        "--pool-check-interval-s",
        "1",
        "--pool-demand-window-s",
        "45",
        "--disk-mb",
        "64",
    ])?
    else {
        return Ok(());
    };
    let first = d.wait_for_pool(3, "at start")?;

    let started = std::time::Instant::now();
    let specs = (0..32)
        .map(|i| spec(BUSYBOX, &format!("burst-{i}")))
        .collect();
    let ids = create_all(&d, specs)?;
    eprintln!("32 creates at once: {:.1?}", started.elapsed());
    let mut slots = BTreeSet::new();
    for id in &ids {
        if let Some(s) = slot(id)? {
            ensure!(slots.insert(s.clone()), "member {s} was handed out twice");
        }
    }
    let from_first = slots
        .iter()
        .filter(|s| first.contains(&format!("warren-{s}")))
        .count();
    ensure!(
        from_first == 3,
        "{from_first} of the 3 waiting members were claimed:\n{}",
        d.runner_log()
    );
    // The burst asked for more than the maximum: the pool grows to it...
    let grown = d.wait_for_pool(5, "after the burst")?;
    ensure!(
        grown.is_disjoint(&first),
        "the pool still holds a claimed member: {grown:?}"
    );
    // Each claimed sandbox, and a few cold ones, has its own env.
    let mut cold = 0;
    for (i, id) in ids.iter().enumerate() {
        let claimed = slot(id)?.is_some();
        if claimed || cold < 3 {
            cold += usize::from(!claimed);
            ensure!(
                who(&d, id)? == format!("burst-{i}"),
                "{id} has another's env"
            );
        }
    }

    // ...and once no create came for a window, it is back at its minimum.
    d.wait_for_pool(3, "after the demand window")?;

    // (The stack's drop removes the sandboxes, their networks and rules.)
    Ok(())
}
