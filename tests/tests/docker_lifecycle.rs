//! The Docker backend over a sandbox's life: isolation from other sandboxes and
//! memory limits, the workspace across stop, start and delete, a runner restart,
//! the idle reaper, a cloned repository, and the `none` network policy. A gateway,
//! a `warren-runner run --backend docker` against the machine's real Docker engine,
//! and the real OpenSSH clients. In CI a missing engine is a failure, not a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use warren_keys::SandboxId;
use warren_runner::protocol::{NetworkPolicy, RepoSpec, Request, Response, SandboxSpec, Secret};
use warren_tests::stack::{DockerStack, docker, docker_host_ip, docker_ok, image, network_of};
use warren_tests::util::{free_port, wait_until};
use warren_tests::{ChildGuard, Cmd};

const BASE: &str = "warren-base:latest";
const BUSYBOX: &str = "warren-busybox:latest";

fn base_spec() -> SandboxSpec {
    SandboxSpec {
        image: Some(BASE.into()),
        ..SandboxSpec::default()
    }
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
    let _daemon = ChildGuard::spawn(
        std::process::Command::new("git")
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
            .stderr(std::process::Stdio::null()),
    )?;
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
