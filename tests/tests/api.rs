//! The HTTP API end to end: a real HTTP client (reqwest) against the gateway's API,
//! with the gateway's SSH front door and a real `warren-runner` (process backend)
//! behind it, and the real OpenSSH client for the SSH side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{Api, Reply, Stack};
use serde_json::{Value, json};
use warren_keys::SandboxId;
use warren_runner::protocol::{Request, Response, SandboxSpec};
use warren_store::{NewSandbox, SandboxState};
use warren_tests::{Client, Cmd, Target};

const FAST_RECONCILE: Duration = Duration::from_millis(500);

/// A user made through the API by an admin, with an SSH key registered.
struct Account {
    key: String,
    client: Client,
}

fn account(stack: &Stack, api: &Api, admin: &str, name: &str) -> Result<Account> {
    let made = stack.call(
        api,
        "POST",
        "/v1/users",
        Some(admin),
        Some(json!({"name": name})),
    )?;
    ensure!(made.status == 201, "create user {name}: {made:?}");
    let key = made.json()["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();
    let client = Client::new(Target::new("127.0.0.1", stack.ssh_port, "x"))?;
    let added = stack.call(
        api,
        "POST",
        "/v1/ssh-keys",
        Some(&key),
        Some(json!({"name": "laptop", "public_key": client.public_key()})),
    )?;
    ensure!(added.status == 201, "add ssh key: {added:?}");
    Ok(Account { key, client })
}

fn create_sandbox(stack: &Stack, api: &Api, key: &str, body: Value) -> Result<Value> {
    let made = stack.call(api, "POST", "/v1/sandboxes", Some(key), Some(body))?;
    ensure!(made.status == 201, "create sandbox: {made:?}");
    Ok(made.json())
}

fn state_of(stack: &Stack, api: &Api, key: &str, id: &str) -> Result<String> {
    let got = stack.call(api, "GET", &format!("/v1/sandboxes/{id}"), Some(key), None)?;
    ensure!(got.status == 200, "get {id}: {got:?}");
    Ok(got.json()["state"].as_str().unwrap_or_default().to_owned())
}

fn events_of(stack: &Stack, api: &Api, key: &str, id: &str) -> Result<Vec<Value>> {
    let got = stack.call(
        api,
        "GET",
        &format!("/v1/sandboxes/{id}/events"),
        Some(key),
        None,
    )?;
    ensure!(got.status == 200, "events {id}: {got:?}");
    Ok(got.json()["events"].as_array().cloned().unwrap_or_default())
}

fn sandbox_ids(stack: &Stack, api: &Api, key: &str) -> Result<Vec<String>> {
    let got = stack.call(
        api,
        "GET",
        "/v1/sandboxes?include_deleted=true",
        Some(key),
        None,
    )?;
    ensure!(got.status == 200, "list: {got:?}");
    Ok(got.json()["sandboxes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| format!("{}:{}", s["id"], s["state"]))
                .collect()
        })
        .unwrap_or_default())
}

