//! Persistent sessions as a person uses them, in real terminals (tmux) with real
//! OpenSSH clients: `ssh -t <sandbox-id>+<name>@gateway`, killed and re-attached,
//! watched read-only, ended. Written once, run on every backend.

use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::client::{Client, Target};
use crate::process::Output;
use crate::tmux::Tmux;

/// The program the scenarios leave running: one numbered line every 0.2 s.
pub const TICKER: &str = "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.2; done";

/// `c` logged in as `<sandbox-id>+<suffix>` (a session name, maybe `+ro`).
pub fn as_session(c: &Client, suffix: &str) -> Client {
    let t = c.target();
    let user = format!("{}+{suffix}", t.user);
    c.clone()
        .with_target(Target::new(t.host.clone(), t.port, user))
}

/// `ssh -t …` for `c`, as argv for a terminal.
pub fn ssh_argv(c: &Client) -> Vec<String> {
    let mut argv = vec!["ssh".to_owned()];
    argv.extend(c.ssh_args());
    argv.push("-t".into());
    argv.push(c.target().host.clone());
    argv
}

/// The highest `tick-N` on a screen (0 for none).
pub fn last_tick(screen: &str) -> u64 {
    screen
        .split("tick-")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// Kills the client in tmux session `pane` with SIGKILL (no goodbye to the server)
/// and waits until it is gone.
pub fn kill_client(tmux: &Tmux, pane: &str) -> Result<()> {
    let pid = tmux.pane_pid(pane)?;
    let pid = libc::pid_t::try_from(pid).context("pid")?;
    // SAFETY: kill(2) on the test's own ssh client.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_dead(tmux, pane)
}

pub fn wait_dead(tmux: &Tmux, pane: &str) -> Result<()> {
    for _ in 0..200 {
        if tmux.pane_dead(pane)? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("the client in {pane} did not end:\n{}", tmux.screen(pane)?)
}

/// Starts session `name` with the ticker running in tmux session `pane`; returns
/// once it ticks.
pub fn start_ticking(tmux: &Tmux, pane: &str, c: &Client) -> Result<()> {
    tmux.start(pane, 100, 30, &ssh_argv(c))?;
    tmux.wait_until(pane, "a prompt", |s| !s.trim().is_empty())?;
    tmux.keys(pane, &[TICKER, "Enter"])?;
    tmux.wait_for(pane, "tick-5")?;
    Ok(())
}

/// Re-attaches in `pane` and checks that the ticker went on while nobody watched
/// (the screen shows ticks past `before`), and still goes on.
pub fn reattach_sees_it_kept_running(
    tmux: &Tmux,
    pane: &str,
    c: &Client,
    before: u64,
) -> Result<()> {
    tmux.start(pane, 100, 30, &ssh_argv(c))?;
    let screen = tmux.wait_until(pane, &format!("a tick past tick-{}", before + 3), |s| {
        last_tick(s) > before + 3
    })?;
    let now = last_tick(&screen);
    tmux.wait_until(pane, &format!("a tick past tick-{now}"), |s| {
        last_tick(s) > now
    })?;
    Ok(())
}

/// The whole story on one sandbox: `c` logs in as the bare sandbox id.
///
/// A client killed with SIGKILL mid-output, re-attached: the program kept running and
/// the screen shows its latest output. A second client attached with `+ro` sees the
/// same screen and cannot type, nor run commands. When the shell exits, both end and
/// the session is gone. A bad session name is refused with a message.
pub fn persistent_session(c: &Client) -> Result<()> {
    let tmux = Tmux::new();
    let rw = as_session(c, "work");
    let ro = as_session(c, "work+ro");

    start_ticking(&tmux, "a", &rw)?;
    kill_client(&tmux, "a")?;
    let before = last_tick(&tmux.screen("a")?);
    std::thread::sleep(Duration::from_millis(1500));
    reattach_sees_it_kept_running(&tmux, "b", &rw, before)?;

    // Stop the ticker and leave a mark; a watcher attaches and sees the same screen.
    tmux.keys("b", &["C-c"])?;
    tmux.keys("b", &["clear; echo shared-$((6*7))", "Enter"])?;
    tmux.wait_for("b", "shared-42")?;
    tmux.start("c", 100, 30, &ssh_argv(&ro))?;
    tmux.wait_for("c", "shared-42")?;
    let writer = tmux.screen("b")?;
    tmux.wait_until("c", "the writer's screen", |s| same_screen(s, &writer))?;

    // What the watcher types goes nowhere; what the writer does, the watcher sees.
    tmux.keys("c", &["echo intruder-$((1+1))", "Enter"])?;
    std::thread::sleep(Duration::from_millis(1000));
    for pane in ["b", "c"] {
        let screen = tmux.screen(pane)?;
        ensure!(
            !screen.contains("intruder"),
            "the read-only client's keys reached the session ({pane} shows):\n{screen}"
        );
    }
    tmux.keys("b", &["echo after-$((2+3))", "Enter"])?;
    tmux.wait_for("c", "after-5")?;

    // A watcher runs no commands.
    let out = ro.exec("echo hi").run()?;
    ensure!(
        out.code() == Some(1) && out.stderr_str().contains("read-only"),
        "a command on a +ro login should be refused:\n{out}"
    );
    // A command on a session that runs is refused too (attach without one).
    let out = rw.ssh(&["-tt"], "echo hi").run()?;
    ensure!(
        out.code() == Some(1) && said(&out).contains("already runs"),
        "a command for a running session should be refused:\n{out}"
    );

    // The shell exits: every client ends, and the session is gone.
    tmux.keys("b", &["exit", "Enter"])?;
    wait_dead(&tmux, "b")?;
    wait_dead(&tmux, "c")?;
    let out = ro.ssh(&["-tt"], "").run()?;
    ensure!(
        out.code() == Some(1) && said(&out).contains("no session named work"),
        "a +ro attach to an ended session should say there is none:\n{out}"
    );
    let out = as_session(c, "bad!name").ssh(&["-tt"], "").run()?;
    ensure!(
        out.code() == Some(1) && said(&out).contains("may contain only"),
        "a bad session name should be refused with the rule:\n{out}"
    );
    Ok(())
}

/// Everything a client printed (on a terminal, stdout and stderr are one screen).
fn said(out: &Output) -> String {
    format!("{}{}", out.stdout_str(), out.stderr_str())
}

/// Two screens show the same thing (trailing blanks aside).
fn same_screen(a: &str, b: &str) -> bool {
    let rows = |s: &str| -> Vec<String> {
        let mut rows: Vec<String> = s.lines().map(|l| l.trim_end().to_owned()).collect();
        while rows.last().is_some_and(String::is_empty) {
            rows.pop();
        }
        rows
    };
    rows(a) == rows(b)
}
