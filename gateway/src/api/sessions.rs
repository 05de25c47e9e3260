//! The SSH audit trail over HTTP: a sandbox's sessions with their channels, and a
//! terminal session's recording as asciicast v2 (plays in `asciinema play`).
//! Owners see their sandboxes' sessions, admins everyone's.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use warren_api::RecordingQuery;

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ApiQuery, IdPath};
use super::views::{self, ErrorBody, SessionList};

/// A sandbox's SSH sessions, oldest first, each with its channels.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/sessions", operation_id = "list_sandbox_sessions", tag = "sessions", params(("id" = String, Path, description = "sandbox id (`sbx-…`)")),
    responses(
        (status = 200, description = "its sessions", body = SessionList),
        (status = 404, description = "no such sandbox of yours", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<SessionList>, ApiError> {
    let sessions = state.lifecycle.ssh_sessions(&caller.user, &id).await?;
    Ok(Json(SessionList {
        sessions: sessions.iter().map(views::session_view).collect(),
    }))
}

/// A terminal session's recording, asciicast v2: a JSON header line, then one
/// `[seconds, "o"|"i"|"r", data]` line per event.
#[utoipa::path(get, path = "/v1/sessions/{id}/recording", operation_id = "get_session_recording", tag = "sessions", params(("id" = String, Path, description = "session id (`ses_…`)"), RecordingQuery),
    responses(
        (status = 200, description = "the recording", content_type = "application/x-asciicast", body = String),
        (status = 404, description = "no such session of yours, or it has no recording (not a terminal session, recordings off, or past the retention)", body = ErrorBody),
    ))]
pub async fn recording(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiQuery(params): ApiQuery<RecordingQuery>,
) -> Result<Response, ApiError> {
    let open = state
        .lifecycle
        .recording(&caller.user, &id, params.channel)
        .await?;
    let name = format!("{}-{}.cast", open.session, open.channel);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(open.file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-asciicast".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}
