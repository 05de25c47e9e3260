//! Warren's end-to-end test harness: real Warren processes driven by real OpenSSH
//! clients, the way a user drives them.
//!
//! - [`bin_path`] builds (once per process) and finds a workspace binary, so
//!   `cargo nextest run --workspace` needs no separate build step.
//! - [`Agent`] runs `warren-agent serve` in a tempdir with its own host key, token
//!   signer and authorized_keys; [`Sshd`] runs Debian's OpenSSH server the same way,
//!   for comparison.
//! - [`Client`] wraps `ssh`, `scp`, `sftp` and `rsync` with a throwaway key (or a
//!   token as password) and can point at any server: agent, gateway or sshd.
//! - [`Cmd`] runs any child with a deadline and kills its process group on drop, so
//!   a hang fails a test instead of blocking CI; [`Pty`] runs one on a terminal, and
//!   [`Tmux`] gives tests real terminals whose screens they read.
//!
//! The system tests are in `tests/tests/`: the whole stack (gateway, runners on the
//! process and Docker backends, agents) driven through SSH, the HTTP API and the
//! account console; `tests/tests/common` is their shared stack. Not for unit tests
//! of a single crate: those live beside their code. Tests that need more than one
//! crate live here (`tests/tests/tunnel.rs` is the runner's tunnel client against
//! the gateway's bare hub), so no crate depends on this one.

// The harness exists to fail loudly inside tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
pub mod bench;
pub mod bench_persistent;
mod binaries;
mod client;
pub mod devrepos;
pub mod git_http;
pub mod persistent;
mod process;
mod pty;
pub mod scenarios;
mod sshd;
pub mod stack;
pub mod sync;
mod tmux;
pub mod util;

pub use agent::{Agent, AgentBuilder};
pub use binaries::{Profile, bin_path, build_bin, workspace_root};
pub use client::{Client, Target};
pub use process::{ChildGuard, Cmd, DEFAULT_TIMEOUT, Output, Running, SharedBuf, shell_quote};
pub use pty::Pty;
pub use sshd::{CLEAN_USER, SFTP_SERVER_PATH, SSHD_PATH, Sshd};
pub use tmux::Tmux;
