//! A gateway restart as an operator does it: the real `warren-gateway serve` process
//! is killed and started again on the same data directory; the runner reconnects by
//! itself and `ssh <sandbox>@gateway` works again within seconds, through the front
//! door, with the sandbox made through the HTTP API before the restart; a
//! persistent session started before the restart is still there after it; and a
//! `warren mirror` started before it catches up by itself after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Result, ensure};
use warren_tests::stack::{ServedStack, Stack, ssh_works_within};
use warren_tests::util::wait_until;
use warren_tests::{ChildGuard, Profile, Tmux, build_bin, persistent};

fn start() -> Result<ServedStack> {
    Stack::builder().served()
}

#[test]
fn after_a_gateway_restart_runners_reconnect_and_sessions_work_within_seconds() -> Result<()> {
    let mut s = start()?;
    s.restart_gateway()?;
    let took = ssh_works_within(&s.client, Duration::from_secs(30))?;
    eprintln!("sessions worked again {took:?} after the gateway restarted");
    ensure!(
        took < Duration::from_secs(15),
        "the runner took {took:?} to come back"
    );
    Ok(())
}

/// The agent holds a persistent session's terminal, so it outlives the gateway: the
/// program keeps running while the gateway is down, and the same command re-attaches.
#[test]
fn a_persistent_session_survives_a_gateway_restart() -> Result<()> {
    let mut s = start()?;
    let tmux = Tmux::new();
    let rw = persistent::as_session(&s.client, "build");
    persistent::start_ticking(&tmux, "a", &rw)?;
    s.restart_gateway()?;
    // The client lost its connection with the gateway.
    persistent::wait_dead(&tmux, "a")?;
    let before = persistent::last_tick(&tmux.screen("a")?);
    ssh_works_within(&s.client, Duration::from_secs(30))?;
    persistent::reattach_sees_it_kept_running(&tmux, "b", &rw, before)
}

/// `warren mirror` as a person runs it, through the gateway's front door: the
/// gateway is killed under it, the sandbox changes while it is down, and the mirror
/// reconnects by itself once it is back, catches up, and follows live changes again.
#[test]
fn a_mirror_catches_up_by_itself_after_a_gateway_restart() -> Result<()> {
    let mut s = start()?;
    let workspace = s.client.exec("pwd").run()?.success()?.stdout_trimmed();
    let remote = Path::new(&workspace).join("m");
    std::fs::create_dir_all(&remote)?;
    // SFTP's mtimes are whole seconds: each rewrite below keeps the file's size
    // and second, which only the mirror's own bookkeeping can tell apart.
    let second = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let rewrite = |path: &Path, text: &str, mtime: std::time::SystemTime| {
        let mut file = std::fs::File::create(path)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.set_modified(mtime)
    };
    rewrite(&remote.join("a"), "one", second)?;
    let local = tempfile::TempDir::new()?;
    let events = local.path().join("events.jsonl");
    let mirrored = local.path().join("m");
    let mut mirror = ChildGuard::spawn(
        Command::new(build_bin("warren-cli", "warren", Profile::Debug)?)
            .arg("mirror")
            .arg(format!("{}:{}", s.sandbox, remote.display()))
            .arg(&mirrored)
            .args(["--progress", "json"])
            .env("WARREN_URL", s.http_url())
            .env("WARREN_API_KEY", &s.api_key)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&events)?)
            .stderr(std::fs::File::create(local.path().join("stderr"))?),
    )?;
    let has = |name: &str, text: &str| {
        std::fs::read_to_string(mirrored.join(name)).is_ok_and(|t| t == text)
    };
    let shown = || {
        format!(
            "events:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&events).unwrap_or_default(),
            std::fs::read_to_string(local.path().join("stderr")).unwrap_or_default()
        )
    };
    ensure!(
        wait_until(Duration::from_secs(30), || has("a", "one")),
        "the first pull did not arrive\n{}",
        shown()
    );

    // The sandbox changes while the gateway is down (the process backend's files
    // are the host's): an edit (same size, same second) and a new file.
    s.kill_gateway();
    rewrite(&remote.join("a"), "uno", second)?;
    std::fs::write(remote.join("b"), "two")?;
    s.serve_gateway()?;
    ensure!(
        wait_until(Duration::from_secs(45), || has("a", "uno")
            && has("b", "two")),
        "the mirror did not catch up after the restart\n{}",
        shown()
    );
    // And it is live again: a new file and a delete made through the new gateway
    // arrive.
    s.client
        .exec(&format!(
            "echo three > {}/c && rm {}/b",
            remote.display(),
            remote.display()
        ))
        .run()?
        .success()?;
    ensure!(
        wait_until(Duration::from_secs(30), || {
            has("c", "three\n") && !mirrored.join("b").exists()
        }),
        "a change after the restart did not arrive\n{}",
        shown()
    );
    // A live rewrite that keeps the size and the second.
    let c = remote.join("c");
    let mtime = std::fs::metadata(&c)?.modified()?;
    rewrite(&c, "THREE\n", mtime)?;
    ensure!(
        wait_until(Duration::from_secs(30), || has("c", "THREE\n")),
        "a same-size rewrite in the same second did not arrive\n{}",
        shown()
    );
    ensure!(
        mirror.try_wait().is_none(),
        "the mirror exited\n{}",
        shown()
    );
    let log = std::fs::read_to_string(&events)?;
    ensure!(
        log.contains("\"state\":\"reconnecting\""),
        "the mirror never said it was reconnecting\n{}",
        shown()
    );
    mirror.kill(Duration::ZERO);
    Ok(())
}
