//! The account console, driven by real OpenSSH clients: `ssh alice@gw <command>`
//! for every command with its refusals and exit codes, `ssh -t alice@gw new` into
//! the new sandbox's shell on a real terminal, and the interactive console — on
//! the process backend and on Docker (the path users take). What the console
//! prints has its control characters escaped (`recordings.rs` shows it for text a
//! sandbox chose).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use warren_keys::SandboxId;
use warren_tests::Client;
use warren_tests::stack::DockerStack;
use warren_tests::stack::{Stack, console, run};

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

/// Exits with `code`, saying `needle` on stderr, and prints nothing on stdout.
fn refused(client: &Client, line: &str, code: i32, needle: &str) -> Result<()> {
    let out = run(client, line)?;
    ensure!(
        out.code() == Some(code),
        "{line}: exit {:?} (wanted {code}), stderr {}",
        out.code(),
        out.stderr_str()
    );
    ensure!(
        out.stderr_str().contains(needle),
        "{line}: stderr lacks {needle:?}: {}",
        out.stderr_str()
    );
    ensure!(
        out.stdout_str().is_empty(),
        "{line}: stdout {}",
        out.stdout_str()
    );
    Ok(())
}

#[test]
fn every_console_command_works_and_refuses_like_the_api() -> Result<()> {
    let stack = Stack::start()?;
    let _runner = stack.runner("r1")?;
    let alice_key = Client::new(stack.target(&SandboxId::generate()))?;
    let bob_key = Client::new(stack.target(&SandboxId::generate()))?;
    stack.user("alice", &alice_key)?;
    stack.user("bob", &bob_key)?;
    let alice = console(&stack, &alice_key, "alice");
    let bob = console(&stack, &bob_key, "bob");

    let help = ok(&alice, "help")?;
    for command in [
        "ls", "new", "stop", "start", "rm", "pr", "sessions", "replay", "keys", "attach",
    ] {
        ensure!(help.contains(command), "help lacks {command}: {help}");
    }
    ensure!(
        ok(&alice, "ls")?.lines().count() == 1,
        "a new account has no sandboxes"
    );

    // new prints the id, and only it.
    let id = ok(&alice, "new")?.trim().to_owned();
    let parsed = SandboxId::parse(&id).context("new printed no sandbox id")?;
    ensure!(ok(&alice, "ls")?.contains(&id), "ls lacks {id}");
    let listed: serde_json::Value = serde_json::from_str(&ok(&alice, "ls --json")?)?;
    ensure!(
        listed["sandboxes"][0]["id"] == id.as_str() && listed["sandboxes"][0]["state"] == "running",
        "ls --json: {listed}"
    );
    // The new sandbox is usable at once, with alice's key.
    let shell = alice_key.clone().with_target(stack.target(&parsed));
    ensure!(
        ok(&shell, "echo in-$((40+2))")?.trim() == "in-42",
        "the sandbox's shell"
    );
    let sessions: serde_json::Value =
        serde_json::from_str(&ok(&alice, &format!("sessions {id} --json"))?)?;
    ensure!(
        sessions["sessions"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "sessions --json: {sessions}"
    );

    // Another account's sandbox, an unknown one and a malformed id look the same.
    for line in [
        format!("stop {id}"),
        format!("rm {id}"),
        format!("sessions {id}"),
        "stop sbx-aaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
        "start not-an-id".to_owned(),
    ] {
        refused(&bob, &line, 1, "sandbox not found")?;
    }
    // Bad command lines are usage errors (2), as the API's 422 are refusals (1).
    refused(&alice, "new --bogus", 2, "--bogus")?;
    refused(&alice, "frobnicate", 2, "frobnicate")?;
    // What a message quotes reaches the terminal with its control characters
    // escaped (clap drops 7-bit escape sequences and DEL itself; an 8-bit CSI, a
    // cursor report request to a terminal that takes C1, is the console's).
    let quoted = run(&alice, "frobnicate\u{9b}6n\x7f\x1b]52;c;cHduZWQ=\x07")?;
    ensure!(
        quoted.code() == Some(2)
            && !quoted
                .stderr_str()
                .chars()
                .any(|c| c.is_control() && c != '\n')
            && quoted.stderr_str().contains(r"frobnicate\u009b6n"),
        "a quoted control sequence: {quoted:?}"
    );
    refused(&alice, "stop", 2, "<ID>")?;
    refused(&alice, "new --memory-mb 1", 1, "memory_mb must be between")?;
    refused(&alice, "new --disk-mb 1", 1, "disk_mb must be between")?;
    refused(&alice, "new --disk-mb 2048", 1, "no disk quota")?;
    refused(&alice, "new --branch x", 1, "branch needs repo")?;
    refused(&alice, "new --env WARREN_X=1", 1, "invalid_request")?;
    let json_error = run(&alice, "new --memory-mb 1 --json")?;
    let error: serde_json::Value = serde_json::from_str(json_error.stderr_str().trim())?;
    ensure!(error["error"]["code"] == "invalid_request", "{error}");
    refused(&alice, &format!("pr {id} --title Fix"), 1, "no_repo")?;
    refused(&alice, "attach x", 1, "needs a terminal")?;

    // stop, start, rm: the same state machine as the API.
    ensure!(
        ok(&alice, &format!("stop {id}"))?.contains("stopped"),
        "stop"
    );
    refused(&shell, "true", 255, "")?;
    ensure!(
        ok(&alice, &format!("start {id}"))?.contains("running"),
        "start"
    );
    ensure!(ok(&shell, "echo back")?.trim() == "back", "started again");
    ok(&alice, &format!("rm {id}"))?;
    ensure!(!ok(&alice, "ls")?.contains(&id), "rm");
    ensure!(
        ok(&alice, "ls --all")?.contains("deleted"),
        "ls --all shows deleted ones"
    );
    refused(&alice, &format!("start {id}"), 1, "cannot be started")?;

    // keys: list, add from stdin, refuse junk, remove by fingerprint.
    let keys = ok(&alice, "keys")?;
    ensure!(
        keys.lines().count() == 1 && keys.contains("SHA256:"),
        "keys: {keys}"
    );
    let extra = Client::new(stack.target(&SandboxId::generate()))?;
    let added = alice
        .exec("keys add --name laptop")
        .stdin(extra.public_key().as_bytes().to_vec())
        .timeout(Duration::from_secs(60))
        .run()?
        .success()?
        .stdout_str();
    ensure!(added.contains("laptop"), "keys add: {added}");
    let fingerprint = added
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .context("no fingerprint")?
        .to_owned();
    let junk = alice
        .exec("keys add")
        .stdin(b"not a key\n".to_vec())
        .timeout(Duration::from_secs(60))
        .run()?;
    ensure!(junk.code() == Some(1), "junk key: {:?}", junk.code());
    // The new key logs in as alice now...
    let as_extra = console(&stack, &extra, "alice");
    ensure!(ok(&as_extra, "keys")?.lines().count() == 2, "two keys");
    ok(&alice, &format!("keys rm {fingerprint}"))?;
    // ...and no more once removed.
    ensure!(
        run(&as_extra, "ls")?.code() == Some(255),
        "a removed key still logs in"
    );
    refused(&alice, "keys rm SHA256:nope", 1, "SSH key not found")?;
    // No sftp on the console.
    let sftp = alice.sftp(&["-b", "-"]).stdin(b"ls\n".to_vec()).run()?;
    ensure!(sftp.code() != Some(0), "sftp on the console");
    Ok(())
}

/// `ssh -t alice@gw new` creates a sandbox and drops into its shell on a real
/// terminal; `ssh -t alice@gw` alone is the interactive console.
#[test]
fn new_with_a_terminal_opens_the_new_sandboxs_shell() -> Result<()> {
    let stack = Stack::start()?;
    let _runner = stack.runner("r1")?;
    let key = Client::new(stack.target(&SandboxId::generate()))?;
    stack.user("alice", &key)?;
    let alice = console(&stack, &key, "alice");
    terminal_scenarios(&alice, &[])
}

/// The same on Docker, with an allowed image.
#[test]
fn new_with_a_terminal_opens_a_docker_sandboxs_shell() -> Result<()> {
    let Some(docker) = DockerStack::start(&[])? else {
        return Ok(());
    };
    let alice = console(&docker.stack, &docker.client, "alice");
    // What the console made carries the runner's labels: the stack's drop removes it.
    terminal_scenarios(&alice, &["--image", "warren-busybox:latest"])
}

fn terminal_scenarios(alice: &Client, new_args: &[&str]) -> Result<()> {
    let wait = Duration::from_secs(60);
    let new = format!("new {}", new_args.join(" "));
    let mut term = alice.ssh_on_pty(&["-tt"], &new, "xterm", 30, 100)?;
    term.send("echo shell-$((6*7))\r")?;
    term.expect("shell-42", wait)?;
    term.send("stty size\r")?;
    term.expect("30 100", wait)?;
    term.resize(40, 120)?;
    term.send("stty size\r")?;
    term.expect("40 120", wait)?;
    term.send("exit 3\r")?;
    let status = term.wait(wait)?;
    ensure!(
        status.code() == Some(3),
        "the shell's exit status: {status:?}"
    );

    // The interactive console: list, a mistake, attach, leave.
    let mut console = alice.ssh_on_pty(&["-tt"], "", "xterm", 30, 100)?;
    console.expect("warren> ", wait)?;
    console.send("lx\x7fs\r")?;
    let listing = console.expect("running", wait)?;
    let id = listing
        .split_whitespace()
        .find(|w| w.starts_with("sbx-"))
        .context("ls showed no sandbox")?
        .to_owned();
    console.send("stop\r")?;
    console.expect("<ID>", wait)?;
    console.send(format!("attach {id}\r"))?;
    console.send("echo attached-$((1+1))\r")?;
    console.expect("attached-2", wait)?;
    console.send("exit\r")?;
    console.wait(wait)?;

    let mut quit = alice.ssh_on_pty(&["-tt"], "", "xterm", 30, 100)?;
    quit.expect("warren> ", wait)?;
    quit.send("exit\r")?;
    ensure!(
        quit.wait(wait)?.code() == Some(0),
        "exit leaves the console"
    );
    Ok(())
}
