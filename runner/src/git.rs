//! Git in a sandbox's workspace, the same for every backend: cloning at create and
//! the API's commit-and-push. A backend supplies [`GitExec`] (how to run `git` in
//! the workspace as the sandbox's user); a token reaches git only through that
//! run's environment (`WARREN_GIT_PASSWORD`, read by the askpass helper), never
//! through arguments, git config, the workspace or a log.
//!
//! A pull request's push never runs in the workspace: everything there (its config,
//! hooks, remotes, even the `git` binary in a container) is the sandbox's to
//! rewrite. The workspace commits and writes its branch as a bundle to stdout,
//! without any token; the runner fetches that bundle into a bare repository of its
//! own and pushes from there to the URL the sandbox was created from, with no
//! config but its command line's, only that URL's transport allowed, and the token
//! released only to that URL's host ([`push_pinned`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;

use crate::Error;

/// Settings every git run in a workspace gets: no credential helper (one from a
/// global config could store the token), no prompts for signing keys, none of the
/// workspace's hooks or file-system monitor.
pub const SAFE_CONFIG: [&str; 8] = [
    "-c",
    "credential.helper=",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
];

/// Most bytes a workspace's bundle (its branch's history) may take on the runner's
/// disk during a push.
pub const MAX_BUNDLE: u64 = 2 << 30;

/// What one git run ended with.
#[derive(Debug)]
pub struct GitOutput {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl GitOutput {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// Runs `git <args>` in the sandbox's workspace as its user; `password`, if any,
/// is offered only through the run's environment.
pub trait GitExec {
    fn git(
        &self,
        args: &[&str],
        password: Option<&str>,
    ) -> impl Future<Output = Result<GitOutput>> + Send;

    /// The same without a password, its stdout written to `out` (bounded by
    /// `out`'s limit) rather than kept: how the workspace hands over a bundle.
    fn git_to_file(
        &self,
        args: &[&str],
        out: &mut BoundedFile,
    ) -> impl Future<Output = Result<GitOutput>> + Send;
}

/// A file written from the workspace's output, refusing to grow past its limit.
pub struct BoundedFile {
    file: tokio::fs::File,
    written: u64,
    max: u64,
}

impl BoundedFile {
    /// Creates `path` (which must not exist) for at most `max` bytes.
    pub async fn create(path: &Path, max: u64) -> Result<BoundedFile> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .await
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(BoundedFile {
            file,
            written: 0,
            max,
        })
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.written += chunk.len() as u64;
        anyhow::ensure!(
            self.written <= self.max,
            "the workspace's history is larger than {} MiB",
            self.max >> 20
        );
        self.file.write_all(chunk).await?;
        Ok(())
    }

    pub async fn finish(&mut self) -> Result<()> {
        self.file.flush().await?;
        Ok(())
    }
}

/// Where the runner's own git works for a push: a scratch directory in the
/// runner's state that the sandbox cannot reach (made fresh for each push and
/// removed after), and the agent binary, which answers git's prompts when called
/// `askpass`.
pub struct PushPlace<'a> {
    pub scratch: PathBuf,
    pub agent_bin: &'a Path,
}

/// What to commit and where to push it.
pub struct CommitPush<'a> {
    pub message: &'a str,
    pub branch: &'a str,
    pub author_name: &'a str,
    pub author_email: &'a str,
    pub base: Option<&'a str>,
    /// The repository the sandbox was created from: the push goes here and only
    /// here (a request without one is refused, never sent to `origin`).
    pub remote_url: Option<&'a str>,
    pub token: Option<&'a str>,
}

/// What a commit-and-push did.
#[derive(Debug)]
pub struct Pushed {
    pub commit: String,
    pub committed: bool,
    pub default_branch: Option<String>,
}

/// `text` with `secret` (if any) replaced and `user:pass@` removed from URLs.
pub fn redact(text: &str, secret: Option<&str>) -> String {
    let mut out = match secret {
        Some(s) if !s.is_empty() => text.replace(s, "<redacted>"),
        _ => text.to_owned(),
    };
    // Credentials written into URLs: scheme://user:pass@host → scheme://<redacted>@host.
    let mut from = 0;
    while let Some(pos) = out[from..].find("://") {
        let start = from + pos + 3;
        let end = out[start..]
            .find(|c: char| c.is_whitespace() || c == '/' || c == '\'' || c == '"')
            .map_or(out.len(), |e| start + e);
        if let Some(at) = out[start..end].rfind('@') {
            out.replace_range(start..start + at, "<redacted>");
            from = start + "<redacted>".len();
        } else {
            from = end;
        }
    }
    out
}

