//! What the API answers with: one type per JSON shape, so the OpenAPI document
//! describes exactly what is sent. Times are Unix seconds.

use serde::Serialize;
use utoipa::ToSchema;
use warren_store::{
    ApiKey, RunnerId, Sandbox, SandboxEvent, SandboxState, SessionExit, SshChannel, SshKey,
    Timestamp,
};

use crate::lifecycle::audit::SessionRecord;

fn time(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::unix_seconds)
}

/// The one error shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: `invalid_request`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `conflict`, `payload_too_large`,
    /// `unsupported_media_type`, `no_runner`, `runner_offline`, `runner_error`,
    /// `internal`.
    pub code: String,
    pub message: String,
    /// Also in the `x-request-id` header.
    pub request_id: String,
}

/// How to reach a sandbox over SSH: `ssh <user>@<host> -p <port>`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SshInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
}

#[derive(Debug, Serialize, ToSchema)]
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

impl SandboxView {
    pub fn new(state: &crate::lifecycle::Lifecycle, s: &Sandbox) -> SandboxView {
        SandboxView {
            id: s.id.as_str().to_owned(),
            state: s.state.as_str().to_owned(),
            image: s.image.clone(),
            repo: s.repo.clone(),
            branch: s.branch.clone(),
            forward_agent: s.forward_agent,
            cpus: s.cpus,
            memory_mb: s.memory_mb,
            idle_timeout_s: s.idle_timeout_s,
            ttl_s: s.ttl_s,
            disk_mb: s.disk_mb,
            runner_id: s.runner_id.as_ref().map(|r| RunnerId::as_str(r).to_owned()),
            created_at: s.created_at.unix_seconds(),
            updated_at: s.updated_at.unix_seconds(),
            ssh: SshInfo {
                host: state.ssh_host.clone(),
                port: state.ssh_port,
                user: s.id.as_str().to_owned(),
            },
        }
    }
}

/// A new sandbox, with its token (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedSandbox {
    #[serde(flatten)]
    pub sandbox: SandboxView,
    /// A sandbox token (`wst1.…`): the SSH password for this sandbox, or after `#`
    /// in the user name. Valid for 24 hours; shown only here.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl SandboxList {
    pub fn new(
        state: &crate::lifecycle::Lifecycle,
        page: &warren_store::SandboxPage,
    ) -> SandboxList {
        SandboxList {
            sandboxes: page
                .sandboxes
                .iter()
                .map(|s| SandboxView::new(state, s))
                .collect(),
            next_cursor: page.next.as_ref().map(ToString::to_string),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
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

impl From<&SandboxEvent> for EventView {
    fn from(e: &SandboxEvent) -> EventView {
        EventView {
            seq: e.seq,
            at: e.at.unix_seconds(),
            from: e.from_state.map(|s| SandboxState::as_str(s).to_owned()),
            to: e.to_state.as_str().to_owned(),
            reason: e.reason.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SshKeyView {
    pub id: String,
    pub name: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub public_key: String,
    pub created_at: i64,
}

impl From<&SshKey> for SshKeyView {
    fn from(k: &SshKey) -> SshKeyView {
        SshKeyView {
            id: k.id.as_str().to_owned(),
            name: k.name.clone(),
            fingerprint: k.fingerprint.clone(),
            public_key: k.public_key.to_openssh().unwrap_or_default(),
            created_at: k.created_at.unix_seconds(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SshKeyList {
    pub ssh_keys: Vec<SshKeyView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    /// The key's first characters, to recognise it by.
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl From<&ApiKey> for ApiKeyView {
    fn from(k: &ApiKey) -> ApiKeyView {
        ApiKeyView {
            id: k.id.as_str().to_owned(),
            name: k.name.clone(),
            prefix: k.prefix.clone(),
            created_at: k.created_at.unix_seconds(),
            last_used_at: time(k.last_used_at),
            revoked_at: time(k.revoked_at),
        }
    }
}

/// A new API key, with the key itself (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKeyView,
    pub api_key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyView>,
}

/// A new account, with its first API key (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUser {
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub api_key: String,
}

#[derive(Debug, Serialize, ToSchema)]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct RunnerList {
    pub runners: Vec<RunnerView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

pub(super) fn runner_view(r: &warren_store::Runner, online: bool, sandboxes: u64) -> RunnerView {
    RunnerView {
        id: r.id.as_str().to_owned(),
        name: r.name.clone(),
        online,
        labels: r.labels.iter().map(|l| l.as_str().to_owned()).collect(),
        capacity: r.capacity,
        sandboxes,
        last_seen_at: time(r.last_seen_at),
        created_at: r.created_at.unix_seconds(),
    }
}

fn exit_text(exit: Option<&SessionExit>) -> Option<String> {
    exit.map(|e| match e {
        SessionExit::Status(n) => format!("status:{n}"),
        SessionExit::Signal(name) => format!("signal:{name}"),
    })
}

/// One SSH session of a sandbox, from the audit trail.
#[derive(Debug, Serialize, ToSchema)]
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
#[derive(Debug, Serialize, ToSchema)]
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

impl ChannelView {
    fn new(c: &SshChannel, recorded: bool) -> ChannelView {
        ChannelView {
            seq: c.seq,
            kind: c.kind.as_str().to_owned(),
            command: c.command.clone(),
            terminal: c.terminal,
            started_at: c.started_at.unix_seconds(),
            ended_at: time(c.ended_at),
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            exit: exit_text(c.exit.as_ref()),
            recorded,
        }
    }
}

impl From<&SessionRecord> for SessionView {
    fn from(r: &SessionRecord) -> SessionView {
        let s = &r.session;
        SessionView {
            id: s.id.as_str().to_owned(),
            user_id: s.user_id.as_ref().map(|u| u.as_str().to_owned()),
            source: s.source_addr.to_string(),
            started_at: s.started_at.unix_seconds(),
            ended_at: time(s.ended_at),
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            exit: exit_text(s.exit.as_ref()),
            channels: r
                .channels
                .iter()
                .map(|c| ChannelView::new(c, r.recorded.contains(&c.seq)))
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}
