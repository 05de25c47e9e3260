//! The runner ⇄ gateway tunnel protocol: names and the control messages, defined
//! once for both sides, which both depend on this crate (and nothing else of each
//! other's); [`stream`] is a tunnel channel as a byte stream, for both ends.
//!
//! The tunnel is an SSH connection the runner dials:
//!
//! - **Join**: SSH user [`JOIN_USER`], password = the join token, then an exec
//!   request `join <name> <openssh-public-key-line>`. The gateway answers with stdout
//!   `runner <runner-id>` and exit status 0, or a one-line error on stderr and exit
//!   status 1.
//! - **Tunnel**: SSH user = the runner id, public-key auth with the runner's key,
//!   then a global `tcpip-forward` request for [`FORWARD_ADDRESS`] port 0.
//! - The gateway then opens `forwarded-tcpip` channels over it: connected address
//!   `sandbox/<sandbox-id>` (port 0) for a byte stream to that sandbox's agent, or
//!   [`CONTROL_ADDRESS`] for one control exchange: a JSON [`Request`] line from the
//!   gateway, a JSON [`Response`] line back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use warren_keys::SandboxId;

pub mod forwards;
pub mod gateways;
pub mod snapshot;
pub mod stream;
pub mod validate;

pub use gateways::{GatewayEntry, GatewaySet};
pub use snapshot::{SnapshotId, SnapshotTaken};

/// SSH user name a runner joins with (the password is the join token).
pub const JOIN_USER: &str = "join";
/// The address a runner asks the gateway to "forward" (port 0).
pub const FORWARD_ADDRESS: &str = "warren";
/// Connected address of control channels.
pub const CONTROL_ADDRESS: &str = "control";
/// Prefix of the connected address of agent channels: `sandbox/<sandbox-id>`.
pub const SANDBOX_PREFIX: &str = "sandbox/";
/// Longest control line either side accepts.
pub const MAX_CONTROL_LINE: usize = 1024 * 1024;

/// The connected address naming `sandbox`'s agent.
pub fn sandbox_address(sandbox: &SandboxId) -> String {
    format!("{SANDBOX_PREFIX}{}", sandbox.as_str())
}

/// The exec command a runner joins with.
pub fn join_command(name: &str, public_key_line: &str) -> String {
    format!("join {name} {public_key_line}")
}

/// Splits a join command into (name, public key line). The name is one word; the
/// key line is the rest (`ssh-ed25519 AAAA… comment`).
pub fn parse_join_command(command: &str) -> Option<(&str, &str)> {
    let rest = command.strip_prefix("join ")?;
    let (name, key) = rest.split_once(' ')?;
    if name.is_empty() || key.trim().is_empty() {
        return None;
    }
    Some((name, key.trim()))
}

