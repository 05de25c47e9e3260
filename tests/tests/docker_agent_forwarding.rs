//! `ssh -A` into a Docker sandbox (issue 24): a forwarded agent lets code in the
//! sandbox sign with the user's keys, often the very key registered with Warren. So
//! it is off unless the sandbox's owner turned it on at create (`forward_agent`),
//! and never for a user the sandbox is shared with; a refused forwarding tells the
//! client why. Checked in relay mode (`ssh <id>@gw`, the gateway refuses) and in
//! jump mode (`ssh -J`, end to end: the agent refuses by its authorized-keys
//! options), as the sandbox user looking for any socket under /tmp/warren-ssh-*.
//! In CI a missing engine is a failure, not a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Result, ensure};
use warren_keys::SandboxId;
use warren_runner::protocol::{Request, Response, SandboxKeys, SandboxSpec};
use warren_tests::stack::DockerStack;
use warren_tests::{Client, Output, Target, scenarios};

const BUSYBOX: &str = "warren-busybox:latest";

/// What a session sees of a forwarded agent: its variable, and every agent socket
/// directory under /tmp (any session's, the owner's included).
const PROBE: &str = r#"echo "sock=${SSH_AUTH_SOCK:-none}"; echo "dirs=$(ls -d /tmp/warren-ssh-* 2>/dev/null | wc -l)"; test -S "$SSH_AUTH_SOCK" && echo answers"#;

fn refused(out: &Output, what: &str) -> Result<()> {
    eprintln!("{what}: {out}");
    ensure!(
        out.stdout_str().contains("sock=none") && out.stdout_str().contains("dirs=0"),
        "{what}: the session has an agent socket:\n{out}"
    );
    ensure!(
        out.stderr_str()
            .contains("agent forwarding is off for this sandbox"),
        "{what}: the client was not told why:\n{out}"
    );
    Ok(())
}

fn forwarded(out: &Output, what: &str) -> Result<()> {
    eprintln!("{what}: {out}");
    ensure!(
        out.status.success() && out.stdout_str().contains("answers"),
        "{what}: no forwarded agent:\n{out}"
    );
    Ok(())
}

/// `ssh -J <hop>@gateway <sandbox>` spelled as a ProxyCommand (our throwaway options
/// on the hop too): the hop logs in with `client`'s key as `hop`, the agent behind
/// it checks the same key. Returns the option and the client aimed at the sandbox.
fn jump(d: &DockerStack, client: &Client, hop: &str, id: &SandboxId) -> (String, Client) {
    let via = format!(
        "ProxyCommand=ssh -F /dev/null -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no \
         -o LogLevel=ERROR -o BatchMode=yes -o IdentitiesOnly=yes -i {} -p {} -W %h:%p {hop}@127.0.0.1",
        client.key_path().display(),
        d.stack.ssh_port
    );
    let target = client
        .clone()
        .with_target(Target::new(id.as_str(), 22, id.as_str()));
    (via, target)
}

#[test]
fn agent_forwarding_only_for_the_owner_of_a_sandbox_that_allows_it() -> Result<()> {
    let Some(d) = DockerStack::start(&[])? else {
        return Ok(());
    };
    let spec = || SandboxSpec {
        image: Some(BUSYBOX.into()),
        ..SandboxSpec::default()
    };
    let (off, alice_off) = d.sandbox_forwarding(false, spec())?;
    let (on, alice_on) = d.sandbox_forwarding(true, spec())?;
    // Bob: the "on" sandbox is shared with him (secrets and all); his keys reach
    // its agent without the forwarding option.
    let bob_key = Client::new(Target::new("127.0.0.1", d.stack.ssh_port, "x"))?;
    let bob = d.stack.user("bob", &bob_key)?;
    let keys = d.stack.rt.block_on(async {
        d.stack.store.share_sandbox(&on, &bob.id, true).await?;
        d.stack.store.sandbox_authorized_keys(&on).await
    })?;
    let alice_key = d
        .client
        .public_key()
        .split_whitespace()
        .nth(1)
        .unwrap_or("?");
    ensure!(
        keys.iter()
            .any(|k| k.starts_with("warren-forward-agent ") && k.contains(alice_key)),
        "the owner's key is not marked: {keys:?}"
    );
    let answer = d.control(Request::AuthorizedKeys {
        sandboxes: vec![SandboxKeys {
            sandbox: on.clone(),
            keys: keys.into_iter().collect(),
        }],
    })?;
    ensure!(answer == Response::Ok, "{answer:?}");
    let bob_on = bob_key.clone().with_target(d.stack.target(&on));

    let alice_agent = scenarios::ForwardedAgent::start(&d.client)?;
    let bob_agent = scenarios::ForwardedAgent::start(&bob_key)?;

    // Refusals first, so no forwarded session of alice's has left a socket behind.
    refused(
        &alice_agent.run(&alice_off, &[], PROBE)?,
        "relay, owner, off",
    )?;
    refused(
        &bob_agent.run(&bob_on, &[], PROBE)?,
        "relay, shared user, on",
    )?;
    // Jump mode: the client speaks to the agent itself, which refuses.
    let (via, target) = jump(&d, &d.client, "alice", &off);
    refused(
        &alice_agent.run(&target, &["-o", &via], PROBE)?,
        "jump, owner, off",
    )?;
    let (via, target) = jump(&d, &bob_key, "bob", &on);
    refused(
        &bob_agent.run(&target, &["-o", &via], PROBE)?,
        "jump, shared user, on",
    )?;

    forwarded(&alice_agent.run(&alice_on, &[], PROBE)?, "relay, owner, on")?;
    let (via, target) = jump(&d, &d.client, "alice", &on);
    forwarded(
        &alice_agent.run(&target, &["-o", &via], PROBE)?,
        "jump, owner, on",
    )?;
    Ok(())
}
