//! What the API answers with: one type per JSON shape, so the OpenAPI document
//! describes exactly what is sent. Times are Unix seconds.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ErrorCode;

/// The one error shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable; each code has its status.
    pub code: ErrorCode,
    pub message: String,
    /// Also in the `x-request-id` header.
    pub request_id: String,
}

/// How to reach a sandbox over SSH: `ssh <user>@<host> -p <port>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SshInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxView {
    pub id: String,
    /// `creating`, `running`, `stopped`, `failed` or `deleted`.
    pub state: String,
    /// The image reference, or `default` (the runner's default image).
    pub image: String,
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// The owner's sessions may forward their SSH agent (`ssh -A`).
    pub forward_agent: bool,
    pub cpus: f64,
    pub memory_mb: u32,
    pub idle_timeout_s: Option<u32>,
    pub ttl_s: Option<u32>,
    /// Disk quota in MiB (null: none enforced, as on the process backend).
    pub disk_mb: Option<u32>,
    pub runner_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub ssh: SshInfo,
}

/// A new sandbox, with its token (shown once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedSandbox {
    #[serde(flatten)]
    pub sandbox: SandboxView,
    /// A sandbox token (`wst1.…`): the SSH password for this sandbox, or after `#`
    /// in the user name. Valid for 24 hours; shown only here.
    pub token: String,
}

/// A sandbox token, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewToken {
    /// The SSH password (or `<sandbox-id>#<token>` user name) for this sandbox.
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub seq: u32,
    pub at: i64,
    /// Null for the creation event.
    pub from: Option<String>,
    pub to: String,
    /// Why: `created`, `stopped by user`, `idle`, `oom`, `exited`, `ttl`, a
    /// runner's error message, ….
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SshKeyView {
    pub id: String,
    pub name: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub public_key: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SshKeyList {
    pub ssh_keys: Vec<SshKeyView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    /// The key's first characters, to recognise it by.
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A new API key, with the key itself (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKeyView,
    pub api_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyView>,
}

/// A new account, with its first API key (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedUser {
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub api_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunnerView {
    pub id: String,
    pub name: String,
    /// Whether its tunnel is up now.
    pub online: bool,
    pub labels: Vec<String>,
    pub capacity: u32,
    /// Sandboxes placed on it that are not deleted.
    pub sandboxes: u64,
    pub last_seen_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunnerList {
    pub runners: Vec<RunnerView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unready` (readiness asked, `503`).
    pub status: String,
    /// Why the gateway is not ready: `store unreachable`, `no runner connected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Runners with a tunnel to this gateway (readiness asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runners: Option<u64>,
}

/// One SSH session of a sandbox, from the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    /// The account that logged in (none for a sandbox token).
    pub user_id: Option<String>,
    pub source: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `status:N`, `signal:NAME`, or null.
    pub exit: Option<String>,
    /// Its session channels: shells, commands, subsystems.
    pub channels: Vec<ChannelView>,
}

/// One session channel: what it ran, and whether its recording is kept
/// (`GET /v1/sessions/{id}/recording?channel=SEQ`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChannelView {
    pub seq: u32,
    /// `shell`, `exec` or `subsystem`.
    pub kind: String,
    /// An exec's command line, a subsystem's name.
    pub command: Option<String>,
    /// Whether it had a terminal (PTY).
    pub terminal: bool,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub exit: Option<String>,
    pub recorded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShareList {
    /// Account names the sandbox is shared with.
    pub users: Vec<String>,
    /// Those of them whose sessions get the sandbox's secrets.
    pub with_secrets: Vec<String>,
}

/// An opened pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PullRequestView {
    pub number: u64,
    /// The pull request's page.
    pub url: String,
    /// The branch pushed (the pull request's head).
    pub branch: String,
    /// The base it targets.
    pub base: String,
    /// The commit pushed.
    pub commit: String,
}

/// A merge's outcome, as GitHub reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MergedView {
    pub merged: bool,
    pub sha: Option<String>,
    pub message: Option<String>,
}
