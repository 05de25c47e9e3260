//! `/v1/sandboxes/{id}/pull-requests`: open a pull request from a sandbox's work,
//! and merge one ([`crate::lifecycle::pulls`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;
use warren_api::{CreatePullRequest, MergePullRequest, MergedView, PullRequestView};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, IdPath, OptionalJson};
use super::views::ErrorBody;

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
    let view = state.lifecycle.open_pull(&caller.user, &id, body).await?;
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
    let merged = state
        .lifecycle
        .merge_pull(&caller.user, &id, &number, body)
        .await?;
    Ok(Json(merged))
}
