//! The runner ⇄ gateway tunnel protocol: names and the control messages, defined
//! once for both sides (the gateway depends on this crate's library for them).
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

use serde::{Deserialize, Serialize};
use warren_keys::SandboxId;

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
pub enum Request {
    /// Create (or, if it exists stopped, restart) a sandbox whose agent accepts
    /// tokens verified with `token_key` (a `TokenVerifier` in URL-safe base64) and
    /// the users' keys in `authorized_keys` (OpenSSH lines).
    Create {
        #[serde(with = "sandbox_id")]
        sandbox: SandboxId,
        token_key: String,
        authorized_keys: Vec<String>,
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
}

/// A sandbox as a runner reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStatus {
    #[serde(with = "sandbox_id")]
    pub sandbox: SandboxId,
    pub running: bool,
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
    fn join_commands() {
        let cmd = join_command("r1", "ssh-ed25519 AAAA c");
        assert_eq!(parse_join_command(&cmd), Some(("r1", "ssh-ed25519 AAAA c")));
        assert_eq!(parse_join_command("join r1"), None);
        assert_eq!(parse_join_command("joinr1 x"), None);
        assert_eq!(parse_join_command("join  key"), None);
    }
}
