//! The values the store takes and returns.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::PublicKey;
use warren_keys::{SandboxId, Secret};

use super::ids::{ApiKeyId, JoinTokenId, ParseError, RunnerId, SshKeyId, SshSessionId, UserId};

/// A point in time, in whole seconds since the Unix epoch (UTC), as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time, truncated to the second (0 if the clock is before 1970).
    pub fn now() -> Timestamp {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    pub const fn from_unix_seconds(secs: i64) -> Timestamp {
        Timestamp(secs)
    }

    pub const fn unix_seconds(self) -> i64 {
        self.0
    }

    /// `self + d`, in whole seconds, saturating.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    /// Unique; 1 to 64 ASCII letters, digits, `.`, `_`, `-`, starting with a letter
    /// or digit.
    pub name: String,
    pub is_admin: bool,
    pub created_at: Timestamp,
}

/// An API key as listed: everything but the secret and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub name: String,
    /// The first characters of the secret (`wk_` and 9 more), to recognise it by.
    pub prefix: String,
    pub created_at: Timestamp,
    /// Updated at most once a minute.
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// A newly created API key with its secret, which exists only here: show it to the
/// user once, then drop it.
#[derive(Debug, Clone)]
pub struct CreatedApiKey {
    pub key: ApiKey,
    pub secret: Secret,
}

/// Who a presented API key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyOwner {
    pub user: User,
    pub key_id: ApiKeyId,
}

/// An SSH public key registered to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey {
    pub id: SshKeyId,
    pub user_id: UserId,
    pub name: String,
    /// The key as stored: algorithm and data, without the comment.
    pub public_key: PublicKey,
    /// `SHA256:…`, as `ssh-keygen -l` prints it. Unique per user.
    pub fingerprint: String,
    pub created_at: Timestamp,
}

/// A runner label: 1 to 128 characters of ASCII letters, digits and `. _ : / = -`
/// (so `gpu`, `region=eu-west`, `arch:amd64` all fit).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label(String);

impl Label {
    const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Label, ParseError> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/=-".contains(&b));
        if ok {
            Ok(Label(s.to_owned()))
        } else {
            Err(ParseError::new("runner label"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Label {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Label::parse(s)
    }
}

/// Whether a runner's tunnel is up, as last recorded by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunnerState {
    Online,
    Offline,
}

impl RunnerState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Online => "online",
            RunnerState::Offline => "offline",
        }
    }
}

impl fmt::Display for RunnerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunnerState {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online" => Ok(RunnerState::Online),
            "offline" => Ok(RunnerState::Offline),
            _ => Err(ParseError::new("runner state")),
        }
    }
}

/// What a runner presents when it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRunner {
    /// Unique; 1 to 128 printable characters.
    pub name: String,
    /// The key the runner authenticates its tunnel with. Unique.
    pub public_key: PublicKey,
    pub labels: Vec<Label>,
    /// How many sandboxes it will run at once.
    pub capacity: u32,
}

/// A registered runner. New runners start `Offline` until their tunnel is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runner {
    pub id: RunnerId,
    pub name: String,
    pub public_key: PublicKey,
    /// Sorted, without duplicates.
    pub labels: Vec<Label>,
    pub capacity: u32,
    pub state: RunnerState,
    pub last_seen_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// A newly created join token with its secret (`wj_…`), which exists only here.
#[derive(Debug, Clone)]
pub struct CreatedJoinToken {
    pub id: JoinTokenId,
    pub expires_at: Timestamp,
    pub secret: Secret,
}

/// A sandbox's lifecycle state.
///
/// ```text
/// creating ──▶ running ◀──▶ stopped ──▶ deleted
///     │           │            │           ▲
///     └───────────┴────────────┴─▶ failed ─┘
/// ```
///
/// `deleted` is final; the row stays, for the audit trail. Going to the state one is
/// already in is not a transition either (callers that want idempotence check first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxState {
    Creating,
    Running,
    Stopped,
    Deleted,
    Failed,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Stopped => "stopped",
            SandboxState::Deleted => "deleted",
            SandboxState::Failed => "failed",
        }
    }

    /// Whether the state machine allows going from `self` to `to`.
    pub fn can_become(self, to: SandboxState) -> bool {
        use SandboxState::{Creating, Deleted, Failed, Running, Stopped};
        matches!(
            (self, to),
            (Creating, Running | Failed)
                | (Running, Stopped | Failed)
                | (Stopped, Running | Deleted | Failed)
                | (Failed, Deleted)
        )
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxState {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "creating" => Ok(SandboxState::Creating),
            "running" => Ok(SandboxState::Running),
            "stopped" => Ok(SandboxState::Stopped),
            "deleted" => Ok(SandboxState::Deleted),
            "failed" => Ok(SandboxState::Failed),
            _ => Err(ParseError::new("sandbox state")),
        }
    }
}

