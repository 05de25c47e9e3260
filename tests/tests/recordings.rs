//! Recordings, end to end with real OpenSSH clients on real terminals: a terminal
//! session through the gateway comes back as valid asciicast v2 from the API and
//! plays back in `ssh <account>@gw replay`; exec channels are audited with their
//! command lines; owners see their own, admins all, others nothing; retention
//! deletes old ones; a policy that requires recording refuses jump mode and a
//! session it cannot record. On the process backend and on Docker.

mod common;

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use common::docker::DockerStack;
use common::{Stack, console, run};
use serde_json::Value;
use warren_gateway::recordings::RecordingPolicy;
use warren_gateway::store::User;
use warren_keys::SandboxId;
use warren_runner::protocol::SandboxSpec;
use warren_tests::{Client, Target};

const WAIT: Duration = Duration::from_secs(60);

fn api_key(stack: &Stack, user: &User) -> Result<String> {
    let key = stack
        .rt
        .block_on(stack.store.create_api_key(&user.id, "recordings"))?;
    Ok(key.secret.expose().to_owned())
}

/// A terminal session that prints a marker, is resized, and exits.
fn terminal_session(sandbox: &Client) -> Result<()> {
    let mut term = sandbox.ssh_on_pty(&["-tt"], "", "xterm", 30, 100)?;
    term.send("printf 'rec-%s\\n' $((6*7))\r")?;
    term.expect("rec-42", WAIT)?;
    term.resize(40, 120)?;
    term.send("stty size\r")?;
    term.expect("40 120", WAIT)?;
    term.send("exit\r")?;
    term.wait(WAIT)?;
    Ok(())
}

