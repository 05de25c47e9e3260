//! Warren's gateway: the public side of a Warren installation.
//!
//! - [`ssh`]: the SSH front door. Users log in with a sandbox id as the user name and
//!   are relayed to that sandbox's agent (or, as a jump host, piped to it raw).
//! - [`tunnel`]: the endpoint runners dial; their reverse tunnels carry the bytes to
//!   agents and the sandbox lifecycle requests.
//! - [`dial`]: the glue that routes the front door through a sandbox's runner.
//!
//! - [`lifecycle`]: what a sandbox may become and who may ask: placement, state
//!   changes, reconcile and reaping, key sync, pull requests.
//! - [`api`]: the thin HTTP API over the lifecycle (and accounts and keys).
//! - [`views`]: the API's JSON answers built from the store's rows, for the API and
//!   the console's `--json`.
//! - [`github`]: the GitHub REST calls behind the API's pull requests.
//! - [`recordings`]: terminal sessions kept as asciicast files, and their replay.
//! - [`escape`]: tenant text made safe to print on a person's terminal.
//! - [`guard`]: bounds on connections before and around login, for every door.
//! - [`tier`]: several gateways on one PostgreSQL store: their shared keys and
//!   membership.
//! - [`server`]: all of it bound and served together (`serve`, `warren up`).

pub mod api;
pub mod dial;
pub mod escape;
pub mod github;
pub mod guard;
pub mod lifecycle;
pub mod recordings;
pub mod server;
pub mod ssh;
pub mod tier;
pub mod tunnel;
pub mod views;

/// Locks `mutex`, taking the data as it is if a thread panicked holding it: the
/// gateway's maps stay usable (a panic is a bug, logged where it happened; losing
/// every later request to it would be a second one).
pub(crate) fn unpoisoned<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
