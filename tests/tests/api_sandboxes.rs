//! A sandbox's life through the HTTP API, end to end: a real HTTP client (reqwest)
//! against the gateway's API, a real `warren-runner` (process backend) behind it,
//! and the real OpenSSH client for the SSH side: create, use, stop, start, delete;
//! without runners; the reconciler; the runner's capacity.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use warren_keys::SandboxId;
use warren_runner::protocol::{Request, Response, SandboxSpec};
use warren_store::{NewSandbox, SandboxState};
use warren_tests::stack::{ApiStack, check_error};
use warren_tests::util::wait_for;
use warren_tests::{Client, Cmd, Target};

const FAST_RECONCILE: Duration = Duration::from_millis(500);

#[test]
fn full_lifecycle_through_the_api_and_ssh() -> Result<()> {
    let stack = ApiStack::start(&[], FAST_RECONCILE)?;
    let runner = stack.r1()?;

    let health = stack.call("GET", "/healthz", None, None)?;
    ensure!(
        health.status == 200 && health.json()["status"] == "ok",
        "{health:?}"
    );

    let alice = stack.account("alice")?;
    let made = stack.create_sandbox(
        &alice.key,
        json!({"env": {"GREETING": "hello from the api"}, "cpus": 0.5, "memory_mb": 256,
               "idle_timeout_s": 3600}),
    )?;
    let id = made["id"].as_str().context("id")?.to_owned();
    let token = made["token"].as_str().context("token")?.to_owned();
    ensure!(made["state"] == "running", "{made}");
    ensure!(
        made["ssh"] == json!({"host": "127.0.0.1", "port": stack.ssh_port, "user": id}),
        "{made}"
    );
    ensure!(token.starts_with("wst1."), "{made}");
    let sandbox = SandboxId::parse(&id)?;

    // The token alone gets in, in the user name or as the password.
    let stranger = Client::new(Target::new(
        "127.0.0.1",
        stack.ssh_port,
        format!("{id}#{token}"),
    ))?;
    let out = stranger.exec("echo $GREETING").run()?.success()?;
    ensure!(out.stdout_trimmed() == "hello from the api", "{out}");
    let by_password = Client::new(stack.target(&sandbox))?.with_password(&token)?;
    by_password.exec("true").run()?.success()?;

    // So does alice's key, and the sandbox is hers in listings.
    let mine = alice.client.clone().with_target(stack.target(&sandbox));
    mine.exec("echo kept > marker").run()?.success()?;
    let listed = stack.get("/v1/sandboxes", &alice.key)?;
    ensure!(
        listed.status == 200 && listed.json()["sandboxes"][0]["id"] == id.as_str(),
        "{listed:?}"
    );

    // host-keys + ssh-config make a working, host-key-checked ssh setup.
    let known = stack.get("/v1/host-keys", &alice.key)?;
    ensure!(known.status == 200, "{known:?}");
    ensure!(
        known
            .text
            .starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 AAAA", stack.ssh_port)),
        "{known:?}"
    );
    let config = stack.get(&format!("/v1/sandboxes/{id}/ssh-config"), &alice.key)?;
    ensure!(
        config.status == 200 && config.text.contains(&format!("Host {id}\n")),
        "{config:?}"
    );
    let dir = tempfile::TempDir::new()?;
    let known_file = dir.path().join("known_hosts");
    let config_file = dir.path().join("config");
    std::fs::write(&known_file, &known.text)?;
    std::fs::write(&config_file, &config.text)?;
    let out = Cmd::new("ssh")
        .arg("-F")
        .arg(&config_file)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_file.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-i",
        ])
        .arg(alice.client.key_path())
        .args([id.as_str(), "cat", "marker"])
        .env_remove("SSH_AUTH_SOCK")
        .run()?
        .success()?;
    ensure!(out.stdout_trimmed() == "kept", "{out}");

    // Keepalive, stop (ssh then fails), start (the workspace is still there).
    let kept = stack.post_empty(&format!("/v1/sandboxes/{id}/keepalive"), &alice.key)?;
    ensure!(kept.status == 204, "{kept:?}");
    let stopped = stack.post_empty(&format!("/v1/sandboxes/{id}/stop"), &alice.key)?;
    ensure!(
        stopped.status == 200 && stopped.json()["state"] == "stopped",
        "{stopped:?}"
    );
    let out = mine.exec("true").run()?;
    ensure!(
        out.code() == Some(255),
        "a stopped sandbox answered:\n{out}"
    );
    let again = stack.post_empty(&format!("/v1/sandboxes/{id}/stop"), &alice.key)?;
    ensure!(again.status == 200, "stopping twice: {again:?}");
    let kept = stack.post_empty(&format!("/v1/sandboxes/{id}/keepalive"), &alice.key)?;
    check_error(&kept, 409, "conflict")?;
    let started = stack.post_empty(&format!("/v1/sandboxes/{id}/start"), &alice.key)?;
    ensure!(
        started.status == 200 && started.json()["state"] == "running",
        "{started:?}"
    );
    let out = mine.exec("cat marker; echo $GREETING").run()?.success()?;
    ensure!(out.stdout_str() == "kept\nhello from the api\n", "{out}");

    // Delete: gone for ssh, gone from the runner, the history says why.
    let deleted = stack.delete(&format!("/v1/sandboxes/{id}"), &alice.key)?;
    ensure!(deleted.status == 204, "{deleted:?}");
    ensure!(stack.state_of(&alice.key, &id)? == "deleted");
    let out = mine.exec("true").run()?;
    ensure!(
        out.code() == Some(255),
        "a deleted sandbox answered:\n{out}"
    );
    ensure!(
        !runner.sandbox_dir(&sandbox).exists(),
        "the work directory is still there"
    );
    let reasons: Vec<String> = stack
        .events_of(&alice.key, &id)?
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["to"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    ensure!(
        reasons
            == [
                "creating:created",
                "running:created",
                "stopped:stopped by user",
                "running:started by user",
                "stopped:deleted by user",
                "deleted:deleted by user",
            ],
        "{reasons:?}"
    );
    let listed = stack.get("/v1/sandboxes", &alice.key)?;
    ensure!(listed.json()["sandboxes"] == json!([]), "{listed:?}");

    // Metrics, for admins only.
    let metrics = stack.get("/metrics", &stack.admin)?;
    ensure!(metrics.status == 200, "{metrics:?}");
    for line in [
        "warren_sandboxes{state=\"deleted\"} 1",
        "warren_sandboxes{state=\"running\"} 0",
        "warren_runners_online 1",
        "warren_api_requests_total{method=\"POST\",status=\"201\"}",
        "warren_api_request_duration_seconds_count ",
        "warren_ssh_sessions_total ",
        "warren_auth_failures_total ",
    ] {
        ensure!(
            metrics.text.contains(line),
            "no {line:?} in\n{}",
            metrics.text
        );
    }
    let refused = stack.get("/metrics", &alice.key)?;
    check_error(&refused, 403, "forbidden")?;

    // Admins see the runner.
    let runners = stack.get("/v1/runners", &stack.admin)?;
    ensure!(
        runners.status == 200
            && runners.json()["runners"][0]["id"] == runner.id.as_str()
            && runners.json()["runners"][0]["online"] == true,
        "{runners:?}"
    );
    Ok(())
}

