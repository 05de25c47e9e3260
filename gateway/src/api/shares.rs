//! Sharing a sandbox: its owner lets other users ssh into it (relay and jump mode).
//! Lifecycle, events and pull requests stay the owner's.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use warren_api::{NewShare, ShareList};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, IdPath};
use super::views::ErrorBody;
use crate::store::StoreError;

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
    let sandbox = state.lifecycle.owned(&caller.user, &id).await?;
    let user = match state.lifecycle.store.get_user_by_name(&body.user).await {
        Ok(user) => user,
        Err(StoreError::NotFound(_)) | Err(StoreError::Invalid(_)) => {
            return Err(ApiError::not_found("user"));
        }
        Err(e) => return Err(e.into()),
    };
    if user.id == caller.user.id {
        return Err(ApiError::invalid("a sandbox is always its owner's"));
    }
    let had_secrets = state
        .lifecycle
        .store
        .sandbox_shared_with_secrets(&sandbox.id)
        .await?
        .contains(&user.id);
    state
        .lifecycle
        .store
        .share_sandbox(&sandbox.id, &user.id, body.secrets)
        .await?;
    crate::lifecycle::agent_keys::sync_sandbox(&state.lifecycle, &sandbox).await;
    // Taking secrets away must bite at once, as an unshare does (once the agent's
    // keys changed, so that a jump-mode reconnect meets the new ones).
    if had_secrets && !body.secrets {
        state.lifecycle.live.end_user_on_sandbox(
            &user.id,
            &sandbox.id,
            &format!("{} is now shared with you without its secrets", sandbox.id),
        );
    }
    Ok((StatusCode::CREATED, Json(names(&state, &sandbox.id).await?)))
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
    let sandbox = state.lifecycle.owned(&caller.user, &id).await?;
    Ok(Json(names(&state, &sandbox.id).await?))
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
    let sandbox = state.lifecycle.owned(&caller.user, &id).await?;
    let user = match state.lifecycle.store.get_user_by_name(&name).await {
        Ok(user) => user,
        Err(StoreError::NotFound(_)) | Err(StoreError::Invalid(_)) => {
            return Err(ApiError::not_found("share"));
        }
        Err(e) => return Err(e.into()),
    };
    if state
        .lifecycle
        .store
        .unshare_sandbox(&sandbox.id, &user.id)
        .await?
    {
        crate::lifecycle::agent_keys::sync_sandbox(&state.lifecycle, &sandbox).await;
        state.lifecycle.live.end_user_on_sandbox(
            &user.id,
            &sandbox.id,
            &format!("{} is no longer shared with you", sandbox.id),
        );
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("share"))
    }
}

async fn names(state: &ApiState, sandbox: &warren_keys::SandboxId) -> Result<ShareList, ApiError> {
    let mut users = Vec::new();
    for id in state.lifecycle.store.sandbox_shared_with(sandbox).await? {
        users.push(state.lifecycle.store.get_user(&id).await?.name);
    }
    let mut with_secrets = Vec::new();
    for id in state
        .lifecycle
        .store
        .sandbox_shared_with_secrets(sandbox)
        .await?
    {
        with_secrets.push(state.lifecycle.store.get_user(&id).await?.name);
    }
    Ok(ShareList {
        users,
        with_secrets,
    })
}
