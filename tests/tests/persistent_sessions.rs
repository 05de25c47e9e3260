//! Persistent sessions (`ssh -t <sandbox-id>+<name>@gateway`) through the gateway
//! and a real runner, on both backends, in real terminals (tmux): a client killed
//! mid-output re-attaches to a program that kept running; a `+ro` watcher sees the
//! same screen and cannot type. (The gateway restart is in gateway_restart.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::Result;
use warren_runner::protocol::SandboxSpec;
use warren_tests::stack::DockerStack;
use warren_tests::stack::Stack;
use warren_tests::{Client, persistent};

#[test]
fn a_persistent_session_outlives_its_client_on_the_process_backend() -> Result<()> {
    let stack = Stack::start()?;
    let runner = stack.runner("p")?;
    let client = Client::new(stack.target(&warren_keys::SandboxId::generate()))?;
    let alice = stack.user("alice", &client)?;
    let id = stack.sandbox(&runner, &alice)?;
    persistent::persistent_session(&client.with_target(stack.target(&id)))
}

#[test]
fn a_persistent_session_outlives_its_client_on_the_docker_backend() -> Result<()> {
    let Some(d) = DockerStack::start(&[])? else {
        return Ok(());
    };
    let (_, c) = d.sandbox(SandboxSpec {
        image: Some("warren-busybox:latest".into()),
        ..SandboxSpec::default()
    })?;
    persistent::persistent_session(&c)
}