async fn run<E: GitExec>(exec: &E, args: &[&str], token: Option<&str>) -> Result<GitOutput> {
    let mut full: Vec<&str> = SAFE_CONFIG.to_vec();
    full.extend_from_slice(args);
    exec.git(&full, token).await
}

/// Runs git and fails with its (redacted) stderr unless it exits 0.
async fn must<E: GitExec>(exec: &E, args: &[&str], token: Option<&str>) -> Result<String> {
    let out = run(exec, args, token).await?;
    if !out.ok() {
        anyhow::bail!(
            "git {} failed (exit {}): {}",
            args.first().copied().unwrap_or_default(),
            out.code,
            redact(out.stderr.trim(), token)
        );
    }
    Ok(out.stdout.trim().to_owned())
}

/// Commits everything in the workspace on `req.branch` and pushes it to
/// `req.remote_url` from the runner's side ([`push_pinned`]).
pub async fn commit_and_push<E: GitExec>(
    exec: &E,
    place: &PushPlace<'_>,
    req: &CommitPush<'_>,
) -> crate::Result<Pushed> {
    let remote = req.remote_url.and_then(Pinned::parse).ok_or_else(|| {
        Error::refused(
            "no_repo",
            "pushes go only to the https:// repository the sandbox was created from, \
             and none was given",
        )
    })?;
    let inside = run(exec, &["rev-parse", "--is-inside-work-tree"], None).await?;
    if !inside.ok() || inside.stdout.trim() != "true" {
        return Err(Error::refused(
            "no_repo",
            "the sandbox's workspace is not a git repository",
        ));
    }
    let check = run(exec, &["check-ref-format", "--branch", req.branch], None).await?;
    if !check.ok() {
        return Err(Error::refused(
            "invalid_branch",
            "the branch name is not valid",
        ));
    }
    // On the sandbox's branch (made from the current HEAD if missing); uncommitted
    // changes come along.
    let current = run(exec, &["symbolic-ref", "--quiet", "--short", "HEAD"], None).await?;
    if !current.ok() || current.stdout.trim() != req.branch {
        let local = format!("refs/heads/{}", req.branch);
        let exists = run(exec, &["show-ref", "--verify", "--quiet", &local], None)
            .await?
            .ok();
        if exists {
            must(exec, &["checkout", "--quiet", req.branch, "--"], None).await?;
        } else {
            must(exec, &["checkout", "--quiet", "-b", req.branch], None).await?;
        }
    }
    must(exec, &["add", "-A"], None).await?;
    let staged = run(exec, &["diff", "--cached", "--quiet"], None).await?;
    let committed = match staged.code {
        0 => false,
        1 => {
            let name = format!("user.name={}", req.author_name);
            let email = format!("user.email={}", req.author_email);
            must(
                exec,
                &[
                    "-c",
                    &name,
                    "-c",
                    &email,
                    "commit",
                    "--quiet",
                    "--no-verify",
                    "-m",
                    req.message,
                ],
                None,
            )
            .await?;
            true
        }
        code => {
            return Err(Error::failed(format_args!(
                "git diff failed (exit {code}): {}",
                redact(staged.stderr.trim(), None)
            )));
        }
    };
    let default_branch = run(
        exec,
        &[
            "symbolic-ref",
            "--quiet",
            "--short",
            "refs/remotes/origin/HEAD",
        ],
        None,
    )
    .await?;
    let default_branch = default_branch
        .ok()
        .then(|| default_branch.stdout.trim().to_owned())
        .and_then(|b| b.strip_prefix("origin/").map(str::to_owned))
        .filter(|b| !b.is_empty());
    if !committed {
        // Nothing new in the tree: is there anything on HEAD the base lacks?
        let base = req
            .base
            .map(str::to_owned)
            .or_else(|| default_branch.clone());
        let base_ref = base.map(|b| format!("refs/remotes/origin/{b}"));
        let base_known = match &base_ref {
            Some(r) => run(exec, &["show-ref", "--verify", "--quiet", r], None)
                .await?
                .ok(),
            None => false,
        };
        let ahead = match (&base_ref, base_known) {
            (Some(r), true) => {
                must(exec, &["rev-list", "--count", "HEAD", "--not", r], None).await?
            }
            _ => {
                must(
                    exec,
                    &["rev-list", "--count", "HEAD", "--not", "--remotes"],
                    None,
                )
                .await?
            }
        };
        if ahead.trim() == "0" {
            return Err(Error::refused(
                "nothing_to_commit",
                "nothing to commit: the workspace has no changes and no commits beyond the base",
            ));
        }
    }
    let commit = push_pinned(exec, place, &remote, req.branch, req.token).await?;
    Ok(Pushed {
        commit,
        committed,
        default_branch,
    })
}

