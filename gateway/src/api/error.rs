//! The API's one error shape, request ids, and JSON bodies that fail into that shape.
//!
//! Every error response is `{"error": {"code", "message", "request_id"}}` with the
//! matching status; every response (errors or not) carries `x-request-id`. The id is
//! made by [`request_id_layer`] and kept in a task-local for the request's future, so
//! an error built anywhere while handling the request can name it.

use std::time::Instant;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use warren_store::StoreError;

use crate::lifecycle::request::{self, current_request_id, new_request_id};
use crate::lifecycle::{Error, ErrorCode};

/// The response header naming the request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Gives the request an id (task-local and `x-request-id`), and logs one line per
/// request: method, path (never the query string or headers, which may hold
/// secrets), status and time taken.
pub async fn request_id_layer(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<super::ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let id = new_request_id();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let mut response = request::serve_as(id.clone(), next.run(request)).await;
    let status = response.status();
    state
        .metrics
        .record(method.as_str(), status.as_u16(), started.elapsed());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    tracing::info!(
        request_id = %id,
        %method,
        path = %truncate(&path, 200),
        status = status.as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "api request"
    );
    response
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// An API error: a status, a code and a message for people; the lifecycle's
/// [`Error`] with its code's status, or one only HTTP has (no API key, a body that
/// is not JSON). Messages never contain secrets.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    /// `code`, answered with its status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        Error::new(code, message).into()
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            ErrorCode::Unauthorized,
            "a valid API key is required (Authorization: Bearer wk_...)",
        )
    }

    pub fn from_json_rejection(rejection: &JsonRejection) -> ApiError {
        let status = rejection.status();
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {} bytes", super::MAX_BODY),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "the request body must be JSON (Content-Type: application/json)",
            ),
            StatusCode::UNPROCESSABLE_ENTITY => Error::invalid(rejection.body_text()).into(),
            // Malformed JSON and the like: what axum says, as a client error.
            _ => ApiError {
                status: if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                },
                ..Error::bad_request(rejection.body_text()).into()
            },
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: e.code,
            message: e.message,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        Error::from(e).into()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        Error::bad_request(e.body_text()).into()
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> ApiError {
        Error::bad_request(e.body_text()).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = super::views::ErrorBody {
            error: super::views::ErrorDetail {
                code: self.code,
                message: self.message,
                request_id: current_request_id(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `axum::Json`, failing into [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::from_json_rejection(&rejection)),
        }
    }
}

/// Like [`ApiJson`], but an empty body (no content type needed) reads as `{}`.
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let has_body = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|len| len.as_bytes() != b"0")
            && (req.headers().contains_key(header::CONTENT_TYPE)
                || req.headers().contains_key(header::CONTENT_LENGTH)
                || req.headers().contains_key(header::TRANSFER_ENCODING));
        if !has_body {
            return serde_json::from_str("{}")
                .map(OptionalJson)
                .map_err(|e| Error::invalid(e.to_string()).into());
        }
        let ApiJson(value) = ApiJson::<T>::from_request(req, state).await?;
        Ok(OptionalJson(value))
    }
}

/// Answers routes that do not exist.
pub async fn not_found_fallback() -> ApiError {
    Error::not_found("route").into()
}

/// Answers known routes called with the wrong method.
pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}

/// `axum::extract::Query`, failing into [`ApiError`] (400).
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(rejection.into()),
        }
    }
}

/// The `{id}` of a route, as text (each handler parses it into its kind of id).
pub struct IdPath(pub String);

impl<S> axum::extract::FromRequestParts<S> for IdPath
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => Ok(IdPath(id)),
            Err(rejection) => Err(rejection.into()),
        }
    }
}
