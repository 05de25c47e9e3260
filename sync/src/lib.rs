//! Local ⇄ sandbox files over SSH through the gateway (relay mode: SFTP and exec
//! channels on one connection; no HTTP endpoint of its own). `seed` sends a local
//! tree to a sandbox directory, `mirror` keeps a local copy of one live; progress is
//! a stream of [`Event`]s, which the `warren` CLI draws and programs read.
//!
//! A seed is cancelled (or paused) by dropping its future, or by ending the process
//! (Ctrl-C in the CLI); nothing half-written has a final name, and the same seed
//! run again resumes (finished files skipped, a large file continued from its last
//! whole chunk). A mirror runs until its `stop` future completes.

mod batch;
mod chunks;
mod connect;
mod download;
mod error;
mod local;
mod mirror;
mod plan;
mod progress;
mod remote;
mod seed;
mod shell;
mod text;
mod tree;
mod upload;

pub use connect::{Credential, Endpoint};
pub use error::SyncError;
pub use mirror::{MirrorOptions, mirror};
pub use progress::{Event, Op, Progress, Stage};
pub use seed::{SeedOptions, SeedSummary, seed};
pub use shell::shell_quote;
pub use text::escape_controls;
/// An API key or a sandbox token: never shown by `Debug`.
pub use warren_keys::Secret;