/// A push's pinned remote: `https://host[:port]/path` (or `http://`, which the
/// gateway passes on only where its operator allows it).
struct Pinned<'a> {
    url: &'a str,
    scheme: &'static str,
    /// `scheme://host[:port]`, lowercase: the only place the askpass helper
    /// answers for.
    origin: String,
}

impl<'a> Pinned<'a> {
    fn parse(url: &'a str) -> Option<Pinned<'a>> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            ("https", rest)
        } else {
            ("http", url.strip_prefix("http://")?)
        };
        let (authority, _) = rest.split_once('/')?;
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let shape = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
            && url.bytes().all(|b| b.is_ascii_graphic())
            && !url.contains("::");
        shape.then(|| Pinned {
            url,
            scheme,
            origin: format!("{scheme}://{}", host.to_ascii_lowercase()),
        })
    }
}

/// The push's scratch directory: made empty and private (0700), removed when
/// dropped.
struct Scratch<'a>(&'a Path);

impl<'a> Scratch<'a> {
    fn make(dir: &'a Path) -> crate::Result<Scratch<'a>> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::failed(format_args!(
                    "clearing {}: {e}",
                    dir.display()
                )));
            }
        }
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(self.0) {
            tracing::warn!("removing {}: {e}", self.0.display());
        }
    }
}

/// Takes `branch` out of the workspace as a bundle and pushes it to `remote` from
/// a bare repository of the runner's own; returns the commit pushed (the bundle's,
/// whatever the workspace said before). Nothing in the workspace sees the token.
async fn push_pinned<E: GitExec>(
    exec: &E,
    place: &PushPlace<'_>,
    remote: &Pinned<'_>,
    branch: &str,
    token: Option<&str>,
) -> crate::Result<String> {
    let _scratch = Scratch::make(&place.scratch)?;
    let local = format!("refs/heads/{branch}");
    let bundle = place.scratch.join("work.bundle");
    let mut out = BoundedFile::create(&bundle, MAX_BUNDLE).await?;
    let mut args: Vec<&str> = SAFE_CONFIG.to_vec();
    args.extend(["bundle", "create", "-", &local]);
    let made = exec.git_to_file(&args, &mut out).await?;
    out.finish().await?;
    drop(out);
    if !made.ok() {
        return Err(Error::failed(format_args!(
            "git bundle failed in the workspace (exit {}): {}",
            made.code,
            redact(made.stderr.trim(), None)
        )));
    }
    let host = HostRepo::new(place)?;
    host.must(&["init", "--quiet", "--bare", "--template="], None)
        .await?;
    let bundle = bundle.to_string_lossy();
    let fetch = format!("+{local}:refs/warren/push");
    host.must(
        &[
            // A bundle is read through the file transport.
            "-c",
            "protocol.file.allow=always",
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            &bundle,
            &fetch,
        ],
        None,
    )
    .await
    .map_err(|e| Error::failed(format_args!("the workspace's bundle: {e:#}")))?;
    let commit = host
        .must(
            &["rev-parse", "--verify", "refs/warren/push^{commit}"],
            None,
        )
        .await?;
    let allow = format!("protocol.{}.allow=always", remote.scheme);
    let refspec = format!("refs/warren/push:refs/heads/{branch}");
    let pushed = host
        .run(
            &[
                "-c",
                &allow,
                "push",
                "--quiet",
                "--no-verify",
                "--",
                remote.url,
                &refspec,
            ],
            token.map(|t| (t, remote.origin.as_str())),
        )
        .await?;
    if !pushed.ok() {
        let message = redact(pushed.stderr.trim(), token);
        return Err(Error::refused(
            "push_refused",
            format!("the remote refused the push: {message}"),
        ));
    }
    Ok(commit)
}

