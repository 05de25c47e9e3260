//! The Docker backend end to end: a gateway, a `warren-runner run --backend docker`
//! against the machine's real Docker engine, images built offline by `images/`, and
//! the real OpenSSH clients. In CI a missing engine is a failure, not a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::docker::{DockerStack, docker, docker_host_ip, docker_ok, image, network_of};
use warren_keys::SandboxId;
use warren_runner::protocol::{NetworkPolicy, RepoSpec, Request, Response, SandboxSpec, Secret};
use warren_tests::util::{self, free_port, wait_until};
use warren_tests::{Client, Cmd, scenarios};

const BASE: &str = "warren-base:latest";
const BUSYBOX: &str = "warren-busybox:latest";

fn base_spec() -> SandboxSpec {
    SandboxSpec {
        image: Some(BASE.into()),
        ..SandboxSpec::default()
    }
}

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

#[test]
fn sandboxes_cannot_reach_each_other_and_memory_limits_kill_only_the_process() -> Result<()> {
    let Some(d) = DockerStack::start(&[])? else {
        return Ok(());
    };
    image("build-base")?;
    let (a_id, a) = d.sandbox(base_spec())?;
    let (_, b) = d.sandbox(SandboxSpec {
        memory_mb: Some(128),
        ..base_spec()
    })?;
    let a_ip = docker_ok(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &format!("warren-{a_id}"),
    ])?;
    ensure!(!a_ip.is_empty(), "sandbox A has no address");
    let server = a
        .exec("cd /workspace && echo hi > x && exec python3 -m http.server 8000")
        .spawn()?;
    ensure!(
        wait_until(Duration::from_secs(20), || a
            .exec("curl -sf --max-time 2 http://127.0.0.1:8000/x")
            .run()
            .is_ok_and(|o| o.code() == Some(0))),
        "A's own server never answered"
    );
    let out = b
        .exec(&format!(
            "curl -s --max-time 5 http://{a_ip}:8000/x; echo rc=$?"
        ))
        .run()?;
    let _ = server.kill();
    ensure!(
        !out.stdout_str().contains("hi") && !out.stdout_str().contains("rc=0"),
        "sandbox B reached sandbox A at {a_ip}:\n{out}"
    );
    // The metadata address is dropped by the sandbox's own chain.
    let rules = Cmd::new("iptables").args(["-S"]).run()?.success()?;
    ensure!(
        rules.stdout_str().contains("-d 169.254.169.254/32 -j DROP"),
        "no metadata rule:\n{rules}"
    );

    // Over the memory limit: the kernel kills the process, the session says so, and
    // the sandbox carries on.
    let out = b
        .exec("python3 -c 'b = bytearray(512 * 1024 * 1024); print(len(b))'")
        .run()?;
    ensure!(
        out.code() != Some(0) && !out.stdout_str().contains("536870912"),
        "allocating past the limit succeeded:\n{out}"
    );
    let out = b.exec("echo alive").run()?.success()?;
    ensure!(out.stdout_trimmed() == "alive", "{out}");
    Ok(())
}

#[test]
fn workspace_survives_stop_and_start_and_delete_removes_everything() -> Result<()> {
    let Some(mut d) = DockerStack::start(&[])? else {
        return Ok(());
    };
    let (id, c) = d.sandbox(SandboxSpec {
        image: Some(BUSYBOX.into()),
        ..SandboxSpec::default()
    })?;
    c.exec("echo kept > /workspace/note; echo lost > /tmp/note")
        .run()?
        .success()?;
    ensure!(
        d.control(Request::Stop {
            sandbox: id.clone()
        })? == Response::Ok
    );
    let status = d
        .status(&id)?
        .context("the stopped sandbox is not listed")?;
    ensure!(
        !status.running && status.stopped_reason.is_none(),
        "{status:?}"
    );
    let out = c.exec("true").run()?;
    ensure!(
        out.code() == Some(255),
        "a stopped sandbox answered:\n{out}"
    );

    // A runner restart adopts what runs and keeps what is stopped.
    d.restart_runner()?;
    let restart = Request::Create {
        sandbox: id.clone(),
        token_key: d.stack.verifier.clone(),
        authorized_keys: vec![],
        spec: SandboxSpec::default(),
    };
    ensure!(d.control(restart)? == Response::Ok);
    let out = c.exec("cat /workspace/note").run()?.success()?;
    ensure!(out.stdout_trimmed() == "kept", "{out}");

    // The sandbox's disk and network are its own or a spare's: asked for by name.
    let name = format!("warren-{id}");
    let network = network_of(&id)?;
    let workspace = docker_ok(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{if eq .Destination \"/workspace\"}}{{.Source}}{{end}}{{end}}",
        &name,
    ])?;
    ensure!(
        network.starts_with("warren-sbx-") && workspace.contains("/.disks/sbx-"),
        "network {network:?}, workspace {workspace:?}"
    );
    ensure!(
        d.control(Request::Delete {
            sandbox: id.clone()
        })? == Response::Ok
    );
    ensure!(
        docker(&["inspect", &name])?.code() != Some(0),
        "container left"
    );
    ensure!(!std::path::Path::new(&workspace).exists(), "workspace left");
    ensure!(
        docker(&["network", "inspect", &network])?.code() != Some(0),
        "network left"
    );
    ensure!(d.status(&id)?.is_none(), "a deleted sandbox is listed");
    let out = d.control(Request::Stop { sandbox: id })?;
    ensure!(
        matches!(&out, Response::Error { message } if message.contains("unknown sandbox")),
        "{out:?}"
    );
    // A missing image is a clear error, and leaves nothing behind.
    let missing = SandboxId::generate();
    let out = d.control(Request::Create {
        sandbox: missing.clone(),
        token_key: d.stack.verifier.clone(),
        authorized_keys: vec![],
        spec: SandboxSpec {
            image: Some("warren-no-such-image:1".into()),
            ..SandboxSpec::default()
        },
    })?;
    ensure!(
        matches!(&out, Response::Refused { code, message }
            if code == "image_not_found" && message.contains("is not on this runner")),
        "{out:?}"
    );
    ensure!(docker(&["inspect", &format!("warren-{missing}")])?.code() != Some(0));
    Ok(())
}

