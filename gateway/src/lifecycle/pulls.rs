//! Pull requests: commit a sandbox's work on its branch, push
//! it with the credentials given at create time to the repository given at create
//! time (never the workspace's own remotes, which sandbox code can rewrite), open a
//! GitHub pull request; and merge one.
//!
//! The push token is the create request's `GITHUB_TOKEN`, kept in the gateway's
//! memory only (after a gateway restart it is asked of the runner, which holds the
//! sandbox's env where the sandbox runs); it travels to the runner in the control request and from there to
//! git only through the environment of the git run (an askpass helper answers
//! git's prompt), never into git config, the workspace or a log.

use std::sync::Arc;

/// The API's request bodies and answers for pull requests.
pub use warren_api::{CreatePullRequest, MergePullRequest, MergedView, PullRequestView};
use warren_protocol::{Request, Response, Secret};
use warren_store::{Sandbox, SandboxState, User};

use super::specs::remembered_spec;
use super::{Error, ErrorCode, Lifecycle, Result, detached, validate};
use crate::github::RepoRef;

/// The env variable of the create request holding the token for pushes and GitHub.
const TOKEN_ENV: &str = "GITHUB_TOKEN";
pub const MAX_TITLE: usize = 256;
pub const MAX_PR_BODY: usize = 60_000;

fn upstream(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::UpstreamError, message)
}

/// The sandbox's repository as given at create (the URL pushes go to, whatever
/// the workspace's `origin` says now) and on GitHub, or a 409 saying why there is
/// none.
fn repo_of(lc: &Lifecycle, sandbox: &Sandbox) -> Result<(String, RepoRef), Error> {
    let url = sandbox.repo.as_deref().ok_or_else(|| {
        Error::new(
            ErrorCode::NoRepo,
            "the sandbox was created without a repo; pull requests need one",
        )
    })?;
    // Checked again: a sandbox made before URLs were checked at create may name a
    // local path, and the operator may have withdrawn http since.
    let pushable = match validate::repo(url) {
        Ok(validate::RepoTransport::Https) => true,
        Ok(validate::RepoTransport::Http) => lc.allows_http_repos(),
        Err(_) => false,
    };
    if !pushable {
        return Err(Error::new(
            ErrorCode::NoRepo,
            "the sandbox's repo is not an https:// URL; pull requests push only there",
        ));
    }
    let repo = RepoRef::parse(url).ok_or_else(|| {
        Error::new(
            ErrorCode::NoRepo,
            "the sandbox's repo URL does not name an owner/repository",
        )
    })?;
    Ok((url.to_owned(), repo))
}

/// The token given at create time (the repo's token, else `env.GITHUB_TOKEN`):
/// from the gateway's memory or, after a gateway restart, from the runner.
async fn token_of(lc: &Lifecycle, sandbox: &Sandbox) -> Result<Secret, Error> {
    let spec = remembered_spec(lc, sandbox).await;
    spec.repo
        .and_then(|r| r.token)
        .or_else(|| spec.env.get(TOKEN_ENV).cloned())
        .filter(|t| !t.expose().is_empty())
        .ok_or_else(|| {
            Error::new(
                ErrorCode::NoCredentials,
                "no GITHUB_TOKEN is known for this sandbox: none was given in env at \
                 create, or its runner no longer holds it",
            )
        })
}

fn check_create(body: &CreatePullRequest) -> Result<(), Error> {
    let title = body.title.trim();
    if title.is_empty() || body.title.chars().count() > MAX_TITLE {
        return Err(Error::invalid(format!(
            "title must be 1 to {MAX_TITLE} characters"
        )));
    }
    if body.title.chars().any(char::is_control) {
        return Err(Error::invalid("title must not contain control characters"));
    }
    if let Some(text) = &body.body {
        if text.len() > MAX_PR_BODY {
            return Err(Error::invalid(format!(
                "body is longer than {MAX_PR_BODY} bytes"
            )));
        }
        if text.contains('\0') {
            return Err(Error::invalid("body contains a NUL byte"));
        }
    }
    if let Some(base) = &body.base {
        validate::branch(base).map_err(|_| Error::invalid("base is not a valid branch name"))?;
    }
    Ok(())
}

