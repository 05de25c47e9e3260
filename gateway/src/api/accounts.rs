//! Accounts and keys: `/v1/users` (admins), `/v1/ssh-keys`, `/v1/api-keys`,
//! `/v1/runners` (admins), `/v1/host-keys`, and `/healthz`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use warren_api::{HealthQuery, NewApiKey, NewSshKey, NewUser};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiQuery, IdPath, OptionalJson};
use super::views::{
    self, ApiKeyList, CreatedApiKey, CreatedUser, ErrorBody, Health, RunnerList, SshKeyList,
    SshKeyView,
};
use crate::lifecycle::{Error, validate};

/// How long readiness waits for the store.
const STORE_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the gateway is up; with `?ready`, whether a load balancer should send it
/// users (the store answers, and at least one runner has a tunnel here).
#[utoipa::path(get, path = "/healthz", tag = "meta", security(()), params(HealthQuery),
    responses(
        (status = 200, description = "up (and ready, if asked)", body = Health),
        (status = 503, description = "not ready, and why", body = Health),
    ))]
pub async fn healthz(
    State(state): State<Arc<ApiState>>,
    ApiQuery(query): ApiQuery<HealthQuery>,
) -> Response {
    if query.ready.is_none() {
        return Json(Health {
            status: "ok".into(),
            reason: None,
            runners: None,
        })
        .into_response();
    }
    let runners = state.lifecycle.hub.online_runners().len();
    let store = tokio::time::timeout(STORE_PING_TIMEOUT, state.lifecycle.store.ping()).await;
    let reason = match store {
        Ok(Ok(())) if runners == 0 => Some("no runner connected"),
        Ok(Ok(())) => None,
        Ok(Err(_)) | Err(_) => Some("store unreachable"),
    };
    let status = if reason.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = Health {
        status: if reason.is_some() { "unready" } else { "ok" }.into(),
        reason: reason.map(str::to_owned),
        runners: Some(u64::try_from(runners).unwrap_or(u64::MAX)),
    };
    (status, Json(body)).into_response()
}

/// Creates an account (admins only); its first API key is shown once.
#[utoipa::path(post, path = "/v1/users", tag = "accounts", request_body = NewUser,
    responses(
        (status = 201, description = "created", body = CreatedUser),
        (status = 403, description = "not an admin", body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 422, description = "invalid name", body = ErrorBody),
    ))]
pub async fn create_user(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<CreatedUser>), ApiError> {
    caller.require_admin()?;
    let user = state
        .lifecycle
        .store
        .create_user(&body.name, body.admin)
        .await?;
    let key = state
        .lifecycle
        .store
        .create_api_key(&user.id, "created with the account")
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedUser {
            id: user.id.as_str().to_owned(),
            name: user.name,
            admin: user.is_admin,
            api_key: key.secret.expose().to_owned(),
        }),
    ))
}

/// Registers an SSH public key for logging in to your sandboxes.
#[utoipa::path(post, path = "/v1/ssh-keys", tag = "keys", request_body = NewSshKey,
    responses(
        (status = 201, description = "registered", body = SshKeyView),
        (status = 409, description = "already registered", body = ErrorBody),
        (status = 422, description = "not a public key", body = ErrorBody),
    ))]
pub async fn add_ssh_key(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<NewSshKey>,
) -> Result<(StatusCode, Json<SshKeyView>), ApiError> {
    let added = state
        .lifecycle
        .add_ssh_key(&caller.user, &body.public_key, body.name)
        .await?;
    Ok((StatusCode::CREATED, Json(views::ssh_key_view(&added))))
}

/// Your SSH keys.
#[utoipa::path(get, path = "/v1/ssh-keys", tag = "keys",
    responses((status = 200, description = "your keys", body = SshKeyList)))]
pub async fn list_ssh_keys(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<SshKeyList>, ApiError> {
    let keys = state.lifecycle.store.list_ssh_keys(&caller.user.id).await?;
    Ok(Json(SshKeyList {
        ssh_keys: keys.iter().map(views::ssh_key_view).collect(),
    }))
}

/// Removes one of your SSH keys.
#[utoipa::path(delete, path = "/v1/ssh-keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "SSH key id (`ssk-…`)")),
    responses(
        (status = 204, description = "removed"),
        (status = 404, description = "no such key of yours", body = ErrorBody),
    ))]
pub async fn delete_ssh_key(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    if !id.starts_with("ssk-") {
        return Err(Error::not_found("SSH key").into());
    }
    state.lifecycle.remove_ssh_key(&caller.user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates an API key; the key is shown once. The body is optional.
#[utoipa::path(post, path = "/v1/api-keys", tag = "keys", request_body = Option<NewApiKey>,
    responses(
        (status = 201, description = "created", body = CreatedApiKey),
        (status = 422, description = "invalid name", body = ErrorBody),
    ))]
pub async fn create_api_key(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    OptionalJson(body): OptionalJson<NewApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let name = body.name.unwrap_or_else(|| "api key".to_owned());
    validate::name("name", &name)?;
    let created = state
        .lifecycle
        .store
        .create_api_key(&caller.user.id, &name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            key: views::api_key_view(&created.key),
            api_key: created.secret.expose().to_owned(),
        }),
    ))
}

/// Your API keys, revoked ones included, by prefix (never the keys themselves).
#[utoipa::path(get, path = "/v1/api-keys", tag = "keys",
    responses((status = 200, description = "your keys", body = ApiKeyList)))]
pub async fn list_api_keys(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<ApiKeyList>, ApiError> {
    let keys = state.lifecycle.store.list_api_keys(&caller.user.id).await?;
    Ok(Json(ApiKeyList {
        api_keys: keys.iter().map(views::api_key_view).collect(),
    }))
}

/// Revokes one of your API keys (the one in use included).
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "API key id (`apk-…`)")),
    responses(
        (status = 204, description = "revoked"),
        (status = 404, description = "no such key of yours", body = ErrorBody),
    ))]
pub async fn revoke_api_key(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    state.lifecycle.revoke_api_key(&caller.user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every runner (admins only).
#[utoipa::path(get, path = "/v1/runners", tag = "accounts",
    responses(
        (status = 200, description = "the runners", body = RunnerList),
        (status = 403, description = "not an admin", body = ErrorBody),
    ))]
pub async fn list_runners(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<RunnerList>, ApiError> {
    caller.require_admin()?;
    let runners = state.lifecycle.store.list_runners().await?;
    let counts: std::collections::HashMap<_, _> = state
        .lifecycle
        .store
        .count_sandboxes_by_runner()
        .await?
        .into_iter()
        .collect();
    Ok(Json(RunnerList {
        runners: runners
            .iter()
            .map(|r| {
                views::runner_view(
                    r,
                    state.lifecycle.hub.is_online(&r.id),
                    counts.get(&r.id).copied().unwrap_or(0),
                )
            })
            .collect(),
    }))
}

/// The gateway's SSH host key as known_hosts lines (`[host]:port ssh-ed25519 …`).
#[utoipa::path(get, path = "/v1/host-keys", tag = "ssh",
    responses((status = 200, description = "known_hosts lines", body = String,
        content_type = "text/plain")))]
pub async fn host_keys(State(state): State<Arc<ApiState>>, _caller: Caller) -> Response {
    let text = format!(
        "{} {}\n",
        state.lifecycle.known_hosts_host(),
        state.lifecycle.host_key_line
    );
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}
