//! The console's `share`, `unshare`, `shares` and `token`, driven by real OpenSSH
//! clients: the same lifecycle calls as the API's, so a share made on the console
//! lets bob in and taking it back shuts him out, and a token printed by `token`
//! opens the sandbox until the next rotation.

mod common;

use anyhow::{Result, ensure};
use common::{Stack, console, run};
use serde_json::json;
use warren_keys::SandboxId;
use warren_tests::{Client, Target};

/// `line` on `client` succeeds; its stdout.
fn ok(client: &Client, line: &str) -> Result<String> {
    let out = run(client, line)?;
    ensure!(
        out.code() == Some(0),
        "{line}: exit {:?}, stderr {}",
        out.code(),
        out.stderr_str()
    );
    Ok(out.stdout_str())
}

/// `line` on `client` is refused (exit 1), saying `needle` on stderr.
fn refused(client: &Client, line: &str, needle: &str) -> Result<()> {
    let out = run(client, line)?;
    ensure!(
        out.code() == Some(1) && out.stderr_str().contains(needle),
        "{line}: exit {:?}, stderr {} (wanted 1 and {needle:?})",
        out.code(),
        out.stderr_str()
    );
    Ok(())
}

#[test]
fn the_console_shares_and_rotates_tokens_like_the_api() -> Result<()> {
    let stack = Stack::start()?;
    let _runner = stack.runner("r1")?;
    let alice_key = Client::new(stack.target(&SandboxId::generate()))?;
    let bob_key = Client::new(stack.target(&SandboxId::generate()))?;
    stack.user("alice", &alice_key)?;
    stack.user("bob", &bob_key)?;
    let alice = console(&stack, &alice_key, "alice");
    let bob = console(&stack, &bob_key, "bob");
    let help = ok(&alice, "help")?;
    for command in ["share", "unshare", "shares", "token"] {
        ensure!(help.contains(command), "help lacks {command}: {help}");
    }

    let id = ok(&alice, "new")?.trim().to_owned();
    let sandbox = SandboxId::parse(&id)?;
    let bob_in = bob_key.clone().with_target(stack.target(&sandbox));
    ensure!(run(&bob_in, "true")?.code() == Some(255), "not shared yet");

    // share: bob gets in; --secrets is marked; --json is the API's shape.
    ensure!(ok(&alice, &format!("share {id} bob"))?.trim() == "bob");
    ensure!(
        ok(&bob_in, "echo shared")?.trim() == "shared",
        "bob's login"
    );
    ensure!(ok(&alice, &format!("share {id} bob --secrets"))?.trim() == "bob *");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&alice, &format!("shares {id} --json"))?)?;
    ensure!(
        listed == json!({"users": ["bob"], "with_secrets": ["bob"]}),
        "shares --json: {listed}"
    );
    // Only the owner shares, and never with themselves or nobody.
    refused(&bob, &format!("shares {id}"), "sandbox not found")?;
    refused(&bob, &format!("token {id}"), "sandbox not found")?;
    refused(&alice, &format!("share {id} alice"), "always its owner's")?;
    refused(&alice, &format!("share {id} nobody"), "user not found")?;

    // unshare: bob is out, and a second unshare has nothing to take back.
    ok(&alice, &format!("unshare {id} bob"))?;
    ensure!(run(&bob_in, "true")?.code() == Some(255), "unshared");
    refused(&alice, &format!("unshare {id} bob"), "share not found")?;
    ensure!(ok(&alice, &format!("shares {id}"))?.is_empty(), "no shares");

    // token: the printed token logs in, until the next rotation.
    let with_token = |token: &str| {
        Client::new(Target::new(
            "127.0.0.1",
            stack.ssh_port,
            format!("{id}#{token}"),
        ))
    };
    let first = ok(&alice, &format!("token {id}"))?.trim().to_owned();
    ensure!(first.starts_with("wst1."), "token: {first}");
    ensure!(ok(&with_token(&first)?, "echo by-token")?.trim() == "by-token");
    let rotated: serde_json::Value =
        serde_json::from_str(&ok(&alice, &format!("token {id} --json"))?)?;
    let second = rotated["token"].as_str().unwrap_or_default().to_owned();
    ensure!(second.starts_with("wst1.") && second != first, "{rotated}");
    ensure!(
        run(&with_token(&first)?, "true")?.code() == Some(255),
        "the rotated-away token still logs in"
    );
    ok(&with_token(&second)?, "true")?;
    Ok(())
}
