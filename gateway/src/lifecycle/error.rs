//! The lifecycle's one error: what kind of refusal or failure it is, a stable
//! machine-readable code and a message for people. The HTTP API turns the kind into
//! a status, the SSH console into an exit code. Messages never contain secrets.

use warren_store::StoreError;

use crate::github::GitHubError;
use crate::tunnel::TunnelError;

/// What went wrong, as either surface needs to tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request could not be read at all.
    BadRequest,
    /// A well-formed request whose content is refused.
    Invalid,
    /// No such thing, or not the caller's (the two look the same).
    NotFound,
    /// Not in a state that allows it.
    Conflict,
    /// Needs an admin.
    Forbidden,
    /// Nothing can take it now (no runner, no room, runner offline).
    Unavailable,
    /// A runner or GitHub failed; the message is theirs and safe to show.
    Upstream,
    /// A bug or the database; the gateway's log has the details.
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Error {
        Error {
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(Kind::Invalid, "invalid_request", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(Kind::BadRequest, "invalid_request", message)
    }

    pub fn not_found(what: &str) -> Error {
        Error::new(Kind::NotFound, "not_found", format!("{what} not found"))
    }

    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(Kind::Conflict, "conflict", message)
    }

    pub fn forbidden() -> Error {
        Error::new(Kind::Forbidden, "forbidden", "this needs an admin account")
    }

    pub fn internal() -> Error {
        Error::new(
            Kind::Internal,
            "internal",
            "internal error; the gateway's log has the details",
        )
    }

    /// A runner refused or failed a request; its message is safe to show.
    pub fn runner(message: impl Into<String>) -> Error {
        Error::new(Kind::Upstream, "runner_error", message)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::NotFound(what) => Error::not_found(what),
            StoreError::Conflict(message) => Error::conflict(message),
            e @ StoreError::InvalidTransition { .. } => Error::conflict(e.to_string()),
            e @ StoreError::Invalid(_) => Error::invalid(e.to_string()),
            e @ StoreError::Database(_) => {
                tracing::error!(request_id = %super::request::current_request_id(), "store: {e}");
                Error::internal()
            }
        }
    }
}

impl From<TunnelError> for Error {
    fn from(e: TunnelError) -> Error {
        match e {
            TunnelError::RunnerOffline => Error::new(
                Kind::Unavailable,
                "runner_offline",
                "the sandbox's runner is offline; try again later",
            ),
            e => Error::runner(e.to_string()),
        }
    }
}

impl From<GitHubError> for Error {
    fn from(e: GitHubError) -> Error {
        Error::new(Kind::Upstream, "upstream_error", e.to_string())
    }
}
