//! A devcontainer.json's `build.dockerfile`, end to end on a Docker runner that
//! allows builds (`--allow-builds`): built offline `FROM warren-base` with its
//! context and build arguments, reused when nothing changed, its user honoured; a
//! Dockerfile that reaches for the runner host during the build fails (the build
//! has no network, though the sandboxes may reach that port); a `FROM` outside the
//! allow-list is refused; a built image cannot be named by a create; a create
//! with `wait: false` answers at once and shows its progress in its events; a
//! built image no sandbox uses any more is removed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use warren_tests::devrepos::GitServer;
use warren_tests::stack::{DockerStack, docker, image};
use warren_tests::util::{free_port, wait_until};
use warren_tests::{Client, Cmd, Profile, Target, build_bin};

const BUILT_JSON: &str = r#"{
  // Built from the repository's top, with an argument from the request's env.
  "build": {
    "dockerfile": "Dockerfile",
    "context": "..",
    "args": { "GREETING": "${localEnv:WHO}" },
  },
  "remoteUser": "dev",
  "postCreateCommand": "cat /etc/built-by; hello",
}"#;

const BUILT_DOCKERFILE: &str = "FROM warren-base:latest\n\
    ARG GREETING=nobody\n\
    COPY tools/hello.sh /usr/local/bin/hello\n\
    RUN chmod 755 /usr/local/bin/hello \\\n\
     && useradd -m -u 1234 -s /bin/bash dev \\\n\
     && echo \"built for $GREETING\" > /etc/built-by\n";

/// Removes the images the test built, when dropped (after the sandboxes).
struct Built(Vec<String>);

impl Drop for Built {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = docker(&["rmi", "-f", image]);
        }
    }
}

