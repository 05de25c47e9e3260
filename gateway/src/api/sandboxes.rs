//! `/v1/sandboxes`: create, list, get, stop, start, delete, keepalive, events and
//! the OpenSSH `Host` block.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use warren_keys::{SandboxId, Scope};
use warren_protocol::{
    NetworkPolicy, RepoSpec, Request, Response as RunnerResponse, RunnerCapacity, SandboxSpec,
};

use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiQuery, IdPath};
use super::views::{CreatedSandbox, ErrorBody, EventList, EventView, SandboxList, SandboxView};
use super::{ApiState, SANDBOX_TOKEN_TTL, validate};
use crate::store::{
    NewSandbox, RunnerId, RunnerUsage, Sandbox, SandboxCursor, SandboxQuery, SandboxState,
    StoreError, User,
};

/// What the store records as the image when the request names none: the runner's
/// default image.
pub const DEFAULT_IMAGE: &str = "default";
const DEFAULT_CPUS: f64 = 1.0;
const DEFAULT_MEMORY_MB: u32 = 1024;
/// The env variable whose value, if given, is offered to git when cloning `repo`.
const REPO_TOKEN_ENV: &str = "GITHUB_TOKEN";

/// What to create. Every field is optional.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// An image reference (default: the runner's base image).
    image: Option<String>,
    /// A repository cloned into the workspace: an https/http/ssh/git/file URL,
    /// `user@host:path`, or an absolute path on the runner.
    repo: Option<String>,
    /// The branch made for the sandbox's work (default `warren/<sandbox-id>`); needs
    /// `repo`.
    branch: Option<String>,
    /// Environment for every session (at most 64; names `[A-Za-z_][A-Za-z0-9_]*`, not
    /// `WARREN_*`; values up to 32 KiB). Never stored by the gateway: it keeps it in
    /// memory, the runner in the sandbox (its container's config). `GITHUB_TOKEN`, if
    /// given, is also offered to git for cloning `repo`.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// CPUs, 0.1 to 16 (default 1).
    cpus: Option<f64>,
    /// Memory in MiB, 128 to 65536 (default 1024).
    memory_mb: Option<u32>,
    /// Stopped after this many seconds without activity, 60 to 604800 (default: the
    /// runner's).
    idle_timeout_s: Option<u32>,
    /// Deleted this many seconds after creation, 60 to 31536000 (default: never).
    ttl_s: Option<u32>,
    /// Outbound network: `{"mode":"all"}` (default), `{"mode":"none"}`, or
    /// `{"mode":"allow","cidrs":["10.0.0.0/8"]}`.
    #[schema(value_type = Option<Object>)]
    network: Option<NetworkPolicy>,
}

/// Checks every field of a create request; nothing is touched before this passes.
fn check_create(body: &CreateSandbox) -> Result<(), ApiError> {
    if let Some(image) = &body.image {
        validate::image(image)?;
    }
    if let Some(repo) = &body.repo {
        validate::repo(repo)?;
    }
    if let Some(branch) = &body.branch {
        if body.repo.is_none() {
            return Err(ApiError::invalid("branch needs repo"));
        }
        validate::branch(branch)?;
    }
    validate::env(&body.env)?;
    if let Some(cpus) = body.cpus {
        validate::range("cpus", cpus, validate::CPUS)?;
    }
    if let Some(memory) = body.memory_mb {
        validate::range("memory_mb", memory, validate::MEMORY_MB)?;
    }
    if let Some(idle) = body.idle_timeout_s {
        validate::range("idle_timeout_s", idle, validate::IDLE_TIMEOUT_S)?;
    }
    if let Some(ttl) = body.ttl_s {
        validate::range("ttl_s", ttl, validate::TTL_S)?;
    }
    if let Some(network) = &body.network {
        validate::network(network)?;
    }
    Ok(())
}

/// The runner's view of a stored sandbox, when the create-time spec is not in
/// memory (no env, no repository token).
fn spec_from_store(sandbox: &Sandbox) -> SandboxSpec {
    SandboxSpec {
        image: (sandbox.image != DEFAULT_IMAGE).then(|| sandbox.image.clone()),
        repo: sandbox.repo.as_ref().map(|url| RepoSpec {
            url: url.clone(),
            branch: sandbox
                .branch
                .clone()
                .unwrap_or_else(|| default_branch(&sandbox.id)),
            base: None,
            token: None,
        }),
        millicpus: Some(millicpus(sandbox.cpus)),
        memory_mb: Some(u64::from(sandbox.memory_mb)),
        idle_timeout_s: sandbox.idle_timeout_s.map(u64::from),
        ..SandboxSpec::default()
    }
}

