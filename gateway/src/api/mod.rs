//! The gateway's thin HTTP API: what SSH cannot express — sandbox lifecycle,
//! accounts and their keys — as JSON under `/v1`.
//!
//! - Authentication: `Authorization: Bearer wk_…` (an API key, see [`auth`]). Every
//!   sandbox route is scoped to its owner: someone else's sandbox answers exactly
//!   like an unknown id (404), malformed ids included.
//! - Errors: one shape, `{"error": {"code", "message", "request_id"}}`, with the
//!   right status; every response carries `x-request-id` ([`error`]).
//! - `GET /metrics` (admins): Prometheus text. `GET /v1/openapi.json`: the OpenAPI
//!   document, generated from the handlers' annotations ([`openapi`]). Bodies are
//!   JSON, at most [`MAX_BODY`] bytes; a refused request changes nothing.
//! - Sandboxes are placed on the online runner holding the fewest, created there
//!   through the runner tunnel ([`crate::tunnel::RunnerHub::control`]), and moved
//!   through the store's state machine with a reason for every step.
//! - [`spawn_reconciler`] keeps the store in step with what runners report (sandboxes
//!   stopped for idleness, OOM or exit) and deletes sandboxes past their `ttl_s`.
//!
//! Secrets (API keys, sandbox tokens, `env` values) are shown once in a response
//! and never logged. `env` values live only in the gateway's memory (to restart a
//! stopped sandbox with them) and in the runner's; the store never sees them.

mod accounts;
mod agent_keys;
pub mod auth;
pub mod error;
mod metrics;
mod pulls;
mod reconcile;
mod sandboxes;
mod shares;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod validate;
pub mod views;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warren_keys::{SandboxId, TokenSigner};
use warren_protocol::SandboxSpec;

use crate::store::{RunnerId, Store};
use crate::tunnel::RunnerHub;

pub use self::error::{ApiError, REQUEST_ID_HEADER};
pub use self::reconcile::{RECONCILE_EVERY, reconcile_once, spawn_reconciler};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;
/// How long the sandbox token returned at create stays valid.
pub const SANDBOX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What the API works with.
pub struct ApiState {
    pub store: Store,
    pub hub: Arc<RunnerHub>,
    pub signer: Arc<TokenSigner>,
    /// The SSH front door as users reach it, for `ssh` blocks and known_hosts lines.
    pub ssh_host: String,
    pub ssh_port: u16,
    /// The gateway's host key, `ssh-ed25519 AAAA…` (no host part, no comment).
    pub host_key_line: String,
    /// The spec each sandbox was created with (env secrets included), to start it
    /// again with the same; memory only: after a gateway restart it is rebuilt from
    /// the store and the runner's answer to `env` (`sandboxes::remembered_spec`).
    specs: Mutex<HashMap<SandboxId, SandboxSpec>>,
    /// The authorized keys last sent for each sandbox ([`agent_keys`]).
    sent_keys: Mutex<agent_keys::SentKeys>,
    /// One key sync per runner at a time ([`agent_keys::sync_runner`]).
    key_sync_locks: KeyedLocks<RunnerId>,
    /// One lifecycle change at a time per sandbox (API calls and the reconciler).
    locks: KeyedLocks<SandboxId>,
    metrics: metrics::Metrics,
    /// Addresses that keep presenting bad API keys get 429 for a while.
    limiter: crate::ssh::FailureLimiter,
    /// GitHub's REST API base for pull requests ([`crate::github`]).
    github_api: Mutex<String>,
    /// What each runner said it has room for, and when ([`sandboxes::pick_runner`]).
    capacities: Mutex<HashMap<RunnerId, (std::time::Instant, warren_protocol::RunnerCapacity)>>,
    /// The front door's logged-in connections: revoking access ends them.
    pub live: Arc<crate::ssh::live::LiveConnections>,
}

impl ApiState {
    pub fn new(
        store: Store,
        hub: Arc<RunnerHub>,
        signer: Arc<TokenSigner>,
        ssh_host: String,
        ssh_port: u16,
        host_key_line: String,
    ) -> ApiState {
        ApiState {
            store,
            hub,
            signer,
            ssh_host,
            ssh_port,
            host_key_line,
            specs: Mutex::new(HashMap::new()),
            sent_keys: Mutex::default(),
            key_sync_locks: Mutex::default(),
            locks: Mutex::new(HashMap::new()),
            metrics: metrics::Metrics::default(),
            limiter: crate::ssh::FailureLimiter::default(),
            github_api: Mutex::new(crate::github::api_base_from_env()),
            capacities: Mutex::default(),
            live: Arc::default(),
        }
    }

    /// Where pull requests are opened: `https://api.github.com` (the default, or
    /// `WARREN_GITHUB_API`), `https://HOST/api/v3` for GitHub Enterprise.
    pub fn set_github_api(&self, base: &str) {
        *crate::unpoisoned(&self.github_api) = base.to_owned();
    }