#[test]
fn a_runner_restart_adopts_running_sandboxes() -> Result<()> {
    let Some(mut d) = DockerStack::start(&[])? else {
        return Ok(());
    };
    let (id, c) = d.sandbox(SandboxSpec {
        image: Some(BUSYBOX.into()),
        ..SandboxSpec::default()
    })?;
    let name = format!("warren-{id}");
    let before = docker_ok(&["inspect", "--format", "{{.Id}} {{.State.StartedAt}}", &name])?;
    // An orphan: objects of a sandbox whose delete never finished.
    let orphan = d.sandbox(SandboxSpec {
        image: Some(BUSYBOX.into()),
        ..SandboxSpec::default()
    })?;
    let markers = d
        .runner
        .listen_dir()
        .join(".runner")
        .join(orphan.0.as_str());
    std::fs::create_dir_all(&markers)?;
    std::fs::write(markers.join("deleting"), b"")?;
    d.restart_runner()?;
    let out = c.exec("echo adopted").run()?.success()?;
    ensure!(out.stdout_trimmed() == "adopted", "{out}");
    let after = docker_ok(&["inspect", "--format", "{{.Id}} {{.State.StartedAt}}", &name])?;
    ensure!(
        before == after,
        "the container was replaced or restarted: {before} → {after}"
    );
    ensure!(
        docker(&["inspect", &format!("warren-{}", orphan.0)])?.code() != Some(0),
        "the orphan survived the restart"
    );
    Ok(())
}

#[test]
fn the_idle_reaper_stops_idle_sandboxes_and_spares_busy_ones() -> Result<()> {
    let Some(d) = DockerStack::start(&["--reap-interval-s", "1"])? else {
        return Ok(());
    };
    let spec = SandboxSpec {
        image: Some(BUSYBOX.into()),
        idle_timeout_s: Some(8),
        ..SandboxSpec::default()
    };
    let (idle, idle_c) = d.sandbox(spec.clone())?;
    let (busy, busy_c) = d.sandbox(spec)?;
    // A connected client with nothing running must not keep the idle one awake.
    let connected = idle_c
        .ssh(&["-N", "-o", "ServerAliveInterval=1"], "")
        .spawn()?;
    // A long, silent command keeps the busy one awake.
    let long = busy_c.exec("sleep 40; echo finished").spawn()?;
    let stopped = wait_until(Duration::from_secs(40), || {
        d.status(&idle).ok().flatten().is_some_and(|s| !s.running)
    });
    let _ = connected.kill();
    ensure!(
        stopped,
        "the idle sandbox was never stopped:\n{}",
        d.runner_log()
    );
    let status = d.status(&idle)?.unwrap();
    ensure!(
        status.stopped_reason.as_deref() == Some("idle"),
        "{status:?}"
    );
    let out = long.wait_timeout(Duration::from_secs(60))?;
    ensure!(
        out.code() == Some(0) && out.stdout_trimmed() == "finished",
        "the long command was cut short:\n{out}"
    );
    ensure!(
        d.status(&busy)?.unwrap().running,
        "the busy sandbox was stopped"
    );
    Ok(())
}

