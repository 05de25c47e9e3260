//! A devcontainer.json's user, workspace folder, host requirements and ports, end
//! to end on the Docker backend: created with the `warren` CLI in a terminal (its
//! report read off the screen), logged into with real OpenSSH, and a port the file
//! forwards reached through the `LocalForward` line `warren config-ssh` writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tempfile::TempDir;
use warren_tests::devrepos::GitServer;
use warren_tests::stack::{DockerStack, docker, docker_ok, image};
use warren_tests::util::{free_port, wait_until};
use warren_tests::{ChildGuard, Profile, Target, Tmux, build_bin};

/// An image with a user `dev` (uid 1234) and, before root, `toor` (uid 0).
const DEV_IMAGE: &str = "warren-test-devuser:latest";

fn dev_image() -> Result<()> {
    if docker(&["image", "inspect", DEV_IMAGE])?.status.success() {
        return Ok(());
    }
    let tmp = format!("warren-devuser-{}", std::process::id());
    let _ = docker(&["rm", "-f", &tmp]);
    docker_ok(&[
        "run",
        "--name",
        &tmp,
        "--network",
        "none",
        "warren-base:latest",
        "sh",
        "-c",
        "useradd -m -u 1234 -s /bin/bash dev && \
         { echo toor:x:0:0::/root:/bin/bash; cat /etc/passwd; } > /tmp/p && cat /tmp/p > /etc/passwd",
    ])?;
    docker_ok(&["commit", &tmp, DEV_IMAGE])?;
    let _ = docker(&["rm", "-f", &tmp]);
    Ok(())
}

/// ssh's options for a connection that only holds forwards open.
const FORWARDING: [&str; 7] = [
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "BatchMode=yes",
    "-o",
    "ExitOnForwardFailure=yes",
    "-N",
];

/// The file under test: `web` is the port its postStartCommand serves and
/// forwards.
fn settings(web: u16) -> String {
    format!(
        r#"{{
  "image": "{DEV_IMAGE}",
  "remoteUser": "dev",
  "workspaceFolder": "/workspaces/${{localWorkspaceFolderBasename}}",
  "hostRequirements": {{ "cpus": 1, "memory": "1.5gb" }},
  "forwardPorts": [{web}, "db:5432"],
  "portsAttributes": {{ "{web}": {{ "label": "Web" }} }},
  "postCreateCommand": "pwd; pwd > where; id -un > who",
  "postStartCommand": "nohup python3 -m http.server {web} --bind 127.0.0.1 >/dev/null 2>&1 &",
}}"#
    )
}

