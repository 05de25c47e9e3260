//! `warren up` as a user runs it: the gateway and a local runner in one process (the
//! gateway opens the local agents' sockets in process, no tunnel), SQLite in its
//! data directory, an admin whose API key it writes there. [`StackBuilder::up`]
//! starts the release `warren` binary (with the static agent on Docker, or
//! `--process-backend`), or the README's `scripts/up`; the benches of the one-machine
//! path and the newcomer's test use it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::StackBuilder;
use crate::util::free_port;
use crate::{ChildGuard, Client, Profile, Target, build_bin, workspace_root};

/// How long `up` may take to print its ssh line (the script's first run builds
/// release binaries and maybe the base image).
const READY_WITHIN: Duration = Duration::from_secs(1200);
/// A stop drains the warm pool: the time it may take.
const STOP_WITHIN: Duration = Duration::from_secs(600);

/// Which `warren up` to start, and how.
pub struct Up {
    /// `scripts/up` (which builds what it runs) instead of the release binary.
    pub script: bool,
    /// `--process-backend` (no Docker) instead of Docker sandboxes.
    pub process_backend: bool,
    /// `$HOME`: `up` registers the keys in its `.ssh` and saves the CLI's login there.
    pub home: PathBuf,
    pub data: PathBuf,
    /// SSH, HTTP and runners' ports on 127.0.0.1.
    pub ports: [u16; 3],
    /// More arguments for `warren up`.
    pub args: Vec<String>,
}

impl Up {
    /// The release binary on Docker in `home` and `data`, on free ports.
    pub fn new(home: &Path, data: &Path) -> Result<Up> {
        Ok(Up {
            script: false,
            process_backend: false,
            home: home.to_owned(),
            data: data.to_owned(),
            ports: [free_port()?, free_port()?, free_port()?],
            args: Vec::new(),
        })
    }
}