#[test]
fn dockerfiles_are_built_offline_from_allowed_images() -> Result<()> {
    let git_port = free_port()?;
    let mut built = Built(Vec::new());
    let Some(d) = DockerStack::start(&[
        "--host-tcp-port",
        &git_port.to_string(),
        "--allow-builds",
        "--disk-mb",
        "512",
        // Built images unused for 10 s go, looked for every second.
        "--keep-unused-builds-s",
        "10",
        "--reap-interval-s",
        "1",
    ])?
    else {
        return Ok(());
    };
    image("build-base")?;
    let api = d.stack.api(Duration::from_secs(30))?;
    api.state.lifecycle.set_allow_http_repos(true);
    let key = d.stack.admin("dana")?;
    let call = |method: &str, path: &str, body: Option<Value>| {
        d.stack.call(&api, method, path, Some(&key), body)
    };
    let create = |body: Value| -> Result<(String, Client, Vec<String>)> {
        let made = call("POST", "/v1/sandboxes", Some(body))?;
        ensure!(
            made.status == 201,
            "create: {made:?}\nthe runner's log:\n{}",
            d.runner_log()
        );
        let id = made.json()["id"].as_str().context("id")?.to_owned();
        let token = made.json()["token"].as_str().context("token")?.to_owned();
        let client = Client::new(Target::new(
            "127.0.0.1",
            d.stack.ssh_port,
            format!("{id}#{token}"),
        ))?;
        let reply = call("GET", &format!("/v1/sandboxes/{id}/events"), None)?;
        let reasons = reply.json()["events"]
            .as_array()
            .context("events")?
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect();
        Ok((id, client, reasons))
    };
    let git = GitServer::start(git_port)?;
    let nonce = format!("{}-{}", std::process::id(), free_port()?);
    let repo = git.repository(
        "built",
        &[
            (".devcontainer/devcontainer.json", BUILT_JSON),
            (".devcontainer/Dockerfile", BUILT_DOCKERFILE),
            // Unique per run, so the build is never one a run before left.
            (
                "tools/hello.sh",
                &format!("#!/bin/sh\necho hello from the build {nonce}\n"),
            ),
        ],
    )?;

    // Built, used, its user and build argument honoured, its steps run.
    eprintln!("creating from {repo}");
    let (id, c, reasons) = create(json!({"repo": repo, "env": {"WHO": "tester"}}))?;
    let image_line = reasons
        .iter()
        .find(|r| r.starts_with("devcontainer: built warren-build-"))
        .with_context(|| format!("no build in {reasons:#?}"))?;
    let tag = image_line
        .split_whitespace()
        .nth(2)
        .context("tag")?
        .to_owned();
    built.0.push(tag.clone());
    ensure!(image_line.contains("no network"), "{image_line}");
    ensure!(
        reasons
            .iter()
            .any(|r| r.starts_with("devcontainer: postCreateCommand output:")
                && r.contains("built for tester")
                && r.contains(&format!("hello from the build {nonce}"))),
        "{reasons:#?}"
    );
    for what in [
        "devcontainer: building .devcontainer/Dockerfile (context ",
        "devcontainer: starting the sandbox and cloning built",
        "devcontainer: postCreateCommand done",
    ] {
        ensure!(
            reasons.iter().any(|r| r.starts_with(what)),
            "no {what:?} in {reasons:#?}"
        );
    }
    let out = c
        .exec(&format!(
            "id -un; curl -sS -o /dev/null -w '%{{http_code}}\\n' {}/info/refs",
            git.url("built")
        ))
        .run()?
        .success()?;
    // The sandbox may reach the git port (`--host-tcp-port`); the build may not.
    ensure!(out.stdout_trimmed() == "dev\n200", "{out}");

    // The same inputs again, not waited for: the answer comes at once, the
    // sandbox `creating`; polled, it runs with the image reused, not built.
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": repo, "env": {"WHO": "tester"}, "wait": false})),
    )?;
    ensure!(
        made.status == 201 && made.json()["state"] == "creating",
        "{made:?}"
    );
    let again = made.json()["id"].as_str().context("id")?.to_owned();
    let mut state = String::new();
    wait_until(Duration::from_secs(150), || {
        state = call("GET", &format!("/v1/sandboxes/{again}"), None)
            .map(|r| r.json()["state"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default();
        state != "creating"
    });
    ensure!(state == "running", "{again} is {state}");
    let reasons: Vec<String> = call("GET", &format!("/v1/sandboxes/{again}/events"), None)?.json()
        ["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        reasons
            .iter()
            .any(|r| r.starts_with(&format!("devcontainer: {tag} was built earlier"))),
        "{reasons:#?}"
    );

    // No create may name a built image itself.
    let made = call("POST", "/v1/sandboxes", Some(json!({"image": tag})))?;
    ensure!(
        made.status == 422 && made.error_code() == "image_not_found",
        "{made:?}"
    );

    // A build that reaches for the runner host (or anywhere) fails: no network.
    let before = call("GET", "/v1/sandboxes", None)?.json()["sandboxes"]
        .as_array()
        .map_or(0, Vec::len);
    let reach = format!(
        "FROM warren-base:latest\nRUN echo {nonce} && curl -sS -m 5 -o /dev/null {}/info/refs\n",
        git.url("built")
    );
    let offline = git.repository(
        "offline",
        &[
            (
                ".devcontainer/devcontainer.json",
                r#"{"build": {"dockerfile": "Dockerfile"}}"#,
            ),
            (".devcontainer/Dockerfile", &reach),
        ],
    )?;
    let made = call("POST", "/v1/sandboxes", Some(json!({"repo": offline})))?;
    ensure!(
        made.status == 422
            && made
                .text
                .contains("building .devcontainer/Dockerfile failed")
            // curl's own exit status for "could not connect" (its message comes
            // through in pieces, coloured, with the escapes made harmless).
            && made.text.contains("returned a non-zero code: 7"),
        "{made:?}"
    );
    let after = call("GET", "/v1/sandboxes", None)?.json()["sandboxes"]
        .as_array()
        .map_or(0, Vec::len);
    ensure!(
        after == before,
        "a failed build left a sandbox: {before} -> {after}"
    );
    // `warren create` shows the build as it runs and ends with the failing step,
    // its exit status and its last lines.
    let home = tempfile::TempDir::new()?;
    let out = Cmd::new(build_bin("warren-cli", "warren", Profile::Debug)?)
        .args(["create", "--repo", &offline])
        .env("HOME", home.path())
        .env("WARREN_URL", &api.base)
        .env("WARREN_API_KEY", &key)
        .timeout(Duration::from_secs(200))
        .run()?;
    let shown = out.stderr_str();
    ensure!(out.code() == Some(1), "{out}");
    for what in [
        "devcontainer: building .devcontainer/Dockerfile (context ",
        "devcontainer: build output:\n",
        "  | Step 1/",
        "the create failed:\n  ",
        "building .devcontainer/Dockerfile failed",
        "returned a non-zero code: 7",
        "was not created",
    ] {
        ensure!(shown.contains(what), "no {what:?} in {shown}");
    }

    // A FROM outside the allow-list is refused before anything is built.
    let foreign = git.repository(
        "foreign",
        &[
            (
                ".devcontainer.json",
                r#"{"build": {"dockerfile": "Dockerfile"}}"#,
            ),
            ("Dockerfile", "FROM warren-base\nFROM debian:12 AS second\n"),
        ],
    )?;
    let made = call("POST", "/v1/sandboxes", Some(json!({"repo": foreign})))?;
    ensure!(
        made.status == 422
            && made.text.contains("Dockerfile line 2")
            && made
                .text
                .contains("not an image this runner allows builds from"),
        "{made:?}"
    );

    // Once no sandbox uses the built image, it goes (after 10 s unused).
    ensure!(
        docker(&["image", "inspect", &tag])?.status.success(),
        "{tag} went while in use"
    );
    for sandbox in [&id, &again] {
        let deleted = call("DELETE", &format!("/v1/sandboxes/{sandbox}"), None)?;
        ensure!(
            deleted.status == 204 || deleted.status == 200,
            "{deleted:?}"
        );
    }
    let gone = wait_until(Duration::from_secs(60), || {
        docker(&["image", "inspect", &tag]).is_ok_and(|o| !o.status.success())
    });
    ensure!(
        gone,
        "{tag} is still there a minute after its last sandbox went\nthe runner's log:\n{}",
        d.runner_log()
    );
    Ok(())
}
