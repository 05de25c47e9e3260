//! The Docker backend end to end: a gateway, a `warren-runner run --backend docker`
//! against the machine's real Docker engine, images built offline by `images/`, and
//! the real OpenSSH clients. In CI a missing engine is a failure, not a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use warren_runner::protocol::{Request, Response, SandboxSpec};
use warren_tests::stack::{DockerStack, docker, docker_ok, image};
use warren_tests::util::{self, free_port, wait_until};
use warren_tests::{Client, Cmd, scenarios};

const BASE: &str = "warren-base:latest";
const BUSYBOX: &str = "warren-busybox:latest";

/// `ssh -L` to a web server inside the sandbox (on its own loopback).
fn forward_to_sandbox_server(c: &Client, server: &str) -> Result<()> {
    let bg = c.exec(server).spawn()?;
    let port = free_port()?;
    let spec = format!("{port}:127.0.0.1:8000");
    let ssh = c
        .ssh(&["-N", "-o", "ExitOnForwardFailure=yes", "-L", &spec], "")
        .spawn()?;
    let mut body = String::new();
    let ok = wait_until(Duration::from_secs(20), || {
        let Ok(out) = Cmd::new("curl")
            .args(["-sf", "--max-time", "3"])
            .arg(format!("http://127.0.0.1:{port}/hello.txt"))
            .run()
        else {
            return false;
        };
        body = out.stdout_trimmed().to_owned();
        out.code() == Some(0)
    });
    let _ = ssh.kill();
    let _ = bg.kill();
    ensure!(
        ok && body == "hello",
        "nothing came through -L (got {body:?})"
    );
    Ok(())
}

/// `ssh -R`: a port opened inside the sandbox reaches an echo server on the client's
/// side; `connect` is the image's way to talk TCP to `127.0.0.1:$PORT`.
fn remote_forward_into_sandbox(c: &Client, connect: &str) -> Result<()> {
    let echo = util::EchoServer::start()?;
    let port = 20000 + (std::process::id() % 20000) as u16;
    let spec = format!("127.0.0.1:{port}:127.0.0.1:{}", echo.port());
    let command = format!("sleep 1; export PORT={port}; {connect}");
    let out = c
        .ssh(&["-o", "ExitOnForwardFailure=yes", "-R", &spec], &command)
        .timeout(Duration::from_secs(60))
        .run()?;
    ensure!(
        out.stdout_str().contains("through-R"),
        "nothing came back through -R:\n{out}"
    );
    Ok(())
}

/// Every client scenario a user runs, through the gateway into a sandbox of `image`.
fn every_scenario(image: &str) -> Result<()> {
    every_scenario_in(image, false)
}

/// … in a sandbox created cold, or claimed from the warm pool.
fn every_scenario_in(image: &str, pooled: bool) -> Result<()> {
    let pool = format!("{image}=1");
    let args: &[&str] = if pooled { &["--pool", &pool] } else { &[] };
    let Some(d) = DockerStack::start(args)? else {
        return Ok(());
    };
    if image == BASE {
        crate::image("build-base")?;
    }
    if pooled {
        d.wait_for_pool(1, "before the create")?;
    }
    let busybox = image == BUSYBOX;
    // With `forward_agent`: the `-A` step below forwards.
    let (id, c) = d.sandbox_forwarding(
        true,
        SandboxSpec {
            image: Some(image.into()),
            ..SandboxSpec::default()
        },
    )?;
    ensure!(
        d.claimed(&id)? == pooled,
        "claimed from the pool: {}",
        !pooled
    );
    let dir = "/workspace";
    let step = |name: &str, r: Result<()>| r.with_context(|| format!("{image}: {name}"));
    step("PTY shell", scenarios::pty_shell(&c))?;
    step("PTY exec", scenarios::pty_exec(&c))?;
    step("exit codes", scenarios::exec_exit_codes(&c))?;
    step("exit signal", scenarios::exit_signal(&c))?;
    step("stdout/stderr", scenarios::stdout_stderr_separation(&c))?;
    step("binary stdin", scenarios::binary_stdin_roundtrip(&c))?;
    step("tar", scenarios::tar_roundtrip(&c, dir))?;
    step("scp 100 MB", scenarios::scp_both_ways(&c, dir, 100 << 20))?;
    step("sftp 100 MB", scenarios::sftp_both_ways(&c, dir, 100 << 20))?;
    step("sftp batch", scenarios::sftp_batch_ops(&c, dir))?;
    step("scp -p", scenarios::scp_preserves_mtime_and_mode(&c, dir))?;
    // rsync needs rsync on both ends: the busybox image has none.
    if !busybox {
        step("rsync", scenarios::rsync_both_ways(&c, dir))?;
    }
    let (server, connect) = if busybox {
        (
            "cd /workspace && echo hello > hello.txt && exec httpd -f -p 127.0.0.1:8000",
            "(printf through-R; sleep 2) | timeout 5 nc 127.0.0.1 $PORT",
        )
    } else {
        (
            "cd /workspace && echo hello > hello.txt && exec python3 -m http.server -b 127.0.0.1 8000",
            "python3 -c \"import socket,os; s=socket.create_connection(('127.0.0.1',int(os.environ['PORT']))); s.sendall(b'through-R'); s.shutdown(1); print(s.recv(64).decode())\"",
        )
    };
    step("-L", forward_to_sandbox_server(&c, server))?;
    step("-R", remote_forward_into_sandbox(&c, connect))?;
    // The busybox image has no ssh-add: there the forwarded socket must be there.
    step("-A", scenarios::agent_forwarding_checked(&c, !busybox))?;
    step("X11 refused", scenarios::x11_refused(&c))?;
    step("keepalive", scenarios::keepalive(&c))?;
    // VS Code's `ssh -T host bash` install sequence; busybox has only `sh`.
    if !busybox {
        step(
            "ssh -T bash, nohup in the background",
            scenarios::background_survives_channel_close(&c, dir),
        )?;
    }
    let out = c.exec("id -u; pwd").run()?.success()?;
    ensure!(
        out.stdout_str() == "1000\n/workspace\n",
        "{image}: sessions should run as uid 1000 in /workspace:\n{out}"
    );
    Ok(())
}