/// The sandbox's sessions, once every channel in them has ended (their rows are
/// closed as the connections wind down).
fn ended_sessions(stack: &Stack, api: &common::Api, key: &str, id: &SandboxId) -> Result<Value> {
    let path = format!("/v1/sandboxes/{id}/sessions");
    let started = std::time::Instant::now();
    loop {
        let reply = stack.call(api, "GET", &path, Some(key), None)?;
        ensure!(reply.status == 200, "{path}: {reply:?}");
        let listing = reply.json();
        let channels: Vec<&Value> = listing["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["channels"].as_array().into_iter().flatten())
            .collect();
        if !channels.is_empty() && channels.iter().all(|c| !c["ended_at"].is_null()) {
            return Ok(listing);
        }
        ensure!(started.elapsed() < WAIT, "channels still open: {listing}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The session holding a channel that matches `is`, and that channel.
fn find_channel(listing: &Value, is: impl Fn(&Value) -> bool) -> Option<(&str, &Value)> {
    listing["sessions"].as_array()?.iter().find_map(|s| {
        let channel = s["channels"].as_array()?.iter().find(|c| is(c))?;
        Some((s["id"].as_str()?, channel))
    })
}

/// Checks a recording is asciicast v2 as asciinema reads it: a header, then events
/// whose times never go back. Returns the header, the output and the resizes.
fn check_asciicast(text: &str) -> Result<(Value, String, Vec<String>, String)> {
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().context("empty recording")?)?;
    ensure!(header["version"] == 2, "header: {header}");
    ensure!(
        header["width"].is_u64() && header["height"].is_u64() && header["timestamp"].is_i64(),
        "header: {header}"
    );
    let (mut output, mut resizes, mut input) = (String::new(), Vec::new(), String::new());
    let mut last = 0.0;
    for line in lines {
        let event: (f64, String, String) =
            serde_json::from_str(line).with_context(|| format!("event {line:?}"))?;
        ensure!(event.0 >= last, "time went back: {line}");
        last = event.0;
        match event.1.as_str() {
            "o" => output.push_str(&event.2),
            "r" => resizes.push(event.2),
            "i" => input.push_str(&event.2),
            other => bail!("unknown event code {other:?}"),
        }
    }
    Ok((header, output, resizes, input))
}

/// What a user of any backend gets: `sandbox` is alice's, `alice_key` her key;
/// `bob_key` belongs to another account.
fn recorded_scenarios(
    stack: &Stack,
    alice: &User,
    alice_key: &Client,
    bob_key: &Client,
    id: &SandboxId,
) -> Result<()> {
    let api = stack.api(Duration::from_secs(3600))?;
    let sandbox = alice_key.clone().with_target(stack.target(id));
    terminal_session(&sandbox)?;
    let exec = run(&sandbox, "echo plain-exec")?;
    ensure!(exec.stdout_trimmed() == "plain-exec", "{exec:?}");

    // The audit trail: the shell (a terminal, recorded) and the command line.
    let key = api_key(stack, alice)?;
    let listing = ended_sessions(stack, &api, &key, id)?;
    let (shell_session, shell) = find_channel(&listing, |c| c["kind"] == "shell")
        .with_context(|| format!("no shell channel: {listing}"))?;
    ensure!(
        shell["terminal"] == true && shell["recorded"] == true && shell["exit"] == "status:0",
        "shell: {shell}"
    );
    let (exec_session, exec) = find_channel(&listing, |c| c["command"] == "echo plain-exec")
        .with_context(|| format!("no exec channel: {listing}"))?;
    ensure!(
        exec["kind"] == "exec"
            && exec["terminal"] == false
            && exec["recorded"] == false
            && exec["exit"] == "status:0"
            && exec["bytes_out"] == 11,
        "exec: {exec}"
    );

    // The recording, as asciinema would fetch it.
    let path = format!("/v1/sessions/{shell_session}/recording");
    let reply = stack.call(&api, "GET", &path, Some(&key), None)?;
    ensure!(reply.status == 200, "{path}: {reply:?}");
    ensure!(
        reply.content_type.as_deref() == Some("application/x-asciicast"),
        "{reply:?}"
    );
    let (header, output, resizes, input) = check_asciicast(&reply.text)?;
    ensure!(
        header["width"] == 100 && header["height"] == 30 && header["env"]["TERM"] == "xterm",
        "header: {header}"
    );
    ensure!(output.contains("rec-42"), "output: {output:?}");
    ensure!(resizes == ["120x40"], "resizes: {resizes:?}");
    ensure!(input.is_empty(), "input is recorded by default: {input:?}");
    eprintln!(
        "recording: {} bytes, {} events",
        reply.text.len(),
        reply.text.lines().count() - 1
    );

    // Nobody else's: bob sees nothing, an admin everything; unknown ids look the same.
    let bob = stack.user("bob", bob_key)?;
    let bob_api = api_key(stack, &bob)?;
    for (who, key, path, want) in [
        ("bob", bob_api.as_str(), path.clone(), 404),
        ("bob", &bob_api, format!("/v1/sandboxes/{id}/sessions"), 404),
        (
            "alice",
            &key,
            "/v1/sessions/ses_nosuchsession/recording".into(),
            404,
        ),
        (
            "alice",
            &key,
            format!("/v1/sessions/{exec_session}/recording?channel=9"),
            404,
        ),
        ("alice", &key, format!("{path}?channel=x"), 400),
        ("alice", &key, format!("{path}?bogus=1"), 400),
    ] {
        let reply = stack.call(&api, "GET", &path, Some(key), None)?;
        ensure!(reply.status == want, "{who} {path}: {reply:?}");
    }
    let admin = stack.admin("root")?;
    ensure!(
        stack.call(&api, "GET", &path, Some(&admin), None)?.status == 200,
        "an admin reads every recording"
    );

    // The console: sessions lists what ran; replay plays it back.
    let alice_console = console(stack, alice_key, "alice");
    let table = run(&alice_console, &format!("sessions {id}"))?;
    ensure!(
        table.code() == Some(0)
            && table.stdout_str().contains("recorded")
            && table.stdout_str().contains("exec echo plain-exec"),
        "sessions: {table:?}"
    );
    let replayed = run(
        &alice_console,
        &format!("replay {shell_session} --speed 50"),
    )?;
    ensure!(
        replayed.code() == Some(0) && replayed.stdout_str().contains("rec-42"),
        "replay: {replayed:?}"
    );
    // On a terminal, as a person watches it; q stops a slow one.
    let mut term = alice_console.ssh_on_pty(
        &["-tt"],
        &format!("replay {shell_session} --speed 20"),
        "xterm",
        30,
        100,
    )?;
    term.expect("rec-42", WAIT)?;
    ensure!(term.wait(WAIT)?.code() == Some(0), "replay on a terminal");
    let mut slow = alice_console.ssh_on_pty(
        &["-tt"],
        &format!("replay {shell_session} --speed 0.01"),
        "xterm",
        30,
        100,
    )?;
    std::thread::sleep(Duration::from_millis(500));
    slow.send("q")?;
    ensure!(
        slow.wait(Duration::from_secs(15))?.code() == Some(0),
        "q stops a replay"
    );
    // Refusals, with the console's exit codes.
    let bob_console = console(stack, bob_key, "bob");
    for (client, line, code, needle) in [
        (
            &bob_console,
            format!("replay {shell_session}"),
            1,
            "session not found",
        ),
        (
            &alice_console,
            format!("replay {exec_session}"),
            1,
            "recording not found",
        ),
        (
            &alice_console,
            format!("replay {shell_session} --speed 0"),
            1,
            "--speed",
        ),
        (&alice_console, "replay".to_owned(), 2, "<SESSION>"),
    ] {
        let out = run(client, &line)?;
        ensure!(
            out.code() == Some(code) && out.stderr_str().contains(needle),
            "{line}: {out:?}"
        );
    }

    // Retention: a month on, the recording is gone and says so.
    let deleted = stack
        .recordings
        .sweep(SystemTime::now() + Duration::from_secs(31 * 86_400));
    ensure!(deleted >= 1, "the sweep deleted {deleted}");
    let reply = stack.call(&api, "GET", &path, Some(&key), None)?;
    ensure!(
        reply.status == 404 && reply.text.contains("recording not found"),
        "after retention: {reply:?}"
    );
    let listing = ended_sessions(stack, &api, &key, id)?;
    let (_, shell) = find_channel(&listing, |c| c["kind"] == "shell").context("shell")?;
    ensure!(shell["recorded"] == false, "after retention: {shell}");
    Ok(())
}

#[test]
fn a_terminal_session_is_recorded_replayed_and_expires_on_processes() -> Result<()> {
    let stack = Stack::start()?;
    let runner = stack.runner("r1")?;
    let alice_key = Client::new(stack.target(&SandboxId::generate()))?;
    let bob_key = Client::new(stack.target(&SandboxId::generate()))?;
    let alice = stack.user("alice", &alice_key)?;
    let id = stack.sandbox(&runner, &alice)?;
    recorded_scenarios(&stack, &alice, &alice_key, &bob_key, &id)
}

#[test]
fn a_terminal_session_is_recorded_replayed_and_expires_on_docker() -> Result<()> {
    let Some(docker) = DockerStack::start(&[])? else {
        return Ok(());
    };
    let (id, _) = docker.sandbox(SandboxSpec {
        image: Some("warren-busybox:latest".into()),
        ..SandboxSpec::default()
    })?;
    let bob_key = Client::new(docker.stack.target(&SandboxId::generate()))?;
    recorded_scenarios(&docker.stack, &docker.owner, &docker.client, &bob_key, &id)
}

#[test]
fn a_policy_that_requires_recording_refuses_what_it_cannot_record() -> Result<()> {
    let stack = Stack::start_recording(RecordingPolicy {
        required: true,
        input: true,
        ..RecordingPolicy::default()
    })?;
    let runner = stack.runner("r1")?;
    let alice_key = Client::new(stack.target(&SandboxId::generate()))?;
    let alice = stack.user("alice", &alice_key)?;
    let id = stack.sandbox(&runner, &alice)?;
    let api = stack.api(Duration::from_secs(3600))?;
    let key = api_key(&stack, &alice)?;

    // Jump mode is encrypted end to end: refused, saying why and what to do.
    let hop = format!(
        "ProxyCommand=ssh -F /dev/null -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no \
         -o BatchMode=yes -o IdentitiesOnly=yes -i {} -p {} -W %h:%p alice@127.0.0.1",
        alice_key.key_path().display(),
        stack.ssh_port
    );
    let jumped = alice_key
        .clone()
        .with_target(Target::new(id.as_str(), 22, id.as_str()))
        .ssh(&["-o", &hop], "echo jumped")
        .timeout(WAIT)
        .run()?;
    ensure!(
        jumped.code() != Some(0) && jumped.stderr_str().contains("jump mode (-J)"),
        "jump under a recording requirement: {jumped:?}"
    );

    // A relayed terminal session is recorded, what was typed too (by this policy).
    let sandbox = alice_key.clone().with_target(stack.target(&id));
    let mut term = sandbox.ssh_on_pty(&["-tt"], "", "xterm", 24, 80)?;
    term.send("echo typed-$((2+3))\r")?;
    term.expect("typed-5", WAIT)?;
    term.send("exit\r")?;
    term.wait(WAIT)?;
    let listing = ended_sessions(&stack, &api, &key, &id)?;
    let (session, _) = find_channel(&listing, |c| c["recorded"] == true)
        .with_context(|| format!("nothing recorded: {listing}"))?;
    let reply = stack.call(
        &api,
        "GET",
        &format!("/v1/sessions/{session}/recording"),
        Some(&key),
        None,
    )?;
    let (_, _, _, input) = check_asciicast(&reply.text)?;
    ensure!(input.contains("echo typed-$((2+3))"), "input: {input:?}");

    // Where nothing can be written (the recordings folder is a file: as a full disk,
    // every write fails), a terminal session is refused; an exec still runs.
    let dir = stack.data_dir().join("recordings");
    std::fs::rename(&dir, stack.data_dir().join("recordings.moved"))?;
    std::fs::write(&dir, b"not a folder")?;
    let mut refused = sandbox.ssh_on_pty(&["-tt"], "", "xterm", 24, 80)?;
    refused.expect("failed", WAIT)?;
    let status = refused.wait(WAIT)?;
    ensure!(
        status.code() != Some(0),
        "an unrecordable shell: {status:?}"
    );
    let exec = run(&sandbox, "echo still-audited")?;
    ensure!(exec.stdout_trimmed() == "still-audited", "{exec:?}");
    Ok(())
}
