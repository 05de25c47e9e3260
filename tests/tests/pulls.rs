//! Pull requests end to end: the HTTP API, a real `warren-runner` (process backend)
//! and real git against a bare repository on this host as the remote, with a small
//! stand-in for the two GitHub endpoints used (create, merge) that records what it
//! is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{Api, Reply, Stack};
use serde_json::{Value, json};
use tempfile::TempDir;
use warren_keys::SandboxId;
use warren_tests::{Client, Target};

const TOKEN: &str = "ghp_TestOnlyToken0123456789abcdefXYZ";

// ---------------------------------------------------------------------------------
// A GitHub stand-in: `POST /repos/{o}/{r}/pulls`, `PUT /repos/{o}/{r}/pulls/{n}/merge`.

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    authorization: String,
    accept: String,
    body: Value,
}

struct FakeGitHub {
    base: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeGitHub {
    fn start() -> Result<FakeGitHub> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let recorded = recorded.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(&mut stream, &recorded);
                });
            }
        });
        Ok(FakeGitHub { base, requests })
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve_one(stream: &mut std::net::TcpStream, recorded: &Mutex<Vec<Recorded>>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk)?;
        ensure!(n > 0, "connection closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = std::collections::HashMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk)?;
        ensure!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Value = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or_default();
    let authorization = headers.get("authorization").cloned().unwrap_or_default();
    recorded.lock().unwrap().push(Recorded {
        method: method.clone(),
        path: path.clone(),
        authorization: authorization.clone(),
        accept: headers.get("accept").cloned().unwrap_or_default(),
        body: body.clone(),
    });
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (status, answer) = if authorization != format!("Bearer {TOKEN}") {
        (401, json!({"message": "Bad credentials"}))
    } else {
        match (method.as_str(), segments.as_slice()) {
            ("POST", ["repos", o, r, "pulls"]) if body["title"] == "Duplicate" => (
                422,
                json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest",
                    "code": "custom",
                    "message": format!("A pull request already exists for {o}:{}.",
                        body["head"].as_str().unwrap_or_default())}],
                    "documentation_url": format!("https://docs.github.com/{r}")}),
            ),
            ("POST", ["repos", o, r, "pulls"]) => (
                201,
                json!({"number": 7, "html_url": format!("https://github.example/{o}/{r}/pull/7"),
                    "url": format!("https://api.github.example/repos/{o}/{r}/pulls/7")}),
            ),
            ("PUT", ["repos", _, _, "pulls", "7", "merge"]) => (
                200,
                json!({"sha": "0123abc", "merged": true,
                    "message": "Pull Request successfully merged"}),
            ),
            ("PUT", ["repos", _, _, "pulls", _, "merge"]) => (404, json!({"message": "Not Found"})),
            _ => (404, json!({"message": "Not Found"})),
        }
    };
    let text = answer.to_string();
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Git on the host.

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=Seed", "-c", "user.email=seed@example.com"])
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A bare repository `<tmp>/acme/widgets.git` whose `main` has one commit.
fn bare_remote(tmp: &TempDir) -> Result<PathBuf> {
    let bare = tmp.path().join("acme").join("widgets.git");
    std::fs::create_dir_all(&bare)?;
    git(
        &bare,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    )?;
    let seed = tmp.path().join("seed");
    std::fs::create_dir_all(&seed)?;
    git(&seed, &["init", "--quiet", "--initial-branch=main"])?;
    std::fs::write(seed.join("README.md"), "# widgets\n")?;
    git(&seed, &["add", "README.md"])?;
    git(&seed, &["commit", "--quiet", "-m", "initial"])?;
    git(
        &seed,
        &["push", "--quiet", bare.to_str().context("path")?, "main"],
    )?;
    Ok(bare)
}

// ---------------------------------------------------------------------------------

struct Setup {
    stack: Stack,
    runner: common::RunnerProc,
    api: Api,
    key: String,
    github: FakeGitHub,
}

fn setup() -> Result<Setup> {
    let stack = Stack::start()?;
    let runner = stack.runner("r1")?;
    let api = stack.api(Duration::from_secs(30))?;
    let key = stack.admin("alice")?;
    let github = FakeGitHub::start()?;
    api.state.lifecycle.set_github_api(&github.base);
    Ok(Setup {
        stack,
        runner,
        api,
        key,
        github,
    })
}

impl Setup {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Reply> {
        self.stack
            .call(&self.api, method, path, Some(&self.key), body)
    }

