//! Git in a sandbox's workspace, the same for every backend: cloning at create and
//! the API's commit-and-push. A backend supplies [`GitExec`] (how to run `git` in
//! the workspace as the sandbox's user); a token reaches git only through that
//! run's environment (`WARREN_GIT_PASSWORD`, read by the askpass helper), never
//! through arguments, git config, the workspace or a log.

use anyhow::Result;

use crate::Error;

/// Settings every git run gets: no credential helper (one from a global config
/// could store the token), no prompts for signing keys.
pub const SAFE_CONFIG: [&str; 4] = ["-c", "credential.helper=", "-c", "commit.gpgsign=false"];

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
}

/// What to commit and where to push it.
pub struct CommitPush<'a> {
    pub message: &'a str,
    pub branch: &'a str,
    pub author_name: &'a str,
    pub author_email: &'a str,
    pub base: Option<&'a str>,
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

/// Commits everything in the workspace on `req.branch` and pushes it.
pub async fn commit_and_push<E: GitExec>(exec: &E, req: &CommitPush<'_>) -> crate::Result<Pushed> {
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
    let commit = must(exec, &["rev-parse", "HEAD"], None).await?;
    let remote = req.remote_url.unwrap_or("origin");
    let refspec = format!("HEAD:refs/heads/{}", req.branch);
    let pushed = run(
        exec,
        &["push", "--quiet", "--no-verify", "--", remote, &refspec],
        req.token,
    )
    .await?;
    if !pushed.ok() {
        let message = redact(pushed.stderr.trim(), req.token);
        return Err(Error::refused(
            "push_refused",
            format!("the remote refused the push: {message}"),
        ));
    }
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
