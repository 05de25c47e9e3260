//! The store's one error type.

use thiserror::Error;

use super::model::SandboxState;

/// Why a store operation failed. A failed operation changes nothing.
///
/// Messages name the kind of thing involved, never the secrets or the raw input, so
/// they are safe to log and, for `NotFound`/`Conflict`/`Invalid`, to show the caller.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No such row, or not one the caller may see (e.g. someone else's SSH key).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The operation clashes with what is stored: a duplicate name or key, a join
    /// token already used or expired, a session already closed.
    #[error("{0}")]
    Conflict(String),
    /// The sandbox state machine does not allow this step; nothing was changed.
    #[error("a sandbox cannot go from {from} to {to}")]
    InvalidTransition {
        from: SandboxState,
        to: SandboxState,
    },
    /// An argument the store refuses before touching the database (an empty name, a
    /// label with a separator in it, a negative CPU count, …).
    #[error("invalid {0}")]
    Invalid(String),
    /// The database failed, or returned a row the store cannot read (which means it
    /// was written by something else). Also covers connecting and migrating.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// The database could not be reached (down, restarting, no connection within
    /// the wait), as opposed to refusing or failing a query.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            )
        )
    }

    /// Maps a unique-constraint violation to `Conflict(message)` and a foreign-key
    /// violation to `NotFound(missing)`; anything else stays a database error.
    pub(crate) fn from_write(
        e: sqlx::Error,
        message: impl FnOnce() -> String,
        missing: &'static str,
    ) -> StoreError {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                return StoreError::Conflict(message());
            }
            if db.is_foreign_key_violation() {
                return StoreError::NotFound(missing);
            }
        }
        StoreError::Database(e)
    }
}
