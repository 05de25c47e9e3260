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

mod host;

use host::{Pinned, push_pinned};
pub use host::{TreeRead, read_file_at, read_tree_at};

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
