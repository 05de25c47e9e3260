//! `/v1/sandboxes`: create, list, get, stop, start, delete, keepalive, events and
//! the OpenSSH `Host` block — thin handlers over [`crate::lifecycle`].

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use warren_api::{CreateSandbox, ListSandboxes, NewToken};
use warren_protocol::forwards;
use warren_store::{SandboxCursor, SandboxQuery};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiQuery, IdPath};
use super::views::{self, CreatedSandbox, ErrorBody, EventList, SandboxList, SandboxView};
use crate::lifecycle::{Error, validate};

fn view(state: &ApiState, s: &warren_store::Sandbox) -> Json<SandboxView> {
    Json(views::sandbox_view(&state.lifecycle, s))
}

/// Creates a sandbox on the online runner holding the fewest; the answer carries a
/// sandbox token, shown once.
#[utoipa::path(post, path = "/v1/sandboxes", operation_id = "create_sandbox", tag = "sandboxes", request_body = CreateSandbox,
    responses(
        (status = 201, description = "created and running", body = CreatedSandbox),
        (status = 400, description = "unreadable body", body = ErrorBody),
        (status = 413, description = "body over 64 KiB", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 502, description = "the runner failed to create it (it is `failed`)",
            body = ErrorBody),
        (status = 422, description = "a field is refused, or the image is not on the runner (`image_not_found`)", body = ErrorBody),
        (status = 503, description = "no runner online (`no_runner`), or none with room (`no_capacity`, saying why)", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateSandbox>,
) -> Result<(StatusCode, Json<CreatedSandbox>), ApiError> {
    let created = state.lifecycle.create(&caller.user, body).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedSandbox {
            sandbox: views::sandbox_view(&state.lifecycle, &created.sandbox),
            token: created.token.expose().to_owned(),
        }),
    ))
}

/// Your sandboxes, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/sandboxes", operation_id = "list_sandboxes", tag = "sandboxes", params(ListSandboxes),
    responses(
        (status = 200, description = "a page", body = SandboxList),
        (status = 400, description = "bad limit or cursor", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListSandboxes>,
) -> Result<Response, ApiError> {
    let limit = match params.limit {
        Some(l) => validate::range("limit", l, (1, SandboxQuery::MAX_LIMIT))
            .map_err(|e| ApiError::from(Error::bad_request(e.message)))?,
        None => SandboxQuery::default().limit,
    };
    let after = match params.cursor.as_deref() {
        Some(c) => Some(c.parse::<SandboxCursor>().map_err(|_| {
            ApiError::from(Error::bad_request("cursor is not a valid page cursor"))
        })?),
        None => None,
    };
    let query = SandboxQuery {
        limit,
        after,
        include_deleted: params.include_deleted,
    };
    let page = state.lifecycle.list(&caller.user, &query).await?;
    // A page the store still remembers was encoded by an earlier request: its
    // bytes are reused (dashboards poll this route while nothing changes).
    let body = page.rendered(|page| {
        // Plain structs of strings and numbers: encoding them cannot fail.
        serde_json::to_vec(&views::sandbox_list(&state.lifecycle, page)).unwrap_or_default()
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        bytes::Bytes::from_owner(body),
    )
        .into_response())
}

/// One of your sandboxes.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", operation_id = "get_sandbox", tag = "sandboxes", params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 200, description = "the sandbox", body = SandboxView),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<SandboxView>, ApiError> {
    let sandbox = state.lifecycle.managed(&caller.user, &id).await?;
    Ok(view(&state, &sandbox))
}

/// Stops a running sandbox, keeping its workspace (stopping a stopped one is fine).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/stop", operation_id = "stop_sandbox", tag = "sandboxes", params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 200, description = "stopped", body = SandboxView),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
        (status = 409, description = "neither running nor stopped", body = ErrorBody),
        (status = 502, description = "the runner failed", body = ErrorBody),
        (status = 503, description = "the runner is offline", body = ErrorBody),
    ))]