    /// A sandbox cloned from `repo` on `branch`, with the token in its env; returns
    /// its id and an ssh client logged in with its token.
    fn sandbox(&self, repo: &Path, branch: &str) -> Result<(String, Client)> {
        let made = self.call(
            "POST",
            "/v1/sandboxes",
            Some(
                json!({"repo": repo.to_str().context("path")?, "branch": branch,
                "env": {"GITHUB_TOKEN": TOKEN}}),
            ),
        )?;
        ensure!(made.status == 201, "create: {made:?}");
        let id = made.json()["id"].as_str().context("id")?.to_owned();
        let token = made.json()["token"].as_str().context("token")?.to_owned();
        let client = Client::new(Target::new(
            "127.0.0.1",
            self.stack.ssh_port,
            format!("{id}#{token}"),
        ))?;
        Ok((id, client))
    }

    fn pull_request(&self, id: &str, body: Value) -> Result<Reply> {
        self.call(
            "POST",
            &format!("/v1/sandboxes/{id}/pull-requests"),
            Some(body),
        )
    }
}

fn check_error(reply: &Reply, status: u16, code: &str) -> Result<()> {
    ensure!(
        reply.status == status && reply.error_code() == code,
        "expected {status} {code}: {reply:?}"
    );
    Ok(())
}

/// No file under `dir` holds `secret`.
fn assert_absent(dir: &Path, secret: &str) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            assert_absent(&path, secret)?;
        } else if kind.is_file() {
            let bytes = std::fs::read(&path)?;
            ensure!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the token is in {}",
                path.display()
            );
        }
    }
    Ok(())
}

