//! `/v1/sandboxes/{id}/pull-requests`: commit a sandbox's work on its branch, push
//! it with the credentials given at create time, open a GitHub pull request; and
//! merge one.
//!
//! The push token is the create request's `GITHUB_TOKEN`, kept in the gateway's
//! memory only (after a gateway restart it is asked of the runner, which holds the
//! sandbox's env where the sandbox runs); it travels to the runner in the control request and from there to
//! git only through the environment of the git run (an askpass helper answers
//! git's prompt), never into git config, the workspace or a log.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warren_protocol::{Request, Response, Secret};

use super::auth::Caller;
use super::error::{ApiError, ApiJson, IdPath, OptionalJson};
use super::sandboxes::{owned, remembered_spec};
use super::views::ErrorBody;
use super::{ApiState, validate};
use crate::github::{GitHubError, MergeMethod, RepoRef};
use crate::store::{Sandbox, SandboxState};

/// The env variable of the create request holding the token for pushes and GitHub.
const TOKEN_ENV: &str = "GITHUB_TOKEN";
pub const MAX_TITLE: usize = 256;
pub const MAX_PR_BODY: usize = 60_000;

/// A pull request to open from the sandbox's work.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePullRequest {
    /// The pull request's title (1 to 256 characters), also the commit's subject.
    title: String,
    /// Its description (Markdown, at most 60000 bytes), also the commit's body.
    body: Option<String>,
    /// The branch to merge into (default: the repository's default branch).
    base: Option<String>,
}

/// An opened pull request.
#[derive(Debug, Serialize, ToSchema)]
pub struct PullRequestView {
    pub number: u64,
    /// The pull request's page.
    pub url: String,
    /// The branch pushed (the pull request's head).
    pub branch: String,
    /// The base it targets.
    pub base: String,
    /// The commit pushed.
    pub commit: String,
}

/// How to merge.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergePullRequest {
    /// `merge` (default), `squash` or `rebase`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    method: MergeMethod,
}

/// A merge's outcome, as GitHub reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MergedView {
    pub merged: bool,
    pub sha: Option<String>,
    pub message: Option<String>,
}

fn upstream(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
}

impl From<GitHubError> for ApiError {
    fn from(e: GitHubError) -> ApiError {
        upstream(e.to_string())
    }
}

/// The sandbox's repository on GitHub, or a 409 saying why there is none.
fn repo_of(sandbox: &Sandbox) -> Result<(String, RepoRef), ApiError> {
    let url = sandbox.repo.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_repo",
            "the sandbox was created without a repo; pull requests need one",
        )
    })?;
    let repo = RepoRef::parse(url).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_repo",
            "the sandbox's repo URL does not name an owner/repository",
        )
    })?;
    Ok((url.to_owned(), repo))
}

/// The token given at create time (the repo's token, else `env.GITHUB_TOKEN`):
/// from the gateway's memory or, after a gateway restart, from the runner.
async fn token_of(state: &ApiState, sandbox: &Sandbox) -> Result<String, ApiError> {
    let spec = remembered_spec(state, sandbox).await;
    spec.repo
        .and_then(|r| r.token)
        .or_else(|| spec.env.get(TOKEN_ENV).cloned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_credentials",
                "no GITHUB_TOKEN is known for this sandbox: none was given in env at \
                 create, or its runner no longer holds it",
            )
        })
}

fn check_create(body: &CreatePullRequest) -> Result<(), ApiError> {
    let title = body.title.trim();
    if title.is_empty() || body.title.chars().count() > MAX_TITLE {
        return Err(ApiError::invalid(format!(
            "title must be 1 to {MAX_TITLE} characters"
        )));
    }
    if body.title.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "title must not contain control characters",
        ));
    }
    if let Some(text) = &body.body {
        if text.len() > MAX_PR_BODY {
            return Err(ApiError::invalid(format!(
                "body is longer than {MAX_PR_BODY} bytes"
            )));
        }
        if text.contains('\0') {
            return Err(ApiError::invalid("body contains a NUL byte"));
        }
    }
    if let Some(base) = &body.base {
        validate::branch(base).map_err(|_| ApiError::invalid("base is not a valid branch name"))?;
    }
    Ok(())
}

