//! The runner library's error: a refusal the gateway passes on to the user as it
//! is (a spec the rules refuse, an image that is not here, nothing to commit), or a
//! failure with its chain of causes.
//!
//! Internals use [`anyhow`] for plumbing (`?` turns it into [`Error::Failed`]);
//! only the places that decide a request cannot be done as asked make a
//! [`Error::Refused`], and the tunnel answers each kind with its own
//! [`Response`](crate::protocol::Response).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// The request cannot be done as asked; `code` is machine-readable
    /// (`invalid_spec`, `image_not_found`, `no_repo`, `invalid_branch`,
    /// `nothing_to_commit`, `push_refused`), `message` is for the user.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// Anything else: the engine, the file system, git failing.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl Error {
    pub(crate) fn refused(code: &'static str, message: impl Into<String>) -> Error {
        Error::Refused {
            code,
            message: message.into(),
        }
    }

    /// A failure from a message (as `anyhow!`).
    pub(crate) fn failed(message: impl std::fmt::Display) -> Error {
        Error::Failed(anyhow::anyhow!("{message}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
