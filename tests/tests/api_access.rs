//! Who may reach a sandbox, through the HTTP API and SSH: another user may not see
//! or touch it, a share lets them in (with secrets only when the owner says so),
//! jump mode follows keys and shares, and taking access away ends live sessions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use warren_keys::SandboxId;
use warren_tests::stack::{Account, ApiStack, Stack, check_error};
use warren_tests::util::wait_for;
use warren_tests::{Client, Target};

const FAST_RECONCILE: Duration = Duration::from_millis(500);

#[test]
fn one_user_can_never_see_or_touch_another_users_sandbox() -> Result<()> {
    let stack = ApiStack::start(&[], FAST_RECONCILE)?;
    let alice = stack.account("alice")?;
    let bob = stack.account("bob")?;
    let made = stack.create_sandbox(&alice.key, json!({}))?;
    let id = made["id"].as_str().context("id")?.to_owned();
    let events_before = stack.events_of(&alice.key, &id)?;

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
            method,
            &format!("/v1/sandboxes/{id}{suffix}"),
            Some(&bob.key),
            None,
        )?;
        check_error(&theirs, 404, "not_found")?;
        let none = stack.call(
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
    let listed = stack.get("/v1/sandboxes", &bob.key)?;
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
        stack.post(&format!("/v1/sandboxes/{id}/shares"), key, body)
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
    let got = stack.get(&format!("/v1/sandboxes/{id}"), &bob.key)?;
    check_error(&got, 404, "not_found")?;
    let unshared = stack.delete(&format!("/v1/sandboxes/{id}/shares/bob"), &alice.key)?;
    ensure!(unshared.status == 204, "{unshared:?}");
    let out = bob_in.exec("true").run()?;
    ensure!(
        out.code() == Some(255),
        "bob got in after the unshare:\n{out}"
    );

    // Nor alice's keys: her API keys and SSH keys are not his to list or remove.
    let keys = stack.get("/v1/api-keys", &alice.key)?;
    let alice_key_id = keys.json()["api_keys"][0]["id"]
        .as_str()
        .context("key id")?
        .to_owned();
    let revoke = stack.delete(&format!("/v1/api-keys/{alice_key_id}"), &bob.key)?;
    check_error(&revoke, 404, "not_found")?;
    let ssh_keys = stack.get("/v1/ssh-keys", &alice.key)?;
    let alice_ssh_id = ssh_keys.json()["ssh_keys"][0]["id"]
        .as_str()
        .context("ssh key id")?
        .to_owned();
    let remove = stack.delete(&format!("/v1/ssh-keys/{alice_ssh_id}"), &bob.key)?;
    check_error(&remove, 404, "not_found")?;
    let bobs = stack.get("/v1/ssh-keys", &bob.key)?;
    ensure!(
        bobs.json()["ssh_keys"].as_array().map(Vec::len) == Some(1),
        "{bobs:?}"
    );

    // Admin routes are refused to non-admins.
    let user = stack.post("/v1/users", &bob.key, json!({"name": "mallory"}))?;
    check_error(&user, 403, "forbidden")?;
    let runners = stack.get("/v1/runners", &bob.key)?;
    check_error(&runners, 403, "forbidden")?;

    // Nothing of alice's moved, and she still gets in.
    ensure!(stack.state_of(&alice.key, &id)? == "running");
    ensure!(stack.events_of(&alice.key, &id)? == events_before);
    alice
        .client
        .clone()
        .with_target(stack.target(&sandbox))
        .exec("true")
        .run()?
        .success()?;
    let still = stack.get("/v1/api-keys", &alice.key)?;
    ensure!(
        still.json()["api_keys"][0]["revoked_at"].is_null(),
        "{still:?}"
    );
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
    // Slow rounds: what is checked below must hold when the API answers.
    let stack = ApiStack::start(&[], Duration::from_secs(3600))?;
    let alice = stack.account("alice")?;
    let bob = stack.account("bob")?;
    let made = stack.create_sandbox(&alice.key, json!({}))?;
    let id = made["id"].as_str().context("id")?.to_owned();
    let got_in =
        |out: &warren_tests::Output| out.code() == Some(0) && out.stdout_trimmed() == "jumped";

    let out = jump(&stack, &alice.client, "alice", &alice.client, &id)?;
    ensure!(got_in(&out), "alice's own key:\n{out}");

    // A key added after the sandbox was made works at the agent at once...
    let laptop = Client::new(Target::new("127.0.0.1", stack.ssh_port, "x"))?;
    let added = stack.post(
        "/v1/ssh-keys",
        &alice.key,
        json!({"name": "second", "public_key": laptop.public_key()}),
    )?;
    ensure!(added.status == 201, "{added:?}");
    let out = jump(&stack, &laptop, "alice", &alice.client, &id)?;
    ensure!(got_in(&out), "a key added later:\n{out}");
    // ...and once removed, the agent refuses it, though the hop still logs in.
    let key_id = added.json()["id"].as_str().context("key id")?.to_owned();
    let removed = stack.delete(&format!("/v1/ssh-keys/{key_id}"), &alice.key)?;
    ensure!(removed.status == 204, "{removed:?}");
    let out = jump(&stack, &laptop, "alice", &alice.client, &id)?;
    ensure!(
        out.code() == Some(255) && !got_in(&out),
        "a removed key got in:\n{out}"
    );

    // Bob: refused; shared with him, in; unshared, refused again.
    let out = jump(&stack, &bob.client, "bob", &bob.client, &id)?;
    ensure!(out.code() == Some(255), "bob got in:\n{out}");
    let shared = stack.post(
        &format!("/v1/sandboxes/{id}/shares"),
        &alice.key,
        json!({"user": "bob"}),
    )?;
    ensure!(shared.status == 201, "{shared:?}");
    let out = jump(&stack, &bob.client, "bob", &bob.client, &id)?;
    ensure!(got_in(&out), "bob, shared:\n{out}");
    let unshared = stack.delete(&format!("/v1/sandboxes/{id}/shares/bob"), &alice.key)?;
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
    let stack = ApiStack::start(&[], FAST_RECONCILE)?;
    let alice = stack.account("alice")?;
    let bob = stack.account("bob")?;
    let made = stack.create_sandbox(&alice.key, json!({}))?;
    let id = made["id"].as_str().context("id")?.to_owned();
    let sandbox = SandboxId::parse(&id)?;
    let shared = stack.post(
        &format!("/v1/sandboxes/{id}/shares"),
        &alice.key,
        json!({"user": "bob"}),
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
    let unshared = stack.delete(&format!("/v1/sandboxes/{id}/shares/bob"), &alice.key)?;
    ensure!(unshared.status == 204, "{unshared:?}");
    ends_within(bobs, "unshare")?;
    // The owner's session is untouched by it.
    ensure!(
        alices.try_wait().is_none(),
        "alice's session ended with bob's"
    );

    // Alice deletes the key her session logged in with.
    let keys = stack.get("/v1/ssh-keys", &alice.key)?;
    let key_id = keys.json()["ssh_keys"][0]["id"]
        .as_str()
        .context("key id")?
        .to_owned();
    let deleted = stack.delete(&format!("/v1/ssh-keys/{key_id}"), &alice.key)?;
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
    let rotated = stack.post_empty(&format!("/v1/sandboxes/{id}/token"), &alice.key)?;
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
    let theirs = stack.post_empty(&format!("/v1/sandboxes/{id}/token"), &bob.key)?;
    check_error(&theirs, 404, "not_found")?;

    // Stopping the sandbox ends the sessions of whoever is in (a token login here).
    let tokens = wait_started(&with_token(&fresh))?;
    let stopped = stack.post_empty(&format!("/v1/sandboxes/{id}/stop"), &alice.key)?;
    ensure!(stopped.status == 200, "{stopped:?}");
    ends_within(tokens, "sandbox stopped")?;

    // An API key as the SSH password: revoking the key ends the login. Deleting
    // the sandbox ends everyone's.
    let other = stack.create_sandbox(&alice.key, json!({}))?;
    let other_id = SandboxId::parse(other["id"].as_str().context("id")?)?;
    let made_key = stack.post("/v1/api-keys", &alice.key, json!({"name": "ssh"}))?;
    ensure!(made_key.status == 201, "{made_key:?}");
    let ssh_key = made_key.json()["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();
    let ssh_key_id = made_key.json()["id"].as_str().context("key id")?.to_owned();
    let by_api_key = Client::new(stack.target(&other_id))?.with_password(&ssh_key)?;
    let session = wait_started(&by_api_key)?;
    let revoked = stack.delete(&format!("/v1/api-keys/{ssh_key_id}"), &alice.key)?;
    ensure!(revoked.status == 204, "{revoked:?}");
    ends_within(session, "API key revoked")?;
    let shared = stack.post(
        &format!("/v1/sandboxes/{other_id}/shares"),
        &alice.key,
        json!({"user": "bob"}),
    )?;
    ensure!(shared.status == 201, "{shared:?}");
    let session = wait_started(&bob.client.clone().with_target(stack.target(&other_id)))?;
    let deleted = stack.delete(&format!("/v1/sandboxes/{other_id}"), &alice.key)?;
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
    let stack = ApiStack::start(&[], FAST_RECONCILE)?;
    let alice = stack.account("alice")?;
    let bob = stack.account("bob")?;
    let made = stack.create_sandbox(
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
        let shared = stack.post(&format!("/v1/sandboxes/{id}/shares"), &alice.key, body)?;
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
