//! The lifecycle's one error: a stable machine-readable code ([`ErrorCode`], shared
//! with the API's clients through `warren-api`, each code with its HTTP status) and a
//! message for people. The HTTP API answers with the code's status, the SSH console
//! with exit 1 and the same code. Messages never contain secrets.

use warren_store::StoreError;

/// Every code the lifecycle, the API and the console report.
pub use warren_api::ErrorCode;

use crate::github::GitHubError;
use crate::tunnel::TunnelError;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// The request could not be read at all: `invalid_request` with 400, not 422.
    unreadable: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            unreadable: false,
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> u16 {
        if self.unreadable {
            400
        } else {
            self.code.status()
        }
    }

    /// A well-formed request whose content is refused (422).
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::InvalidRequest, message)
    }

    /// A request that could not be read at all (400).
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error {
            unreadable: true,
            ..Error::invalid(message)
        }
    }

    /// No such thing, or not the caller's (the two look the same).
    pub fn not_found(what: &str) -> Error {
        Error::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// Not in a state that allows it.
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Conflict, message)
    }

    pub fn forbidden() -> Error {
        Error::new(ErrorCode::Forbidden, "this needs an admin account")
    }

    /// A bug or the database; the gateway's log has the details.
    pub fn internal() -> Error {
        Error::new(
            ErrorCode::Internal,
            "internal error; the gateway's log has the details",
        )
    }

    /// A runner refused or failed a request; its message is safe to show.
    pub fn runner(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::RunnerError, message)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::NotFound(what) => Error::not_found(what),
            StoreError::Conflict(message) => Error::conflict(message),
            e @ StoreError::InvalidTransition { .. } => Error::conflict(e.to_string()),
            e @ StoreError::Invalid(_) => Error::invalid(e.to_string()),
            e if e.is_unavailable() => {
                tracing::warn!(request_id = %super::request::current_request_id(), "store: {e}");
                Error::new(
                    ErrorCode::StoreUnavailable,
                    "store unavailable: the gateway cannot reach its database; try again in a moment",
                )
            }
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
                ErrorCode::RunnerOffline,
                "the sandbox's runner is offline; try again later",
            ),
            e => Error::runner(e.to_string()),
        }
    }
}

impl From<GitHubError> for Error {
    fn from(e: GitHubError) -> Error {
        Error::new(ErrorCode::UpstreamError, e.to_string())
    }
}