/// What creating a sandbox takes. It starts in `creating`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSandbox {
    pub id: SandboxId,
    pub owner_id: UserId,
    /// The runner chosen for it, if one was.
    pub runner_id: Option<RunnerId>,
    pub image: String,
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// The owner's sessions may forward their SSH agent (`ssh -A`); shared users' never.
    pub forward_agent: bool,
    /// CPU limit in CPUs (fractions allowed, like `docker run --cpus`); positive.
    pub cpus: f64,
    /// Memory limit in MiB; positive.
    pub memory_mb: u32,
    /// Stop after this many seconds without SSH sessions; `None`: never.
    pub idle_timeout_s: Option<u32>,
    /// Delete this many seconds after creation; `None`: never.
    pub ttl_s: Option<u32>,
    /// Disk quota in MiB; `None`: none enforced.
    pub disk_mb: Option<u32>,
}

/// A sandbox as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub id: SandboxId,
    pub owner_id: UserId,
    pub runner_id: Option<RunnerId>,
    pub image: String,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub forward_agent: bool,
    pub state: SandboxState,
    pub cpus: f64,
    pub memory_mb: u32,
    pub idle_timeout_s: Option<u32>,
    pub ttl_s: Option<u32>,
    pub disk_mb: Option<u32>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One step in a sandbox's history. The first has `from_state: None` (creation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxEvent {
    pub sandbox_id: SandboxId,
    /// 1, 2, 3, … per sandbox, in the order the steps happened.
    pub seq: u32,
    pub at: Timestamp,
    pub from_state: Option<SandboxState>,
    pub to_state: SandboxState,
    pub reason: String,
}

/// Where a listing of sandboxes continues: just after this sandbox, newest first.
/// `Display`/`FromStr` give an opaque text form for HTTP `?after=` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxCursor {
    pub(crate) created_at: Timestamp,
    pub(crate) id: SandboxId,
}

impl SandboxCursor {
    /// The cursor for the page that follows `sandbox`.
    pub fn after(sandbox: &Sandbox) -> SandboxCursor {
        SandboxCursor {
            created_at: sandbox.created_at,
            id: sandbox.id.clone(),
        }
    }
}

impl fmt::Display for SandboxCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.created_at, self.id)
    }
}

impl FromStr for SandboxCursor {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError::new("page cursor");
        let (secs, id) = s.split_once('.').ok_or_else(err)?;
        Ok(SandboxCursor {
            created_at: Timestamp(secs.parse().map_err(|_| err())?),
            id: SandboxId::parse(id).map_err(|_| err())?,
        })
    }
}

/// Which of an owner's sandboxes to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxQuery {
    /// Page size, clamped to `1..=`[`SandboxQuery::MAX_LIMIT`].
    pub limit: u32,
    /// Continue after this cursor (from the previous page's `next`).
    pub after: Option<SandboxCursor>,
    /// Also list sandboxes in state `deleted`.
    pub include_deleted: bool,
}

impl SandboxQuery {
    pub const MAX_LIMIT: u32 = 500;
}

impl Default for SandboxQuery {
    fn default() -> Self {
        SandboxQuery {
            limit: 50,
            after: None,
            include_deleted: false,
        }
    }
}

/// One page of sandboxes, newest first. Shared (an `Arc`) between its readers and
/// the store's memory of recent pages.
#[derive(Debug)]
pub struct SandboxPage {
    pub sandboxes: Vec<Sandbox>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<SandboxCursor>,
    /// A reader's encoding of the page (the API's JSON body): made at most once
    /// and kept as long as the page is, so a page listed again is not encoded again.
    rendered: std::sync::OnceLock<std::sync::Arc<[u8]>>,
}

impl SandboxPage {
    pub fn new(sandboxes: Vec<Sandbox>, next: Option<SandboxCursor>) -> SandboxPage {
        SandboxPage {
            sandboxes,
            next,
            rendered: std::sync::OnceLock::new(),
        }
    }

    /// The page as `render` encodes it, made by the first caller and shared with the
    /// later ones. Every caller must render a page the same way.
    pub fn rendered(&self, render: impl FnOnce(&SandboxPage) -> Vec<u8>) -> std::sync::Arc<[u8]> {
        self.rendered.get_or_init(|| render(self).into()).clone()
    }
}