    fn github(&self) -> crate::github::GitHub {
        crate::github::GitHub::new(&crate::unpoisoned(&self.github_api))
    }

    fn capacities(
        &self,
    ) -> MutexGuard<'_, HashMap<RunnerId, (std::time::Instant, warren_protocol::RunnerCapacity)>>
    {
        crate::unpoisoned(&self.capacities)
    }

    fn specs(&self) -> MutexGuard<'_, HashMap<SandboxId, SandboxSpec>> {
        crate::unpoisoned(&self.specs)
    }

    fn sent_keys(&self) -> MutexGuard<'_, agent_keys::SentKeys> {
        crate::unpoisoned(&self.sent_keys)
    }

    /// Holds `runner`'s key-sync lock until the guard drops.
    async fn key_sync_lock(&self, runner: &RunnerId) -> tokio::sync::OwnedMutexGuard<()> {
        lock_keyed(&self.key_sync_locks, runner).await
    }

    /// Holds `sandbox`'s lifecycle lock until the guard drops.
    async fn lock(&self, sandbox: &SandboxId) -> tokio::sync::OwnedMutexGuard<()> {
        lock_keyed(&self.locks, sandbox).await
    }

    fn forget(&self, sandbox: &SandboxId) {
        self.specs().remove(sandbox);
        self.sent_keys().remove(sandbox);
        crate::unpoisoned(&self.locks).remove(sandbox);
    }

    /// `[host]:port` as known_hosts and `ssh-keyscan` write it (plain `host` on 22).
    pub fn known_hosts_host(&self) -> String {
        let host = self.ssh_host.trim_start_matches('[').trim_end_matches(']');
        if self.ssh_port == 22 && !host.contains(':') {
            host.to_owned()
        } else {
            format!("[{host}]:{}", self.ssh_port)
        }
    }
}

/// Named async locks: one per key, made on first use.
type KeyedLocks<K> = Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>;

async fn lock_keyed<K: std::hash::Hash + Eq + Clone>(
    locks: &KeyedLocks<K>,
    key: &K,
) -> tokio::sync::OwnedMutexGuard<()> {
    let lock = crate::unpoisoned(locks)
        .entry(key.clone())
        .or_default()
        .clone();
    lock.lock_owned().await
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Warren",
        description = "Warren's HTTP API: sandbox lifecycle, accounts and keys. \
            Authenticate with `Authorization: Bearer <API key>`."
    ),
    modifiers(&BearerAuth),
    security(("api_key" = [])),
    tags(
        (name = "sandboxes", description = "Sandbox lifecycle"),
        (name = "ssh", description = "Reaching sandboxes with OpenSSH"),
        (name = "keys", description = "Your SSH and API keys"),
        (name = "accounts", description = "Accounts and runners (admins)"),
        (name = "meta", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

/// Declares the `api_key` bearer scheme every operation uses (unless it says
/// `security(())`).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some("An API key, `wk_...`".into());
        components.add_security_scheme("api_key", SecurityScheme::Http(http));
    }
}

/// Every route, each registered together with its OpenAPI operation, so the
/// document cannot miss one.
fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(accounts::healthz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(accounts::create_user))
        .routes(routes!(accounts::list_runners))
        .routes(routes!(sandboxes::create, sandboxes::list))
        .routes(routes!(sandboxes::get, sandboxes::delete))
        .routes(routes!(sandboxes::stop))
        .routes(routes!(sandboxes::start))
        .routes(routes!(sandboxes::keepalive))
        .routes(routes!(sandboxes::rotate_token))
        .routes(routes!(sandboxes::events))
        .routes(routes!(sandboxes::ssh_config))
        .routes(routes!(shares::share, shares::list))
        .routes(routes!(shares::unshare))
        .routes(routes!(pulls::create))
        .routes(routes!(pulls::merge))
        .routes(routes!(accounts::host_keys))
        .routes(routes!(accounts::add_ssh_key, accounts::list_ssh_keys))
        .routes(routes!(accounts::delete_ssh_key))
        .routes(routes!(accounts::create_api_key, accounts::list_api_keys))
        .routes(routes!(accounts::revoke_api_key))
}

/// The OpenAPI document of every route, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// This API's OpenAPI document (JSON).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "the OpenAPI document", body = Object)))]
async fn openapi_json() -> Result<Response, ApiError> {
    static DOCUMENT: OnceLock<Option<String>> = OnceLock::new();
    let document = DOCUMENT.get_or_init(|| openapi().to_json().ok());
    match document {
        Some(json) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response())
        }
        None => Err(ApiError::internal()),
    }
}

/// The API's routes, with request ids, the body limit and JSON errors everywhere.
pub fn router(state: Arc<ApiState>) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            error::request_id_layer,
        ))
        .with_state(state)
}

/// Serves `router` on `listener` until the listener fails.
/// (Peers' addresses are passed to the handlers, for limiting bad API keys.)
pub async fn serve(listener: TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
