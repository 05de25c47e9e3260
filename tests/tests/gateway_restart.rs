//! A gateway restart as an operator does it: the real `warren-gateway serve` process
//! is killed and started again on the same data directory; the runner reconnects by
//! itself and `ssh <sandbox>@gateway` works again within seconds, through the front
//! door, with the sandbox made through the HTTP API before the restart; a
//! persistent session started before the restart is still there after it; and a
//! `warren mirror` started before it catches up by itself after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use warren_tests::util::{free_port, wait_until};
use warren_tests::{Client, Profile, Target, Tmux, bin_path, build_bin, persistent};

fn runner_bin() -> std::path::PathBuf {
    bin_path("warren-runner")
}

/// A child in its own process group, killed (group and all) on drop.
struct Proc(Child);

impl Proc {
    fn kill(&mut self) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn gateway_cmd(data: &Path) -> Command {
    let mut cmd = Command::new(bin_path("warren-gateway"));
    cmd.arg("--data-dir").arg(data).stdin(Stdio::null());
    cmd
}

fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn serve(data: &Path, ports: [u16; 3]) -> Result<Proc> {
    let child = gateway_cmd(data)
        .args(["serve", "--ssh-listen", &format!("127.0.0.1:{}", ports[0])])
        .args(["--runner-listen", &format!("127.0.0.1:{}", ports[1])])
        .args(["--http-listen", &format!("127.0.0.1:{}", ports[2])])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    Ok(Proc(child))
}

/// Retries `ssh … echo ok` until it works or `limit` passes; returns how long it took.
fn ssh_works_within(c: &Client, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let out = c.exec("echo ok").timeout(Duration::from_secs(15)).run()?;
        if out.status.success() && out.stdout_trimmed() == "ok" {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < limit,
            "no session within {limit:?}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A gateway process, a process-backend runner joined to it, and a sandbox made
/// through the HTTP API that `client` can log in to.
struct Restartable {
    data: tempfile::TempDir,
    _runner_data: tempfile::TempDir,
    ports: [u16; 3],
    gateway: Proc,
    _runner: Proc,
    client: Client,
    api_key: String,
    sandbox: String,
}

impl Restartable {
    /// Kills the gateway outright and starts it again on the same data and ports.
    fn restart_gateway(&mut self) -> Result<()> {
        self.gateway.kill();
        let out = self
            .client
            .exec("true")
            .timeout(Duration::from_secs(15))
            .run()?;
        ensure!(!out.status.success(), "a session without a gateway:\n{out}");
        self.gateway = serve(self.data.path(), self.ports)?;
        Ok(())
    }
}

fn start() -> Result<Restartable> {
    let data = tempfile::TempDir::new()?;
    let runner_data = tempfile::TempDir::new()?;
    let ports = [free_port()?, free_port()?, free_port()?];
    let client = Client::new(Target::new("127.0.0.1", ports[0], "x"))?;
    let public_key = data.path().join("alice.pub");
    std::fs::write(&public_key, client.public_key())?;

    // The operator's commands on the data directory.
    let added = output_of(gateway_cmd(data.path()).args(["add-user", "alice", "--admin"]))?;
    let api_key = added
        .split_whitespace()
        .find(|w| w.starts_with("wk_"))
        .context("no API key printed")?
        .to_owned();
    output_of(
        gateway_cmd(data.path())
            .args(["add-ssh-key", "alice"])
            .arg(&public_key),
    )?;
    let join = output_of(gateway_cmd(data.path()).args([
        "join-token",
        "--gateway",
        &format!("127.0.0.1:{}", ports[1]),
    ]))?;
    let words: Vec<&str> = join.split_whitespace().collect();
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .map(|s| (*s).to_owned())
            .with_context(|| format!("no {flag} in {join}"))
    };
    let (token, fingerprint) = (after("--token")?, after("--fingerprint")?);

    let gateway = serve(data.path(), ports)?;
    std::thread::sleep(Duration::from_millis(500));
    output_of(
        Command::new(runner_bin())
            .args(["join", "--gateway", &format!("127.0.0.1:{}", ports[1])])
            .args(["--token", &token, "--fingerprint", &fingerprint])
            .args(["--name", "r1", "--data-dir"])
            .arg(runner_data.path()),
    )?;
    let runner = Proc(
        Command::new(runner_bin())
            .args(["run", "--backend", "process", "--data-dir"])
            .arg(runner_data.path())
            .env("WARREN_AGENT_BIN", bin_path("warren-agent"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?,
    );

    // A sandbox through the HTTP API, once the runner is online.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/v1/sandboxes", ports[2]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let created: serde_json::Value = loop {
        let reply = rt.block_on(async {
            let r = http
                .post(&url)
                .bearer_auth(&api_key)
                .json(&serde_json::json!({}))
                .send()
                .await?;
            let status = r.status();
            anyhow::Ok((status, r.json::<serde_json::Value>().await?))
        });
        match reply {
            Ok((status, body)) if status.as_u16() == 201 => break body,
            other => ensure!(
                Instant::now() < deadline,
                "could not create a sandbox: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let id = created["id"].as_str().context("no id")?.to_owned();
    let client = client.with_target(Target::new("127.0.0.1", ports[0], &id));
    ssh_works_within(&client, Duration::from_secs(20))?;
    Ok(Restartable {
        data,
        _runner_data: runner_data,
        ports,
        gateway,
        _runner: runner,
        client,
        api_key,
        sandbox: id,
    })
}

#[test]
fn after_a_gateway_restart_runners_reconnect_and_sessions_work_within_seconds() -> Result<()> {
    let mut s = start()?;
    s.restart_gateway()?;
    let took = ssh_works_within(&s.client, Duration::from_secs(30))?;
    eprintln!("sessions worked again {took:?} after the gateway restarted");
    ensure!(
        took < Duration::from_secs(15),
        "the runner took {took:?} to come back"
    );
    Ok(())
}

/// The agent holds a persistent session's terminal, so it outlives the gateway: the
/// program keeps running while the gateway is down, and the same command re-attaches.
#[test]
fn a_persistent_session_survives_a_gateway_restart() -> Result<()> {
    let mut s = start()?;
    let tmux = Tmux::new();
    let rw = persistent::as_session(&s.client, "build");
    persistent::start_ticking(&tmux, "a", &rw)?;
    s.restart_gateway()?;
    // The client lost its connection with the gateway.
    persistent::wait_dead(&tmux, "a")?;
    let before = persistent::last_tick(&tmux.screen("a")?);
    ssh_works_within(&s.client, Duration::from_secs(30))?;
    persistent::reattach_sees_it_kept_running(&tmux, "b", &rw, before)
}

/// `warren mirror` as a person runs it, through the gateway's front door: the
/// gateway is killed under it, the sandbox changes while it is down, and the mirror
/// reconnects by itself once it is back, catches up, and follows live changes again.
#[test]
fn a_mirror_catches_up_by_itself_after_a_gateway_restart() -> Result<()> {
    let mut s = start()?;
    let workspace = s.client.exec("pwd").run()?.success()?.stdout_trimmed();
    let remote = Path::new(&workspace).join("m");
    std::fs::create_dir_all(&remote)?;
    // SFTP's mtimes are whole seconds: each rewrite below keeps the file's size
    // and second, which only the mirror's own bookkeeping can tell apart.
    let second = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let rewrite = |path: &Path, text: &str, mtime: std::time::SystemTime| {
        let mut file = std::fs::File::create(path)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.set_modified(mtime)
    };
    rewrite(&remote.join("a"), "one", second)?;
    let local = tempfile::TempDir::new()?;
    let events = local.path().join("events.jsonl");
    let mirrored = local.path().join("m");
    let mut mirror = Proc(
        Command::new(build_bin("warren-cli", "warren", Profile::Debug)?)
            .arg("mirror")
            .arg(format!("{}:{}", s.sandbox, remote.display()))
            .arg(&mirrored)
            .args(["--progress", "json"])
            .env("WARREN_URL", format!("http://127.0.0.1:{}", s.ports[2]))
            .env("WARREN_API_KEY", &s.api_key)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&events)?)
            .stderr(std::fs::File::create(local.path().join("stderr"))?)
            .process_group(0)
            .spawn()?,
    );
    let has = |name: &str, text: &str| {
        std::fs::read_to_string(mirrored.join(name)).is_ok_and(|t| t == text)
    };
    let shown = || {
        format!(
            "events:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&events).unwrap_or_default(),
            std::fs::read_to_string(local.path().join("stderr")).unwrap_or_default()
        )
    };
    ensure!(
        wait_until(Duration::from_secs(30), || has("a", "one")),
        "the first pull did not arrive\n{}",
        shown()
    );

    // The sandbox changes while the gateway is down (the process backend's files
    // are the host's): an edit (same size, same second) and a new file.
    s.gateway.kill();
    rewrite(&remote.join("a"), "uno", second)?;
    std::fs::write(remote.join("b"), "two")?;
    s.gateway = serve(s.data.path(), s.ports)?;
    ensure!(
        wait_until(Duration::from_secs(45), || has("a", "uno")
            && has("b", "two")),
        "the mirror did not catch up after the restart\n{}",
        shown()
    );
    // And it is live again: a new file and a delete made through the new gateway
    // arrive.
    s.client
        .exec(&format!(
            "echo three > {}/c && rm {}/b",
            remote.display(),
            remote.display()
        ))
        .run()?
        .success()?;
    ensure!(
        wait_until(Duration::from_secs(30), || {
            has("c", "three\n") && !mirrored.join("b").exists()
        }),
        "a change after the restart did not arrive\n{}",
        shown()
    );
    // A live rewrite that keeps the size and the second.
    let c = remote.join("c");
    let mtime = std::fs::metadata(&c)?.modified()?;
    rewrite(&c, "THREE\n", mtime)?;
    ensure!(
        wait_until(Duration::from_secs(30), || has("c", "THREE\n")),
        "a same-size rewrite in the same second did not arrive\n{}",
        shown()
    );
    ensure!(
        mirror.0.try_wait()?.is_none(),
        "the mirror exited\n{}",
        shown()
    );
    let log = std::fs::read_to_string(&events)?;
    ensure!(
        log.contains("\"state\":\"reconnecting\""),
        "the mirror never said it was reconnecting\n{}",
        shown()
    );
    mirror.kill();
    Ok(())
}