/// The spec `sandbox` was created with. The gateway keeps create-time env (secrets
/// included) in memory only; after a restart it rebuilds the spec from the store and
/// asks the runner for the env, which it holds where the sandbox runs. A runner
/// that cannot say leaves the env empty (logged; the caller decides what that means).
pub(super) async fn remembered_spec(state: &ApiState, sandbox: &Sandbox) -> SandboxSpec {
    let known = state.specs().get(&sandbox.id).cloned();
    if let Some(spec) = known {
        return spec;
    }
    let mut spec = spec_from_store(sandbox);
    let Some(runner) = &sandbox.runner_id else {
        return spec;
    };
    let request = Request::Env {
        sandbox: sandbox.id.clone(),
    };
    match state.hub.control(runner, &request).await {
        Ok(warren_protocol::Response::Env { env }) => {
            spec.env = env.into_iter().map(|(k, v)| (k, v.0)).collect();
            state.specs().insert(sandbox.id.clone(), spec.clone());
        }
        Ok(warren_protocol::Response::Error { message }) => {
            tracing::warn!(sandbox = %sandbox.id, %message, "the runner does not know the sandbox's env");
        }
        Ok(other) => {
            tracing::warn!(sandbox = %sandbox.id, answer = ?other, "unexpected answer to env");
        }
        Err(e) => {
            tracing::warn!(sandbox = %sandbox.id, error = %e, "could not ask the runner for the sandbox's env");
        }
    }
    spec
}

fn millicpus(cpus: f64) -> u32 {
    // In range (0.1..=16 checked at create), so the cast cannot truncate.
    (cpus * 1000.0).round() as u32
}

fn default_branch(id: &SandboxId) -> String {
    format!("warren/{id}")
}

fn view(state: &ApiState, s: &Sandbox) -> Json<SandboxView> {
    Json(SandboxView::new(state, s))
}

/// `caller`'s sandbox `id`. A malformed id, an unknown one and someone else's all
/// give the same 404.
/// The caller's sandbox `id`; an unknown id and someone else's are the same 404.
pub(super) async fn owned(state: &ApiState, caller: &User, id: &str) -> Result<Sandbox, ApiError> {
    let not_found = || ApiError::not_found("sandbox");
    let id = SandboxId::parse(id).map_err(|_| not_found())?;
    match state.store.get_sandbox(&id).await {
        Ok(s) if s.owner_id == caller.id => Ok(s),
        Ok(_) | Err(StoreError::NotFound(_)) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

/// Runs `work` in its own task, so a client that hangs up mid-request does not
/// leave a lifecycle change half done.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!("an API task failed: {e}");
            Err(ApiError::internal())
        }
    }
}

/// What a new sandbox asks of a runner.
#[derive(Debug, Clone, Copy)]
pub(super) struct Demand {
    pub memory_mb: u64,
    pub millicpus: u32,
}

/// Why a runner cannot take a sandbox, for the error message; `None` when it can.
fn misfit(
    name: &str,
    capacity: &RunnerCapacity,
    usage: RunnerUsage,
    demand: Demand,
) -> Option<String> {
    if let Some(max) = capacity.max_sandboxes
        && usage.sandboxes >= u64::from(max)
    {
        return Some(format!("{name} holds its maximum of {max} sandboxes"));
    }
    if demand.millicpus > capacity.millicpus {
        return Some(format!(
            "{name} has {} CPUs, this sandbox asks for {}",
            f64::from(capacity.millicpus) / 1000.0,
            f64::from(demand.millicpus) / 1000.0
        ));
    }
    let free = capacity.memory_mb.saturating_sub(usage.memory_mb);
    if demand.memory_mb > free {
        return Some(format!(
            "{name} has {free} MiB of {} MiB free for sandboxes, this one asks for {} MiB",
            capacity.memory_mb, demand.memory_mb
        ));
    }
    None
}