pub async fn stop(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<SandboxView>, ApiError> {
    let sandbox = state.lifecycle.stop(&caller.user, &id).await?;
    Ok(view(&state, &sandbox))
}

/// Starts a stopped sandbox again (starting a running one is fine).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/start", operation_id = "start_sandbox", tag = "sandboxes", params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 200, description = "running", body = SandboxView),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
        (status = 409, description = "neither stopped nor running", body = ErrorBody),
        (status = 502, description = "the runner failed", body = ErrorBody),
        (status = 503, description = "the runner is offline", body = ErrorBody),
    ))]
pub async fn start(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<SandboxView>, ApiError> {
    let sandbox = state.lifecycle.start(&caller.user, &id).await?;
    Ok(view(&state, &sandbox))
}

/// Deletes a sandbox and its workspace (deleting a deleted one is fine).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", operation_id = "delete_sandbox", tag = "sandboxes", params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
        (status = 409, description = "still being created", body = ErrorBody),
        (status = 502, description = "the runner failed", body = ErrorBody),
        (status = 503, description = "the runner is offline", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    state.lifecycle.delete(&caller.user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes every token of the sandbox handed out so far (at create, or by an
/// earlier call) and returns a new one, shown once; logins with the old ones end.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/token", operation_id = "rotate_sandbox_token", tag = "sandboxes", params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 201, description = "the new token; every earlier one is refused from now on", body = NewToken),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
        (status = 409, description = "deleted", body = ErrorBody),
    ))]
pub async fn rotate_token(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    let token = state.lifecycle.rotate_token(&caller.user, &id).await?;
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            token: token.expose().to_owned(),
        }),
    ))
}

/// Counts as activity for the idle reaper.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/keepalive", operation_id = "keep_sandbox_alive", tag = "sandboxes", params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 204, description = "noted"),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
        (status = 409, description = "not running", body = ErrorBody),
        (status = 502, description = "the runner failed", body = ErrorBody),
        (status = 503, description = "the runner is offline", body = ErrorBody),
    ))]
pub async fn keepalive(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    state.lifecycle.keepalive(&caller.user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The sandbox's lifecycle changes with their reasons, oldest first.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/events", operation_id = "list_sandbox_events", tag = "sandboxes", params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 200, description = "its history", body = EventList),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
    ))]
pub async fn events(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<EventList>, ApiError> {
    let events = state.lifecycle.events(&caller.user, &id).await?;
    Ok(Json(EventList {
        events: events.iter().map(views::event_view).collect(),
    }))
}

/// An OpenSSH `Host` block for the sandbox (for `~/.ssh/config`, VS Code
/// Remote-SSH), with a `LocalForward` line for each port its devcontainer.json
/// forwards (`forwardPorts`, 1024 and up: each on your loopback to the same port
/// on the sandbox's).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/ssh-config", operation_id = "get_ssh_config", tag = "ssh", params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 200, description = "a Host block", body = String,
            content_type = "text/plain"),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
    ))]
pub async fn ssh_config(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let sandbox = state.lifecycle.managed(&caller.user, &id).await?;
    let events = state
        .lifecycle
        .events(&caller.user, sandbox.id.as_str())
        .await?;
    let ports = forwards::forward_ports(events.iter().map(|e| e.reason.as_str()));
    let id = sandbox.id.as_str();
    let mut text = format!(
        "# Warren sandbox {id} (account {owner})\n\
         # Logs in with an SSH key registered to {owner} (add `IdentityFile <path>` if\n\
         # ssh does not offer that key by default), or with the sandbox's token as the\n\
         # password. Pin the gateway's host key: save GET /v1/host-keys to a file and\n\
         # add `UserKnownHostsFile <that file>`.\n\
         Host {id}\n\
         \x20   HostName {host}\n\
         \x20   Port {port}\n\
         \x20   User {id}\n",
        owner = caller.user.name,
        host = state.lifecycle.ssh_host,
        port = state.lifecycle.ssh_port,
    );
    text.push_str(&forwards::local_forwards(&ports));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}