/// The first of `paths` that exists at `reference` (default: the remote's HEAD) of
/// `url`, with its text: one shallow commit fetched into `place.scratch` (removed
/// after) with blobs over `max` bytes left on the server where it can filter them,
/// nothing checked out, nothing of the repository run. A file over `max` bytes is an
/// error. `token`, as for pushes, goes to git only through the askpass helper.
pub async fn read_file_at(
    place: &PushPlace<'_>,
    url: &str,
    reference: Option<&str>,
    paths: &[&str],
    token: Option<&str>,
    max: usize,
) -> crate::Result<Option<(String, String)>> {
    let remote = Pinned::parse(url).ok_or_else(|| {
        Error::failed(format_args!(
            "not an http(s) repository URL: {}",
            redact(url, None)
        ))
    })?;
    let _scratch = Scratch::make(&place.scratch)?;
    let host = HostRepo::new(place)?;
    host.must(&["init", "--quiet", "--bare", "--template="], None)
        .await?;
    let allow = format!("protocol.{}.allow=always", remote.scheme);
    let filter = format!("--filter=blob:limit={}", max + 1);
    let refspec = format!("+{}:refs/warren/file", reference.unwrap_or("HEAD"));
    host.must(&["remote", "add", "origin", remote.url], None)
        .await?;
    let fetched = host
        .run(
            &[
                "-c",
                &allow,
                "fetch",
                "--quiet",
                "--depth",
                "1",
                "--no-tags",
                "--no-write-fetch-head",
                &filter,
                "origin",
                "--",
                &refspec,
            ],
            token.map(|t| (t, remote.origin.as_str())),
        )
        .await?;
    if !fetched.ok() {
        return Err(Error::failed(format_args!(
            "fetching {}: {}",
            redact(url, token),
            redact(fetched.stderr.trim(), token)
        )));
    }
    for path in paths {
        let object = format!("refs/warren/file:{path}");
        let kind = host.run(&["cat-file", "-t", &object], None).await?;
        if !kind.ok() {
            // Not in the tree, or a blob the filter left behind (too large).
            let listed = host
                .run(
                    &["ls-tree", "--name-only", "refs/warren/file", "--", path],
                    None,
                )
                .await?;
            if listed.ok() && !listed.stdout.trim().is_empty() {
                return Err(too_large(path, max));
            }
            continue;
        }
        if kind.stdout.trim() != "blob" {
            continue;
        }
        let size: usize = host
            .must(&["cat-file", "-s", &object], None)
            .await?
            .parse()
            .unwrap_or(usize::MAX);
        if size > max {
            return Err(too_large(path, max));
        }
        let text = host.run(&["cat-file", "blob", &object], None).await?;
        if !text.ok() {
            return Err(Error::failed(format_args!(
                "reading {path}: {}",
                text.stderr.trim()
            )));
        }
        return Ok(Some(((*path).to_owned(), text.stdout)));
    }
    Ok(None)
}

fn too_large(path: &str, max: usize) -> Error {
    Error::refused("too_large", format!("{path} is larger than {max} bytes"))
}

/// Settings of every git run on the runner's side of a push: no transport but the
/// one a command adds, no redirects (a token for one host never follows one to
/// another), no helpers, hooks, monitor or signing.
const HOST_CONFIG: [&str; 14] = [
    "-c",
    "protocol.allow=never",
    "-c",
    "http.followRedirects=false",
    "-c",
    "credential.helper=",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "core.askPass=",
];