/// Every error reply has the one shape, and its request id is the header's.
fn check_error(reply: &Reply, status: u16, code: &str) -> Result<()> {
    ensure!(
        reply.status == status,
        "expected {status} {code}: {reply:?}"
    );
    let body = reply.json();
    ensure!(body["error"]["code"] == code, "expected {code}: {reply:?}");
    ensure!(
        body["error"]["message"].is_string(),
        "no message: {reply:?}"
    );
    let id = body["error"]["request_id"].as_str().unwrap_or_default();
    ensure!(
        !id.is_empty() && reply.request_id.as_deref() == Some(id),
        "request ids differ: {reply:?}"
    );
    Ok(())
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if done()? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn full_lifecycle_through_the_api_and_ssh() -> Result<()> {
    let stack = Stack::start()?;
    let runner = stack.runner("r1")?;
    let api = stack.api(FAST_RECONCILE)?;
    let admin = stack.admin("root")?;

    let health = stack.call(&api, "GET", "/healthz", None, None)?;
    ensure!(
        health.status == 200 && health.json()["status"] == "ok",
        "{health:?}"
    );

    let alice = account(&stack, &api, &admin, "alice")?;
    let made = create_sandbox(
        &stack,
        &api,
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
    let listed = stack.call(&api, "GET", "/v1/sandboxes", Some(&alice.key), None)?;
    ensure!(
        listed.status == 200 && listed.json()["sandboxes"][0]["id"] == id.as_str(),
        "{listed:?}"
    );

    // host-keys + ssh-config make a working, host-key-checked ssh setup.
    let known = stack.call(&api, "GET", "/v1/host-keys", Some(&alice.key), None)?;
    ensure!(known.status == 200, "{known:?}");
    ensure!(
        known
            .text
            .starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 AAAA", stack.ssh_port)),
        "{known:?}"
    );
    let config = stack.call(
        &api,
        "GET",
        &format!("/v1/sandboxes/{id}/ssh-config"),
        Some(&alice.key),
        None,
    )?;
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
    let kept = stack.call(
        &api,
        "POST",
        &format!("/v1/sandboxes/{id}/keepalive"),
        Some(&alice.key),
        None,
    )?;
    ensure!(kept.status == 204, "{kept:?}");
    let stopped = stack.call(
        &api,
        "POST",
        &format!("/v1/sandboxes/{id}/stop"),
        Some(&alice.key),
        None,
    )?;
    ensure!(
        stopped.status == 200 && stopped.json()["state"] == "stopped",
        "{stopped:?}"
    );
    let out = mine.exec("true").run()?;
    ensure!(
        out.code() == Some(255),
        "a stopped sandbox answered:\n{out}"
    );
    let again = stack.call(
        &api,
        "POST",
        &format!("/v1/sandboxes/{id}/stop"),
        Some(&alice.key),
        None,
    )?;
    ensure!(again.status == 200, "stopping twice: {again:?}");
    let kept = stack.call(
        &api,
        "POST",
        &format!("/v1/sandboxes/{id}/keepalive"),
        Some(&alice.key),
        None,
    )?;
    check_error(&kept, 409, "conflict")?;
    let started = stack.call(
        &api,
        "POST",
        &format!("/v1/sandboxes/{id}/start"),
        Some(&alice.key),
        None,
    )?;
    ensure!(
        started.status == 200 && started.json()["state"] == "running",
        "{started:?}"
    );
    let out = mine.exec("cat marker; echo $GREETING").run()?.success()?;
    ensure!(out.stdout_str() == "kept\nhello from the api\n", "{out}");

    // Delete: gone for ssh, gone from the runner, the history says why.
    let deleted = stack.call(
        &api,
        "DELETE",
        &format!("/v1/sandboxes/{id}"),
        Some(&alice.key),
        None,
    )?;
    ensure!(deleted.status == 204, "{deleted:?}");
    ensure!(state_of(&stack, &api, &alice.key, &id)? == "deleted");
    let out = mine.exec("true").run()?;
    ensure!(
        out.code() == Some(255),
        "a deleted sandbox answered:\n{out}"
    );
    ensure!(
        !runner.sandbox_dir(&sandbox).exists(),
        "the work directory is still there"
    );
    let reasons: Vec<String> = events_of(&stack, &api, &alice.key, &id)?
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
    let listed = stack.call(&api, "GET", "/v1/sandboxes", Some(&alice.key), None)?;
    ensure!(listed.json()["sandboxes"] == json!([]), "{listed:?}");

    // Metrics, for admins only.
    let metrics = stack.call(&api, "GET", "/metrics", Some(&admin), None)?;
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
    let refused = stack.call(&api, "GET", "/metrics", Some(&alice.key), None)?;
    check_error(&refused, 403, "forbidden")?;

    // Admins see the runner.
    let runners = stack.call(&api, "GET", "/v1/runners", Some(&admin), None)?;
    ensure!(
        runners.status == 200
            && runners.json()["runners"][0]["id"] == runner.id.as_str()
            && runners.json()["runners"][0]["online"] == true,
        "{runners:?}"
    );
    Ok(())
}

#[test]
fn one_user_can_never_see_or_touch_another_users_sandbox() -> Result<()> {
    let stack = Stack::start()?;
    let _runner = stack.runner("r1")?;
    let api = stack.api(FAST_RECONCILE)?;
    let admin = stack.admin("root")?;
    let alice = account(&stack, &api, &admin, "alice")?;
    let bob = account(&stack, &api, &admin, "bob")?;
    let made = create_sandbox(&stack, &api, &alice.key, json!({}))?;
    let id = made["id"].as_str().context("id")?.to_owned();
    let events_before = events_of(&stack, &api, &alice.key, &id)?;

    let unknown = SandboxId::generate();
    for (method, suffix) in [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/stop"),
        ("POST", "/start"),
        ("POST", "/keepalive"),
        ("GET", "/events"),
        ("GET", "/ssh-config"),
    ] {
        let theirs = stack.call(
            &api,
            method,
            &format!("/v1/sandboxes/{id}{suffix}"),
            Some(&bob.key),
            None,
        )?;
        check_error(&theirs, 404, "not_found")?;
        let none = stack.call(
            &api,
            method,
            &format!("/v1/sandboxes/{unknown}{suffix}"),
            Some(&bob.key),
            None,
        )?;
        check_error(&none, 404, "not_found")?;
        ensure!(
            theirs.json()["error"]["message"] == none.json()["error"]["message"],
            "another's sandbox and an unknown one differ: {theirs:?} vs {none:?}"
        );
    }
    let listed = stack.call(&api, "GET", "/v1/sandboxes", Some(&bob.key), None)?;
    ensure!(listed.json()["sandboxes"] == json!([]), "{listed:?}");

    // Bob's key does not open alice's sandbox over SSH.
    let sandbox = SandboxId::parse(&id)?;
    let out = bob
        .client
        .clone()
        .with_target(stack.target(&sandbox))
        .exec("true")
        .run()?;
    ensure!(out.code() == Some(255), "bob got in:\n{out}");

    // Shared with bob, he gets in over SSH (and still cannot manage it); unshared,
    // he is refused again. Only the owner may share.
    let share = |key: &str, body: serde_json::Value| {
        stack.call(
            &api,
            "POST",
            &format!("/v1/sandboxes/{id}/shares"),
            Some(key),
            Some(body),
        )
    };
    check_error(&share(&bob.key, json!({"user": "bob"}))?, 404, "not_found")?;
    check_error(
        &share(&alice.key, json!({"user": "nobody"}))?,
        404,
        "not_found",
    )?;
    let shared = share(&alice.key, json!({"user": "bob"}))?;
    ensure!(
        shared.status == 201 && shared.json()["users"] == json!(["bob"]),
        "{shared:?}"
    );
    let bob_in = bob.client.clone().with_target(stack.target(&sandbox));
    let out = bob_in.exec("echo shared").run()?.success()?;
    ensure!(out.stdout_trimmed() == "shared", "{out}");
    let got = stack.call(
        &api,
        "GET",
        &format!("/v1/sandboxes/{id}"),
        Some(&bob.key),
        None,
    )?;
    check_error(&got, 404, "not_found")?;
    let unshared = stack.call(
        &api,
        "DELETE",
        &format!("/v1/sandboxes/{id}/shares/bob"),
        Some(&alice.key),
        None,
    )?;
    ensure!(unshared.status == 204, "{unshared:?}");
    let out = bob_in.exec("true").run()?;
    ensure!(
        out.code() == Some(255),
        "bob got in after the unshare:\n{out}"
    );

    // Nor alice's keys: her API keys and SSH keys are not his to list or remove.
    let keys = stack.call(&api, "GET", "/v1/api-keys", Some(&alice.key), None)?;
    let alice_key_id = keys.json()["api_keys"][0]["id"]
        .as_str()
        .context("key id")?
        .to_owned();
    let revoke = stack.call(
        &api,
        "DELETE",
        &format!("/v1/api-keys/{alice_key_id}"),
        Some(&bob.key),
        None,
    )?;
    check_error(&revoke, 404, "not_found")?;
    let ssh_keys = stack.call(&api, "GET", "/v1/ssh-keys", Some(&alice.key), None)?;
    let alice_ssh_id = ssh_keys.json()["ssh_keys"][0]["id"]
        .as_str()
        .context("ssh key id")?
        .to_owned();
    let remove = stack.call(
        &api,
        "DELETE",
        &format!("/v1/ssh-keys/{alice_ssh_id}"),
        Some(&bob.key),
        None,
    )?;
    check_error(&remove, 404, "not_found")?;
    let bobs = stack.call(&api, "GET", "/v1/ssh-keys", Some(&bob.key), None)?;
    ensure!(
        bobs.json()["ssh_keys"].as_array().map(Vec::len) == Some(1),
        "{bobs:?}"
    );

    // Admin routes are refused to non-admins.
    let user = stack.call(
        &api,
        "POST",
        "/v1/users",
        Some(&bob.key),
        Some(json!({"name": "mallory"})),
    )?;
    check_error(&user, 403, "forbidden")?;
    let runners = stack.call(&api, "GET", "/v1/runners", Some(&bob.key), None)?;
    check_error(&runners, 403, "forbidden")?;

    // Nothing of alice's moved, and she still gets in.
    ensure!(state_of(&stack, &api, &alice.key, &id)? == "running");
    ensure!(events_of(&stack, &api, &alice.key, &id)? == events_before);
    alice
        .client
        .clone()
        .with_target(stack.target(&sandbox))
        .exec("true")
        .run()?
        .success()?;
    let still = stack.call(&api, "GET", "/v1/api-keys", Some(&alice.key), None)?;
    ensure!(
        still.json()["api_keys"][0]["revoked_at"].is_null(),
        "{still:?}"
    );
    Ok(())
}

#[test]
fn bad_inputs_are_refused_with_4xx_and_change_nothing() -> Result<()> {
    let stack = Stack::start()?;
    let _runner = stack.runner("r1")?;
    let api = stack.api(FAST_RECONCILE)?;
    let admin = stack.admin("root")?;
    let alice = account(&stack, &api, &admin, "alice")?;
    let made = create_sandbox(&stack, &api, &alice.key, json!({}))?;
    let id = made["id"].as_str().context("id")?.to_owned();
    let before = sandbox_ids(&stack, &api, &alice.key)?;
    let users_before = stack.rt.block_on(stack.store.list_users())?;
    let url = |path: &str| format!("{}{path}", api.base);

    // Unreadable bodies.
    let raw = |body: &str, content_type: &str| {
        api.http
            .post(url("/v1/sandboxes"))
            .bearer_auth(&alice.key)
            .header("content-type", content_type)
            .body(body.to_owned())
    };
    check_error(
        &stack.send(raw("{\"cpus\": ", "application/json"))?,
        400,
        "invalid_request",
    )?;
    check_error(
        &stack.send(raw("{\"cpus\" 1}", "application/json"))?,
        400,
        "invalid_request",
    )?;
    check_error(
        &stack.send(raw("{}", "text/plain"))?,
        415,
        "unsupported_media_type",
    )?;
    let big = format!("{{\"image\": \"{}\"}}", "a".repeat(70 * 1024));
    check_error(
        &stack.send(raw(&big, "application/json"))?,
        413,
        "payload_too_large",
    )?;

    // Well-formed but refused: wrong types, unknown fields, out of range, injection.
    let long_value = "x".repeat(33 * 1024);
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("V{i}"), json!("1"))).collect();
    for body in [
        json!({"cpus": "two"}),
        json!({"imagee": "debian"}),
        json!({"cpus": 0}),
        json!({"cpus": 0.05}),
        json!({"cpus": 17}),
        json!({"cpus": -1}),
        json!({"memory_mb": 64}),
        json!({"memory_mb": 65537}),
        json!({"memory_mb": 4_294_967_296_u64}),
        json!({"idle_timeout_s": 59}),
        json!({"idle_timeout_s": 604_801}),
        json!({"ttl_s": 0}),
        json!({"image": "'; DROP TABLE sandboxes; --"}),
        json!({"image": "../../etc/passwd"}),
        json!({"image": "Debian:Latest"}),
        json!({"repo": "../../etc"}),
        json!({"repo": "--upload-pack=touch /tmp/pwned"}),
        json!({"repo": "https://github.com/o/r", "branch": "../../etc"}),
        json!({"repo": "https://github.com/o/r", "branch": "'; DROP TABLE sandboxes; --"}),
        json!({"branch": "main"}),
        json!({"env": {"'; DROP TABLE sandboxes; --": "x"}}),
        json!({"env": {"WARREN_SANDBOX_ID": "sbx-other"}}),
        json!({"env": {"A": long_value}}),
        json!({"env": many}),
        json!({"network": {"mode": "allow", "cidrs": ["../../etc"]}}),
        json!({"network": {"mode": "everything"}}),
    ] {
        let reply = stack.call(
            &api,
            "POST",
            "/v1/sandboxes",
            Some(&alice.key),
            Some(body.clone()),
        )?;
        ensure!(
            reply.status == 400 || reply.status == 422 || reply.status == 413,
            "{body}: {reply:?}"
        );
        let code = reply.error_code();
        ensure!(
            code == "invalid_request" || code == "payload_too_large",
            "{body}: {reply:?}"
        );
        check_error(&reply, reply.status, &code)?;
    }

    // Bad ids: every one is a plain 404, like an unknown sandbox.
    for path in [
        "/v1/sandboxes/..%2F..%2Fetc%2Fpasswd",
        "/v1/sandboxes/'%3B%20DROP%20TABLE%20sandboxes%3B%20--",
        "/v1/sandboxes/SBX-UPPER",
        "/v1/sandboxes/sbx-",
        "/v1/sandboxes/%00",
        &format!("/v1/sandboxes/{id}x"),
        &format!("/v1/sandboxes/{}", "a".repeat(300)),
    ] {
        let reply = stack.call(&api, "GET", path, Some(&alice.key), None)?;
        check_error(&reply, 404, "not_found").with_context(|| path.to_owned())?;
        let reply = stack.call(&api, "DELETE", path, Some(&alice.key), None)?;
        check_error(&reply, 404, "not_found").with_context(|| path.to_owned())?;
    }
    for path in [
        "/v1/ssh-keys/'%3B%20DROP",
        "/v1/api-keys/..%2Fx",
        "/v1/nothing-here",
    ] {
        let reply = stack.call(&api, "DELETE", path, Some(&alice.key), None)?;
        check_error(&reply, 404, "not_found").with_context(|| path.to_owned())?;
    }
    let reply = stack.call(
        &api,
        "PUT",
        &format!("/v1/sandboxes/{id}"),
        Some(&alice.key),
        None,
    )?;
    check_error(&reply, 405, "method_not_allowed")?;

    // Listing limits and cursors.
    for query in [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=abc",
        "limit=99999999999",
        "cursor=garbage",
        "cursor=1.'%3B%20DROP",
        "bogus=1",
    ] {
        let reply = stack.call(
            &api,
            "GET",
            &format!("/v1/sandboxes?{query}"),
            Some(&alice.key),
            None,
        )?;
        check_error(&reply, 400, "invalid_request").with_context(|| query.to_owned())?;
    }

    // Accounts and keys.
    for name in ["'; DROP TABLE users; --", "../../etc", "", "a b"] {
        let reply = stack.call(
            &api,
            "POST",
            "/v1/users",
            Some(&admin),
            Some(json!({"name": name})),
        )?;
        check_error(&reply, 422, "invalid_request").with_context(|| name.to_owned())?;
    }
    let reply = stack.call(
        &api,
        "POST",
        "/v1/users",
        Some(&admin),
        Some(json!({"name": "alice"})),
    )?;
    check_error(&reply, 409, "conflict")?;
    for key in ["ssh-ed25519 '; DROP TABLE", "not a key", ""] {
        let reply = stack.call(
            &api,
            "POST",
            "/v1/ssh-keys",
            Some(&alice.key),
            Some(json!({"name": "x", "public_key": key})),
        )?;
        check_error(&reply, 422, "invalid_request").with_context(|| key.to_owned())?;
    }

    // No credentials, or wrong ones.
    check_error(
        &stack.call(&api, "GET", "/v1/sandboxes", None, None)?,
        401,
        "unauthorized",
    )?;
    let fake = format!("wk_{}", "A".repeat(43));
    check_error(
        &stack.call(&api, "GET", "/v1/sandboxes", Some(&fake), None)?,
        401,
        "unauthorized",
    )?;
    check_error(
        &stack.call(
            &api,
            "GET",
            "/v1/sandboxes",
            Some("'; DROP TABLE api_keys; --"),
            None,
        )?,
        401,
        "unauthorized",
    )?;

    // Nothing changed.
    ensure!(
        sandbox_ids(&stack, &api, &alice.key)? == before,
        "the sandboxes changed"
    );
    ensure!(state_of(&stack, &api, &alice.key, &id)? == "running");
    let users_after = stack.rt.block_on(stack.store.list_users())?;
    ensure!(users_after == users_before, "the users changed");
    let keys = stack.call(&api, "GET", "/v1/ssh-keys", Some(&alice.key), None)?;
    ensure!(
        keys.json()["ssh_keys"].as_array().map(Vec::len) == Some(1),
        "{keys:?}"
    );
    Ok(())
}