/// Commits the sandbox's changes on its branch, pushes them and opens a pull
/// request on GitHub.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/pull-requests", operation_id = "create_pull_request",
    tag = "sandboxes", request_body = CreatePullRequest,
    params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 201, description = "pushed and opened", body = PullRequestView),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
        (status = 409, description = "nothing to commit (`nothing_to_commit`), no repo \
            (`no_repo`), no token known (`no_credentials`), or not running",
            body = ErrorBody),
        (status = 422, description = "a field is refused", body = ErrorBody),
        (status = 502, description = "the remote refused the push or GitHub refused the \
            pull request (`upstream_error`, with their message), or the runner failed",
            body = ErrorBody),
        (status = 503, description = "the runner is offline", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<CreatePullRequest>,
) -> Result<(StatusCode, Json<PullRequestView>), ApiError> {
    check_create(&body)?;
    let sandbox = owned(&state, &caller.user, &id).await?;
    let (_, repo) = repo_of(&sandbox)?;
    let token = token_of(&state, &sandbox).await?;
    let github = state.github();
    let author = caller.user.name.clone();
    let task_state = state.clone();
    // Its own task: a client hanging up must not leave a push half done.
    let work = async move {
        let state = task_state;
        let _guard = state.lock(&sandbox.id).await;
        let sandbox = state.store.get_sandbox(&sandbox.id).await?;
        if sandbox.state != SandboxState::Running {
            return Err(ApiError::conflict(format!(
                "a sandbox in state {} cannot make a pull request (start it first)",
                sandbox.state
            )));
        }
        let runner = sandbox
            .runner_id
            .clone()
            .ok_or_else(|| ApiError::conflict("the sandbox has no runner"))?;
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
            remote_url: None,
            token: Some(Secret(token.clone())),
        };
        let (commit, default_branch) = match state.hub.control(&runner, &request).await? {
            Response::Pushed {
                commit,
                default_branch,
                ..
            } => (commit, default_branch),
            Response::Refused { code, message } => {
                return Err(match code.as_str() {
                    "nothing_to_commit" => {
                        ApiError::new(StatusCode::CONFLICT, "nothing_to_commit", message)
                    }
                    "no_repo" => ApiError::new(StatusCode::CONFLICT, "no_repo", message),
                    "push_refused" => upstream(message),
                    "invalid_branch" => ApiError::invalid(message),
                    _ => ApiError::runner(message),
                });
            }
            Response::Error { message } => return Err(ApiError::runner(message)),
            other => {
                return Err(ApiError::runner(format!(
                    "unexpected answer from the runner: {other:?}"
                )));
            }
        };
        let base = body
            .base
            .clone()
            .or(default_branch)
            .unwrap_or_else(|| "main".to_owned());
        let pull = github
            .create_pull(
                &token,
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
    let view = match tokio::spawn(work).await {
        Ok(result) => result?,
        Err(e) => {
            tracing::error!("a pull request task failed: {e}");
            return Err(ApiError::internal());
        }
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Merges one of the sandbox repository's pull requests on GitHub.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/pull-requests/{number}/merge",
    operation_id = "merge_pull_request", tag = "sandboxes",
    request_body = MergePullRequest,
    params(
        ("id" = String, Path, description = "sandbox id (`sbx-…`)"),
        ("number" = u64, Path, description = "the pull request's number"),
    ),
    responses(
        (status = 200, description = "merged", body = MergedView),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
        (status = 409, description = "no repo (`no_repo`) or no token in memory \
            (`no_credentials`)", body = ErrorBody),
        (status = 422, description = "a field is refused", body = ErrorBody),
        (status = 502, description = "GitHub refused the merge (`upstream_error`, with its \
            message)", body = ErrorBody),
    ))]
pub async fn merge(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    path: Result<axum::extract::Path<(String, String)>, PathRejection>,
    OptionalJson(body): OptionalJson<MergePullRequest>,
) -> Result<Json<MergedView>, ApiError> {
    let axum::extract::Path((id, number)) = path?;
    let sandbox = owned(&state, &caller.user, &id).await?;
    let number = number
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
        .ok_or_else(|| ApiError::not_found("pull request"))?;
    let (_, repo) = repo_of(&sandbox)?;
    let token = token_of(&state, &sandbox).await?;
    let merged = state
        .github()
        .merge_pull(&token, &repo, number, body.method)
        .await?;
    tracing::info!(sandbox = %sandbox.id, repo = %repo, number, merged = merged.merged,
        "pull request merge");
    Ok(Json(MergedView {
        merged: merged.merged,
        sha: merged.sha,
        message: merged.message,
    }))
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