/// How the program in an SSH session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionExit {
    /// `exit-status`.
    Status(u32),
    /// `exit-signal`: the signal name without `SIG` (e.g. `KILL`).
    Signal(String),
}

/// What is recorded when an SSH connection to a sandbox starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSshSession {
    /// The account that logged in; `None` for a login by sandbox token.
    pub user_id: Option<UserId>,
    pub sandbox_id: SandboxId,
    pub source_addr: SocketAddr,
}

/// What is recorded when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionEnd {
    /// Bytes from the client to the sandbox.
    pub bytes_in: u64,
    /// Bytes from the sandbox to the client.
    pub bytes_out: u64,
    /// `None` if no program reported an exit (e.g. only port forwarding).
    pub exit: Option<SessionExit>,
}

/// One SSH session's audit record. Never holds secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSession {
    pub id: SshSessionId,
    pub user_id: Option<UserId>,
    pub sandbox_id: SandboxId,
    pub source_addr: SocketAddr,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub exit: Option<SessionExit>,
}

/// What a session channel ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Shell,
    Exec,
    Subsystem,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Shell => "shell",
            ChannelKind::Exec => "exec",
            ChannelKind::Subsystem => "subsystem",
        }
    }
}

impl std::str::FromStr for ChannelKind {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<ChannelKind, ParseError> {
        match s {
            "shell" => Ok(ChannelKind::Shell),
            "exec" => Ok(ChannelKind::Exec),
            "subsystem" => Ok(ChannelKind::Subsystem),
            _ => Err(ParseError::new("channel kind")),
        }
    }
}

/// What is recorded when a session channel starts its program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSshChannel {
    pub session_id: SshSessionId,
    /// 1 for the session's first session channel, then 2, …
    pub seq: u32,
    pub kind: ChannelKind,
    /// The command line of an exec (lossy UTF-8), the name of a subsystem.
    pub command: Option<String>,
    pub terminal: bool,
}

/// One session channel's audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshChannel {
    pub session_id: SshSessionId,
    pub seq: u32,
    pub kind: ChannelKind,
    pub command: Option<String>,
    pub terminal: bool,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub exit: Option<SessionExit>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const ALL: [SandboxState; 5] = [
        SandboxState::Creating,
        SandboxState::Running,
        SandboxState::Stopped,
        SandboxState::Deleted,
        SandboxState::Failed,
    ];

    #[test]
    fn states_round_trip() {
        for s in ALL {
            assert_eq!(s.as_str().parse::<SandboxState>().unwrap(), s);
        }
        assert!("Running".parse::<SandboxState>().is_err());
        for s in [RunnerState::Online, RunnerState::Offline] {
            assert_eq!(s.as_str().parse::<RunnerState>().unwrap(), s);
        }
    }

    #[test]
    fn state_machine() {
        use SandboxState::*;
        let allowed = [
            (Creating, Running),
            (Creating, Failed),
            (Running, Stopped),
            (Running, Failed),
            (Stopped, Running),
            (Stopped, Deleted),
            (Stopped, Failed),
            (Failed, Deleted),
        ];
        for from in ALL {
            for to in ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn labels() {
        for ok in ["gpu", "region=eu-west", "arch:amd64", "a/b.c_d"] {
            assert_eq!(Label::parse(ok).unwrap().as_str(), ok);
        }
        let long = "x".repeat(129);
        for bad in ["", "a,b", "a b", "é", long.as_str()] {
            assert!(Label::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cursor_round_trips() {
        let cursor = SandboxCursor {
            created_at: Timestamp::from_unix_seconds(1_700_000_000),
            id: SandboxId::parse("sbx-abc").unwrap(),
        };
        assert_eq!(cursor.to_string(), "1700000000.sbx-abc");
        assert_eq!(cursor.to_string().parse::<SandboxCursor>().unwrap(), cursor);
        for bad in ["", "1700000000", "x.sbx-abc", "1.SBX", "1.sbx-abc.d"] {
            assert!(bad.parse::<SandboxCursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        let t = Timestamp::from_unix_seconds(10);
        assert_eq!(t.saturating_add(Duration::from_secs(5)).unix_seconds(), 15);
        assert_eq!(
            Timestamp::from_unix_seconds(i64::MAX)
                .saturating_add(Duration::from_secs(1))
                .unix_seconds(),
            i64::MAX
        );
        assert!(Timestamp::now().unix_seconds() > 1_600_000_000);
    }
}
