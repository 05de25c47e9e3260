//! A persistent session's lifetime at the agent itself (jump mode's path: the client
//! logs in to the agent directly, as `<sandbox-id>+<name>`): the operator's detached
//! lifetime ends a session nobody attached, and a detached session counts for the
//! idle reaper only while its programs are busy.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, ensure};
use warren_tests::persistent::{self, as_session, kill_client, ssh_argv};
use warren_tests::{Agent, Tmux};

/// Attaches in tmux session `pane` as `<id>+<name>`, types `command`, waits for
/// `shows`, then kills the client with SIGKILL.
fn leave_running(
    tmux: &Tmux,
    pane: &str,
    c: &warren_tests::Client,
    command: &str,
    shows: &str,
) -> Result<()> {
    tmux.start(pane, 80, 24, &ssh_argv(c))?;
    tmux.wait_until(pane, "a prompt", |s| !s.trim().is_empty())?;
    tmux.keys(pane, &[command, "Enter"])?;
    tmux.wait_for(pane, shows)?;
    kill_client(tmux, pane)
}

#[test]
fn the_detached_lifetime_ends_a_session_nobody_attached() -> Result<()> {
    let agent = Agent::builder().arg("--session-detached-ttl-s=2").start()?;
    let c = agent.client()?;
    let tmux = Tmux::new();
    let work = as_session(&c, "work");
    persistent::start_ticking(&tmux, "a", &work)?;
    // Attached, the lifetime does not run: the session is still there after it.
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        !tmux.pane_dead("a")?,
        "an attached session ended:\n{}",
        tmux.screen("a")?
    );
    kill_client(&tmux, "a")?;
    std::thread::sleep(Duration::from_secs(4));
    let out = as_session(&c, "work+ro").ssh(&["-tt"], "").run()?;
    let said = format!("{}{}", out.stdout_str(), out.stderr_str());
    ensure!(
        out.code() == Some(1) && said.contains("no session named work"),
        "the session should have ended 2 s after its client left:\n{out}"
    );
    ensure!(
        agent.log().contains("detached lifetime over"),
        "the agent did not say why the session ended:\n{}",
        agent.log()
    );
    Ok(())
}

fn modified(path: &Path) -> Result<SystemTime> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("{}", path.display()))
}

/// Whether `path` is touched again within `within` (the agent publishes every 5 s).
fn touched_within(path: &Path, within: Duration) -> Result<bool> {
    let before = modified(path)?;
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        if modified(path)? > before {
            return Ok(true);
        }
    }
    Ok(false)
}

#[test]
fn a_detached_session_is_activity_only_while_its_programs_run() -> Result<()> {
    let activity = tempfile::TempDir::new()?;
    let file = activity.path().join("activity");
    let agent = Agent::builder()
        .arg(format!("--activity-file={}", file.display()))
        .start()?;
    let c = agent.client()?;
    let tmux = Tmux::new();

    // A shell at its prompt, detached: nothing runs, so nothing is published.
    leave_running(
        &tmux,
        "idle",
        &as_session(&c, "idle"),
        "echo idle-$((1+1))",
        "idle-2",
    )?;
    // Let the activity of the attach itself be published first.
    std::thread::sleep(Duration::from_secs(6));
    ensure!(
        !touched_within(&file, Duration::from_secs(11))?,
        "an idle detached session kept the sandbox awake"
    );

    // A program that runs on with nobody attached keeps it awake.
    leave_running(
        &tmux,
        "busy",
        &as_session(&c, "busy"),
        "echo busy-$((2+2)); sleep 600",
        "busy-4",
    )?;
    std::thread::sleep(Duration::from_secs(6));
    ensure!(
        touched_within(&file, Duration::from_secs(11))?,
        "a busy detached session did not count as activity"
    );
    Ok(())
}

/// A user the sandbox is shared with without its secrets may watch a session that
/// has them, but not type into it (its shell would hand them over).
#[test]
fn a_login_without_the_secrets_only_watches_a_session_that_has_them() -> Result<()> {
    let agent = Agent::builder().start()?;
    let owner = agent.client()?;
    let guest = warren_tests::Client::new(agent.target())?;
    agent.authorize(&format!("warren-no-secrets {}", guest.public_key().trim()))?;
    let tmux = Tmux::new();
    persistent::start_ticking(&tmux, "owner", &as_session(&owner, "work"))?;

    let out = as_session(&guest, "work").ssh(&["-tt"], "").run()?;
    let said = format!("{}{}", out.stdout_str(), out.stderr_str());
    ensure!(
        out.code() == Some(1) && said.contains("attach with +ro"),
        "a login without the secrets typed into a session that has them:\n{out}"
    );
    tmux.start("guest", 100, 30, &ssh_argv(&as_session(&guest, "work+ro")))?;
    let now = persistent::last_tick(&tmux.screen("owner")?);
    tmux.wait_until("guest", "the owner's ticks", |s| {
        persistent::last_tick(s) > now
    })?;
    Ok(())
}
