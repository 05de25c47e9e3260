//! The whole path, as a user meets it: `ssh <sandbox-id>@gateway` through the
//! gateway's front door, over a runner's reverse tunnel, to the agent of a sandbox
//! that runner started. One gateway (in-process), two real `warren-runner`s with
//! the process backend, the real OpenSSH clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use warren_tests::stack::Stack;
use warren_tests::{Client, Target, scenarios};

fn dir_of(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[test]
fn two_runners_serve_their_sandboxes_and_a_lost_runner_ends_sessions_cleanly() -> Result<()> {
    let stack = Stack::start()?;
    let mut r1 = stack.runner("r1")?;
    let r2 = stack.runner("r2")?;
    let client = Client::new(Target::new("127.0.0.1", stack.ssh_port, "x"))?;
    let alice = stack.user("alice", &client)?;
    let s1 = stack.sandbox(&r1, &alice)?;
    let s2 = stack.sandbox(&r2, &alice)?;

    // Each sandbox answers through its own runner, with files moving both ways.
    for (sandbox, runner) in [(&s1, &r1), (&s2, &r2)] {
        let c = client.clone().with_target(stack.target(sandbox));
        scenarios::exec_exit_codes(&c)?;
        scenarios::scp_both_ways(&c, &dir_of(&runner.sandbox_dir(sandbox)), 20 << 20)?;
        let out = c.exec("pwd").run()?.success()?;
        ensure!(
            out.stdout_trimmed() == dir_of(&runner.sandbox_dir(sandbox)),
            "sandbox {sandbox} ran somewhere else:\n{out}"
        );
    }

    // Bob's key reaches neither.
    let bob = Client::new(stack.target(&s1))?;
    stack.user("bob", &bob)?;
    let out = bob.exec("true").run()?;
    ensure!(out.code() == Some(255), "bob got in:\n{out}");

    // Killing runner 1 mid-session ends that session with an error, not a hang.
    let c1 = client.clone().with_target(stack.target(&s1));
    let session = c1.exec("echo started; sleep 300").spawn()?;
    if let Err(e) = session
        .stdout()
        .wait_for(b"started", Duration::from_secs(20))
    {
        anyhow::bail!("the session never started ({e}):\n{}", session.kill());
    }
    r1.kill();
    let killed_at = Instant::now();
    let out = session.wait_timeout(Duration::from_secs(60))?;
    ensure!(
        out.code() != Some(0),
        "a session on a dead runner ended well:\n{out}"
    );
    ensure!(
        killed_at.elapsed() < Duration::from_secs(45),
        "the session took {:?} to end",
        killed_at.elapsed()
    );

    // New sessions there are told why, at once; the other runner carries on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.hub.is_online(&r1.id) {
        ensure!(
            Instant::now() < deadline,
            "the gateway never noticed runner 1 died"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = c1.exec("true").run()?;
    ensure!(
        out.code() == Some(255) && out.stderr_str().contains("runner offline"),
        "expected 'runner offline':\n{out}"
    );
    let out = client
        .with_target(stack.target(&s2))
        .exec("echo still-here")
        .run()?
        .success()?;
    ensure!(out.stdout_trimmed() == "still-here", "{out}");
    Ok(())
}
