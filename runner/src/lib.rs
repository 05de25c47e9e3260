//! Warren's runner: one per sandbox host, possibly behind NAT. It dials the gateway
//! as an SSH client, keeps that reverse tunnel up, and connects the channels the
//! gateway opens over it to sandboxes' agents; control channels create, stop, delete
//! and list sandboxes.
//!
//! - [`protocol`]: the tunnel's names and control messages (shared with the gateway).
//! - [`tunnel`]: `join` and the reconnecting tunnel loop; `mesh`: one such tunnel
//!   per gateway of a tier.
//! - [`backend`]: where sandboxes run: the `process` backend (no isolation) or
//!   the `docker` backend; [`netpolicy`]: a Docker sandbox's firewall rules.
//! - [`devcontainer`]: a repository's devcontainer.json, parsed and classified;
//!   [`devsetup`]: a create that follows it.
//! - [`git`]: git in a sandbox's workspace (clone, the API's commit-and-push).
//! - [`Error`]: a refusal to pass on, or a failure.
//! - [`stream`]: tunnel channels as byte streams with consumption-based windows.

pub mod backend;
pub mod devbuild;
pub mod devcontainer;
pub mod devsetup;
mod error;
pub mod git;
mod mesh;
pub mod netpolicy;
pub mod service;
pub mod state;
pub mod tunnel;

pub use error::{Error, Result};

// The protocol lives in its own crate, shared with the gateway; these keep its old
// paths (`warren_runner::protocol`, `crate::stream`).
pub use warren_protocol as protocol;
pub use warren_protocol::stream;
