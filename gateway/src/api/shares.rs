//! Sharing a sandbox: its owner lets other users ssh into it (relay and jump mode).
//! Lifecycle, events and pull requests stay the owner's. The rules and their
//! effects are the lifecycle's ([`crate::lifecycle::shares`]); this is HTTP only.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use warren_api::{NewShare, ShareList};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, IdPath};
use super::views::{self, ErrorBody};

/// Lets another user ssh into your sandbox.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/shares", operation_id = "share_sandbox", tag = "sandboxes", params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    request_body = NewShare,
    responses(
        (status = 201, description = "shared", body = ShareList),
        (status = 404, description = "no such sandbox of yours, or no such user", body = ErrorBody),
        (status = 422, description = "sharing with yourself", body = ErrorBody),
    ))]
pub async fn share(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<NewShare>,
) -> Result<(StatusCode, Json<ShareList>), ApiError> {
    let names = state
        .lifecycle
        .share(&caller.user, &id, &body.user, body.secrets)
        .await?;
    Ok((StatusCode::CREATED, Json(views::share_list(names))))
}

/// Who your sandbox is shared with.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/shares", operation_id = "list_shares", tag = "sandboxes", params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 200, description = "the users", body = ShareList),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<ShareList>, ApiError> {
    Ok(Json(views::share_list(
        state.lifecycle.shares(&caller.user, &id).await?,
    )))
}

/// Takes a share back; that user's next login is refused.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/shares/{user}", operation_id = "unshare_sandbox", tag = "sandboxes",
    params(("id" = String, Path, description = "sandbox id (`sbx-…`)"), ("user" = String, Path, description = "account name")),
    responses(
        (status = 204, description = "no longer shared"),
        (status = 404, description = "no such sandbox of yours, or not shared with that user", body = ErrorBody),
    ))]
pub async fn unshare(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.lifecycle.unshare(&caller.user, &id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