#[test]
fn api_keys_are_shown_once_listed_by_prefix_and_revocable() -> Result<()> {
    let stack = Stack::start()?;
    let api = stack.api(FAST_RECONCILE)?;
    let admin = stack.admin("root")?;
    let made = stack.call(
        &api,
        "POST",
        "/v1/users",
        Some(&admin),
        Some(json!({"name": "carol"})),
    )?;
    let first = made.json()["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();

    let second = stack.call(
        &api,
        "POST",
        "/v1/api-keys",
        Some(&first),
        Some(json!({"name": "ci"})),
    )?;
    ensure!(second.status == 201, "{second:?}");
    let second_key = second.json()["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();
    let second_id = second.json()["id"].as_str().context("id")?.to_owned();
    let unnamed = stack.call(&api, "POST", "/v1/api-keys", Some(&first), None)?;
    ensure!(unnamed.status == 201, "{unnamed:?}");

    let listed = stack.call(&api, "GET", "/v1/api-keys", Some(&second_key), None)?;
    ensure!(listed.status == 200, "{listed:?}");
    ensure!(
        !listed.text.contains(&first) && !listed.text.contains(&second_key),
        "a listing shows a secret"
    );
    let keys = listed.json()["api_keys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(keys.len() == 3, "{listed:?}");
    ensure!(
        keys.iter().any(|k| k["id"] == second_id.as_str()
            && second_key.starts_with(k["prefix"].as_str().unwrap_or("-"))),
        "{listed:?}"
    );

    let revoked = stack.call(
        &api,
        "DELETE",
        &format!("/v1/api-keys/{second_id}"),
        Some(&first),
        None,
    )?;
    ensure!(revoked.status == 204, "{revoked:?}");
    check_error(
        &stack.call(&api, "GET", "/v1/sandboxes", Some(&second_key), None)?,
        401,
        "unauthorized",
    )?;
    let ok = stack.call(&api, "GET", "/v1/api-keys", Some(&first), None)?;
    ensure!(ok.status == 200, "{ok:?}");
    let entry = ok.json()["api_keys"]
        .as_array()
        .and_then(|a| a.iter().find(|k| k["id"] == second_id.as_str()).cloned())
        .context("revoked key listed")?;
    ensure!(entry["revoked_at"].is_i64(), "{entry}");
    Ok(())
}

#[test]
fn without_runners_lifecycle_calls_are_503_and_change_nothing() -> Result<()> {
    let stack = Stack::start()?;
    let api = stack.api(FAST_RECONCILE)?;
    let admin = stack.admin("root")?;
    let reply = stack.call(&api, "POST", "/v1/sandboxes", Some(&admin), Some(json!({})))?;
    check_error(&reply, 503, "no_runner")?;
    ensure!(sandbox_ids(&stack, &api, &admin)?.is_empty());

    // A sandbox whose runner went away: stop/start/delete say so and change nothing.
    let mut runner = stack.runner("r1")?;
    let made = create_sandbox(&stack, &api, &admin, json!({}))?;
    let id = made["id"].as_str().context("id")?.to_owned();
    runner.kill();
    wait_for("the runner to go offline", Duration::from_secs(30), || {
        Ok(!stack.hub.is_online(&runner.id))
    })?;
    let events = events_of(&stack, &api, &admin, &id)?;
    for (method, suffix) in [("POST", "/stop"), ("POST", "/keepalive"), ("DELETE", "")] {
        let reply = stack.call(
            &api,
            method,
            &format!("/v1/sandboxes/{id}{suffix}"),
            Some(&admin),
            None,
        )?;
        check_error(&reply, 503, "runner_offline").with_context(|| format!("{method} {suffix}"))?;
    }
    ensure!(state_of(&stack, &api, &admin, &id)? == "running");
    ensure!(events_of(&stack, &api, &admin, &id)? == events);
    let reply = stack.call(&api, "POST", "/v1/sandboxes", Some(&admin), Some(json!({})))?;
    check_error(&reply, 503, "no_runner")?;
    Ok(())
}

#[test]
fn the_reconciler_records_runner_stops_and_deletes_after_ttl() -> Result<()> {
    let stack = Stack::start()?;
    let runner = stack.runner("r1")?;
    let api = stack.api(FAST_RECONCILE)?;
    let admin = stack.admin("root")?;
    let alice = account(&stack, &api, &admin, "alice")?;

    // A sandbox its runner stops by itself is recorded stopped, with a reason.
    let made = create_sandbox(&stack, &api, &alice.key, json!({}))?;
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
        || Ok(state_of(&stack, &api, &alice.key, &id)? == "stopped"),
    )?;
    let events = events_of(&stack, &api, &alice.key, &id)?;
    let last = events.last().context("events")?;
    ensure!(
        last["to"] == "stopped" && last["reason"] == "exited",
        "{events:?}"
    );
    // And it can be started again through the API.
    let started = stack.call(
        &api,
        "POST",
        &format!("/v1/sandboxes/{id}/start"),
        Some(&alice.key),
        None,
    )?;
    ensure!(
        started.status == 200 && started.json()["state"] == "running",
        "{started:?}"
    );
    std::thread::sleep(FAST_RECONCILE * 4);
    ensure!(
        state_of(&stack, &api, &alice.key, &id)? == "running",
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
        Ok(state_of(&stack, &api, &alice.key, short.as_str())? == "deleted")
    })?;
    let events = events_of(&stack, &api, &alice.key, short.as_str())?;
    ensure!(
        events.last().context("events")?["reason"] == "ttl",
        "{events:?}"
    );
    ensure!(
        !runner.sandbox_dir(&short).exists(),
        "the ttl left the work directory"
    );
    ensure!(state_of(&stack, &api, &alice.key, &id)? == "running");
    Ok(())
}

/// Every `"$ref"` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_openapi_document_is_generated_valid_and_lists_every_route() -> Result<()> {
    let stack = Stack::start()?;
    let api = stack.api(FAST_RECONCILE)?;
    let admin = stack.admin("root")?;
    let served = stack.call(&api, "GET", "/v1/openapi.json", None, None)?;
    ensure!(served.status == 200, "{served:?}");
    let doc = served.json();
    let generated = serde_json::to_value(warren_gateway::api::openapi())?;
    ensure!(
        doc == generated,
        "the served document is not the generated one"
    );
    ensure!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    ensure!(doc["info"]["title"] == "Warren", "{}", doc["info"]);
    ensure!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"] == "bearer",
        "{}",
        doc["components"]
    );

    // Every route the API has, and nothing else.
    let expected = [
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("get", "/v1/openapi.json"),
        ("post", "/v1/users"),
        ("get", "/v1/runners"),
        ("post", "/v1/sandboxes"),
        ("get", "/v1/sandboxes"),
        ("get", "/v1/sandboxes/{id}"),
        ("delete", "/v1/sandboxes/{id}"),
        ("post", "/v1/sandboxes/{id}/stop"),
        ("post", "/v1/sandboxes/{id}/start"),
        ("post", "/v1/sandboxes/{id}/keepalive"),
        ("post", "/v1/sandboxes/{id}/token"),
        ("get", "/v1/sandboxes/{id}/events"),
        ("get", "/v1/sandboxes/{id}/ssh-config"),
        ("get", "/v1/sandboxes/{id}/sessions"),
        ("get", "/v1/sessions/{id}/recording"),
        ("post", "/v1/sandboxes/{id}/shares"),
        ("get", "/v1/sandboxes/{id}/shares"),
        ("delete", "/v1/sandboxes/{id}/shares/{user}"),
        ("post", "/v1/sandboxes/{id}/pull-requests"),
        ("post", "/v1/sandboxes/{id}/pull-requests/{number}/merge"),
        ("post", "/v1/sandboxes/{id}/snapshots"),
        ("post", "/v1/sandboxes/{id}/fork"),
        ("get", "/v1/snapshots"),
        ("get", "/v1/snapshots/{id}"),
        ("delete", "/v1/snapshots/{id}"),
        ("get", "/v1/host-keys"),
        ("post", "/v1/ssh-keys"),
        ("get", "/v1/ssh-keys"),
        ("delete", "/v1/ssh-keys/{id}"),
        ("post", "/v1/api-keys"),
        ("get", "/v1/api-keys"),
        ("delete", "/v1/api-keys/{id}"),
    ];
    let paths = doc["paths"].as_object().context("paths")?;
    let mut listed = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().context("path item")? {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            listed.push((method.clone(), path.clone()));
            // Valid enough to use: responses given, path parameters declared.
            ensure!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}: no responses"
            );
            if path.contains("{id}") {
                let declared = op["parameters"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["name"] == "id" && p["in"] == "path" && p["required"] == true)
                });
                ensure!(declared, "{method} {path}: {{id}} is not declared");
            }
            ensure!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{method} {path}: no tag"
            );
        }
    }
    let mut ids: Vec<&str> = paths
        .values()
        .filter_map(Value::as_object)
        .flat_map(|item| item.values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    ensure!(
        ids.len() == count && count == expected.len(),
        "operation ids: {ids:?}"
    );
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    want.sort();
    listed.sort();
    ensure!(listed == want, "listed {listed:?}\nexpected {want:?}");

    // Every reference resolves.
    let mut found = Vec::new();
    refs(&doc, &mut found);
    ensure!(!found.is_empty(), "no schemas referenced");
    for r in found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .with_context(|| format!("unexpected $ref {r}"))?;
        ensure!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {r}"
        );
    }

    // And the server really has each listed route (an unknown id, not an unknown
    // route; the method is allowed).
    let unknown = SandboxId::generate();
    for (method, path) in &listed {
        let path = path.replace("{id}", unknown.as_str());
        let reply = stack.call(&api, &method.to_uppercase(), &path, Some(&admin), None)?;
        ensure!(
            reply.status != 405 && !reply.text.contains("route not found"),
            "{method} {path} is listed but not served: {reply:?}"
        );
    }
    Ok(())
}