#[test]
fn without_runners_lifecycle_calls_are_503_and_change_nothing() -> Result<()> {
    let stack = ApiStack::without_runner(FAST_RECONCILE)?;
    let reply = stack.post("/v1/sandboxes", &stack.admin, json!({}))?;
    check_error(&reply, 503, "no_runner")?;
    ensure!(stack.sandbox_states(&stack.admin)?.is_empty());

    // A sandbox whose runner went away: stop/start/delete say so and change nothing.
    let mut runner = stack.runner("r1")?;
    let made = stack.create_sandbox(&stack.admin, json!({}))?;
    let id = made["id"].as_str().context("id")?.to_owned();
    runner.kill();
    wait_for("the runner to go offline", Duration::from_secs(30), || {
        Ok(!stack.hub.is_online(&runner.id))
    })?;
    let events = stack.events_of(&stack.admin, &id)?;
    for (method, suffix) in [("POST", "/stop"), ("POST", "/keepalive"), ("DELETE", "")] {
        let reply = stack.call(
            method,
            &format!("/v1/sandboxes/{id}{suffix}"),
            Some(&stack.admin),
            None,
        )?;
        check_error(&reply, 503, "runner_offline").with_context(|| format!("{method} {suffix}"))?;
    }
    ensure!(stack.state_of(&stack.admin, &id)? == "running");
    ensure!(stack.events_of(&stack.admin, &id)? == events);
    let reply = stack.post("/v1/sandboxes", &stack.admin, json!({}))?;
    check_error(&reply, 503, "no_runner")?;
    Ok(())
}