/// What the gateway asks a runner to do, one per control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
// One request per control channel, never stored in bulk: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Request {
    /// Create (or, if it exists stopped, restart) a sandbox whose agent accepts
    /// tokens verified with `token_key` (a `TokenVerifier` in URL-safe base64) and
    /// the users' keys in `authorized_keys` (OpenSSH lines).
    Create {
        #[serde(with = "sandbox_id")]
        sandbox: SandboxId,
        token_key: String,
        authorized_keys: Vec<String>,
        /// What to run: image, limits, repository, environment. Older gateways send
        /// none, which means the runner's defaults.
        #[serde(default)]
        spec: SandboxSpec,
    },
    /// Counts as activity for the idle reaper (the API's keepalive).
    Keepalive {
        #[serde(with = "sandbox_id")]
        sandbox: SandboxId,
    },
    /// Stop the sandbox's agent, keeping its work directory.
    Stop {
        #[serde(with = "sandbox_id")]
        sandbox: SandboxId,
    },
    /// Stop it and remove its work directory.
    Delete {
        #[serde(with = "sandbox_id")]
        sandbox: SandboxId,
    },
    /// The sandboxes this runner has.
    List,
    /// Replaces the keys each listed sandbox's agent accepts (jump mode: the owner's
    /// and the users it is shared with). Sandboxes the runner does not have are
    /// skipped; the answer is `ok`.
    AuthorizedKeys { sandboxes: Vec<SandboxKeys> },
    /// The environment `sandbox` was created with, secrets included. The gateway
    /// keeps create-time env in memory only; after it restarts it asks the runner,
    /// which holds it where the sandbox runs (the container's config, or the
    /// agent process's spec).
    Env {
        #[serde(with = "sandbox_id")]
        sandbox: SandboxId,
    },
    /// In the sandbox's workspace (as the sandbox user): switch to `branch`
    /// (created from the current HEAD if missing), `git add -A`, commit as
    /// `author_name <author_email>` with `message` if anything is staged, then push
    /// HEAD to `refs/heads/<branch>` of `remote_url` (default: `origin`). `token`, if
    /// any, reaches git only through the exec's environment and the askpass helper.
    /// Answers [`Response::Pushed`], or [`Response::Refused`] with code
    /// `nothing_to_commit` (a clean tree and no commits beyond `base`),
    /// `push_refused` (git's message, token redacted) or `no_repo`.
    CommitAndPush {
        #[serde(with = "sandbox_id")]
        sandbox: SandboxId,
        message: String,
        branch: String,
        author_name: String,
        author_email: String,
        /// The branch the work is compared with for "nothing to commit" (default:
        /// the remote's HEAD).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote_url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<Secret>,
    },
    /// Whether this runner could create a sandbox from `spec`, checked before the
    /// gateway stores anything: `ok`, or [`Response::Refused`] with code
    /// `image_not_found` or `invalid_spec`. Nothing is made.
    Check { spec: SandboxSpec },
    /// What this runner has room for ([`Response::Capacity`]).
    Capacity,
    /// Capture `sandbox`'s file system (its container's writable layer and its
    /// disk) as `snapshot`, freezing it only for the capture: answers
    /// [`Response::Snapshot`], or [`Response::Refused`] with `not_supported` (the
    /// process backend) or `not_running`. Processes are not captured.
    Snapshot {
        #[serde(with = "sandbox_id")]
        sandbox: SandboxId,
        snapshot: SnapshotId,
    },
    /// Create `sandbox` from `snapshot` (taken on this runner), like [`Request::Create`]
    /// otherwise; `spec` is the snapshot's with the create's overrides (its image is
    /// ignored: the snapshot's is used). With `branch`, the workspace's repository
    /// switches to that new branch, its uncommitted changes carried over. Refused
    /// with `snapshot_not_found` when the runner does not have it.
    CreateFromSnapshot {
        #[serde(with = "sandbox_id")]
        sandbox: SandboxId,
        snapshot: SnapshotId,
        token_key: String,
        authorized_keys: Vec<String>,
        #[serde(default)]
        spec: SandboxSpec,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
    },
    /// Forget `snapshot`: its storage goes at once, or when the last sandbox made
    /// from it is deleted. Deleting an unknown snapshot is `ok`.
    DeleteSnapshot { snapshot: SnapshotId },
    /// The live gateways of a tier (sent by each gateway when a runner's tunnel comes
    /// up and whenever the set changes): the runner keeps one tunnel to each and
    /// drops those no longer listed. `ok`. A runner before this request answers
    /// `error` (unknown op) and keeps its one tunnel.
    Gateways(GatewaySet),
}

/// One sandbox's authorized keys, OpenSSH lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxKeys {
    #[serde(with = "sandbox_id")]
    pub sandbox: SandboxId,
    pub keys: Vec<String>,
}

/// Secrets on the wire: serialized as themselves, never shown by `Debug`.
pub use warren_keys::Secret;