#[test]
fn an_address_guessing_api_keys_is_slowed_down() -> Result<()> {
    let stack = Stack::start()?;
    let api = stack.api(FAST_RECONCILE)?;
    let admin = stack.admin("root")?;
    let guess = format!("wk_{}", "B".repeat(43));
    let mut refused = None;
    for i in 0..40 {
        let reply = stack.call(&api, "GET", "/v1/sandboxes", Some(&guess), None)?;
        if reply.status == 429 {
            refused = Some(i);
            check_error(&reply, 429, "too_many_requests")?;
            break;
        }
        check_error(&reply, 401, "unauthorized")?;
    }
    ensure!(refused == Some(30), "429 after {refused:?} failures");
    // The address is blocked even with a good key, for the rest of the minute.
    let reply = stack.call(&api, "GET", "/v1/sandboxes", Some(&admin), None)?;
    check_error(&reply, 429, "too_many_requests")?;
    // Routes without authentication still answer.
    let health = stack.call(&api, "GET", "/healthz", None, None)?;
    ensure!(health.status == 200, "{health:?}");
    Ok(())
}

/// `ssh -J <hop_user>@gateway <sandbox>`, spelled as a ProxyCommand: the hop logs in
/// to the gateway with `hop_key`, the agent behind it checks `client`'s own key.
fn jump(
    stack: &Stack,
    client: &Client,
    hop_user: &str,
    hop_key: &Client,
    sandbox: &str,
) -> Result<warren_tests::Output> {
    jump_run(stack, client, hop_user, hop_key, sandbox, "echo jumped")
}

