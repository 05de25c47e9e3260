//! Snapshots and forks (issue 26): `POST /v1/sandboxes/{id}/snapshots`,
//! `GET /v1/snapshots`, `GET|DELETE /v1/snapshots/{id}` and
//! `POST /v1/sandboxes/{id}/fork` — thin handlers over
//! [`crate::lifecycle::snapshots`]. A create from a snapshot is `POST /v1/sandboxes`
//! with `snapshot`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, IdPath, OptionalJson};
use super::views::{ErrorBody, ForkedView, SnapshotList, SnapshotView, forked_view, snapshot_view};
use crate::lifecycle::snapshots::{ForkSandbox, TakeSnapshot};

/// Snapshots a running sandbox's file system (its workspace and everything
/// installed in it); the sandbox is frozen only for the capture (`frozen_ms`).
/// Processes are not captured.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshots", operation_id = "create_snapshot",
    tag = "sandboxes", request_body = TakeSnapshot,
    params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 201, description = "taken", body = SnapshotView),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
        (status = 409, description = "not running (`not_running`), or its runner keeps \
            no snapshots (`not_supported`)", body = ErrorBody),
        (status = 422, description = "a field is refused", body = ErrorBody),
        (status = 503, description = "the runner is offline", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
    OptionalJson(body): OptionalJson<TakeSnapshot>,
) -> Result<(StatusCode, Json<SnapshotView>), ApiError> {
    let snapshot = state.lifecycle.snapshot(&caller.user, &id, body).await?;
    Ok((StatusCode::CREATED, Json(snapshot_view(&snapshot))))
}

/// Your snapshots (an admin's: everyone's), newest first.
#[utoipa::path(get, path = "/v1/snapshots", operation_id = "list_snapshots", tag = "sandboxes",
    responses((status = 200, description = "the snapshots", body = SnapshotList)))]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<SnapshotList>, ApiError> {
    let snapshots = state.lifecycle.snapshots(&caller.user).await?;
    Ok(Json(SnapshotList {
        snapshots: snapshots.iter().map(snapshot_view).collect(),
    }))
}

/// One snapshot.
#[utoipa::path(get, path = "/v1/snapshots/{id}", operation_id = "get_snapshot", tag = "sandboxes",
    params(("id" = String, Path, description = "snapshot id (`snp_…`)")),
    responses(
        (status = 200, description = "the snapshot", body = SnapshotView),
        (status = 404, description = "no such snapshot of yours", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<SnapshotView>, ApiError> {
    let snapshot = state.lifecycle.visible_snapshot(&caller.user, &id).await?;
    Ok(Json(snapshot_view(&snapshot)))
}

/// Deletes a snapshot. Sandboxes made from it keep running; its storage goes with
/// the last of them.
#[utoipa::path(delete, path = "/v1/snapshots/{id}", operation_id = "delete_snapshot", tag = "sandboxes",
    params(("id" = String, Path, description = "snapshot id (`snp_…`)")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such snapshot of yours", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    state.lifecycle.delete_snapshot(&caller.user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Forks a running sandbox into `count` new ones (1 to 16), each its own SSH host
/// with its own token, network, copy-on-write file system and git branch
/// (`warren/<fork-id>`, or `<branch_prefix>-<n>`) made from the source's HEAD with
/// its uncommitted changes. Processes are not carried over.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/fork", operation_id = "fork_sandbox",
    tag = "sandboxes", request_body = ForkSandbox,
    params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 201, description = "forked", body = ForkedView),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
        (status = 409, description = "not running, its runner keeps no snapshots, or \
            its runner has no room for that many forks (`conflict`, saying which)",
            body = ErrorBody),
        (status = 422, description = "count out of 1..16, or a refused branch prefix",
            body = ErrorBody),
        (status = 503, description = "the runner is offline", body = ErrorBody),
    ))]
pub async fn fork(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
    OptionalJson(body): OptionalJson<ForkSandbox>,
) -> Result<(StatusCode, Json<ForkedView>), ApiError> {
    let forked = state.lifecycle.fork(&caller.user, &id, body).await?;
    Ok((
        StatusCode::CREATED,
        Json(forked_view(&state.lifecycle, &forked)),
    ))
}