/// What `runner` has room for: its answer to `capacity`, remembered a while. A
/// runner too old to answer gets the stored sandbox count as its only limit.
async fn runner_capacity(state: &ApiState, runner: &crate::store::Runner) -> RunnerCapacity {
    const REMEMBER: std::time::Duration = std::time::Duration::from_secs(30);
    if let Some((at, capacity)) = state.capacities().get(&runner.id)
        && at.elapsed() < REMEMBER
    {
        return *capacity;
    }
    match state.hub.control(&runner.id, &Request::Capacity).await {
        Ok(RunnerResponse::Capacity(capacity)) => {
            state
                .capacities()
                .insert(runner.id.clone(), (std::time::Instant::now(), capacity));
            capacity
        }
        // Not remembered: the next create asks again.
        _ => RunnerCapacity {
            memory_mb: u64::MAX,
            millicpus: u32::MAX,
            max_sandboxes: Some(runner.capacity),
        },
    }
}

/// The online runner with room for `demand` whose live sandboxes take the least
/// memory; a 503 saying why none fits otherwise.
pub(super) async fn pick_runner(state: &ApiState, demand: Demand) -> Result<RunnerId, ApiError> {
    let mut online = state.hub.online_runners();
    if online.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_runner",
            "no runner is online",
        ));
    }
    online.sort();
    let usage: std::collections::HashMap<RunnerId, RunnerUsage> =
        state.store.runner_usage().await?.into_iter().collect();
    let mut best: Option<(u64, RunnerId)> = None;
    let mut reasons = Vec::new();
    for id in online {
        let Ok(runner) = state.store.get_runner(&id).await else {
            continue;
        };
        let used = usage.get(&id).copied().unwrap_or_default();
        let capacity = runner_capacity(state, &runner).await;
        if let Some(reason) = misfit(&runner.name, &capacity, used, demand) {
            reasons.push(reason);
            continue;
        }
        if best.as_ref().is_none_or(|(m, _)| used.memory_mb < *m) {
            best = Some((used.memory_mb, id));
        }
    }
    best.map(|(_, id)| id).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_capacity",
            format!(
                "no runner has room for this sandbox: {}",
                reasons.join("; ")
            ),
        )
    })
}

/// A 503 `no_capacity` unless `runner` has room for `demand` (starting a stopped
/// sandbox again: stopped ones take no room while they are stopped).
async fn room_on(state: &ApiState, runner: &RunnerId, demand: Demand) -> Result<(), ApiError> {
    let record = match state.store.get_runner(runner).await {
        Ok(record) => record,
        Err(StoreError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let used = state
        .store
        .runner_usage()
        .await?
        .into_iter()
        .find(|(id, _)| id == runner)
        .map(|(_, u)| u)
        .unwrap_or_default();
    let capacity = runner_capacity(state, &record).await;
    match misfit(&record.name, &capacity, used, demand) {
        None => Ok(()),
        Some(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_capacity",
            format!("the sandbox's runner has no room for it now: {reason}"),
        )),
    }
}

/// Asks `runner` whether it could create `spec` (its image is there, its fields
/// pass) before anything is stored. A runner too old to know `check` is let be.
async fn check_on_runner(
    state: &ApiState,
    runner: &RunnerId,
    spec: &SandboxSpec,
) -> Result<(), ApiError> {
    let request = Request::Check { spec: spec.clone() };
    match state.hub.control(runner, &request).await? {
        RunnerResponse::Ok => Ok(()),
        RunnerResponse::Refused { code, message } if code == "image_not_found" => Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "image_not_found", message),
        ),
        RunnerResponse::Refused { message, .. } => Err(ApiError::invalid(message)),
        RunnerResponse::Error { message } if message.contains("unknown variant") => Ok(()),
        RunnerResponse::Error { message } => Err(ApiError::runner(message)),
        other => Err(ApiError::runner(format!(
            "unexpected answer from the runner: {other:?}"
        ))),
    }
}

/// Asks the sandbox's runner to create (or restart) it; on success the sandbox goes
/// to `running` with `reason`. A runner's refusal moves a `creating` sandbox to
/// `failed` and is a 502 carrying the runner's message.
async fn run_on_runner(
    state: &ApiState,
    sandbox: &Sandbox,
    spec: SandboxSpec,
    reason: &str,
) -> Result<Sandbox, ApiError> {
    let Some(runner) = &sandbox.runner_id else {
        return Err(ApiError::conflict("the sandbox has no runner"));
    };
    let request = Request::Create {
        sandbox: sandbox.id.clone(),
        token_key: state.signer.verifier().to_base64(),
        authorized_keys: super::agent_keys::for_sandbox(state, &sandbox.id).await,
        spec,
    };
    let failure = match state.hub.control(runner, &request).await {
        Ok(warren_protocol::Response::Ok) => {
            return Ok(state
                .store
                .set_sandbox_state(&sandbox.id, SandboxState::Running, reason)
                .await?);
        }
        Ok(RunnerResponse::Error { message }) => ApiError::runner(message),
        Ok(RunnerResponse::Refused { code, message }) if code == "image_not_found" => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "image_not_found", message)
        }
        Ok(RunnerResponse::Refused { message, .. }) => ApiError::invalid(message),
        Ok(other) => ApiError::runner(format!("unexpected answer from the runner: {other:?}")),
        Err(e) => ApiError::from(e),
    };
    if sandbox.state == SandboxState::Creating {
        let reason = format!("create failed: {}", failure.message);
        if let Err(e) = state
            .store
            .set_sandbox_state(&sandbox.id, SandboxState::Failed, &reason)
            .await
        {
            tracing::warn!(sandbox = %sandbox.id, "recording a failed create: {e}");
        }
    }
    Err(failure)
}

