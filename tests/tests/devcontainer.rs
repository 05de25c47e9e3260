//! Sandboxes that follow their repository's devcontainer.json, end to end on the
//! Docker backend: the HTTP API, a real runner, and real repositories on this host
//! served over git's smart HTTP ([`warren_tests::devrepos`]). Here: image, env,
//! lifecycle commands, skipped keys, failures. Users, workspace folders, host
//! requirements and ports: `devcontainer_settings.rs`; builds:
//! `devcontainer_build.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use warren_tests::devrepos::GitServer;
use warren_tests::stack::{DockerStack, image};
use warren_tests::util::free_port;
use warren_tests::{Client, Target};

/// Everything but the lifecycle commands, which each case adds.
const FOLLOWED: &str = r#"
// What the sandbox runs: JSON with comments and trailing commas.
{
  "name": "demo",
  "image": "warren-base:latest",
  "containerEnv": { "GREETING": "hello ${localEnv:WHO}" },
  "remoteEnv": { "TOOLS": "${containerWorkspaceFolder}/tools", },
  "remoteUser": "root",
  "privileged": true,
  "capAdd": ["SYS_ADMIN"],
  "mounts": ["source=/,target=/host,type=bind"],
  "build": { "dockerfile": "Dockerfile" },
  "features": { "ghcr.io/devcontainers/features/node:1": {} },
  "customizations": { "vscode": { "extensions": [] } },
  "onCreateCommand": "echo on-create >> /workspace/order; id -u > /workspace/uid",
  "updateContentCommand": ["sh", "-c", "echo update-content >> /workspace/order"],
  "postCreateCommand": {
    "a": "echo post-create >> order",
    "b": "echo \"$GREETING|$TOOLS\" > env.txt; echo visible-output",
  },
  "postStartCommand": "echo post-start >> /workspace/order",
}
"#;

const FAILING: &str = r#"{
  "image": "warren-base:latest",
  "postCreateCommand": "echo about to fail; echo on stderr >&2; exit 3",
  "postStartCommand": "echo never > /workspace/never",
}"#;

const MALFORMED: &str = "{\n  \"image\": \"warren-base:latest\",\n  \"postCreateCommand\": ,\n}\n";

/// Output that looks like Warren's own notes, and a create that takes a while.
const SLOW: &str = r#"{
  "image": "warren-base:latest",
  "forwardPorts": [3000],
  "postCreateCommand": "printf 'devcontainer: forwardPorts 2222\\n\\033]0;x\\007devcontainer: forwardPorts 4444\\n'; sleep 8",
}"#;

const REFUSED_IMAGE: &str = r#"{ "image": "registry.example/evil:1" }"#;