#[test]
fn every_client_scenario_works_in_a_busybox_sandbox() -> Result<()> {
    every_scenario(BUSYBOX)
}

#[test]
fn every_client_scenario_works_in_a_base_sandbox() -> Result<()> {
    every_scenario(BASE)
}

#[test]
fn every_client_scenario_works_in_a_base_sandbox_from_the_pool() -> Result<()> {
    every_scenario_in(BASE, true)
}

#[test]
fn containers_are_hardened() -> Result<()> {
    let Some(d) = DockerStack::start(&[])? else {
        return Ok(());
    };
    let (id, c) = d.sandbox(SandboxSpec {
        image: Some(BUSYBOX.into()),
        memory_mb: Some(256),
        pids_limit: Some(128),
        ..SandboxSpec::default()
    })?;
    let name = format!("warren-{id}");
    let inspect = docker_ok(&[
        "inspect",
        "--format",
        "{{.HostConfig.Privileged}}|{{.HostConfig.CapDrop}}|{{.HostConfig.CapAdd}}|\
         {{.HostConfig.SecurityOpt}}|{{.HostConfig.PidsLimit}}|{{.HostConfig.Memory}}|\
         {{.HostConfig.MemorySwap}}|{{.HostConfig.NetworkMode}}|{{.HostConfig.Ulimits}}|\
         {{range .Mounts}}{{.Source}}->{{.Destination}};{{end}}",
        &name,
    ])?;
    let fields: Vec<&str> = inspect.split('|').collect();
    ensure!(fields[0] == "false", "privileged: {inspect}");
    ensure!(fields[1] == "[ALL]", "cap drop: {inspect}");
    ensure!(
        fields[2] == "[CHOWN SETUID SETGID KILL]",
        "cap add: {inspect}"
    );
    ensure!(fields[3].contains("no-new-privileges"), "{inspect}");
    ensure!(
        !fields[3].contains("seccomp"),
        "the default seccomp profile must stay: {inspect}"
    );
    ensure!(fields[4] == "128", "pids: {inspect}");
    ensure!(
        fields[5] == (256u64 << 20).to_string() && fields[5] == fields[6],
        "memory: {inspect}"
    );
    // Its own network: named after it, or after the spare it was made on; no other
    // container on it.
    ensure!(fields[7].starts_with("warren-sbx-"), "network: {inspect}");
    let members = docker_ok(&[
        "network",
        "inspect",
        "--format",
        "{{range .Containers}}{{.Name}} {{end}}",
        fields[7],
    ])?;
    ensure!(
        members.trim() == name,
        "network {} holds {members}",
        fields[7]
    );
    ensure!(fields[8].contains("nofile"), "ulimits: {inspect}");
    ensure!(
        !inspect.contains("docker.sock"),
        "the Docker socket is mounted: {inspect}"
    );
    ensure!(
        inspect.contains("->/workspace"),
        "no workspace volume: {inspect}"
    );
    let ports = docker_ok(&["port", &name])?;
    ensure!(ports.is_empty(), "published ports: {ports}");

    let status = c.exec("cat /proc/self/status").run()?.success()?;
    let field = |key: &str| {
        status
            .stdout_str()
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    ensure!(field("CapEff:") == "0000000000000000", "CapEff:\n{status}");
    ensure!(field("CapPrm:") == "0000000000000000", "CapPrm:\n{status}");
    ensure!(field("NoNewPrivs:") == "1", "NoNewPrivs:\n{status}");
    ensure!(field("Seccomp:") == "2", "seccomp filter:\n{status}");
    ensure!(field("Uid:").starts_with("1000"), "uid:\n{status}");
    // The agent's own files are not the user's to read.
    let out = c.exec("cat /.warren/run/host_key").run()?;
    ensure!(
        out.code() != Some(0),
        "the user read the agent's host key:\n{out}"
    );
    Ok(())
}

/// Container root plays the attacker: it plants links at every name the runner
/// opens in the run directory it shares with the container (`/.warren/run`). The
/// runner's agent connections must not reach the host's Docker socket, its markers
/// must not come back as host files through lifecycle reasons, and nothing it reads
/// may leak what a link points at.
#[test]
fn container_root_cannot_turn_the_runner_against_the_host() -> Result<()> {
    let Some(d) = DockerStack::start(&[])? else {
        return Ok(());
    };
    let (id, c) = d.sandbox(SandboxSpec {
        image: Some(BUSYBOX.into()),
        ..SandboxSpec::default()
    })?;
    let name = format!("warren-{id}");
    let key_file = d.runner.data.path().join("runner_key");
    let key = key_file.to_string_lossy().into_owned();
    // As root in the container: the agent socket becomes a link to the host's
    // Docker socket, and every file the runner reads a link to its private key.
    let plant = format!(
        "cd /.warren/run && ln -s /var/run/docker.sock x && mv -f x agent.sock && \
         for f in user activity stopped-by-runner deleting; do rm -f $f; ln -s {key} $f; done && \
         mkdir -p ../.runner 2>/dev/null; ls -la"
    );
    docker_ok(&["exec", "-u", "0", &name, "sh", "-c", &plant])?;

    // A jump-mode channel to the sandbox: the runner connects it to the agent
    // socket. Through the planted link it would be Docker's API.
    let out = c
        .ssh(&["-W", &format!("{id}:22")], "")
        .stdin(b"GET /version HTTP/1.0\r\n\r\n".to_vec())
        .timeout(Duration::from_secs(30))
        .run()?;
    ensure!(
        !out.stdout_str().contains("ApiVersion") && !out.stdout_str().contains("HTTP/1."),
        "container root reached the host's Docker API through the runner:\n{out}"
    );
    // A user session (relay mode) fails cleanly instead.
    let out = c.exec("true").run()?;
    ensure!(out.code() != Some(0), "a session reached something:\n{out}");

    // A stop writes the runner's own marker, which the container cannot see or
    // replace; the reason reported is the runner's, never a host file's contents.
    ensure!(
        d.control(Request::Stop {
            sandbox: id.clone()
        })? == Response::Ok
    );
    let status = d.status(&id)?.context("the sandbox is not listed")?;
    let secret = std::fs::read_to_string(&key_file)?;
    let reason = status.stopped_reason.clone().unwrap_or_default();
    ensure!(
        !reason.contains("PRIVATE KEY") && !secret.contains(reason.trim()) || reason.is_empty(),
        "a host file came back as the stop reason: {status:?}"
    );
    // The planted `deleting` link did not make the runner forget the sandbox.
    ensure!(!status.running, "{status:?}");
    // Starting it again runs the agent over what root left in its own container
    // (which may break that sandbox, and only it); the runner's key is untouched and
    // the runner serves other sandboxes as before.
    let restart = Request::Create {
        sandbox: id.clone(),
        token_key: d.stack.verifier.clone(),
        authorized_keys: vec![],
        spec: SandboxSpec::default(),
    };
    let _ = d.control(restart)?;
    ensure!(
        std::fs::read_to_string(&key_file)? == secret,
        "the runner's key changed"
    );
    let (_, other) = d.sandbox(SandboxSpec {
        image: Some(BUSYBOX.into()),
        ..SandboxSpec::default()
    })?;
    let out = other.exec("echo fine").run()?.success()?;
    ensure!(out.stdout_trimmed() == "fine", "{out}");
    Ok(())
}

/// An image whose `USER` is uid 0 under another name gives no root session: the
/// agent falls back to the automatic sandbox user.
#[test]
fn an_image_user_with_uid_0_under_another_name_gives_no_root_session() -> Result<()> {
    let Some(d) = DockerStack::start(&[])? else {
        return Ok(());
    };
    let image = "warren-test-toor:latest";
    let tmp = format!("warren-toor-{}", std::process::id());
    let _ = docker(&["rm", "-f", &tmp]);
    docker_ok(&[
        "run",
        "--name",
        &tmp,
        BUSYBOX,
        "sh",
        "-c",
        // Before root, so that uid 0's first name is toor.
        "{ echo toor:x:0:0::/root:/bin/sh; cat /etc/passwd; } > /tmp/p && cat /tmp/p > /etc/passwd",
    ])?;
    docker_ok(&["commit", "--change", "USER toor", &tmp, image])?;
    let _ = docker(&["rm", "-f", &tmp]);
    let (_, c) = d.sandbox(SandboxSpec {
        image: Some(image.into()),
        ..SandboxSpec::default()
    })?;
    let out = c.exec("id -u; id -g").run()?.success()?;
    ensure!(
        !out.stdout_str().lines().any(|l| l.trim() == "0"),
        "a session ran with uid or gid 0:\n{out}"
    );
    let status = c.exec("grep CapEff /proc/self/status").run()?.success()?;
    ensure!(
        status.stdout_str().contains("0000000000000000"),
        "the session kept capabilities:\n{status}"
    );
    Ok(())
}
