//! `warren-gateway serve` as an operator runs it, for the tests of a gateway
//! restart: its data directory set up with the operator's commands (`add-user`,
//! `add-ssh-key`, `join-token`), one process-backend `warren-runner` joined to it,
//! and a sandbox made through the HTTP API. The gateway can be killed and started
//! again on the same data directory and ports.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::util::free_port;
use crate::{ChildGuard, Client, Target, bin_path};

fn gateway_cmd(data: &Path) -> Command {
    let mut cmd = Command::new(bin_path("warren-gateway"));
    cmd.arg("--data-dir").arg(data).stdin(Stdio::null());
    cmd
}

/// What `cmd` printed on stdout; an error with its stderr when it failed.
pub(super) fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `--token` and `--fingerprint` a `warren-gateway join-token` command prints.
pub(super) fn join_token(cmd: &mut Command) -> Result<(String, String)> {
    let join = output_of(cmd)?;
    let words: Vec<&str> = join.split_whitespace().collect();
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .map(|s| (*s).to_owned())
            .with_context(|| format!("no {flag} in {join}"))
    };
    Ok((after("--token")?, after("--fingerprint")?))
}

/// `warren-gateway serve` on `data`, listening on `ports` (SSH, runners, HTTP).
fn serve(data: &Path, ports: [u16; 3]) -> Result<ChildGuard> {
    ChildGuard::spawn(
        gateway_cmd(data)
            .args(["serve", "--ssh-listen", &format!("127.0.0.1:{}", ports[0])])
            .args(["--runner-listen", &format!("127.0.0.1:{}", ports[1])])
            .args(["--http-listen", &format!("127.0.0.1:{}", ports[2])])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// Retries `ssh … echo ok` until it works or `limit` passes; returns how long it took.
pub fn ssh_works_within(c: &Client, limit: Duration) -> Result<Duration> {
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
pub struct ServedStack {
    pub data: tempfile::TempDir,
    _runner_data: tempfile::TempDir,
    pub ports: [u16; 3],
    pub gateway: ChildGuard,
    _runner: ChildGuard,
    pub client: Client,
    pub api_key: String,
    pub sandbox: String,
}

impl ServedStack {
    /// Kills the gateway outright (its sessions end with it).
    pub fn kill_gateway(&mut self) {
        self.gateway.kill(Duration::ZERO);
    }

    /// Starts the gateway again on the same data directory and ports.
    pub fn serve_gateway(&mut self) -> Result<()> {
        self.gateway = serve(self.data.path(), self.ports)?;
        Ok(())
    }

    /// The HTTP API's address (`http://127.0.0.1:PORT`).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[2])
    }

    /// Kills the gateway outright, checks that no session gets through, and starts
    /// it again on the same data and ports.
    pub fn restart_gateway(&mut self) -> Result<()> {
        self.kill_gateway();
        let out = self
            .client
            .exec("true")
            .timeout(Duration::from_secs(15))
            .run()?;
        ensure!(!out.status.success(), "a session without a gateway:\n{out}");
        self.serve_gateway()
    }
}

/// Sets the stack up and waits until `ssh` reaches its sandbox.
pub(super) fn start() -> Result<ServedStack> {
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
    let (token, fingerprint) = join_token(gateway_cmd(data.path()).args([
        "join-token",
        "--gateway",
        &format!("127.0.0.1:{}", ports[1]),
    ]))?;

    let gateway = serve(data.path(), ports)?;
    std::thread::sleep(Duration::from_millis(500));
    output_of(
        Command::new(bin_path("warren-runner"))
            .args(["join", "--gateway", &format!("127.0.0.1:{}", ports[1])])
            .args(["--token", &token, "--fingerprint", &fingerprint])
            .args(["--name", "r1", "--data-dir"])
            .arg(runner_data.path()),
    )?;
    let runner = ChildGuard::spawn(
        Command::new(bin_path("warren-runner"))
            .args(["run", "--backend", "process", "--data-dir"])
            .arg(runner_data.path())
            .env("WARREN_AGENT_BIN", bin_path("warren-agent"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;

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
    Ok(ServedStack {
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