/// How a sandbox is made. Every field is optional; the runner fills in defaults.
/// `env` values and the repository token are [`Secret`]s: `Debug` never shows them.
/// The CPU limit of a sandbox whose create names none, in thousandths of a CPU.
/// The gateway sends it, and a runner makes its warm pool's members with it, so a
/// claim of a default create changes no limits.
pub const DEFAULT_MILLICPUS: u32 = 1000;
/// The memory limit of a sandbox whose create names none, in MiB (as
/// [`DEFAULT_MILLICPUS`]).
pub const DEFAULT_MEMORY_MB: u32 = 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// An image reference (Docker backend); none means the runner's default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment every session gets (e.g. `ANTHROPIC_API_KEY`); the values are
    /// secrets, sent as plain strings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Secret>,
    /// A repository cloned into the workspace at create time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<RepoSpec>,
    /// CPU limit in thousandths of a CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub millicpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// The create named no CPU limit: `millicpus` is the gateway's default, which a
    /// devcontainer.json's `hostRequirements.cpus` replaces.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default_cpus: bool,
    /// The same for `memory_mb` and `hostRequirements.memory`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default_memory: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u32>,
    /// Outbound network.
    #[serde(default)]
    pub network: NetworkPolicy,
    /// A read-only root filesystem (with a tmpfs /tmp); the workspace stays writable.
    #[serde(default)]
    pub read_only_root: bool,
    /// Stopped after this long without activity; none means the runner's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    /// The disk the sandbox may fill, in MiB (its workspace, scratch directories and
    /// its container's writable layer); none means the runner's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// Follow the repository's devcontainer.json, if it has one (the gateway sets
    /// this only for a create with a repository and no image of its own).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub devcontainer: bool,
    /// The gateway reads [`Progress`] lines on the control channel before the
    /// answer to a create or start of this spec (a devcontainer.json's steps and
    /// their output as they happen); without it the runner sends none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress: bool,
    /// The account sessions run as, by name in the image's `/etc/passwd` (a
    /// devcontainer.json's `remoteUser`); none: the image's `USER` or the runner's
    /// choice. Never uid or gid 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Where sessions start and the workspace also appears (a devcontainer.json's
    /// `workspaceFolder`); none: `/workspace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `image` was built by the runner for this create from the repository's
    /// Dockerfile. Never sent or read: only the runner's own devcontainer path
    /// sets it, so no request can name another's built image.
    #[serde(skip)]
    pub built: bool,
}

/// A repository to clone: `url` at `base` (default: the remote's HEAD), then a new
/// branch `branch` is checked out. `token`, if any, is offered as the password over
/// HTTPS through an askpass helper and never written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoSpec {
    pub url: String,
    pub branch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

/// Where a sandbox may connect to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum NetworkPolicy {
    /// Anywhere but other sandboxes and the cloud metadata address.
    #[default]
    All,
    /// No network at all (loopback only).
    None,
    /// Only these IPv4 CIDR blocks (e.g. `10.0.0.0/8`).
    Allow { cidrs: Vec<String> },
}

/// A sandbox as a runner reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStatus {
    #[serde(with = "sandbox_id")]
    pub sandbox: SandboxId,
    pub running: bool,
    /// Why the runner stopped it on its own (`idle`, `oom`, `exited`, `disk_quota`),
    /// if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
}

/// A line for the sandbox's events while a create or start is under way (only
/// where its spec asks for [`SandboxSpec::progress`]); any number come before the
/// [`Response`], each a control line of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    pub progress: String,
}

/// A runner's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Done (create, stop, delete).
    Ok,
    /// The answer to `list`.
    Sandboxes { sandboxes: Vec<SandboxStatus> },
    /// Refused or failed; the message is safe to show an operator.
    Error { message: String },
    /// The answer to `commit_and_push`: the pushed commit, and the remote's default
    /// branch if the workspace knows it.
    Pushed {
        commit: String,
        /// Whether a new commit was made (false: only earlier commits were pushed).
        committed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default_branch: Option<String>,
    },
    /// Refused with a machine-readable `code` (e.g. `nothing_to_commit`,
    /// `push_refused`); the message is safe to show the sandbox's owner.
    Refused { code: String, message: String },
    /// The answer to `env`.
    Env { env: BTreeMap<String, Secret> },
    /// The answer to `capacity`.
    Capacity(RunnerCapacity),
    /// A create or start that was done, with lines for the sandbox's events (what
    /// its devcontainer.json did: keys skipped, lifecycle commands' outcomes).
    Notes {
        notes: Vec<String>,
        /// The limits the sandbox got, where its devcontainer.json's
        /// `hostRequirements` replaced the gateway's defaults.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        millicpus: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memory_mb: Option<u64>,
    },
    /// The answer to `snapshot`.
    Snapshot(SnapshotTaken),
}