impl Lifecycle {
    /// Commits the sandbox's changes on its branch, pushes them with the token given
    /// at create, and opens a pull request on GitHub.
    pub async fn open_pull(
        self: &Arc<Self>,
        owner: &User,
        id: &str,
        body: CreatePullRequest,
    ) -> Result<PullRequestView> {
        check_create(&body)?;
        let sandbox = self.managed(owner, id).await?;
        let (url, repo) = repo_of(self, &sandbox)?;
        let token = token_of(self, &sandbox).await?;
        let github = self.github();
        let author = owner.name.clone();
        let lc = self.clone();
        // Its own task: a client hanging up must not leave a push half done.
        let work = async move {
            let _guard = lc.lock(&sandbox.id).await;
            let sandbox = lc.store.get_sandbox(&sandbox.id).await?;
            if sandbox.state != SandboxState::Running {
                return Err(Error::conflict(format!(
                    "a sandbox in state {} cannot make a pull request (start it first)",
                    sandbox.state
                )));
            }
            let runner = sandbox
                .runner_id
                .clone()
                .ok_or_else(|| Error::conflict("the sandbox has no runner"))?;
            let branch = sandbox
                .branch
                .clone()
                .unwrap_or_else(|| format!("warren/{}", sandbox.id));
            let mut message = body.title.trim().to_owned();
            if let Some(text) = body.body.as_deref().filter(|t| !t.trim().is_empty()) {
                message.push_str("\n\n");
                message.push_str(text.trim());
            }
            let request = Request::CommitAndPush {
                sandbox: sandbox.id.clone(),
                message,
                branch: branch.clone(),
                author_name: author.clone(),
                author_email: format!("{author}@users.warren.invalid"),
                base: body.base.clone(),
                // Pinned: the runner pushes here, never to the workspace's remotes.
                remote_url: Some(url),
                token: Some(token.clone()),
            };
            let (commit, default_branch) = match lc.hub.control(&runner, &request).await? {
                Response::Pushed {
                    commit,
                    default_branch,
                    ..
                } => (commit, default_branch),
                Response::Refused { code, message } => {
                    // The runner's refusals that are the API's codes too, and its own.
                    return Err(match (code.parse::<ErrorCode>(), code.as_str()) {
                        (Ok(code @ (ErrorCode::NothingToCommit | ErrorCode::NoRepo)), _) => {
                            Error::new(code, message)
                        }
                        (_, "push_refused") => upstream(message),
                        (_, "invalid_branch") => Error::invalid(message),
                        _ => Error::runner(message),
                    });
                }
                Response::Error { message } => return Err(Error::runner(message)),
                other => {
                    return Err(Error::runner(format!(
                        "unexpected answer from the runner: {other:?}"
                    )));
                }
            };
            // The default branch is read from the workspace: a name the sandbox
            // chose, so checked like any other.
            let default_branch = default_branch.filter(|b| validate::branch(b).is_ok());
            let base = body
                .base
                .clone()
                .or(default_branch)
                .unwrap_or_else(|| "main".to_owned());
            let pull = github
                .create_pull(
                    token.expose(),
                    &repo,
                    body.title.trim(),
                    &branch,
                    &base,
                    body.body.as_deref(),
                )
                .await?;
            tracing::info!(sandbox = %sandbox.id, repo = %repo, number = pull.number,
                "pull request opened");
            Ok(PullRequestView {
                number: pull.number,
                url: pull.url,
                branch,
                base,
                commit,
            })
        };
        detached(work).await
    }

    /// Merges pull request `number` of the sandbox's repository on GitHub.
    pub async fn merge_pull(
        &self,
        owner: &User,
        id: &str,
        number: &str,
        body: MergePullRequest,
    ) -> Result<MergedView> {
        let sandbox = self.managed(owner, id).await?;
        let number = number
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
            .ok_or_else(|| Error::not_found("pull request"))?;
        let (_, repo) = repo_of(self, &sandbox)?;
        let token = token_of(self, &sandbox).await?;
        let merged = self
            .github()
            .merge_pull(token.expose(), &repo, number, body.method)
            .await?;
        tracing::info!(sandbox = %sandbox.id, repo = %repo, number, merged = merged.merged,
            "pull request merge");
        Ok(MergedView {
            merged: merged.merged,
            sha: merged.sha,
            message: merged.message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> CreatePullRequest {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn create_checks() {
        assert!(check_create(&body(r#"{"title":"Fix it"}"#)).is_ok());
        assert!(check_create(&body(r#"{"title":"Fix","body":"x","base":"main"}"#)).is_ok());
        for bad in [
            r#"{"title":""}"#,
            r#"{"title":"   "}"#,
            r#"{"title":"a\nb"}"#,
            r#"{"title":"x","base":"../etc"}"#,
            r#"{"title":"x","base":"-f"}"#,
        ] {
            assert!(check_create(&body(bad)).is_err(), "{bad}");
        }
        assert!(check_create(&body(&format!(r#"{{"title":"{}"}}"#, "x".repeat(257)))).is_err());
        assert!(serde_json::from_str::<CreatePullRequest>(r#"{"titel":"x"}"#).is_err());
        assert!(serde_json::from_str::<MergePullRequest>(r#"{"method":"octopus"}"#).is_err());
    }
}
