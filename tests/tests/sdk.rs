//! The Python SDK (`sdk/python`) end to end: its pytest suite runs against a real
//! gateway with its HTTP API, a Docker runner and the agent, as a program driving
//! sandboxes would. `scripts/test` makes the virtualenv (`target/sdk-venv`, with
//! asyncssh, httpx, pytest and the SDK); without it, or without Docker, this fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use warren_runner::protocol::SandboxSpec;
use warren_tests::devrepos::GitServer;
use warren_tests::stack::DockerStack;
use warren_tests::util::free_port;
use warren_tests::{Cmd, workspace_root};

/// The whole suite against one stack: one sandbox shared by most cases, a second for
/// the lifecycle (context manager, stop/start), refusals, and the async twin.
#[test]
fn the_python_sdk_drives_sandboxes_through_the_gateway() -> Result<()> {
    let python = workspace_root().join("target/sdk-venv/bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: scripts/test makes it (python3 -m venv, then pip install \
             pytest pytest-asyncio ./sdk/python)",
            python.display()
        );
    }
    // A repository whose devcontainer.json forwards a port, for the forwards' case.
    let git_port = free_port()?;
    let Some(stack) = DockerStack::start(&["--host-tcp-port", &git_port.to_string()])? else {
        bail!("the SDK tests need a Docker engine and root");
    };
    one_connection_serves_more_commands_than_the_agents_session_limit(&stack)?;
    let api = stack.stack.api(Duration::from_secs(3600))?;
    let key = stack
        .stack
        .rt
        .block_on(stack.stack.store.create_api_key(&stack.owner.id, "sdk"))?;
    api.state.lifecycle.set_allow_http_repos(true);
    warren_tests::stack::image("build-base")?;
    let git = GitServer::start(git_port)?;
    let web = free_port()?;
    let repo = git.repository("forwards", &[(".devcontainer.json", &forwarding_file(web))])?;
    let config = tempfile::TempDir::new()?;
    let out = Cmd::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "sdk/python/tests",
        ])
        .current_dir(workspace_root())
        // The source under test, whatever copy the venv holds.
        .env("PYTHONPATH", workspace_root().join("sdk/python/src"))
        .env("WARREN_URL", &api.base)
        .env("WARREN_API_KEY", key.secret.expose())
        .env("WARREN_TEST_IMAGE", "warren-busybox:latest")
        .env("WARREN_TEST_DEVCONTAINER_REPO", &repo)
        .env("WARREN_TEST_DEVCONTAINER_PORT", web.to_string())
        // Nothing from the machine's own `warren login` is read.
        .env("XDG_CONFIG_HOME", config.path())
        .env_remove("WARREN_CACERT")
        .timeout(Duration::from_secs(600))
        .run()?;
    eprintln!("{}", out.stdout_str());
    ensure!(
        out.code() == Some(0),
        "the SDK's pytest suite failed:\n{out}"
    );
    ensure!(
        out.stdout_str().contains(" passed"),
        "pytest ran no tests:\n{out}"
    );
    Ok(())
}

/// A devcontainer.json that serves `web` from its postStartCommand and forwards it.
fn forwarding_file(web: u16) -> String {
    format!(
        r#"{{
  "image": "warren-base:latest",
  "forwardPorts": [{web}],
  "postStartCommand": "mkdir -p /tmp/www && echo from the devcontainer > /tmp/www/hello.txt && nohup python3 -m http.server {web} --bind 127.0.0.1 --directory /tmp/www >/dev/null 2>&1 &",
}}"#
    )
}

/// One OpenSSH connection (ControlMaster, as VS Code and the SDK hold theirs) runs
/// more commands than the agent's 64 sessions per connection: each closed channel is
/// forgotten on both sides (third_party/russh, patch 2).
fn one_connection_serves_more_commands_than_the_agents_session_limit(
    stack: &DockerStack,
) -> Result<()> {
    let (_id, c) = stack.sandbox(SandboxSpec {
        image: Some("warren-busybox:latest".into()),
        ..SandboxSpec::default()
    })?;
    let dir = tempfile::TempDir::new()?;
    let path = format!("ControlPath={}", dir.path().join("cm").display());
    let shared = [
        "-o",
        "ControlMaster=auto",
        "-o",
        &path,
        "-o",
        "ControlPersist=120",
    ];
    for i in 0..80 {
        let out = c.ssh(&shared, &format!("echo {i}")).run()?;
        ensure!(
            out.stdout_trimmed() == i.to_string(),
            "command {i} on the shared connection:\n{out}"
        );
    }
    let _ = c.ssh(&["-o", &path, "-O", "exit"], "").run();
    Ok(())
}