/// [`jump`] running `command`.
fn jump_run(
    stack: &Stack,
    client: &Client,
    hop_user: &str,
    hop_key: &Client,
    sandbox: &str,
    command: &str,
) -> Result<warren_tests::Output> {
    let hop = format!(
        "ProxyCommand=ssh -F /dev/null -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no \
         -o LogLevel=ERROR -o BatchMode=yes -o IdentitiesOnly=yes -i {} -p {} -W %h:%p {hop_user}@127.0.0.1",
        hop_key.key_path().display(),
        stack.ssh_port
    );
    client
        .clone()
        .with_target(Target::new(sandbox, 22, sandbox))
        .ssh(&["-o", &hop], command)
        .run()
}

#[test]
fn jump_mode_follows_ssh_keys_and_shares() -> Result<()> {
    let stack = Stack::start()?;
    let _runner = stack.runner("r1")?;
    // Slow rounds: what is checked below must hold when the API answers.
    let api = stack.api(Duration::from_secs(3600))?;
    let admin = stack.admin("root")?;
    let alice = account(&stack, &api, &admin, "alice")?;
    let bob = account(&stack, &api, &admin, "bob")?;
    let made = create_sandbox(&stack, &api, &alice.key, json!({}))?;
    let id = made["id"].as_str().context("id")?.to_owned();
    let got_in =
        |out: &warren_tests::Output| out.code() == Some(0) && out.stdout_trimmed() == "jumped";

    let out = jump(&stack, &alice.client, "alice", &alice.client, &id)?;
    ensure!(got_in(&out), "alice's own key:\n{out}");

    // A key added after the sandbox was made works at the agent at once...
    let laptop = Client::new(Target::new("127.0.0.1", stack.ssh_port, "x"))?;
    let added = stack.call(
        &api,
        "POST",
        "/v1/ssh-keys",
        Some(&alice.key),
        Some(json!({"name": "second", "public_key": laptop.public_key()})),
    )?;
    ensure!(added.status == 201, "{added:?}");
    let out = jump(&stack, &laptop, "alice", &alice.client, &id)?;
    ensure!(got_in(&out), "a key added later:\n{out}");
    // ...and once removed, the agent refuses it, though the hop still logs in.
    let key_id = added.json()["id"].as_str().context("key id")?.to_owned();
    let removed = stack.call(
        &api,
        "DELETE",
        &format!("/v1/ssh-keys/{key_id}"),
        Some(&alice.key),
        None,
    )?;
    ensure!(removed.status == 204, "{removed:?}");
    let out = jump(&stack, &laptop, "alice", &alice.client, &id)?;
    ensure!(
        out.code() == Some(255) && !got_in(&out),
        "a removed key got in:\n{out}"
    );

    // Bob: refused; shared with him, in; unshared, refused again.
    let out = jump(&stack, &bob.client, "bob", &bob.client, &id)?;
    ensure!(out.code() == Some(255), "bob got in:\n{out}");
    let shared = stack.call(
        &api,
        "POST",
        &format!("/v1/sandboxes/{id}/shares"),
        Some(&alice.key),
        Some(json!({"user": "bob"})),
    )?;
    ensure!(shared.status == 201, "{shared:?}");
    let out = jump(&stack, &bob.client, "bob", &bob.client, &id)?;
    ensure!(got_in(&out), "bob, shared:\n{out}");
    let unshared = stack.call(
        &api,
        "DELETE",
        &format!("/v1/sandboxes/{id}/shares/bob"),
        Some(&alice.key),
        None,
    )?;
    ensure!(unshared.status == 204, "{unshared:?}");
    // The front door refuses him now; and the agent, reached through alice's hop,
    // no longer takes his key either.
    let out = jump(&stack, &bob.client, "bob", &bob.client, &id)?;
    ensure!(
        out.code() == Some(255),
        "bob got in after the unshare:\n{out}"
    );
    let out = jump(&stack, &bob.client, "alice", &alice.client, &id)?;
    ensure!(
        out.code() == Some(255),
        "the agent still takes bob's key:\n{out}"
    );
    Ok(())
}

