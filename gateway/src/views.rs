//! The API's answers built from the store's rows and the lifecycle's answers: one
//! function per view of [`warren_api`] (the wire types, shared with the API's
//! clients). The HTTP API answers with them, and the console's `--json` prints the
//! same. Times are Unix seconds.

pub use warren_api::{
    ApiKeyList, ApiKeyView, ChannelView, CreatedApiKey, CreatedSandbox, CreatedUser, ErrorBody,
    ErrorDetail, EventList, EventView, ForkedView, Health, NewToken, RunnerList, RunnerView,
    SandboxList, SandboxView, SessionList, SessionView, ShareList, SnapshotList, SnapshotView,
    SshInfo, SshKeyList, SshKeyView,
};
use warren_store::{
    ApiKey, Runner, RunnerId, Sandbox, SandboxEvent, SandboxPage, SandboxState, SessionExit,
    Snapshot, SshChannel, SshKey, Timestamp,
};

use crate::lifecycle::Lifecycle;
use crate::lifecycle::audit::SessionRecord;
use crate::lifecycle::shares::ShareNames;
use crate::lifecycle::snapshots::Forked;

fn time(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::unix_seconds)
}

/// A sandbox, with how to reach it through this gateway's SSH door.
pub fn sandbox_view(lc: &Lifecycle, s: &Sandbox) -> SandboxView {
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
            host: lc.ssh_host.clone(),
            port: lc.ssh_port,
            user: s.id.as_str().to_owned(),
        },
    }
}

pub fn sandbox_list(lc: &Lifecycle, page: &SandboxPage) -> SandboxList {
    SandboxList {
        sandboxes: page.sandboxes.iter().map(|s| sandbox_view(lc, s)).collect(),
        next_cursor: page.next.as_ref().map(ToString::to_string),
    }
}

pub fn event_view(e: &SandboxEvent) -> EventView {
    EventView {
        seq: e.seq,
        at: e.at.unix_seconds(),
        from: e.from_state.map(|s| SandboxState::as_str(s).to_owned()),
        to: e.to_state.as_str().to_owned(),
        reason: e.reason.clone(),
    }
}

pub fn ssh_key_view(k: &SshKey) -> SshKeyView {
    SshKeyView {
        id: k.id.as_str().to_owned(),
        name: k.name.clone(),
        fingerprint: k.fingerprint.clone(),
        public_key: k.public_key.to_openssh().unwrap_or_default(),
        created_at: k.created_at.unix_seconds(),
    }
}

pub fn api_key_view(k: &ApiKey) -> ApiKeyView {
    ApiKeyView {
        id: k.id.as_str().to_owned(),
        name: k.name.clone(),
        prefix: k.prefix.clone(),
        created_at: k.created_at.unix_seconds(),
        last_used_at: time(k.last_used_at),
        revoked_at: time(k.revoked_at),
    }
}

pub fn runner_view(r: &Runner, online: bool, sandboxes: u64) -> RunnerView {
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

fn channel_view(c: &SshChannel, recorded: bool) -> ChannelView {
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

/// One SSH session from the audit trail, with its channels.
pub fn session_view(r: &SessionRecord) -> SessionView {
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
            .map(|c| channel_view(c, r.recorded.contains(&c.seq)))
            .collect(),
    }
}

/// Who a sandbox is shared with.
pub fn share_list(names: ShareNames) -> ShareList {
    ShareList {
        users: names.users,
        with_secrets: names.with_secrets,
    }
}

/// A snapshot.
pub fn snapshot_view(s: &Snapshot) -> SnapshotView {
    SnapshotView {
        id: s.id.to_string(),
        name: s.name.clone(),
        source: s.source_id.to_string(),
        owner: s.owner_id.to_string(),
        runner: s.runner_id.to_string(),
        image: s.image.clone(),
        repo: s.repo.clone(),
        size_bytes: s.size_bytes,
        frozen_ms: s.frozen_ms,
        created_at: s.created_at.unix_seconds(),
    }
}

/// The answer to a fork (the API's and the console's `--json`).
pub fn forked_view(lc: &Lifecycle, forked: &Forked) -> ForkedView {
    ForkedView {
        frozen_ms: forked.snapshot.frozen_ms,
        snapshot: snapshot_view(&forked.snapshot),
        sandboxes: forked
            .forks
            .iter()
            .map(|c| CreatedSandbox {
                sandbox: sandbox_view(lc, &c.sandbox),
                token: c.token.expose().to_owned(),
            })
            .collect(),
    }
}