#[test]
fn a_pull_request_is_committed_pushed_opened_and_merged() -> Result<()> {
    let s = setup()?;
    let tmp = TempDir::new()?;
    let remote = bare_remote(&tmp)?;
    let (id, client) = s.sandbox(&remote, "feature/hello")?;

    // The clone is there, on the sandbox's branch; sessions start in it.
    let out = client
        .exec("pwd; git rev-parse --abbrev-ref HEAD; cat README.md")
        .run()?
        .success()?;
    let lines: Vec<String> = out.stdout_trimmed().lines().map(str::to_owned).collect();
    ensure!(
        lines.len() == 3
            && lines[0].ends_with("/workspace")
            && lines[1] == "feature/hello"
            && lines[2] == "# widgets",
        "{out}"
    );

    // Nothing changed yet: 409, and GitHub is not asked.
    let reply = s.pull_request(&id, json!({"title": "Nothing"}))?;
    check_error(&reply, 409, "nothing_to_commit")?;
    ensure!(s.github.requests().is_empty(), "{:?}", s.github.requests());

    // A change made over ssh becomes a commit on the branch in the remote, and a PR.
    client
        .exec("echo hello > hello.txt && rm README.md")
        .run()?
        .success()?;
    let reply = s.pull_request(
        &id,
        json!({"title": "Say hello", "body": "Adds hello.txt.", "base": "main"}),
    )?;
    ensure!(reply.status == 201, "{reply:?}");
    let pr = reply.json();
    ensure!(
        pr["number"] == 7 && pr["url"] == "https://github.example/acme/widgets/pull/7",
        "{pr}"
    );
    ensure!(
        pr["branch"] == "feature/hello" && pr["base"] == "main",
        "{pr}"
    );
    let head = git(&remote, &["rev-parse", "refs/heads/feature/hello"])?;
    ensure!(pr["commit"] == head.as_str(), "{pr} vs {head}");
    let log = git(
        &remote,
        &["log", "-1", "--format=%s%n%b%n%an", "feature/hello"],
    )?;
    ensure!(
        log.starts_with("Say hello\nAdds hello.txt.") && log.ends_with("alice"),
        "{log}"
    );
    ensure!(
        git(&remote, &["show", "feature/hello:hello.txt"])? == "hello",
        "hello.txt"
    );
    let files = git(&remote, &["ls-tree", "--name-only", "feature/hello"])?;
    ensure!(
        files == "hello.txt",
        "the deletion is committed too: {files}"
    );
    ensure!(
        git(&remote, &["rev-parse", "main^{commit}"])? != head,
        "main moved"
    );

    let requests = s.github.requests();
    ensure!(requests.len() == 1, "{requests:?}");
    let create = &requests[0];
    ensure!(
        create.method == "POST" && create.path == "/repos/acme/widgets/pulls",
        "{create:?}"
    );
    ensure!(
        create.authorization == format!("Bearer {TOKEN}")
            && create.accept == "application/vnd.github+json",
        "{create:?}"
    );
    ensure!(
        create.body
            == json!({"title": "Say hello", "head": "feature/hello", "base": "main",
                "body": "Adds hello.txt."}),
        "{create:?}"
    );

    // Merge it.
    let reply = s.call(
        "POST",
        &format!("/v1/sandboxes/{id}/pull-requests/7/merge"),
        Some(json!({"method": "squash"})),
    )?;
    ensure!(
        reply.status == 200 && reply.json()["merged"] == true,
        "{reply:?}"
    );
    let requests = s.github.requests();
    let merge = requests.last().context("merge request")?;
    ensure!(
        merge.method == "PUT"
            && merge.path == "/repos/acme/widgets/pulls/7/merge"
            && merge.body == json!({"merge_method": "squash"})
            && merge.authorization == format!("Bearer {TOKEN}"),
        "{merge:?}"
    );
    // GitHub's refusals are 502s carrying GitHub's message.
    let reply = s.call(
        "POST",
        &format!("/v1/sandboxes/{id}/pull-requests/8/merge"),
        None,
    )?;
    check_error(&reply, 502, "upstream_error")?;
    ensure!(reply.text.contains("Not Found"), "{reply:?}");
    let reply = s.call(
        "POST",
        &format!("/v1/sandboxes/{id}/pull-requests/7/merge"),
        Some(json!({"method": "octopus"})),
    )?;
    ensure!(reply.status == 422, "{reply:?}");

    client.exec("echo again >> hello.txt").run()?.success()?;
    let reply = s.pull_request(&id, json!({"title": "Duplicate"}))?;
    check_error(&reply, 502, "upstream_error")?;
    ensure!(
        reply
            .text
            .contains("A pull request already exists for acme:feature/hello."),
        "{reply:?}"
    );
    // (The commit was pushed before GitHub refused; without a base the remote's
    // default branch is used.)
    ensure!(
        s.github.requests().last().context("last")?.body["base"] == "main",
        "{:?}",
        s.github.requests()
    );

    // Bad input, and sandboxes without a repository.
    let reply = s.pull_request(&id, json!({"title": ""}))?;
    check_error(&reply, 422, "invalid_request")?;
    let reply = s.pull_request(&id, json!({"title": "x", "base": "--force"}))?;
    check_error(&reply, 422, "invalid_request")?;
    let bare = s.call("POST", "/v1/sandboxes", Some(json!({})))?;
    ensure!(bare.status == 201, "{bare:?}");
    let bare_id = bare.json()["id"].as_str().context("id")?.to_owned();
    let reply = s.pull_request(&bare_id, json!({"title": "x"}))?;
    check_error(&reply, 409, "no_repo")?;
    let reply = s.pull_request(SandboxId::generate().as_str(), json!({"title": "x"}))?;
    check_error(&reply, 404, "not_found")?;

    // The token is nowhere on disk: not in the workspace's git config, not in the
    // sandbox's directory, not in the runner's log.
    let sandbox_dir = s.runner.sandbox_dir(&SandboxId::parse(&id)?);
    let config = std::fs::read_to_string(sandbox_dir.join("workspace/.git/config"))?;
    ensure!(!config.contains(TOKEN), "{config}");
    assert_absent(&sandbox_dir, TOKEN)?;
    assert_absent(&remote, TOKEN)?;
    let log = std::fs::read_to_string(&s.runner.log)?;
    ensure!(!log.contains(TOKEN), "the token is in the runner's log");
    Ok(())
}

#[test]
fn after_a_gateway_restart_env_and_token_come_back_from_the_runner() -> Result<()> {
    let s = setup()?;
    let tmp = TempDir::new()?;
    let remote = bare_remote(&tmp)?;
    let (id, client) = s.sandbox(&remote, "warren/restart")?;
    // The gateway's memory after a restart: a fresh API state on the same store,
    // runner and keys, knowing nothing of the create request's env.
    let restarted = s.stack.api(Duration::from_secs(30))?;
    restarted.state.lifecycle.set_github_api(&s.github.base);
    let call = |method: &str, path: &str, body: Option<Value>| {
        s.stack.call(&restarted, method, path, Some(&s.key), body)
    };
    for step in ["stop", "start"] {
        let reply = call("POST", &format!("/v1/sandboxes/{id}/{step}"), None)?;
        ensure!(reply.status == 200, "{step}: {reply:?}");
    }
    let out = client
        .exec(&format!("test \"$GITHUB_TOKEN\" = '{TOKEN}' && echo same"))
        .run()?;
    ensure!(
        out.stdout_trimmed() == "same",
        "the restarted sandbox lost its env"
    );
    client.exec("echo again > again.txt").run()?.success()?;
    let reply = call(
        "POST",
        &format!("/v1/sandboxes/{id}/pull-requests"),
        Some(json!({"title": "After a restart"})),
    )?;
    ensure!(reply.status == 201, "{reply:?}");
    let create = s.github.requests().pop().context("GitHub was not asked")?;
    ensure!(
        create.authorization == format!("Bearer {TOKEN}"),
        "the pull request was not opened with the create-time token"
    );
    Ok(())
}

