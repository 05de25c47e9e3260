//! Forks and the rest of Warren, on the Docker backend (issue 26): a pull request
//! from one fork reaches the GitHub stand-in with that fork's change alone, each
//! fork on its own branch; and a fork that does not fit its source's runner is a
//! 409 saying why that leaves nothing behind (containers, networks, loop devices,
//! disk files, store rows).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tempfile::TempDir;
use warren_keys::SandboxId;
use warren_tests::Client;
use warren_tests::git_http::{FakeGitHub, GitHttp, TOKEN, bare_remote, git};
use warren_tests::stack::{Api, DockerStack, Reply, docker_host_ip, docker_ok, image};
use warren_tests::util::free_port;

/// The image (with git).
const BASE: &str = "warren-base:latest";

struct Env<'a> {
    d: &'a DockerStack,
    api: Api,
    key: String,
}

impl Env<'_> {
    fn start(d: &DockerStack) -> Result<Env<'_>> {
        let api = d.stack.api(Duration::from_secs(30))?;
        let key = d
            .stack
            .rt
            .block_on(d.stack.store.create_api_key(&d.owner.id, "fork"))?;
        Ok(Env {
            d,
            api,
            key: key.secret.expose().to_owned(),
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Reply> {
        self.d
            .stack
            .call(&self.api, method, path, Some(self.key.as_str()), body)
    }

    /// `POST path body`, which must answer `status`: its JSON.
    fn expect(&self, path: &str, body: Value, status: u16) -> Result<Value> {
        let reply = self.call("POST", path, Some(body))?;
        ensure!(
            reply.status == status,
            "POST {path}: {} {}",
            reply.status,
            reply.text
        );
        Ok(reply.json())
    }

    fn ssh(&self, id: &str) -> Result<Client> {
        Ok(self
            .d
            .client
            .clone()
            .with_target(self.d.stack.target(&SandboxId::parse(id)?)))
    }

    fn run(&self, id: &str, command: &str) -> Result<String> {
        let out = self
            .ssh(id)?
            .exec(command)
            .timeout(Duration::from_secs(120))
            .run()?
            .success()?;
        Ok(out.stdout_trimmed().to_owned())
    }
}

fn ids(forked: &Value) -> Result<Vec<String>> {
    forked["sandboxes"]
        .as_array()
        .context("sandboxes")?
        .iter()
        .map(|s| s["id"].as_str().map(str::to_owned).context("id"))
        .collect()
}

#[test]
fn a_pull_request_from_a_fork_carries_its_change_alone() -> Result<()> {
    let port = free_port()?;
    let Some(d) = DockerStack::start(&[
        "--disk-mb",
        "512",
        "--host-tcp-port",
        &port.to_string(),
        "--spare-networks",
        "0",
    ])?
    else {
        return Ok(());
    };
    image("build-base")?;
    let e = Env::start(&d)?;
    let github = FakeGitHub::start()?;
    e.api.state.lifecycle.set_github_api(&github.base);
    e.api.state.lifecycle.set_allow_http_repos(true);
    // The repository, served where containers reach the host.
    let tmp = TempDir::new()?;
    let remote = bare_remote(&tmp)?;
    let _server = GitHttp::start(tmp.path().to_owned(), &format!("0.0.0.0:{port}"))?;
    let url = format!("http://{}:{port}/acme/widgets.git", docker_host_ip()?);

    // The source is prepared: a commit on its branch.
    let source = e.expect(
        "/v1/sandboxes",
        json!({"image": BASE, "repo": url, "branch": "prepare",
            "env": {"GITHUB_TOKEN": TOKEN}}),
        201,
    )?["id"]
        .as_str()
        .context("id")?
        .to_owned();
    e.run(
        &source,
        "cd /workspace && echo shared > shared.txt && git add -A && \
         git -c user.email=t@example.com -c user.name=T commit -qm prepared",
    )?;

    let forked = e.expect(
        &format!("/v1/sandboxes/{source}/fork"),
        json!({"count": 2}),
        201,
    )?;
    let forks = ids(&forked)?;
    ensure!(forks.len() == 2, "{forked}");
    for fork in &forks {
        let branch = e.run(
            fork,
            &format!(
                "cd /workspace && echo {fork} > {fork}.txt && git rev-parse --abbrev-ref HEAD"
            ),
        )?;
        ensure!(branch == format!("warren/{fork}"), "{fork} is on {branch}");
    }

    // A pull request from the first fork.
    let (one, other) = (&forks[0], &forks[1]);
    let pr = e.expect(
        &format!("/v1/sandboxes/{one}/pull-requests"),
        json!({"title": "The first fork's try", "base": "main"}),
        201,
    )?;
    let branch = format!("warren/{one}");
    ensure!(pr["branch"] == branch.as_str(), "{pr}");
    let asked = github.requests();
    ensure!(asked.len() == 1, "{asked:?}");
    ensure!(
        asked[0].path == "/repos/acme/widgets/pulls"
            && asked[0].body["head"] == branch.as_str()
            && asked[0].body["base"] == "main",
        "{asked:?}"
    );
    // What was pushed: the source's preparation and this fork's change, nothing of
    // the other fork's; its last commit touches this fork's file alone.
    let files = git(&remote, &["ls-tree", "--name-only", &branch])?;
    let files: Vec<&str> = files.lines().collect();
    let own = format!("{one}.txt");
    ensure!(
        files.contains(&"shared.txt")
            && files.contains(&own.as_str())
            && !files.iter().any(|f| f.starts_with(other.as_str())),
        "{branch} has {files:?}"
    );
    let changed = git(
        &remote,
        &["diff", "--name-only", &format!("{branch}^"), &branch],
    )?;
    ensure!(changed == own, "the fork's commit changed {changed:?}");
    let branches = git(&remote, &["branch", "--list"])?;
    ensure!(
        !branches.contains(other.as_str()) && !branches.contains("prepare"),
        "only the fork's branch was pushed: {branches}"
    );
    // The other fork still has its own change, uncommitted, on its own branch.
    let status = e.run(other, "cd /workspace && git status --porcelain")?;
    ensure!(status == format!("?? {other}.txt"), "{other}: {status}");
    Ok(())
}

/// What a runner has made, by its label and under its run directory, and what the
/// store holds for the account.
#[derive(Debug, PartialEq, Eq)]
struct Leftovers {
    containers: String,
    networks: String,
    loop_devices: Vec<String>,
    files: Vec<String>,
    sandboxes: usize,
    snapshots: usize,
}

fn leftovers(e: &Env<'_>) -> Result<Leftovers> {
    let run_dir = e.d.runner.listen_dir();
    let label = format!("label=org.warren.runner={}", e.d.runner.id);
    let loops = warren_tests::Cmd::new("losetup")
        .args(["--list", "--noheadings", "--output", "BACK-FILE"])
        .run()?
        .stdout_str();
    let mut files = Vec::new();
    for dir in [".disks", ".snapshots"] {
        if let Ok(entries) = std::fs::read_dir(run_dir.join(dir)) {
            files.extend(entries.flatten().map(|e| e.path().display().to_string()));
        }
    }
    files.sort();
    let count = |path: &str, field: &str| -> Result<usize> {
        let reply = e.call("GET", path, None)?;
        Ok(reply.json()[field].as_array().map_or(0, Vec::len))
    };
    Ok(Leftovers {
        containers: docker_ok(&["ps", "-aq", "--filter", &label])?,
        networks: docker_ok(&["network", "ls", "-q", "--filter", &label])?,
        loop_devices: loops
            .lines()
            .filter(|l| std::path::Path::new(l.trim()).starts_with(run_dir))
            .map(str::to_owned)
            .collect(),
        files,
        sandboxes: count("/v1/sandboxes?include_deleted=true", "sandboxes")?,
        snapshots: count("/v1/snapshots", "snapshots")?,
    })
}

#[test]
fn a_fork_that_does_not_fit_its_runner_is_refused_and_leaves_nothing() -> Result<()> {
    // Room for 4 sandboxes and 4 GiB of memory; no networks made ahead, so
    // nothing changes on the runner unless a fork does.
    let Some(d) = DockerStack::start(&[
        "--disk-mb",
        "512",
        "--max-sandboxes",
        "4",
        "--capacity-memory-mb",
        "4096",
        "--spare-networks",
        "0",
    ])?
    else {
        return Ok(());
    };
    image("build-base")?;
    let e = Env::start(&d)?;
    let source = e.expect(
        "/v1/sandboxes",
        json!({"image": BASE, "memory_mb": 1536}),
        201,
    )?["id"]
        .as_str()
        .context("id")?
        .to_owned();
    e.run(&source, "echo prepared > /workspace/prepared.txt")?;
    let before = leftovers(&e)?;
    for (count, reason) in [
        (
            4,
            "holds 1 of its maximum of 4 sandboxes, 4 more do not fit",
        ),
        (2, "2560 MiB of 4096 MiB free"),
    ] {
        let reply = e.call(
            "POST",
            &format!("/v1/sandboxes/{source}/fork"),
            Some(json!({"count": count})),
        )?;
        ensure!(
            reply.status == 409 && reply.error_code() == "conflict" && reply.text.contains(reason),
            "fork --count {count}: {} {}",
            reply.status,
            reply.text
        );
        eprintln!("fork --count {count}: {}", reply.json()["error"]["message"]);
        let after = leftovers(&e)?;
        ensure!(
            after == before,
            "a refused fork left {after:#?}\nwas {before:#?}"
        );
    }
    // One fits, and is made.
    let forked = e.expect(
        &format!("/v1/sandboxes/{source}/fork"),
        json!({"count": 1}),
        201,
    )?;
    let fork = ids(&forked)?.pop().context("a fork")?;
    ensure!(e.run(&fork, "cat /workspace/prepared.txt")? == "prepared");
    Ok(())
}
