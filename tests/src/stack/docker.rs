//! The Docker tests' stack: a gateway, one `warren-runner run --backend docker`
//! against the machine's real Docker engine, a user with a key; and the small
//! `docker` helpers they share. In CI a missing engine or root is a failure, not a
//! skip (`prerequisite`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use warren_keys::SandboxId;
use warren_runner::protocol::{Request, Response, SandboxSpec};
use warren_store::{RunnerId, User};

use super::{RunnerProc, Stack, StackBuilder};
use crate::util::{self, prerequisite};
use crate::{Client, Cmd, Output, workspace_root};

/// The label of the warm pool's containers (`runner/src/backend/docker/pool.rs`).
pub const POOL_LABEL: &str = "org.warren.pool";

/// The arguments every Docker runner of these tests starts with (`--backend docker
/// --agent-bin PATH`), before a test's own.
const BASE_ARGS: usize = 4;

pub fn docker(args: &[&str]) -> Result<Output> {
    Cmd::new("docker")
        .args(args.iter().copied())
        .timeout(Duration::from_secs(120))
        .run()
}

pub fn docker_ok(args: &[&str]) -> Result<String> {
    Ok(docker(args)?.success()?.stdout_trimmed().to_owned())
}

/// The network of sandbox `id`'s container: `warren-<id>`, or `warren-<slot>` for a
/// sandbox made on a spare network or claimed from the pool.
pub fn network_of(id: &SandboxId) -> Result<String> {
    docker_ok(&[
        "inspect",
        "--format",
        "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
        &format!("warren-{id}"),
    ])
}

/// The host as containers see it: docker0's IPv4 address.
pub fn docker_host_ip() -> Result<String> {
    let addr = Cmd::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .run()?
        .success()?;
    Ok(addr
        .stdout_str()
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .context("docker0 has no IPv4 address")?
        .to_owned())
}

pub fn docker_available() -> bool {
    docker(&["version", "--format", "{{.Server.APIVersion}}"]).is_ok_and(|o| o.code() == Some(0))
}

/// Builds an image with its `images/` script (a no-op when it exists).
pub fn image(script: &str) -> Result<()> {
    Cmd::new(workspace_root().join("images").join(script))
        .timeout(Duration::from_secs(1800))
        .run()?
        .success()
        .with_context(|| format!("images/{script}"))?;
    Ok(())
}

pub fn static_agent() -> Result<PathBuf> {
    let out = Cmd::new(workspace_root().join("scripts/build-static-agent"))
        .timeout(Duration::from_secs(900))
        .run()?
        .success()
        .context("scripts/build-static-agent")?;
    Ok(workspace_root()
        .join(out.stdout_str().trim())
        .canonicalize()?)
}

/// A gateway, one Docker runner, a user with a key. Removes every Docker object of
/// the runner, and the firewall rules of the sandboxes it made, when dropped.
pub struct DockerStack {
    pub stack: Stack,
    pub runner: RunnerProc,
    pub client: Client,
    pub owner: User,
    args: Vec<String>,
    /// The sandboxes made, whose rules the runner leaves when it is killed.
    made: std::cell::RefCell<Vec<SandboxId>>,
}

impl DockerStack {
    /// `Stack::builder().docker(extra)`: `None` when Docker or root is missing
    /// outside CI (the test is then skipped).
    pub fn start(extra: &[&str]) -> Result<Option<DockerStack>> {
        Stack::builder().docker(extra)
    }