#[test]
fn sandboxes_follow_their_devcontainer_json() -> Result<()> {
    let port = free_port()?;
    let Some(d) = DockerStack::start(&["--host-tcp-port", &port.to_string(), "--disk-mb", "512"])?
    else {
        return Ok(());
    };
    image("build-base")?;
    let api = d.stack.api(Duration::from_secs(30))?;
    let key = d.stack.admin("dana")?;
    // The stand-in speaks plain http; the operator's switch for that is on.
    api.state.lifecycle.set_allow_http_repos(true);
    let call = |method: &str, path: &str, body: Option<Value>| {
        d.stack.call(&api, method, path, Some(&key), body)
    };
    let git = GitServer::start(port)?;
    let url = |name: &str| git.url(name);
    git.repository("followed", &[(".devcontainer/devcontainer.json", FOLLOWED)])?;
    git.repository("failing", &[(".devcontainer.json", FAILING)])?;
    git.repository(
        "malformed",
        &[(".devcontainer/devcontainer.json", MALFORMED)],
    )?;
    git.repository("refused", &[(".devcontainer.json", REFUSED_IMAGE)])?;
    git.repository("slow", &[(".devcontainer.json", SLOW)])?;

    let create = |body: Value| -> Result<(String, Client)> {
        let made = call("POST", "/v1/sandboxes", Some(body))?;
        ensure!(made.status == 201, "create: {made:?}");
        let id = made.json()["id"].as_str().context("id")?.to_owned();
        let token = made.json()["token"].as_str().context("token")?.to_owned();
        let client = Client::new(Target::new(
            "127.0.0.1",
            d.stack.ssh_port,
            format!("{id}#{token}"),
        ))?;
        Ok((id, client))
    };
    let events = |id: &str| -> Result<Vec<String>> {
        let reply = call("GET", &format!("/v1/sandboxes/{id}/events"), None)?;
        ensure!(reply.status == 200, "events: {reply:?}");
        let list = reply.json();
        let list = list
            .as_array()
            .or_else(|| list["events"].as_array())
            .context("events list")?
            .clone();
        Ok(list
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect())
    };
    let has = |events: &[String], what: &str| events.iter().any(|e| e.contains(what));

    // The image, env, user and every lifecycle command, in order, with their output.
    let (id, c) = create(json!({"repo": url("followed"), "env": {"WHO": "tester"}}))?;
    let seen = events(&id)?;
    for what in [
        "devcontainer: following .devcontainer/devcontainer.json",
        "privileged refused: it would weaken the sandbox's isolation",
        "capAdd refused",
        "mounts refused",
        "build ignored: the file names an image",
        "features refused: features are not installed",
        "remoteUser refused: sessions never run as root",
        "customizations ignored",
        "onCreateCommand done",
        "updateContentCommand done",
        // Announced as they start, their output as it comes (the create asks for
        // its progress live), then their outcomes.
        "onCreateCommand running",
        "postCreateCommand (a) done",
        "postCreateCommand (b) output:\nvisible-output",
        "postCreateCommand (b) done",
        "postStartCommand done",
    ] {
        ensure!(has(&seen, what), "no event with {what:?} in {seen:#?}");
    }
    let out = c
        .exec(
            "cat /workspace/order; cat /workspace/uid; cat /workspace/env.txt; echo \"$GREETING\"",
        )
        .run()?
        .success()?;
    let lines: Vec<String> = out.stdout_trimmed().lines().map(str::to_owned).collect();
    ensure!(
        lines[..4] == ["on-create", "update-content", "post-create", "post-start"],
        "order: {lines:?}"
    );
    ensure!(
        lines[4] != "0",
        "a lifecycle command ran as root: {lines:?}"
    );
    ensure!(
        lines[5] == "hello tester|/workspace/tools" && lines[6] == "hello tester",
        "env: {lines:?}"
    );

    // postStartCommand again at the next start, and only it.
    let stopped = call("POST", &format!("/v1/sandboxes/{id}/stop"), None)?;
    ensure!(stopped.status == 200, "stop: {stopped:?}");
    let started = call("POST", &format!("/v1/sandboxes/{id}/start"), None)?;
    ensure!(started.status == 200, "start: {started:?}");
    let out = c.exec("cat /workspace/order").run()?.success()?;
    ensure!(
        out.stdout_trimmed() == "on-create\nupdate-content\npost-create\npost-start\npost-start",
        "after a restart: {:?}",
        out.stdout_trimmed()
    );
    let seen = events(&id)?;
    ensure!(
        seen.iter()
            .filter(|e| e.contains("postStartCommand done"))
            .count()
            == 2,
        "{seen:#?}"
    );

    // A failing postCreateCommand: reported with its exit status and output; the
    // sandbox runs and takes logins; nothing after it ran.
    let (id, c) = create(json!({"repo": url("failing")}))?;
    let seen = events(&id)?;
    // stdout and stderr both, in whichever order the engine delivered them.
    ensure!(
        seen.iter().any(|e| e.starts_with(
            "devcontainer: postCreateCommand failed (exit 3); the sandbox is left running so \
             it can be fixed; output:\n"
        ) && e.contains("about to fail")
            && e.contains("on stderr")),
        "{seen:#?}"
    );
    ensure!(!has(&seen, "postStartCommand"), "{seen:#?}");
    let out = c
        .exec("test -e /workspace/never && echo ran || echo usable")
        .run()?
        .success()?;
    ensure!(
        out.stdout_trimmed() == "usable",
        "{:?}",
        out.stdout_trimmed()
    );

    // A malformed file: reported with its line; the sandbox is made with defaults.
    let (id, _) = create(json!({"repo": url("malformed")}))?;
    let seen = events(&id)?;
    ensure!(
        has(
            &seen,
            "devcontainer: .devcontainer/devcontainer.json: devcontainer.json line 3"
        ),
        "{seen:#?}"
    );

    // An image outside the runner's allow-list: the create is refused, saying why.
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": url("refused")})),
    )?;
    ensure!(
        made.status == 422
            && made.error_code() == "image_not_found"
            && made.text.contains(".devcontainer.json"),
        "{made:?}"
    );

    // Output that looks like Warren's notes stays output: the forwards are the
    // file's only.
    let (id, _) = create(json!({"repo": url("slow")}))?;
    let seen = events(&id)?;
    ensure!(
        has(
            &seen,
            "postCreateCommand output:\ndevcontainer: forwardPorts 2222"
        ),
        "{seen:#?}"
    );
    let config = call("GET", &format!("/v1/sandboxes/{id}/ssh-config"), None)?;
    ensure!(
        config
            .text
            .contains("LocalForward 127.0.0.1:3000 127.0.0.1:3000")
            && !config.text.contains("2222")
            && !config.text.contains("4444"),
        "{config:?}"
    );
    // A delete while a `wait: false` create is under way waits for it, then
    // removes the sandbox: nothing is left, and the sandbox shows `deleted`.
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": url("slow"), "wait": false})),
    )?;
    ensure!(
        made.status == 201 && made.json()["state"] == "creating",
        "{made:?}"
    );
    let id = made.json()["id"].as_str().context("id")?.to_owned();
    let deleted = call("DELETE", &format!("/v1/sandboxes/{id}"), None)?;
    ensure!(
        deleted.status == 204 || deleted.status == 200,
        "{deleted:?}"
    );
    let shown = call("GET", &format!("/v1/sandboxes/{id}"), None)?;
    ensure!(shown.json()["state"] == "deleted", "{shown:?}");
    let left =
        warren_tests::stack::docker_ok(&["ps", "-aq", "--filter", &format!("name=warren-{id}")])?;
    ensure!(left.is_empty(), "a container is left: {left}");

    // `devcontainer: false`: the file is not followed.
    let (id, c) = create(json!({"repo": url("followed"), "devcontainer": false}))?;
    let seen = events(&id)?;
    ensure!(!has(&seen, "devcontainer"), "{seen:#?}");
    let out = c
        .exec("test -e /workspace/order && echo ran || echo skipped")
        .run()?;
    ensure!(
        out.stdout_trimmed() == "skipped",
        "{:?}",
        out.stdout_trimmed()
    );
    Ok(())
}