#[test]
fn the_reconciler_records_runner_stops_and_deletes_after_ttl() -> Result<()> {
    let stack = ApiStack::start(&[], FAST_RECONCILE)?;
    let runner = stack.r1()?;
    let alice = stack.account("alice")?;

    // A sandbox its runner stops by itself is recorded stopped, with a reason.
    let made = stack.create_sandbox(&alice.key, json!({}))?;
    let id = made["id"].as_str().context("id")?.to_owned();
    let sandbox = SandboxId::parse(&id)?;
    let answer = stack.rt.block_on(stack.hub.control(
        &runner.id,
        &Request::Stop {
            sandbox: sandbox.clone(),
        },
    ))?;
    ensure!(answer == Response::Ok, "{answer:?}");
    wait_for(
        "the reconciler to see the stop",
        Duration::from_secs(20),
        || Ok(stack.state_of(&alice.key, &id)? == "stopped"),
    )?;
    let events = stack.events_of(&alice.key, &id)?;
    let last = events.last().context("events")?;
    ensure!(
        last["to"] == "stopped" && last["reason"] == "exited",
        "{events:?}"
    );
    // And it can be started again through the API.
    let started = stack.post_empty(&format!("/v1/sandboxes/{id}/start"), &alice.key)?;
    ensure!(
        started.status == 200 && started.json()["state"] == "running",
        "{started:?}"
    );
    std::thread::sleep(FAST_RECONCILE * 4);
    ensure!(
        stack.state_of(&alice.key, &id)? == "running",
        "a fresh start was undone"
    );

    // A sandbox past its ttl is deleted, on the runner too. (The API takes ttl_s of
    // a minute or more, so this one is made through the store with one second.)
    let owner = stack.rt.block_on(stack.store.get_user_by_name("alice"))?;
    let short = SandboxId::generate();
    stack.rt.block_on(async {
        stack
            .store
            .create_sandbox(&NewSandbox {
                id: short.clone(),
                owner_id: owner.id.clone(),
                runner_id: Some(runner.id.clone()),
                image: "default".into(),
                repo: None,
                branch: None,
                forward_agent: false,
                cpus: 1.0,
                memory_mb: 512,
                idle_timeout_s: None,
                ttl_s: Some(1),
                disk_mb: None,
            })
            .await?;
        let created = stack
            .hub
            .control(
                &runner.id,
                &Request::Create {
                    sandbox: short.clone(),
                    token_key: stack.verifier.clone(),
                    authorized_keys: vec![],
                    spec: SandboxSpec::default(),
                },
            )
            .await?;
        ensure!(created == Response::Ok, "create: {created:?}");
        stack
            .store
            .set_sandbox_state(&short, SandboxState::Running, "test")
            .await?;
        anyhow::Ok(())
    })?;
    wait_for("the ttl reaper", Duration::from_secs(20), || {
        Ok(stack.state_of(&alice.key, short.as_str())? == "deleted")
    })?;
    let events = stack.events_of(&alice.key, short.as_str())?;
    ensure!(
        events.last().context("events")?["reason"] == "ttl",
        "{events:?}"
    );
    ensure!(
        !runner.sandbox_dir(&short).exists(),
        "the ttl left the work directory"
    );
    ensure!(stack.state_of(&alice.key, &id)? == "running");
    Ok(())
}

/// Room comes from the runner's capacity (here `--max-sandboxes 1`): a create that
/// does not fit is a 503 `no_capacity` saying why, a stopped sandbox takes no room,
/// and starting it again needs room.
#[test]
fn capacity_counts_live_sandboxes_and_says_why_a_create_does_not_fit() -> Result<()> {
    let stack = ApiStack::start(&["--max-sandboxes", "1"], FAST_RECONCILE)?;
    let alice = stack.account("alice")?;
    let a = stack.create_sandbox(&alice.key, json!({}))?;
    let a = a["id"].as_str().context("id")?.to_owned();
    let full = stack.post("/v1/sandboxes", &alice.key, json!({}))?;
    check_error(&full, 503, "no_capacity")?;
    ensure!(
        full.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("maximum of 1")),
        "{full:?}"
    );
    let too_big = stack.post("/v1/sandboxes", &alice.key, json!({"cpus": 16}))?;
    check_error(&too_big, 503, "no_capacity")?;
    let post = |path: String| stack.post_empty(&path, &alice.key);
    ensure!(post(format!("/v1/sandboxes/{a}/stop"))?.status == 200);
    // A process runner enforces no disk quota, so it takes none.
    let quota = stack.post("/v1/sandboxes", &alice.key, json!({"disk_mb": 1024}))?;
    check_error(&quota, 503, "no_capacity")?;
    ensure!(quota.text.contains("no disk quota"), "{quota:?}");
    let b = stack.create_sandbox(&alice.key, json!({}))?;
    let b = b["id"].as_str().context("id")?.to_owned();
    let start = post(format!("/v1/sandboxes/{a}/start"))?;
    check_error(&start, 503, "no_capacity")?;
    ensure!(stack.state_of(&alice.key, &a)? == "stopped");
    let gone = stack.delete(&format!("/v1/sandboxes/{b}"), &alice.key)?;
    ensure!(gone.status == 204, "{gone:?}");
    ensure!(post(format!("/v1/sandboxes/{a}/start"))?.status == 200);
    Ok(())
}