    pub(super) fn start_with(builder: StackBuilder, extra: &[&str]) -> Result<Option<DockerStack>> {
        if !prerequisite(docker_available(), "a Docker engine")? {
            return Ok(None);
        }
        if !prerequisite(
            util::running_as_root(),
            "root (the docker backend needs it)",
        )? {
            return Ok(None);
        }
        let agent = static_agent()?;
        image("build-busybox")?;
        let stack = builder.start()?;
        let mut args = vec![
            "--backend".to_owned(),
            "docker".to_owned(),
            "--agent-bin".to_owned(),
            agent.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let runner = stack.runner_with("docker", &argv)?;
        let client = Client::new(stack.target(&SandboxId::generate()))?;
        let owner = stack.user("alice", &client)?;
        Ok(Some(DockerStack {
            stack,
            runner,
            client,
            owner,
            args,
            made: std::cell::RefCell::default(),
        }))
    }

    pub fn sandbox(&self, spec: SandboxSpec) -> Result<(SandboxId, Client)> {
        let id = self.stack.sandbox_with(&self.runner, &self.owner, spec)?;
        self.made.borrow_mut().push(id.clone());
        let c = self.client.clone().with_target(self.stack.target(&id));
        Ok((id, c))
    }

    /// A sandbox of the owner's whose store row says `forward_agent`, made from
    /// `spec`; its agent trusts the keys the store gives it (jump mode).
    pub fn sandbox_forwarding(
        &self,
        forward_agent: bool,
        spec: SandboxSpec,
    ) -> Result<(SandboxId, Client)> {
        let mut row =
            super::in_process::sandbox_row(&SandboxId::generate(), &self.runner, &self.owner);
        row.forward_agent = forward_agent;
        let id = self.stack.sandbox_from(&self.runner, row, spec, true)?;
        self.made.borrow_mut().push(id.clone());
        let c = self.client.clone().with_target(self.stack.target(&id));
        Ok((id, c))
    }

    pub fn control(&self, request: Request) -> Result<Response> {
        self.stack
            .rt
            .block_on(self.stack.hub.control(&self.runner.id, &request))
            .map_err(Into::into)
    }

    pub fn status(&self, id: &SandboxId) -> Result<Option<warren_runner::protocol::SandboxStatus>> {
        match self.control(Request::List)? {
            Response::Sandboxes { sandboxes } => {
                Ok(sandboxes.into_iter().find(|s| &s.sandbox == id))
            }
            other => bail!("list: {other:?}"),
        }
    }

    pub fn restart_runner(&mut self) -> Result<()> {
        let argv: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.stack.restart(&mut self.runner, &argv)
    }

    /// Restarts the runner with `extra` in place of the arguments it was started with.
    pub fn restart_runner_with(&mut self, extra: &[&str]) -> Result<()> {
        self.args.truncate(BASE_ARGS);
        self.args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.restart_runner()
    }

    pub fn runner_log(&self) -> String {
        std::fs::read_to_string(&self.runner.log).unwrap_or_default()
    }

    /// The runner's warm-pool members nobody claimed: containers still named after
    /// their slot.
    pub fn pool_waiting(&self) -> Result<BTreeSet<String>> {
        let out = docker_ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=org.warren.runner={}", self.runner.id),
            "--filter",
            &format!("label={POOL_LABEL}"),
            "--format",
            "{{.Names}} {{.Label \"org.warren.sandbox\"}}",
        ])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(name, slot)| *name == format!("warren-{slot}"))
            .map(|(name, _)| name.to_owned())
            .collect())
    }

    /// Whether the member can be claimed: its agent has set up its user (and waits
    /// for an identity), and the runner has put it in the pool. The agent's files
    /// come a moment before the runner's list, so a create in between went cold.
    pub fn member_waits(&self, name: &str) -> bool {
        let slot = name.trim_start_matches("warren-");
        self.runner.listen_dir().join(slot).join("user").is_file()
            && self.runner_logged("pool member ready", slot)
    }

    /// Whether the runner logged `what` about `slot` (a debug line).
    pub fn runner_logged(&self, what: &str, slot: &str) -> bool {
        let slot = format!("slot={slot}");
        self.runner_log()
            .lines()
            .any(|l| l.contains(what) && l.contains(&slot))
    }

    /// Waits until exactly `n` members wait to be claimed; returns their names.
    pub fn wait_for_pool(&self, n: usize, what: &str) -> Result<BTreeSet<String>> {
        let mut members = BTreeSet::new();
        let ready = util::wait_until(Duration::from_secs(90), || {
            members = self.pool_waiting().unwrap_or_default();
            members.len() == n && members.iter().all(|m| self.member_waits(m))
        });
        ensure!(
            ready,
            "{what}: the pool has {members:?}, not {n} ready\n{}",
            self.runner_log()
        );
        Ok(members)
    }

    /// Whether sandbox `id`'s container came from the warm pool.
    pub fn claimed(&self, id: &SandboxId) -> Result<bool> {
        let format = format!("{{{{index .Config.Labels \"{POOL_LABEL}\"}}}}");
        Ok(!docker_ok(&["inspect", "--format", &format, &format!("warren-{id}")])?.is_empty())
    }
}