/// Taking away what let a connection in ends it within seconds: unsharing the
/// sandbox ends the shared user's session, deleting a key ends the sessions that
/// logged in with it, stopping the sandbox ends everyone's.
#[test]
fn revoking_access_ends_live_sessions_within_seconds() -> Result<()> {
    let stack = Stack::start()?;
    let _runner = stack.runner("r1")?;
    let api = stack.api(FAST_RECONCILE)?;
    let admin = stack.admin("root")?;
    let alice = account(&stack, &api, &admin, "alice")?;
    let bob = account(&stack, &api, &admin, "bob")?;
    let made = create_sandbox(&stack, &api, &alice.key, json!({}))?;
    let id = made["id"].as_str().context("id")?.to_owned();
    let sandbox = SandboxId::parse(&id)?;
    let shared = stack.call(
        &api,
        "POST",
        &format!("/v1/sandboxes/{id}/shares"),
        Some(&alice.key),
        Some(json!({"user": "bob"})),
    )?;
    ensure!(shared.status == 201, "{shared:?}");
    let alice_in = alice.client.clone().with_target(stack.target(&sandbox));
    let bob_in = bob.client.clone().with_target(stack.target(&sandbox));

    // A long command of each; then the revocation; the session must end soon.
    let ends_within = |session: warren_tests::Running, what: &str| -> Result<Duration> {
        let started = std::time::Instant::now();
        let out = session.wait_timeout(Duration::from_secs(20))?;
        let took = started.elapsed();
        ensure!(
            !out.stdout_str().contains("survived") && took < Duration::from_secs(5),
            "{what}: the session lived on ({took:?}):\n{out}"
        );
        eprintln!("{what}: ended {took:?} after the revocation");
        Ok(took)
    };
    let long = "echo started; sleep 30; echo survived";
    let wait_started = |c: &Client| -> Result<warren_tests::Running> {
        let mut running = c.exec(long).stream_stdout().spawn()?;
        let mut stdout = running.take_stdout().context("stdout")?;
        let mut first = [0u8; 8];
        std::io::Read::read_exact(&mut stdout, &mut first)?;
        ensure!(&first == b"started\n", "the session did not start");
        Ok(running)
    };

    let bobs = wait_started(&bob_in)?;
    let mut alices = wait_started(&alice_in)?;
    let unshared = stack.call(
        &api,
        "DELETE",
        &format!("/v1/sandboxes/{id}/shares/bob"),
        Some(&alice.key),
        None,
    )?;
    ensure!(unshared.status == 204, "{unshared:?}");
    ends_within(bobs, "unshare")?;
    // The owner's session is untouched by it.
    ensure!(
        alices.try_wait().is_none(),
        "alice's session ended with bob's"
    );

    // Alice deletes the key her session logged in with.
    let keys = stack.call(&api, "GET", "/v1/ssh-keys", Some(&alice.key), None)?;
    let key_id = keys.json()["ssh_keys"][0]["id"]
        .as_str()
        .context("key id")?
        .to_owned();
    let deleted = stack.call(
        &api,
        "DELETE",
        &format!("/v1/ssh-keys/{key_id}"),
        Some(&alice.key),
        None,
    )?;
    ensure!(deleted.status == 204, "{deleted:?}");
    ends_within(alices, "key deleted")?;
    let out = alice_in.exec("true").run()?;
    ensure!(
        out.code() == Some(255),
        "the deleted key still logs in:\n{out}"
    );

    // Rotating the sandbox's tokens ends the logins with the old one, refuses it
    // from then on, and the new one works.
    let token = made["token"].as_str().context("token")?;
    let with_token = |token: &str| {
        alice_in.clone().with_target(Target::new(
            "127.0.0.1",
            stack.ssh_port,
            format!("{id}#{token}"),
        ))
    };
    let old = wait_started(&with_token(token))?;
    let rotated = stack.call(
        &api,
        "POST",
        &format!("/v1/sandboxes/{id}/token"),
        Some(&alice.key),
        None,
    )?;
    ensure!(rotated.status == 201, "{rotated:?}");
    ends_within(old, "tokens rotated")?;
    let out = with_token(token).exec("true").run()?;
    ensure!(
        out.code() == Some(255),
        "the revoked token still logs in:\n{out}"
    );
    let fresh = rotated.json()["token"]
        .as_str()
        .context("token")?
        .to_owned();
    let theirs = stack.call(
        &api,
        "POST",
        &format!("/v1/sandboxes/{id}/token"),
        Some(&bob.key),
        None,
    )?;
    check_error(&theirs, 404, "not_found")?;

    // Stopping the sandbox ends the sessions of whoever is in (a token login here).
    let tokens = wait_started(&with_token(&fresh))?;
    let stopped = stack.call(
        &api,
        "POST",
        &format!("/v1/sandboxes/{id}/stop"),
        Some(&alice.key),
        None,
    )?;
    ensure!(stopped.status == 200, "{stopped:?}");
    ends_within(tokens, "sandbox stopped")?;

    // An API key as the SSH password: revoking the key ends the login. Deleting
    // the sandbox ends everyone's.
    let other = create_sandbox(&stack, &api, &alice.key, json!({}))?;
    let other_id = SandboxId::parse(other["id"].as_str().context("id")?)?;
    let made_key = stack.call(
        &api,
        "POST",
        "/v1/api-keys",
        Some(&alice.key),
        Some(json!({"name": "ssh"})),
    )?;
    ensure!(made_key.status == 201, "{made_key:?}");
    let ssh_key = made_key.json()["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();
    let ssh_key_id = made_key.json()["id"].as_str().context("key id")?.to_owned();
    let by_api_key = Client::new(stack.target(&other_id))?.with_password(&ssh_key)?;
    let session = wait_started(&by_api_key)?;
    let revoked = stack.call(
        &api,
        "DELETE",
        &format!("/v1/api-keys/{ssh_key_id}"),
        Some(&alice.key),
        None,
    )?;
    ensure!(revoked.status == 204, "{revoked:?}");
    ends_within(session, "API key revoked")?;
    let shared = stack.call(
        &api,
        "POST",
        &format!("/v1/sandboxes/{other_id}/shares"),
        Some(&alice.key),
        Some(json!({"user": "bob"})),
    )?;
    ensure!(shared.status == 201, "{shared:?}");
    let session = wait_started(&bob.client.clone().with_target(stack.target(&other_id)))?;
    let deleted = stack.call(
        &api,
        "DELETE",
        &format!("/v1/sandboxes/{other_id}"),
        Some(&alice.key),
        None,
    )?;
    ensure!(deleted.status == 204, "{deleted:?}");
    ends_within(session, "sandbox deleted")?;
    wait_for("no live connections left", Duration::from_secs(10), || {
        Ok(stack.live.is_empty())
    })?;
    Ok(())
}

/// A share gives a shell, and the sandbox's secrets (its create-time env) only when
/// the owner says so at share time: in relay mode (the gateway's token for the
/// agent) and in jump mode (the agent's own key check).
#[test]
fn a_share_gives_secrets_only_when_the_owner_says_so() -> Result<()> {
    let stack = Stack::start()?;
    let _runner = stack.runner("r1")?;
    let api = stack.api(FAST_RECONCILE)?;
    let admin = stack.admin("root")?;
    let alice = account(&stack, &api, &admin, "alice")?;
    let bob = account(&stack, &api, &admin, "bob")?;
    let made = create_sandbox(
        &stack,
        &api,
        &alice.key,
        json!({"env": {"ANTHROPIC_API_KEY": "sk-warren-share-test"}}),
    )?;
    let id = made["id"].as_str().context("id")?.to_owned();
    let sandbox = SandboxId::parse(&id)?;
    let share = |secrets: Option<bool>| -> Result<Value> {
        let mut body = json!({"user": "bob"});
        if let Some(secrets) = secrets {
            body["secrets"] = json!(secrets);
        }
        let shared = stack.call(
            &api,
            "POST",
            &format!("/v1/sandboxes/{id}/shares"),
            Some(&alice.key),
            Some(body),
        )?;
        ensure!(shared.status == 201, "{shared:?}");
        Ok(shared.json())
    };
    let show = "echo key=${ANTHROPIC_API_KEY-unset}";
    let relay = |who: &Account| -> Result<String> {
        let out = who
            .client
            .clone()
            .with_target(stack.target(&sandbox))
            .exec(show)
            .run()?
            .success()?;
        Ok(out.stdout_trimmed().to_owned())
    };
    let jumped = |who: &Account, name: &str| -> Result<String> {
        let out = jump_run(&stack, &who.client, name, &who.client, &id, show)?.success()?;
        Ok(out.stdout_trimmed().to_owned())
    };
    let secret = "key=sk-warren-share-test";

    let listed = share(None)?;
    ensure!(listed["with_secrets"] == json!([]), "{listed}");
    ensure!(relay(&alice)? == secret, "the owner lost the secrets");
    ensure!(
        jumped(&alice, "alice")? == secret,
        "the owner lost the secrets (jump)"
    );
    ensure!(
        relay(&bob)? == "key=unset",
        "a default share gave bob the secrets"
    );
    ensure!(
        jumped(&bob, "bob")? == "key=unset",
        "a default share gave bob the secrets (jump)"
    );

    let listed = share(Some(true))?;
    ensure!(listed["with_secrets"] == json!(["bob"]), "{listed}");
    ensure!(relay(&bob)? == secret, "secrets: true did not give them");
    ensure!(
        jumped(&bob, "bob")? == secret,
        "secrets: true did not give them (jump)"
    );

    share(Some(false))?;
    ensure!(
        relay(&bob)? == "key=unset",
        "taking the secrets back did not"
    );
    ensure!(
        jumped(&bob, "bob")? == "key=unset",
        "taking the secrets back did not (jump)"
    );
    Ok(())
}

/// Room comes from the runner's capacity (here `--max-sandboxes 1`): a create that
/// does not fit is a 503 `no_capacity` saying why, a stopped sandbox takes no room,
/// and starting it again needs room.
#[test]
fn capacity_counts_live_sandboxes_and_says_why_a_create_does_not_fit() -> Result<()> {
    let stack = Stack::start()?;
    let _runner = stack.runner_with("r1", &["--max-sandboxes", "1"])?;
    let api = stack.api(FAST_RECONCILE)?;
    let admin = stack.admin("root")?;
    let alice = account(&stack, &api, &admin, "alice")?;
    let a = create_sandbox(&stack, &api, &alice.key, json!({}))?;
    let a = a["id"].as_str().context("id")?.to_owned();
    let full = stack.call(
        &api,
        "POST",
        "/v1/sandboxes",
        Some(&alice.key),
        Some(json!({})),
    )?;
    check_error(&full, 503, "no_capacity")?;
    ensure!(
        full.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("maximum of 1")),
        "{full:?}"
    );
    let too_big = stack.call(
        &api,
        "POST",
        "/v1/sandboxes",
        Some(&alice.key),
        Some(json!({"cpus": 16})),
    )?;
    check_error(&too_big, 503, "no_capacity")?;
    let post = |path: String| stack.call(&api, "POST", &path, Some(&alice.key), None);
    ensure!(post(format!("/v1/sandboxes/{a}/stop"))?.status == 200);
    // A process runner enforces no disk quota, so it takes none.
    let quota = stack.call(
        &api,
        "POST",
        "/v1/sandboxes",
        Some(&alice.key),
        Some(json!({"disk_mb": 1024})),
    )?;
    check_error(&quota, 503, "no_capacity")?;
    ensure!(quota.text.contains("no disk quota"), "{quota:?}");
    let b = create_sandbox(&stack, &api, &alice.key, json!({}))?;
    let b = b["id"].as_str().context("id")?.to_owned();
    let start = post(format!("/v1/sandboxes/{a}/start"))?;
    check_error(&start, 503, "no_capacity")?;
    ensure!(state_of(&stack, &api, &alice.key, &a)? == "stopped");
    let gone = stack.call(
        &api,
        "DELETE",
        &format!("/v1/sandboxes/{b}"),
        Some(&alice.key),
        None,
    )?;
    ensure!(gone.status == 204, "{gone:?}");
    ensure!(post(format!("/v1/sandboxes/{a}/start"))?.status == 200);
    Ok(())
}