/// The HTTP API of an [`UpStack`], as the admin (cheap to clone into tasks).
#[derive(Clone)]
pub struct UpApi {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl UpApi {
    /// `POST /v1/sandboxes` with `body`; the new sandbox's id.
    pub async fn create(&self, body: &Value) -> Result<String> {
        let reply = self
            .http
            .post(format!("{}/v1/sandboxes", self.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await?;
        let status = reply.status();
        let text = reply.text().await?;
        ensure!(status.as_u16() == 201, "create: {status} {text}");
        let created: Value = serde_json::from_str(&text)?;
        Ok(created["id"].as_str().context("no id")?.to_owned())
    }

    /// Deletes every sandbox not deleted yet.
    pub async fn delete_all(&self) -> Result<()> {
        let list: Value = self
            .http
            .get(format!("{}/v1/sandboxes?limit=500", self.base))
            .bearer_auth(&self.key)
            .send()
            .await?
            .json()
            .await?;
        for sandbox in list["sandboxes"].as_array().into_iter().flatten() {
            if let Some(id) = sandbox["id"].as_str()
                && sandbox["state"] != "deleted"
            {
                self.http
                    .delete(format!("{}/v1/sandboxes/{id}", self.base))
                    .bearer_auth(&self.key)
                    .send()
                    .await?;
            }
        }
        Ok(())
    }
}

/// A running `warren up`. Dropped, it deletes its sandboxes through the API
/// (containers, disks, networks, firewall chains: nothing left behind on the host)
/// unless `keep`, then stops it (which drains the warm pool).
pub struct UpStack {
    child: ChildGuard,
    pub data: PathBuf,
    pub ports: [u16; 3],
    /// What `up` printed on stdout, its ssh line last.
    pub lines: Vec<String>,
    pub api: UpApi,
    pub rt: tokio::runtime::Runtime,
    /// Keep the sandboxes when dropped (a later `up` on the same data finds them).
    pub keep: bool,
    /// Where `up`'s stderr goes.
    pub log: PathBuf,
}

impl StackBuilder {
    /// `warren up` as `up` says; returns once it printed its ssh line. The
    /// builder's gateway options do not apply (`up` has its own flags).
    pub fn up(self, up: Up) -> Result<UpStack> {
        UpStack::start(up)
    }
}

impl UpStack {
    fn start(up: Up) -> Result<UpStack> {
        let mut cmd = if up.script {
            Command::new(workspace_root().join("scripts/up"))
        } else {
            let mut cmd = Command::new(build_bin("warren-cli", "warren", Profile::Release)?);
            let agent = if up.process_backend {
                build_bin("warren-agent", "warren-agent", Profile::Release)?
            } else {
                super::static_agent()?
            };
            cmd.arg("up").arg("--agent-bin").arg(agent);
            cmd
        };
        if up.process_backend {
            cmd.arg("--process-backend");
        }
        let [ssh, http, runners] = up.ports;
        let log = up.home.join("warren-up.log");
        cmd.args(&up.args)
            .args(["--ssh-listen", &format!("127.0.0.1:{ssh}")])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--runner-listen", &format!("127.0.0.1:{runners}")])
            .env("HOME", &up.home)
            .env("WARREN_DATA_DIR", &up.data)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .process_group(0);
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let child = ChildGuard::new(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut stack = UpStack {
            child,
            data: up.data.clone(),
            ports: up.ports,
            lines: Vec::new(),
            api: UpApi {
                base: format!("http://127.0.0.1:{http}"),
                key: String::new(),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(300))
                    .build()?,
            },
            rt,
            keep: false,
            log,
        };
        loop {
            let Ok(line) = rx.recv_timeout(READY_WITHIN) else {
                bail!(
                    "warren up printed no ssh line:\n{}\n{}",
                    stack.lines.join("\n"),
                    std::fs::read_to_string(&stack.log).unwrap_or_default()
                );
            };
            let done = line.starts_with("ssh ");
            stack.lines.push(line);
            if done {
                break;
            }
        }
        stack.api.key = std::fs::read_to_string(up.data.join("admin-api-key"))?
            .trim()
            .to_owned();
        Ok(stack)
    }

    /// The process (gateway, runner and API in one).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The ssh line `up` printed last.
    pub fn ssh_line(&self) -> &str {
        self.lines.last().map_or("", String::as_str)
    }

    /// `client`'s key (registered from `$HOME/.ssh`) aimed at `sandbox` through the
    /// gateway.
    pub fn client(&self, client: &Client, sandbox: &str) -> Client {
        client
            .clone()
            .with_target(Target::new("127.0.0.1", self.ports[0], sandbox))
    }

    /// The local runner's id (`<data>/runner/runner.json`).
    pub fn runner_id(&self) -> Result<String> {
        let identity: warren_runner::state::Identity = serde_json::from_slice(&std::fs::read(
            self.data
                .join("runner")
                .join(warren_runner::state::IDENTITY_FILE),
        )?)?;
        Ok(identity.runner_id)
    }

    /// The Docker warm pool's members ready to be claimed: containers still named
    /// after their slot whose agent has set up its user.
    pub fn pool_waiting(&self) -> Result<usize> {
        let out = super::docker_ok(&[
            "ps",
            "--filter",
            &format!("label=org.warren.runner={}", self.runner_id()?),
            "--filter",
            &format!("label={}", super::POOL_LABEL),
            "--format",
            "{{.Names}} {{.Label \"org.warren.sandbox\"}}",
        ])?;
        let run_dir = self.data.join("runner").join("sandboxes");
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(name, slot)| {
                *name == format!("warren-{slot}") && run_dir.join(slot).join("user").is_file()
            })
            .count())
    }

    /// A sandbox made through the API from `body`.
    pub fn create(&self, body: &Value) -> Result<String> {
        self.rt.block_on(self.api.create(body))
    }
}

impl Drop for UpStack {
    fn drop(&mut self) {
        if !self.keep {
            let _ = self.rt.block_on(self.api.delete_all());
        }
        self.child.kill(STOP_WITHIN);
    }
}

/// A fresh `$HOME` whose `~/.ssh/id_ed25519.pub` is `client`'s key, so that `up`
/// registers it for its admin.
pub fn home_for(client: &Client) -> Result<tempfile::TempDir> {
    let home = tempfile::TempDir::new()?;
    std::fs::create_dir(home.path().join(".ssh"))?;
    std::fs::write(
        home.path().join(".ssh/id_ed25519.pub"),
        client.public_key().trim().to_owned() + "\n",
    )?;
    Ok(home)
}