impl Drop for DockerStack {
    fn drop(&mut self) {
        self.runner.kill();
        remove_runner_objects(&self.stack.rt, &self.runner.id, &self.made.borrow());
        unmount_disks(self.runner.listen_dir());
        remove_snapshots(self.runner.listen_dir(), &self.runner.id);
    }
}

/// Removes what a killed runner leaves of its snapshots (issue 26): their images
/// (by the runner's label) and the mounts under its run directory.
pub fn remove_snapshots(run_dir: &std::path::Path, runner: &RunnerId) {
    if let Ok(images) = docker_ok(&[
        "image",
        "ls",
        "-q",
        "--filter",
        &format!("label=org.warren.runner={runner}"),
        "--filter",
        "label=org.warren.snapshot",
    ]) {
        for image in images.split_whitespace() {
            let _ = docker(&["image", "rm", "-f", image]);
        }
    }
    unmount_under(&run_dir.join(".snapshots"));
}

/// Removes every container, volume and network of `runner`, and the firewall
/// rules of its networks and of `sandboxes` (a killed runner leaves them all).
pub(super) fn remove_runner_objects(
    rt: &tokio::runtime::Runtime,
    runner: &RunnerId,
    sandboxes: &[SandboxId],
) {
    let label = format!("label=org.warren.runner={runner}");
    // Firewall chains are named after each network's sandbox label: a pool
    // member's slot is not among the sandboxes made.
    if let Ok(slots) = docker_ok(&[
        "network",
        "ls",
        "--filter",
        &label,
        "--format",
        "{{.Label \"org.warren.sandbox\"}}",
    ]) {
        for slot in slots.split_whitespace() {
            if let Ok(slot) = SandboxId::parse(slot) {
                rt.block_on(warren_runner::netpolicy::remove(&slot));
            }
        }
    }
    for (list, rm) in [
        (
            vec!["ps", "-aq", "--filter", &label],
            vec!["rm", "-f", "-v"],
        ),
        (
            vec!["volume", "ls", "-q", "--filter", &label],
            vec!["volume", "rm", "-f"],
        ),
        (
            vec!["network", "ls", "-q", "--filter", &label],
            vec!["network", "rm"],
        ),
    ] {
        let Ok(ids) = docker_ok(&list) else { continue };
        for id in ids.split_whitespace() {
            let mut argv = rm.clone();
            argv.push(id);
            let _ = docker(&argv);
        }
    }
    for id in sandboxes {
        rt.block_on(warren_runner::netpolicy::remove(id));
    }
}

/// Unmounts the sandboxes' disks under a runner's run directory (their loop
/// devices go with the mounts): a killed runner leaves them, as it leaves its
/// containers.
pub fn unmount_disks(run_dir: &std::path::Path) {
    unmount_under(&run_dir.join(".disks"));
}

/// Unmounts (lazily) everything mounted under `dir`.
fn unmount_under(dir: &std::path::Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for mount in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        if std::path::Path::new(mount).starts_with(dir) {
            let _ = Cmd::new("umount").args(["-l", mount]).run();
        }
    }
}