#[test]
fn a_repository_is_cloned_onto_its_branch_refuses_unpinned_pushes_and_keeps_secrets_out_of_logs()
-> Result<()> {
    // The git server runs on the host, which sandboxes reach only on the ports the
    // operator allows.
    let port = free_port()?;
    let Some(mut d) = DockerStack::start(&["--host-tcp-port", &port.to_string()])? else {
        return Ok(());
    };
    image("build-base")?;
    // A real git server on the host, reachable from the sandbox's bridge.
    let scratch = tempfile::TempDir::new()?;
    let repo = scratch.path().join("project.git");
    let work = scratch.path().join("work");
    let git = |args: &[&str]| -> Result<()> {
        Cmd::new("git")
            .args(args.iter().copied())
            .run()?
            .success()?;
        Ok(())
    };
    git(&["init", "-q", "-b", "main", &work.to_string_lossy()])?;
    std::fs::write(work.join("README"), "hello from git\n")?;
    let w = work.to_string_lossy().into_owned();
    git(&["-C", &w, "add", "README"])?;
    git(&[
        "-C",
        &w,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@e",
        "commit",
        "-qm",
        "first",
    ])?;
    git(&["clone", "-q", "--bare", &w, &repo.to_string_lossy()])?;
    let daemon = std::process::Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            "--listen=0.0.0.0",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", scratch.path().display()))
        .arg(scratch.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let _daemon = KillOnDrop(daemon);
    let host_ip = docker_host_ip()?;
    let secret = "sk-warren-test-secret-3f9a1c";
    let mut spec = base_spec();
    spec.env.insert("ANTHROPIC_API_KEY".into(), secret.into());
    spec.repo = Some(RepoSpec {
        url: format!("git://{host_ip}:{port}/project.git"),
        branch: "warren/feature".into(),
        base: None,
        token: Some("ghp_warrentesttoken123".into()),
    });
    let (id, c) = d.sandbox(spec)?;
    let out = c
        .exec("cd /workspace && git branch --show-current && cat README && git config --list --show-origin")
        .run()?
        .success()?;
    ensure!(
        out.stdout_str()
            .starts_with("warren/feature\nhello from git\n"),
        "wrong checkout:\n{out}"
    );
    ensure!(
        !out.stdout_str().contains("ghp_"),
        "the token is in git config:\n{out}"
    );
    let out = c.exec("echo $ANTHROPIC_API_KEY").run()?.success()?;
    ensure!(
        out.stdout_trimmed() == secret,
        "the environment did not reach the session"
    );
    // A pull request's push goes only to the https repository the sandbox was made
    // from, from the runner (tests/tests/pulls.rs): a request without that URL, or
    // naming another transport, is refused and nothing reaches the remote.
    c.exec("cd /workspace && echo change > change.txt")
        .run()?
        .success()?;
    for remote_url in [None, Some(format!("git://{host_ip}:{port}/project.git"))] {
        let answer = d.control(Request::CommitAndPush {
            sandbox: id.clone(),
            message: "Change things".into(),
            branch: "warren/feature".into(),
            author_name: "alice".into(),
            author_email: "alice@example.test".into(),
            base: None,
            remote_url: remote_url.clone(),
            token: Some(Secret::new("ghp_warrentesttoken123")),
        })?;
        ensure!(
            matches!(&answer, Response::Refused { code, .. } if code == "no_repo"),
            "a push to {remote_url:?}: {answer:?}"
        );
    }
    let branches = Cmd::new("git")
        .arg("--git-dir")
        .arg(&repo)
        .args(["branch", "--list"])
        .run()?
        .success()?;
    ensure!(
        !branches.stdout_str().contains("warren/feature"),
        "the remote got a push: {branches}"
    );
    // The runner gives the create-time env back (a restarted gateway asks for it),
    // just that env, from the container, across a runner restart.
    d.restart_runner()?;
    match d.control(Request::Env {
        sandbox: id.clone(),
    })? {
        Response::Env { env } => {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
            ensure!(env == [("ANTHROPIC_API_KEY", secret)], "env: {env:?}");
        }
        other => bail!("env: {other:?}"),
    }
    // Nothing Warren logged holds a secret: the runner's log and the agent's.
    let logs = docker_ok(&["logs", &format!("warren-{id}")])? + &d.runner_log();
    ensure!(
        !logs.contains(secret) && !logs.contains("ghp_warrentesttoken123"),
        "a secret is in the logs"
    );
    let grep = Cmd::new("grep")
        .args(["-rl", "ghp_warrentesttoken123"])
        .arg(d.runner.data.path())
        .run()?;
    ensure!(
        grep.code() == Some(1),
        "the token is on the runner's disk:\n{grep}"
    );
    Ok(())
}

#[test]
fn a_network_policy_of_none_leaves_only_loopback() -> Result<()> {
    let Some(d) = DockerStack::start(&[])? else {
        return Ok(());
    };
    let (id, c) = d.sandbox(SandboxSpec {
        image: Some(BUSYBOX.into()),
        network: NetworkPolicy::None,
        read_only_root: true,
        ..SandboxSpec::default()
    })?;
    let out = c.exec("ls /sys/class/net").run()?.success()?;
    ensure!(out.stdout_trimmed() == "lo", "interfaces:\n{out}");
    let out = c
        .exec("touch /etc/x; echo rc=$?; touch /tmp/x /workspace/x && echo ok")
        .run()?;
    ensure!(
        out.stdout_str().contains("rc=1") && out.stdout_str().contains("ok"),
        "read-only root with writable /tmp and /workspace:\n{out}"
    );
    let mode = docker_ok(&[
        "inspect",
        "--format",
        "{{.HostConfig.NetworkMode}}",
        &format!("warren-{id}"),
    ])?;
    ensure!(mode == "none", "network mode {mode}");
    Ok(())
}

/// A child process killed (and reaped) when the test is done with it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