/// What a runner has room for: the memory its sandboxes' limits may add up to, the
/// most CPUs one sandbox may ask for, and at most how many sandboxes, if the operator
/// set a number. Computed from the host's resources unless the operator overrides
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerCapacity {
    pub memory_mb: u64,
    pub millicpus: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sandboxes: Option<u32>,
    /// The disk quotas (`disk_mb`) of its sandboxes, stopped ones included, may add
    /// up to this; none: the runner enforces no disk quota (the process backend, or
    /// an older runner), so it takes no sandbox that asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// The quota a sandbox gets when its create names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_disk_mb: Option<u64>,
}

/// Sandbox ids travel as their text and are checked on the way in.
mod sandbox_id {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use warren_keys::SandboxId;

    pub fn serialize<S: Serializer>(id: &SandboxId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(id.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SandboxId, D::Error> {
        let text = String::deserialize(d)?;
        SandboxId::parse(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let id = SandboxId::generate();
        let req = Request::Stop {
            sandbox: id.clone(),
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(
            line,
            format!(r#"{{"op":"stop","sandbox":"{}"}}"#, id.as_str())
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
        assert_eq!(
            serde_json::to_string(&Request::List).unwrap(),
            r#"{"op":"list"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Ok).unwrap(),
            r#"{"result":"ok"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"stop","sandbox":"../x"}"#).is_err());
    }

    #[test]
    fn commit_and_push_wire_format() {
        let id = SandboxId::generate();
        let req = Request::CommitAndPush {
            sandbox: id.clone(),
            message: "m".into(),
            branch: "warren/x".into(),
            author_name: "a".into(),
            author_email: "a@x".into(),
            base: None,
            remote_url: None,
            token: Some(Secret::new("s3cret")),
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(
            line,
            format!(
                r#"{{"op":"commit_and_push","sandbox":"{}","message":"m","branch":"warren/x","author_name":"a","author_email":"a@x","token":"s3cret"}}"#,
                id.as_str()
            )
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
        assert!(!format!("{req:?}").contains("s3cret"));
        let refused = Response::Refused {
            code: "nothing_to_commit".into(),
            message: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"result":"refused","code":"nothing_to_commit","message":"x"}"#
        );
        // Errors keep their old shape.
        assert_eq!(
            serde_json::from_str::<Response>(r#"{"result":"error","message":"m"}"#).unwrap(),
            Response::Error {
                message: "m".into()
            }
        );
    }

    #[test]
    fn spec_secrets_are_plain_on_the_wire_and_hidden_from_debug() {
        let mut spec = SandboxSpec::default();
        spec.env.insert("API_KEY".into(), Secret::new("e-value"));
        spec.repo = Some(RepoSpec {
            url: "https://example.com/r.git".into(),
            branch: "warren/x".into(),
            base: None,
            token: Some(Secret::new("t-value")),
        });
        let line = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            line,
            r#"{"env":{"API_KEY":"e-value"},"repo":{"url":"https://example.com/r.git","branch":"warren/x","token":"t-value"},"network":{"mode":"all"},"read_only_root":false}"#
        );
        assert_eq!(serde_json::from_str::<SandboxSpec>(&line).unwrap(), spec);
        let shown = format!("{spec:?}");
        assert!(shown.contains("API_KEY"), "{shown}");
        assert!(
            !shown.contains("e-value") && !shown.contains("t-value"),
            "{shown}"
        );
    }

    #[test]
    fn join_commands() {
        let cmd = join_command("r1", "ssh-ed25519 AAAA c");
        assert_eq!(parse_join_command(&cmd), Some(("r1", "ssh-ed25519 AAAA c")));
        assert_eq!(parse_join_command("join r1"), None);
        assert_eq!(parse_join_command("joinr1 x"), None);
        assert_eq!(parse_join_command("join  key"), None);
    }
}
