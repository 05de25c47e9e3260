//! Recordings, end to end with real OpenSSH clients on real terminals: a terminal
//! session through the gateway comes back as valid asciicast v2 from the API and
//! plays back in `ssh <account>@gw replay`; exec channels are audited with their
//! command lines; owners see their own, admins all, others nothing; retention
//! deletes old ones; a policy that requires recording refuses jump mode and a
//! session it cannot record. On the process backend and on Docker.
//!
//! A hostile sandbox (Docker): a flood of output is cut at the recording's size on
//! disk while the session gets all of it, the oldest recordings go to keep the
//! total, and what it printed or typed reaches the owner's terminal through
//! `sessions` and `replay` with its colours but without its OSC 52, title and
//! device queries.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use common::docker::DockerStack;
use common::{Stack, console, run};
use serde_json::Value;
use warren_gateway::recordings::RecordingPolicy;
use warren_keys::SandboxId;
use warren_runner::protocol::SandboxSpec;
use warren_store::User;
use warren_tests::{Client, Target, Tmux};

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

/// A recording read back.
struct Cast {
    header: Value,
    output: String,
    resizes: Vec<String>,
    input: String,
    markers: Vec<String>,
}

/// Checks a recording is asciicast v2 as asciinema reads it: a header, then events
/// whose times never go back.
fn check_asciicast(text: &str) -> Result<Cast> {
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().context("empty recording")?)?;
    ensure!(header["version"] == 2, "header: {header}");
    ensure!(
        header["width"].is_u64() && header["height"].is_u64() && header["timestamp"].is_i64(),
        "header: {header}"
    );
    let (mut output, mut resizes, mut input) = (String::new(), Vec::new(), String::new());
    let mut markers = Vec::new();
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
            "m" => markers.push(event.2),
            other => bail!("unknown event code {other:?}"),
        }
    }
    Ok(Cast {
        header,
        output,
        resizes,
        input,
        markers,
    })
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
    let Cast {
        header,
        output,
        resizes,
        input,
        markers,
    } = check_asciicast(&reply.text)?;
    ensure!(
        markers.is_empty(),
        "a whole session has no marker: {markers:?}"
    );
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
        max_size: 256 << 10,
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
    let input = check_asciicast(&reply.text)?.input;
    ensure!(input.contains("echo typed-$((2+3))"), "input: {input:?}");

    // A required recording that is cut ends its session, saying why: nothing runs
    // unrecorded.
    let flood = 64u64 << 20;
    let out = sandbox
        .clone()
        .with_option("RequestTTY=force")
        .pipeline(&format!("{{ssh}} 'head -c {flood} /dev/zero' | wc -c"))
        .timeout(Duration::from_secs(300))
        .run()?;
    let got: u64 = out.stdout_trimmed().parse()?;
    ensure!(
        got < flood && out.stderr_str().contains("recording stopped"),
        "a cut required recording: {got} bytes went through; {out:?}"
    );

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

/// One recording's size on disk, and the recordings' total, in this test.
const MAX_SIZE: u64 = 1 << 20;
const MAX_TOTAL: u64 = 5 << 19;
const FLOOD: u64 = 200 << 20;

/// The recordings in the gateway's data directory.
fn casts(stack: &Stack) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    // None yet, or a session's folder going as its last recording is deleted.
    let Ok(sessions) = std::fs::read_dir(stack.data_dir().join("recordings")) else {
        return Ok(found);
    };
    for session in sessions {
        let Ok(files) = std::fs::read_dir(session?.path()) else {
            continue;
        };
        for file in files {
            found.push(file?.path());
        }
    }
    Ok(found)
}

