//! Warren's gateway: the public side of a Warren installation.
//!
//! The gateway will be the SSH front door (users log in with a sandbox id as the user
//! name and are relayed to that sandbox's agent through its runner's reverse tunnel),
//! the endpoint runners dial into, and a thin HTTP API for what SSH cannot express
//! (sandbox lifecycle, pull requests). It owns the database.
//!
//! So far only the state store is here: [`store`] keeps users, their SSH and API keys,
//! runners and join tokens, sandboxes with their state history, and the SSH session
//! audit trail, in SQLite by default or PostgreSQL. The SSH front door, the runner
//! tunnel and the HTTP API come next, as further modules of this crate.

pub mod dial;
pub mod ssh;
pub mod store;
pub mod tunnel;