/// One control request that must answer `ok`.
async fn expect_ok(state: &ApiState, runner: &RunnerId, request: Request) -> Result<(), ApiError> {
    match state.hub.control(runner, &request).await? {
        warren_protocol::Response::Ok => Ok(()),
        warren_protocol::Response::Error { message } => Err(ApiError::runner(message)),
        other => Err(ApiError::runner(format!(
            "unexpected answer from the runner: {other:?}"
        ))),
    }
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
    check_create(&body)?;
    let id = SandboxId::generate();
    let cpus = body.cpus.unwrap_or(DEFAULT_CPUS);
    let memory_mb = body.memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
    let demand = Demand {
        memory_mb: u64::from(memory_mb),
        millicpus: millicpus(cpus),
    };
    let runner = pick_runner(&state, demand).await?;
    let branch = body
        .repo
        .as_ref()
        .map(|_| body.branch.clone().unwrap_or_else(|| default_branch(&id)));
    let spec = SandboxSpec {
        image: body.image.clone(),
        repo: body.repo.as_ref().map(|url| RepoSpec {
            url: url.clone(),
            branch: branch.clone().unwrap_or_else(|| default_branch(&id)),
            base: None,
            token: body.env.get(REPO_TOKEN_ENV).cloned(),
        }),
        env: body.env,
        millicpus: Some(millicpus(cpus)),
        memory_mb: Some(u64::from(memory_mb)),
        idle_timeout_s: body.idle_timeout_s.map(u64::from),
        network: body.network.unwrap_or_default(),
        ..SandboxSpec::default()
    };
    check_on_runner(&state, &runner, &spec).await?;
    let new = NewSandbox {
        id: id.clone(),
        owner_id: caller.user.id.clone(),
        runner_id: Some(runner),
        image: body.image.unwrap_or_else(|| DEFAULT_IMAGE.to_owned()),
        repo: body.repo,
        branch,
        cpus,
        memory_mb,
        idle_timeout_s: body.idle_timeout_s,
        ttl_s: body.ttl_s,
    };
    let task_state = state.clone();
    let sandbox = detached(async move {
        let state = task_state;
        let _guard = state.lock(&new.id).await;
        let sandbox = state.store.create_sandbox(&new).await?;
        state.specs().insert(sandbox.id.clone(), spec.clone());
        run_on_runner(&state, &sandbox, spec, "created").await
    })
    .await?;
    let token = state
        .signer
        .mint(&sandbox.id, Scope::Ssh, SANDBOX_TOKEN_TTL);
    Ok((
        StatusCode::CREATED,
        Json(CreatedSandbox {
            sandbox: SandboxView::new(&state, &sandbox),
            token: token.expose().to_owned(),
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Also list deleted sandboxes.
    #[serde(default)]
    include_deleted: bool,
}

/// Your sandboxes, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/sandboxes", operation_id = "list_sandboxes", tag = "sandboxes", params(ListParams),
    responses(
        (status = 200, description = "a page", body = SandboxList),
        (status = 400, description = "bad limit or cursor", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<SandboxList>, ApiError> {
    let limit = match params.limit {
        Some(l) => validate::range("limit", l, (1, SandboxQuery::MAX_LIMIT))
            .map_err(|e| ApiError::bad_request(e.message))?,
        None => SandboxQuery::default().limit,
    };
    let after = match params.cursor.as_deref() {
        Some(c) => Some(
            c.parse::<SandboxCursor>()
                .map_err(|_| ApiError::bad_request("cursor is not a valid page cursor"))?,
        ),
        None => None,
    };
    let page = state
        .store
        .list_sandboxes(
            &caller.user.id,
            &SandboxQuery {
                limit,
                after,
                include_deleted: params.include_deleted,
            },
        )
        .await?;
    Ok(Json(SandboxList {
        sandboxes: page
            .sandboxes
            .iter()
            .map(|s| SandboxView::new(&state, s))
            .collect(),
        next_cursor: page.next.map(|c| c.to_string()),
    }))
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
    let sandbox = owned(&state, &caller.user, &id).await?;
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
    let step = Step {
        from: SandboxState::Running,
        to: SandboxState::Stopped,
        done: "stopped",
    };
    change_state(state, &caller, &id, step, |state, sandbox| async move {
        let runner = sandbox
            .runner_id
            .clone()
            .ok_or_else(|| ApiError::conflict("the sandbox has no runner"))?;
        let request = Request::Stop {
            sandbox: sandbox.id.clone(),
        };
        expect_ok(&state, &runner, request).await?;
        let stopped = state
            .store
            .set_sandbox_state(&sandbox.id, SandboxState::Stopped, "stopped by user")
            .await?;
        state
            .live
            .end_sandbox(&sandbox.id, &format!("{} was stopped", sandbox.id));
        Ok(stopped)
    })
    .await
}

/// A user's stop or start: from one state to the other.
struct Step {
    from: SandboxState,
    to: SandboxState,
    /// The past participle for messages ("stopped").
    done: &'static str,
}

/// The shape stop and start share: under the sandbox's lifecycle lock, in a task
/// of its own (a client hanging up must not leave it half done), re-read the
/// sandbox; one already in `step.to` is answered as it is, one in any state but
/// `step.from` is a 409, and `act` makes the change.
async fn change_state<F, Fut>(
    state: Arc<ApiState>,
    caller: &Caller,
    id: &str,
    step: Step,
    act: F,
) -> Result<Json<SandboxView>, ApiError>
where
    F: FnOnce(Arc<ApiState>, Sandbox) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Sandbox, ApiError>> + Send,
{
    let sandbox = owned(&state, &caller.user, id).await?;
    let task_state = state.clone();
    let sandbox = detached(async move {
        let state = task_state;
        let _guard = state.lock(&sandbox.id).await;
        let sandbox = state.store.get_sandbox(&sandbox.id).await?;
        if sandbox.state == step.to {
            return Ok(sandbox);
        }
        if sandbox.state != step.from {
            return Err(ApiError::conflict(format!(
                "a sandbox in state {} cannot be {}",
                sandbox.state, step.done
            )));
        }
        act(state.clone(), sandbox).await
    })
    .await?;
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
    let step = Step {
        from: SandboxState::Stopped,
        to: SandboxState::Running,
        done: "started",
    };
    change_state(state, &caller, &id, step, |state, sandbox| async move {
        if let Some(runner) = &sandbox.runner_id {
            let demand = Demand {
                memory_mb: u64::from(sandbox.memory_mb),
                millicpus: millicpus(sandbox.cpus),
            };
            room_on(&state, runner, demand).await?;
        }
        let spec = remembered_spec(&state, &sandbox).await;
        run_on_runner(&state, &sandbox, spec, "started by user").await
    })
    .await
}

/// Deletes a sandbox (on its runner, then in the store) with `reason`; a deleted
/// sandbox is left as it is. Shared with the TTL reaper.
pub(super) async fn delete_sandbox(
    state: &ApiState,
    id: &SandboxId,
    reason: &str,
) -> Result<(), ApiError> {
    let _guard = state.lock(id).await;
    let sandbox = state.store.get_sandbox(id).await?;
    match sandbox.state {
        SandboxState::Deleted => return Ok(()),
        SandboxState::Creating => {
            return Err(ApiError::conflict(
                "the sandbox is still being created; try again in a moment",
            ));
        }
        SandboxState::Running | SandboxState::Stopped | SandboxState::Failed => {}
    }
    let removed = match &sandbox.runner_id {
        Some(runner) => {
            expect_ok(
                state,
                runner,
                Request::Delete {
                    sandbox: sandbox.id.clone(),
                },
            )
            .await
        }
        None => Ok(()),
    };
    match removed {
        Ok(()) => {}
        // A failed create may have left nothing to remove, or its runner may be gone.
        Err(e) if sandbox.state == SandboxState::Failed => {
            tracing::info!(sandbox = %id, "deleting a failed sandbox: {}", e.message);
        }
        Err(e) => return Err(e),
    }
    if sandbox.state == SandboxState::Running {
        state
            .store
            .set_sandbox_state(id, SandboxState::Stopped, reason)
            .await?;
    }
    state
        .store
        .set_sandbox_state(id, SandboxState::Deleted, reason)
        .await?;
    drop(_guard);
    state.forget(id);
    state.live.end_sandbox(id, &format!("{id} was deleted"));
    Ok(())
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
    let sandbox = owned(&state, &caller.user, &id).await?;
    let task_state = state.clone();
    detached(async move { delete_sandbox(&task_state, &sandbox.id, "deleted by user").await })
        .await?;
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
    let sandbox = owned(&state, &caller.user, &id).await?;
    if sandbox.state == SandboxState::Deleted {
        return Err(ApiError::conflict("the sandbox is deleted"));
    }
    let _guard = state.lock(&sandbox.id).await;
    // Never earlier than the last revocation (a clock stepped back must not bring
    // revoked tokens back), and a second past it when two come within a second.
    let now = crate::store::Timestamp::now().unix_seconds();
    let at = match state.store.sandbox_tokens_revoked_at(&sandbox.id).await? {
        Some(last) => now.max(last.unix_seconds() + 1),
        None => now,
    };
    state
        .store
        .revoke_sandbox_tokens(&sandbox.id, crate::store::Timestamp::from_unix_seconds(at))
        .await?;
    state.live.end_tokens(
        &sandbox.id,
        &format!("the tokens of {} were revoked", sandbox.id),
    );
    // One second longer than the revoked ones could live, so that a token minted
    // in the very second of the revocation is told apart from them.
    let ahead = u64::try_from(at - now).unwrap_or(0);
    let token = state.signer.mint(
        &sandbox.id,
        Scope::Ssh,
        SANDBOX_TOKEN_TTL + std::time::Duration::from_secs(ahead + 1),
    );
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            token: token.expose().to_owned(),
        }),
    ))
}

/// A sandbox token, shown once.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct NewToken {
    /// The SSH password (or `<sandbox-id>#<token>` user name) for this sandbox.
    pub token: String,
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
    let sandbox = owned(&state, &caller.user, &id).await?;
    if sandbox.state != SandboxState::Running {
        return Err(ApiError::conflict(format!(
            "a sandbox in state {} cannot be kept alive",
            sandbox.state
        )));
    }
    let runner = sandbox
        .runner_id
        .clone()
        .ok_or_else(|| ApiError::conflict("the sandbox has no runner"))?;
    expect_ok(
        &state,
        &runner,
        Request::Keepalive {
            sandbox: sandbox.id.clone(),
        },
    )
    .await?;
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
    let sandbox = owned(&state, &caller.user, &id).await?;
    let events = state.store.list_sandbox_events(&sandbox.id).await?;
    Ok(Json(EventList {
        events: events.iter().map(EventView::from).collect(),
    }))
}

/// An OpenSSH `Host` block for the sandbox (for `~/.ssh/config`, VS Code
/// Remote-SSH).
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
    let sandbox = owned(&state, &caller.user, &id).await?;
    let id = sandbox.id.as_str();
    let text = format!(
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
        host = state.ssh_host,
        port = state.ssh_port,
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> CreateSandbox {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn create_checks() {
        assert!(check_create(&body("{}")).is_ok());
        assert!(
            check_create(&body(
                r#"{"image":"debian:12","repo":"https://github.com/o/r","branch":"x",
                    "env":{"A":"1"},"cpus":0.5,"memory_mb":512,"idle_timeout_s":60,
                    "ttl_s":3600,"network":{"mode":"none"}}"#
            ))
            .is_ok()
        );
        for bad in [
            r#"{"cpus":0}"#,
            r#"{"cpus":16.5}"#,
            r#"{"memory_mb":64}"#,
            r#"{"idle_timeout_s":59}"#,
            r#"{"ttl_s":1}"#,
            r#"{"branch":"x"}"#,
            r#"{"image":"'; DROP TABLE sandboxes; --"}"#,
            r#"{"repo":"../../etc"}"#,
            r#"{"env":{"WARREN_SANDBOX_ID":"x"}}"#,
            r#"{"network":{"mode":"allow","cidrs":["nope"]}}"#,
        ] {
            assert!(check_create(&body(bad)).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<CreateSandbox>(r#"{"imag":"x"}"#).is_err());
    }

    #[test]
    fn millicpus_round() {
        assert_eq!(millicpus(0.1), 100);
        assert_eq!(millicpus(1.0), 1000);
        assert_eq!(millicpus(16.0), 16000);
    }
}
