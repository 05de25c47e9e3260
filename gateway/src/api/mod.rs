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
//! - The handlers are thin: what a sandbox may become, and who may ask, is
//!   [`crate::lifecycle`]'s (shared with the SSH console); its errors become
//!   statuses here ([`error`]).
//!
//! Secrets (API keys, sandbox tokens, `env` values) are shown once in a response
//! and never logged.

mod accounts;
pub mod auth;
pub mod error;
mod metrics;
mod pulls;
mod sandboxes;
mod sessions;
mod shares;
pub mod snapshots;
#[cfg(test)]
mod tests;
pub mod tls;
/// The API's answers, built from the store's rows (shared with the console).
pub use crate::views;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::lifecycle::Lifecycle;

pub use self::error::{ApiError, REQUEST_ID_HEADER};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;

/// What the API works with: the lifecycle it is a thin layer over, and what only
/// HTTP needs.
pub struct ApiState {
    pub lifecycle: Arc<Lifecycle>,
    metrics: metrics::Metrics,
    /// Addresses that keep presenting bad API keys get 429 for a while.
    limiter: crate::guard::FailureLimiter,
}

impl ApiState {
    /// An API over `lifecycle` (shared with the SSH console).
    pub fn over(lifecycle: Arc<Lifecycle>) -> ApiState {
        ApiState {
            lifecycle,
            metrics: metrics::Metrics::default(),
            limiter: crate::guard::FailureLimiter::default(),
        }
    }
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
        (name = "sessions", description = "The SSH audit trail and terminal recordings"),
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
        .routes(routes!(sessions::list))
        .routes(routes!(sessions::recording))
        .routes(routes!(shares::share, shares::list))
        .routes(routes!(shares::unshare))
        .routes(routes!(pulls::create))
        .routes(routes!(pulls::merge))
        .routes(routes!(snapshots::create))
        .routes(routes!(snapshots::list))
        .routes(routes!(snapshots::get, snapshots::delete))
        .routes(routes!(snapshots::fork))
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
        None => Err(crate::lifecycle::Error::internal().into()),
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