/// `ssh -tt <sandbox> 'head -c <bytes> /dev/zero'`: the NULs the client got, and
/// the session's recording once it says it was cut.
fn flood(stack: &Stack, sandbox: &Client, bytes: u64) -> Result<(u64, PathBuf, Cast)> {
    let before = casts(stack)?;
    let started = std::time::Instant::now();
    let out = sandbox
        .clone()
        .with_option("RequestTTY=force")
        .pipeline(&format!("{{ssh}} 'head -c {bytes} /dev/zero' | wc -c"))
        .timeout(Duration::from_secs(300))
        .run()?
        .success()?;
    let got: u64 = out.stdout_trimmed().parse()?;
    eprintln!("{bytes} NULs through a terminal in {:?}", started.elapsed());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let new: Vec<PathBuf> = casts(stack)?
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if let [path] = new.as_slice() {
            let text = std::fs::read_to_string(path)?;
            if let Ok(cast) = check_asciicast(&text)
                && !cast.markers.is_empty()
            {
                return Ok((got, path.clone(), cast));
            }
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no cut recording among {new:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a hostile sandbox prints: colours, then its clipboard write, a window
/// title, a title report and a device attributes query.
const HOSTILE_OUTPUT: &str = r"printf '\033[31mcolour-%s\033[0m \033]52;c;cHduZWQ=\007\033]2;pwned-title\007\033[21t\033[c done\n' 42; sleep 2";
/// A command line typed by a shared user, with an OSC 52 in it.
const HOSTILE_COMMAND: &str = "true '\x1b]52;c;cHduZWQ=\x07'";

/// `ssh <argv…>` on a tmux terminal `name` (a real terminal: it acts on titles and,
/// with set-clipboard on, on OSC 52); returns once the client has exited.
fn on_tmux(tmux: &Tmux, name: &str, client: &Client, remote: &str, shows: &str) -> Result<String> {
    let mut argv = vec!["ssh".to_owned()];
    argv.extend(client.ssh_args());
    argv.extend([
        "-tt".to_owned(),
        client.target().host.clone(),
        remote.to_owned(),
    ]);
    tmux.start(name, 100, 30, &argv)?;
    // With its history: tmux may scroll the first line away as the pane is sized.
    let capture = || tmux.run(&["capture-pane", "-p", "-e", "-S", "-", "-t", name]);
    let ended = warren_tests::util::wait_until(WAIT, || {
        tmux.pane_dead(name).unwrap_or(false)
            && capture().is_ok_and(|screen| screen.contains(shows))
    });
    ensure!(
        ended,
        "{name}: no {shows:?} before the client exited: {:?}",
        capture()?
    );
    capture()
}

fn title(tmux: &Tmux, name: &str) -> Result<String> {
    Ok(tmux
        .run(&["display-message", "-p", "-t", name, "#{pane_title}"])?
        .trim()
        .to_owned())
}

/// The terminal's clipboard as OSC 52 sets it: tmux's paste buffers.
fn clipboard(tmux: &Tmux) -> Result<String> {
    tmux.run(&["list-buffers", "-F", "#{buffer_sample}"])
}

fn no_raw_controls(what: &str, bytes: &[u8]) -> Result<()> {
    ensure!(
        !bytes.iter().any(|&b| b == 0x1b || b == 0x07),
        "{what} reaches the terminal raw: {:?}",
        String::from_utf8_lossy(bytes)
    );
    Ok(())
}

/// What the owner sees of a hostile sandbox's session and command lines: on a real
/// terminal the session's own output does retitle it and write its clipboard; the
/// console's `sessions` and `replay` do neither, and replay keeps the colours.
fn hostile_text_scenario(docker: &DockerStack, sandbox: &Client, id: &SandboxId) -> Result<()> {
    let stack = &docker.stack;
    let tmux = Tmux::new();
    tmux.start("idle", 20, 5, &["sleep".to_owned(), "600".to_owned()])?;
    tmux.run(&["set-option", "-s", "set-clipboard", "on"])?;
    // The payload works on this terminal: the sandbox's own session is relayed as is.
    on_tmux(&tmux, "own", sandbox, HOSTILE_OUTPUT, "done")?;
    ensure!(
        title(&tmux, "own")? == "pwned-title" && clipboard(&tmux)?.contains("pwned"),
        "the payload does nothing on this terminal: title {:?}, clipboard {:?}",
        title(&tmux, "own")?,
        clipboard(&tmux)?
    );
    tmux.run(&["delete-buffer"])?;
    let exec = run(sandbox, HOSTILE_COMMAND)?;
    ensure!(exec.code() == Some(0), "{exec:?}");

    // sessions: the command line escaped, as text and as JSON.
    let alice = console(stack, &docker.client, "alice");
    let table = run(&alice, &format!("sessions {id}"))?;
    no_raw_controls("sessions", &table.stdout)?;
    ensure!(
        table
            .stdout_str()
            .contains(r"true '\u001b]52;c;cHduZWQ=\u0007'"),
        "sessions: {table:?}"
    );
    let json = run(&alice, &format!("sessions {id} --json"))?;
    no_raw_controls("sessions --json", &json.stdout)?;
    let listing: Value = serde_json::from_slice(&json.stdout)?;
    ensure!(
        find_channel(&listing, |c| c["command"] == HOSTILE_COMMAND).is_some(),
        "sessions --json lost the command line: {listing}"
    );
    let (session, _) = find_channel(&listing, |c| {
        c["command"] == HOSTILE_OUTPUT && c["recorded"] == true
    })
    .with_context(|| format!("the hostile session is not recorded: {listing}"))?;

    // replay, as bytes: colours kept, nothing else.
    let replayed = run(&alice, &format!("replay {session} --speed 50"))?;
    let bytes = replayed.stdout_str();
    ensure!(
        replayed.code() == Some(0) && bytes.contains("\x1b[31mcolour-42"),
        "replay lost the colours: {replayed:?}"
    );
    for raw in ["\x1b]", "\x07", "\x1b[21t", "\x1b[c", "pwned"] {
        ensure!(!bytes.contains(raw), "replay sent {raw:?}: {bytes:?}");
    }
    // ...and on a real terminal: red text, its title and clipboard untouched.
    let screen = on_tmux(
        &tmux,
        "replay",
        &alice,
        &format!("replay {session} --speed 50"),
        "done",
    )?;
    ensure!(
        screen.contains("\x1b[31mcolour-42"),
        "no colour on the replay's screen: {screen:?}"
    );
    ensure!(
        title(&tmux, "replay")? != "pwned-title" && clipboard(&tmux)?.is_empty(),
        "the replay reached the terminal: title {:?}, clipboard {:?}",
        title(&tmux, "replay")?,
        clipboard(&tmux)?
    );
    Ok(())
}

#[test]
fn a_hostile_sandbox_fills_no_disk_and_reaches_no_terminal_on_docker() -> Result<()> {
    let Some(docker) = DockerStack::start_recording(
        RecordingPolicy {
            max_size: MAX_SIZE,
            max_total: MAX_TOTAL,
            ..RecordingPolicy::default()
        },
        &[],
    )?
    else {
        return Ok(());
    };
    let (id, sandbox) = docker.sandbox(SandboxSpec {
        image: Some("warren-busybox:latest".into()),
        ..SandboxSpec::default()
    })?;
    let stack = &docker.stack;

    // 200 MiB of NULs (six bytes each as asciicast): the session gets every byte,
    // the recording stops at its size with a marker saying so.
    let (got, first, cast) = flood(stack, &sandbox, FLOOD)?;
    ensure!(got == FLOOD, "the session got {got} of {FLOOD} bytes");
    let size = std::fs::metadata(&first)?.len();
    ensure!(
        (MAX_SIZE - 1024..=MAX_SIZE).contains(&size),
        "the recording is {size} bytes, its size is {MAX_SIZE}"
    );
    ensure!(
        cast.markers.len() == 1 && cast.markers[0].contains("recording cut"),
        "markers: {:?}",
        cast.markers
    );
    ensure!(
        !cast.output.is_empty() && cast.output.chars().all(|c| c == '\0'),
        "the recorded output is not the NULs"
    );
    eprintln!("cut recording: {size} bytes, marker {:?}", cast.markers[0]);

    // The total: a third cut recording does not fit beside two, the oldest goes.
    let (_, second, _) = flood(stack, &sandbox, 2 * MAX_SIZE)?;
    let (_, third, _) = flood(stack, &sandbox, 2 * MAX_SIZE)?;
    ensure!(
        !first.exists() && second.exists() && third.exists(),
        "the oldest is not the one deleted: {:?}",
        casts(stack)?
    );
    let total: u64 = casts(stack)?
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    ensure!(total <= MAX_TOTAL, "recordings take {total} bytes");

    hostile_text_scenario(&docker, &sandbox, &id)
}