#[test]
fn users_folders_requirements_and_forwarded_ports() -> Result<()> {
    let git_port = free_port()?;
    let Some(d) =
        DockerStack::start(&["--host-tcp-port", &git_port.to_string(), "--disk-mb", "512"])?
    else {
        return Ok(());
    };
    image("build-base")?;
    dev_image()?;
    let api = d.stack.api(Duration::from_secs(30))?;
    api.state.lifecycle.set_allow_http_repos(true);
    let key = d
        .stack
        .rt
        .block_on(d.stack.store.create_api_key(&d.owner.id, "cli"))?
        .secret
        .expose()
        .to_owned();
    let call = |method: &str, path: &str, body: Option<Value>| {
        d.stack.call(&api, method, path, Some(&key), body)
    };
    let web = free_port()?;
    let git = GitServer::start(git_port)?;
    let repo = git.repository(
        "settings",
        &[(".devcontainer/devcontainer.json", &settings(web))],
    )?;

    // The CLI's create on a terminal: the file's report, then how to log in.
    let home = TempDir::new()?;
    let cli = build_bin("warren-cli", "warren", Profile::Debug)?;
    let tmux = Tmux::new();
    let script = format!(
        "export HOME={} WARREN_URL={} WARREN_API_KEY={key}; {} create --repo {repo}; \
         echo exit=$?; sleep 600",
        home.path().display(),
        api.base,
        cli.display()
    );
    tmux.start("create", 120, 40, &["sh".into(), "-c".into(), script])?;
    let mut screen = String::new();
    wait_until(Duration::from_secs(150), || {
        screen = tmux.screen("create").unwrap_or_default();
        screen.contains("exit=")
    });
    println!("{screen}");
    ensure!(screen.contains("exit=0"), "{screen}");
    for what in [
        "devcontainer: following .devcontainer/devcontainer.json",
        "devcontainer: workspaceFolder /workspaces/settings: the workspace is there too",
        "devcontainer: limits from hostRequirements: cpus 1, memory 1536 MiB",
        "devcontainer: sessions run as dev (uid 1234)",
        &format!("devcontainer: forwardPorts {web} (Web)"),
        "devcontainer: some forwardPorts ignored (",
        "devcontainer: starting the sandbox and cloning settings",
        "devcontainer: postCreateCommand running",
        "devcontainer: postCreateCommand output:",
        "  | /workspaces/settings",
        "devcontainer: postCreateCommand done",
        "devcontainer: postStartCommand done",
    ] {
        ensure!(screen.contains(what), "no {what:?} on the screen");
    }
    let id = screen
        .lines()
        .find_map(|l| l.strip_prefix("sandbox "))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no sandbox line")?
        .to_owned();

    // Sessions run as the file's user and start in its folder, which is the
    // workspace.
    let c = d
        .client
        .clone()
        .with_target(Target::new("127.0.0.1", d.stack.ssh_port, id.clone()));
    let out = c
        .exec("id -un; pwd; cat who where; test -e /workspace/who && echo same")
        .run()?
        .success()?;
    ensure!(
        out.stdout_trimmed() == "dev\n/workspaces/settings\ndev\n/workspaces/settings\nsame",
        "{out}"
    );

    // hostRequirements are the limits where the create named none: the API and the
    // container's config say 1536 MiB.
    let shown = call("GET", &format!("/v1/sandboxes/{id}"), None)?;
    ensure!(shown.json()["memory_mb"] == 1536, "{shown:?}");
    let memory = docker_ok(&[
        "inspect",
        "--format",
        "{{.HostConfig.Memory}}",
        &format!("warren-{id}"),
    ])?;
    ensure!(memory.trim() == (1536u64 << 20).to_string(), "{memory}");

    // `warren config-ssh` writes the forward; real ssh opens it.
    let config = home.path().join("config");
    let wrote = Command::new(&cli)
        .args(["config-ssh", "--ssh-config"])
        .arg(&config)
        .env("HOME", home.path())
        .env("WARREN_URL", &api.base)
        .env("WARREN_API_KEY", &key)
        .output()?;
    ensure!(wrote.status.success(), "config-ssh: {wrote:?}");
    let text = std::fs::read_to_string(&config)?;
    let forward = format!("LocalForward 127.0.0.1:{web} 127.0.0.1:{web}");
    ensure!(text.contains(&forward), "{text}");
    ensure!(!text.contains("5432"), "{text}");
    let tunnel = ChildGuard::spawn(
        Command::new("ssh")
            .arg("-F")
            .arg(&config)
            .arg("-i")
            .arg(c.key_path())
            .args(FORWARDING)
            .arg(&id)
            .stdin(Stdio::null()),
    )?;
    let mut page = String::new();
    let reached = wait_until(Duration::from_secs(30), || {
        page = http_get(web).unwrap_or_default();
        page.contains("who")
    });
    ensure!(reached, "the forwarded port answered {page:?}");
    drop(tunnel);

    // The API's ssh-config has the line too, and `warren ssh` opens the forward
    // by itself (its own options after `--`).
    let block = call("GET", &format!("/v1/sandboxes/{id}/ssh-config"), None)?;
    ensure!(block.text.contains(&forward), "{block:?}");
    let key_path = c.key_path().display().to_string();
    let _session = ChildGuard::spawn(
        Command::new(&cli)
            .args(["ssh", &id, "--", "-i", &key_path])
            .args(FORWARDING)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .env("HOME", home.path())
            .env("WARREN_URL", &api.base)
            .env("WARREN_API_KEY", &key)
            .stdin(Stdio::null()),
    )?;
    page.clear();
    let reached = wait_until(Duration::from_secs(30), || {
        page = http_get(web).unwrap_or_default();
        page.contains("who")
    });
    ensure!(reached, "through `warren ssh` the port answered {page:?}");

    // A user the image lacks refuses the create; one of uid 0 is refused and the
    // sandbox's own user is used; host requirements beyond the runner refuse it.
    git.repository(
        "ghost",
        &[(
            ".devcontainer.json",
            &format!(r#"{{"image": "{DEV_IMAGE}", "remoteUser": "ghost"}}"#),
        )],
    )?;
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": git.url("ghost")})),
    )?;
    ensure!(
        made.status == 422
            && made
                .text
                .contains(r#"remoteUser \"ghost\" is not an account of the image"#),
        "{made:?}"
    );
    git.repository(
        "toor",
        &[(
            ".devcontainer.json",
            &format!(r#"{{"image": "{DEV_IMAGE}", "containerUser": "toor"}}"#),
        )],
    )?;
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": git.url("toor")})),
    )?;
    ensure!(made.status == 201, "{made:?}");
    let toor = made.json()["id"].as_str().context("id")?.to_owned();
    let reasons = events(&d, &api, &key, &toor)?;
    ensure!(
        reasons
            .iter()
            .any(|r| r.contains("containerUser refused: \"toor\" is uid or gid 0")),
        "{reasons:#?}"
    );
    let t = d
        .client
        .clone()
        .with_target(Target::new("127.0.0.1", d.stack.ssh_port, toor));
    let out = t.exec("id -u").run()?.success()?;
    ensure!(out.stdout_trimmed() != "0", "{out}");
    // A limit the create names wins over the file's, which is noted.
    git.repository(
        "named",
        &[(
            ".devcontainer.json",
            r#"{"image": "warren-base:latest", "hostRequirements": {"memory": "2gb"}}"#,
        )],
    )?;
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": git.url("named"), "memory_mb": 512})),
    )?;
    ensure!(
        made.status == 201 && made.json()["memory_mb"] == 512,
        "{made:?}"
    );
    let named = made.json()["id"].as_str().context("id")?.to_owned();
    let reasons = events(&d, &api, &key, &named)?;
    ensure!(
        reasons.iter().any(|r| r.contains(
            "hostRequirements asks for 2048 MiB of memory, the create gave 512 MiB: create it \
             with --memory-mb 2048"
        )),
        "{reasons:#?}"
    );
    // `cpus: 0` would be no CPU limit at all to the engine: ignored, saying so.
    git.repository(
        "nocpu",
        &[(
            ".devcontainer.json",
            r#"{"image": "warren-base:latest", "hostRequirements": {"cpus": 0}}"#,
        )],
    )?;
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": git.url("nocpu")})),
    )?;
    ensure!(made.status == 201, "{made:?}");
    let nocpu = made.json()["id"].as_str().context("id")?.to_owned();
    let nano = docker_ok(&[
        "inspect",
        "--format",
        "{{.HostConfig.NanoCpus}}",
        &format!("warren-{nocpu}"),
    ])?;
    ensure!(nano.trim() == "1000000000", "NanoCpus {nano}");
    let reasons = events(&d, &api, &key, &nocpu)?;
    ensure!(
        reasons
            .iter()
            .any(|r| r.contains("hostRequirements.cpus ignored: 0 is not a number of CPUs")),
        "{reasons:#?}"
    );
    git.repository(
        "huge",
        &[(
            ".devcontainer.json",
            r#"{"image": "warren-base:latest", "hostRequirements": {"cpus": 4096}}"#,
        )],
    )?;
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": git.url("huge")})),
    )?;
    ensure!(
        made.status == 422
            && made
                .text
                .contains("hostRequirements asks for 4096 CPUs; this runner allows"),
        "{made:?}"
    );
    // hostRequirements within what one sandbox may have but more than the runner
    // has free (the sandboxes above take some of it) is refused like a create that
    // names it, and nothing of it is left.
    let capacity = match d.control(warren_runner::protocol::Request::Capacity)? {
        warren_runner::protocol::Response::Capacity(capacity) => capacity,
        other => anyhow::bail!("capacity: {other:?}"),
    };
    git.repository(
        "greedy",
        &[(
            ".devcontainer.json",
            &format!(
                r#"{{"image": "warren-base:latest", "hostRequirements": {{"memory": "{}mb"}}}}"#,
                capacity.memory_mb
            ),
        )],
    )?;
    let listed = || -> Result<Vec<Value>> {
        let all = call("GET", "/v1/sandboxes?include_deleted=true", None)?;
        Ok(all.json()["sandboxes"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    };
    let before = listed()?.len();
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": git.url("greedy")})),
    )?;
    ensure!(
        made.status == 503 && made.text.contains("no_capacity"),
        "{made:?}"
    );
    let all = listed()?;
    ensure!(all.len() == before + 1, "{all:#?}");
    let greedy = all
        .iter()
        .find(|s| {
            s["repo"]
                .as_str()
                .is_some_and(|r| r.ends_with("/greedy.git"))
        })
        .with_context(|| format!("the refused create's row in {all:#?}"))?;
    ensure!(greedy["state"] == "deleted", "{greedy:#?}");
    let id = greedy["id"].as_str().context("id")?;
    let left = docker_ok(&["ps", "-aq", "--filter", &format!("name=warren-{id}")])?;
    ensure!(left.trim().is_empty(), "its container is left: {left}");

    // A gateway that stops mid-create (a restart during a `wait: false` create)
    // leaves the row `creating` and the runner's container: the reconciler fails
    // it, saying so, and removes the container, once no create can still be under
    // way; until then a delete is refused.
    let orphan = warren_keys::SandboxId::generate();
    let row = warren_tests::stack::sandbox_row(&orphan, &d.runner, &d.owner);
    d.stack.rt.block_on(d.stack.store.create_sandbox(&row))?;
    let made = d.control(warren_runner::protocol::Request::Create {
        sandbox: orphan.clone(),
        token_key: d.stack.verifier.clone(),
        authorized_keys: vec![],
        spec: warren_runner::protocol::SandboxSpec {
            image: Some("warren-busybox:latest".into()),
            ..Default::default()
        },
    })?;
    ensure!(made == warren_runner::protocol::Response::Ok, "{made:?}");
    let container = format!("name=warren-{orphan}");
    ensure!(!docker_ok(&["ps", "-aq", "--filter", &container])?.is_empty());
    let path = format!("/v1/sandboxes/{orphan}");
    let refused = call("DELETE", &path, None)?;
    ensure!(refused.status == 409, "{refused:?}");
    let lifecycle = &api.state.lifecycle;
    lifecycle.set_abandoned_create_after(Duration::ZERO);
    std::thread::sleep(Duration::from_millis(2100));
    d.stack
        .rt
        .block_on(warren_gateway::lifecycle::reconcile_once(lifecycle));
    let shown = call("GET", &path, None)?;
    ensure!(shown.json()["state"] == "deleted", "{shown:?}");
    let reasons = events(&d, &api, &key, orphan.as_str())?;
    ensure!(
        reasons
            .iter()
            .any(|r| r == "create failed: it never finished (the gateway running it stopped)"),
        "{reasons:#?}"
    );
    let left = docker_ok(&["ps", "-aq", "--filter", &container])?;
    ensure!(
        left.is_empty(),
        "the abandoned create's container is left: {left}"
    );
    Ok(())
}

/// The reasons of a sandbox's events.
fn events(
    d: &DockerStack,
    api: &warren_tests::stack::Api,
    key: &str,
    id: &str,
) -> Result<Vec<String>> {
    let reply = d.stack.call(
        api,
        "GET",
        &format!("/v1/sandboxes/{id}/events"),
        Some(key),
        None,
    )?;
    ensure!(reply.status == 200, "events: {reply:?}");
    Ok(reply.json()["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect())
}

/// `GET /` on 127.0.0.1:`port`, the whole answer.
fn http_get(port: u16) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}