#[test]
fn a_refused_push_is_a_502_with_the_remotes_message() -> Result<()> {
    let s = setup()?;
    let tmp = TempDir::new()?;
    let remote = bare_remote(&tmp)?;
    let hook = remote.join("hooks").join("pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'policy: pushes to this repository are closed today' >&2\nexit 1\n",
    )?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    let (id, client) = s.sandbox(&remote, "warren/fix")?;
    client.exec("echo fix > fix.txt").run()?.success()?;
    let reply = s.pull_request(&id, json!({"title": "Fix"}))?;
    check_error(&reply, 502, "upstream_error")?;
    ensure!(
        reply
            .text
            .contains("policy: pushes to this repository are closed today"),
        "{reply:?}"
    );
    ensure!(!reply.text.contains(TOKEN), "{reply:?}");
    ensure!(s.github.requests().is_empty(), "{:?}", s.github.requests());
    let branches = git(&remote, &["branch", "--list"])?;
    ensure!(!branches.contains("warren/fix"), "{branches}");
    Ok(())
}

/// `Authorization: Basic` of `x-access-token:<TOKEN>` (what the askpass helper
/// answers git's username and password prompts with).
const BASIC: &str = "Basic eC1hY2Nlc3MtdG9rZW46Z2hwX1Rlc3RPbmx5VG9rZW4wMTIzNDU2Nzg5YWJjZGVmWFla";

/// Serves `root`'s files over plain HTTP to requests carrying [`BASIC`] (git's
/// "dumb" HTTP protocol: enough for a clone); counts the authorized requests.
fn dumb_http(root: PathBuf) -> Result<(String, Arc<Mutex<usize>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    let authorized = Arc::new(Mutex::new(0usize));
    let count = authorized.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = serve_file(&mut stream, &root, &count);
        }
    });
    Ok((base, authorized))
}

fn serve_file(stream: &mut std::net::TcpStream, root: &Path, count: &Mutex<usize>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        ensure!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let path = head
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let auth_ok = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("authorization:") && l[14..].trim() == BASIC);
    let (status, extra, body) = if !auth_ok {
        (
            "401 Unauthorized",
            "WWW-Authenticate: Basic realm=\"git\"\r\n",
            Vec::new(),
        )
    } else {
        *count.lock().unwrap() += 1;
        let file = root.join(path.trim_start_matches('/'));
        match (path.contains(".."), std::fs::read(&file)) {
            (false, Ok(bytes)) => ("200 OK", "", bytes),
            _ => ("404 Not Found", "", Vec::new()),
        }
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\n{extra}Content-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    stream.flush()?;
    Ok(())
}

#[test]
fn a_clone_gets_the_token_only_through_askpass() -> Result<()> {
    let s = setup()?;
    let tmp = TempDir::new()?;
    let remote = bare_remote(&tmp)?;
    git(&remote, &["update-server-info"])?;
    let (base, authorized) = dumb_http(tmp.path().to_owned())?;
    let url = format!("{base}/acme/widgets.git");

    // Without the token git may not prompt: the create fails, quickly.
    let made = s.call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": url, "branch": "warren/nope"})),
    )?;
    check_error(&made, 502, "runner_error")?;
    ensure!(*authorized.lock().unwrap() == 0);

    let made = s.call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": url, "env": {"GITHUB_TOKEN": TOKEN}})),
    )?;
    ensure!(made.status == 201, "create: {made:?}");
    ensure!(*authorized.lock().unwrap() > 0);
    let id = SandboxId::parse(made.json()["id"].as_str().context("id")?)?;
    let workspace = s.runner.sandbox_dir(&id).join("workspace");
    ensure!(
        std::fs::read_to_string(workspace.join("README.md"))? == "# widgets\n",
        "not cloned"
    );
    ensure!(
        git(&workspace, &["rev-parse", "--abbrev-ref", "HEAD"])? == format!("warren/{id}"),
        "not on the sandbox's branch"
    );
    assert_absent(&s.runner.sandbox_dir(&id), TOKEN)?;
    let log = std::fs::read_to_string(&s.runner.log)?;
    ensure!(!log.contains(TOKEN), "the token is in the runner's log");
    Ok(())
}