/// The runner's environment variables a push may use: where git is, and the
/// operator's proxy and certificate settings. Nothing else of the runner's (or of
/// any sandbox's) environment reaches it.
const HOST_ENV: [&str; 13] = [
    "PATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Git on the runner host in the bare repository `<scratch>/repo.git`, reading no
/// configuration file (no system or global config, a clean environment, `HOME` in
/// the scratch directory): only what its command line says.
struct HostRepo {
    scratch: PathBuf,
    askpass: PathBuf,
}

impl HostRepo {
    fn new(place: &PushPlace<'_>) -> Result<HostRepo> {
        let target = std::fs::canonicalize(place.agent_bin)
            .with_context(|| format!("finding {}", place.agent_bin.display()))?;
        let askpass = place.scratch.join("askpass");
        std::os::unix::fs::symlink(&target, &askpass)
            .with_context(|| format!("creating {}", askpass.display()))?;
        Ok(HostRepo {
            scratch: place.scratch.clone(),
            askpass,
        })
    }

    /// `git <args>`; `secret` is the password and the only `scheme://host` the
    /// askpass helper gives it to.
    async fn run(&self, args: &[&str], secret: Option<(&str, &str)>) -> Result<GitOutput> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.env_clear();
        for name in HOST_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
        }
        cmd.args(HOST_CONFIG)
            .args(args)
            .current_dir(&self.scratch)
            .env("GIT_DIR", self.scratch.join("repo.git"))
            .env("HOME", &self.scratch)
            .env("XDG_CONFIG_HOME", &self.scratch)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_SYSTEM", "/dev/null")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", &self.askpass)
            // A partial fetch's missing blobs stay missing: never fetched behind
            // a command's back.
            .env("GIT_NO_LAZY_FETCH", "1")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some((password, origin)) = secret {
            cmd.env("WARREN_GIT_PASSWORD", password)
                .env("WARREN_GIT_ORIGIN", origin);
        }
        let out = cmd.output().await.context("running git")?;
        Ok(GitOutput {
            code: out.status.code().map_or(-1, i64::from),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn must(&self, args: &[&str], secret: Option<(&str, &str)>) -> Result<String> {
        let out = self.run(args, secret).await?;
        if !out.ok() {
            anyhow::bail!(
                "git {} failed (exit {}): {}",
                args.iter()
                    .find(|a| !a.starts_with('-') && !a.contains('='))
                    .copied()
                    .unwrap_or_default(),
                out.code,
                redact(out.stderr.trim(), secret.map(|(p, _)| p))
            );
        }
        Ok(out.stdout.trim().to_owned())
    }
}

/// Clones `url` into `dest` (at `base` if given) and checks out a new `branch`.
/// `dest` is given to git as is (a path in the sandbox).
pub async fn clone<E: GitExec>(
    exec: &E,
    url: &str,
    dest: &str,
    base: Option<&str>,
    branch: &str,
    token: Option<&str>,
) -> Result<()> {
    let mut args = vec!["clone", "--quiet"];
    if let Some(base) = base {
        args.extend(["--branch", base]);
    }
    args.extend(["--", url, dest]);
    must(exec, &args, token).await?;
    must(
        exec,
        &["-C", dest, "checkout", "--quiet", "-B", branch],
        None,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_pinned() {
        let pinned = Pinned::parse("https://x:t@GitHub.com:8443/acme/widgets.git").unwrap();
        assert_eq!(
            (pinned.scheme, pinned.origin.as_str()),
            ("https", "https://github.com:8443")
        );
        assert_eq!(
            Pinned::parse("http://10.0.0.5/a/b").map(|p| p.origin),
            Some("http://10.0.0.5".to_owned())
        );
        for url in [
            "origin",
            "/srv/repo.git",
            "file:///srv/repo.git",
            "ext::sh -c id",
            "ssh://git@github.com/a/b",
            "git@github.com:a/b",
            "git://github.com/a/b",
            "https://github.com",
            "https://gith ub.com/a/b",
            "https:///a/b",
        ] {
            assert!(Pinned::parse(url).is_none(), "{url}");
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("fatal: https://x:tok@github.com/a/b failed", None),
            "fatal: https://<redacted>@github.com/a/b failed"
        );
        assert_eq!(
            redact("token tok here", Some("tok")),
            "<redacted>en <redacted> here"
        );
        assert_eq!(redact("plain", Some("")), "plain");
        assert_eq!(
            redact("file:///srv/repo.git and https://h/x", None),
            "file:///srv/repo.git and https://h/x"
        );
    }
}
