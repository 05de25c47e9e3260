//! SSH user names, parsed once for the gateway and the agent alike:
//! `<sandbox-id>[+<session>[+ro]][#<token>]`, or an account name.
//!
//! The `+<session>` part names a persistent session in the sandbox (attached, or made
//! on first use); `+ro` attaches read-only. A bad session part does not make the name
//! an account's: the login still names the sandbox, and [`LoginName::session`] holds
//! the error, so the agent can tell the user why once a session starts (SSH has no
//! place for a message at login).

use std::fmt;

use thiserror::Error;

use crate::ids::SandboxId;

/// Longest session name.
pub const MAX_SESSION_NAME_LEN: usize = 32;
/// What separates a sandbox id from its session, and a session from its flags.
const SEPARATOR: char = '+';
/// The flag for a read-only attach.
const READ_ONLY_FLAG: &str = "ro";

/// Why the session part of a user name is not usable. Messages say what to type.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SessionNameError {
    #[error("a session name must not be empty (use <sandbox-id>+<name>)")]
    Empty,
    #[error("a session name is at most {MAX_SESSION_NAME_LEN} characters (got {0})")]
    TooLong(usize),
    #[error("a session name may contain only letters, digits, '.', '_' and '-'")]
    Character,
    #[error("unknown session flag {0:?}: the only one is +ro (read-only)")]
    UnknownFlag(String),
}

/// A persistent session's name: 1 to 32 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionName(String);

impl SessionName {
    pub fn parse(s: &str) -> Result<SessionName, SessionNameError> {
        if s.is_empty() {
            return Err(SessionNameError::Empty);
        }
        if s.len() > MAX_SESSION_NAME_LEN {
            return Err(SessionNameError::TooLong(s.len()));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(SessionNameError::Character);
        }
        Ok(SessionName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request to attach to a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    pub session: SessionName,
    /// `+ro`: watch only; input is dropped and commands are refused.
    pub read_only: bool,
}

impl fmt::Display for Attach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.session)?;
        if self.read_only {
            write!(f, "{SEPARATOR}{READ_ONLY_FLAG}")?;
        }
        Ok(())
    }
}

/// What an SSH user name asks for.
#[derive(Clone, PartialEq, Eq)]
pub enum LoginName {
    Sandbox {
        id: SandboxId,
        /// `None` for a plain login (sshd semantics); an error for a bad `+…` part.
        session: Result<Option<Attach>, SessionNameError>,
        /// After `#`: a sandbox token, for clients that cannot prompt.
        token: Option<String>,
        /// The user name before the `#`, as typed.
        name: String,
    },
    Account(String),
}

impl LoginName {
    /// Total: any string is some login name. Only names starting `sbx-` are sandbox
    /// ids, so an account may never be mistaken for one.
    pub fn parse(user: &str) -> LoginName {
        let (name, token) = match user.split_once('#') {
            Some((name, token)) => (name, Some(token.to_owned())),
            None => (user, None),
        };
        let (head, rest) = match name.split_once(SEPARATOR) {
            Some((head, rest)) => (head, Some(rest)),
            None => (name, None),
        };
        match SandboxId::parse(head) {
            Ok(id) if head.starts_with("sbx-") => LoginName::Sandbox {
                id,
                session: rest.map(parse_attach).transpose(),
                token,
                name: name.to_owned(),
            },
            _ => LoginName::Account(name.to_owned()),
        }
    }

    /// The user name without its token, as typed: fit for logs, and what the gateway
    /// passes on to the agent (which parses the session part again, so a bad one is
    /// reported there).
    pub fn without_token(&self) -> &str {
        match self {
            LoginName::Sandbox { name, .. } | LoginName::Account(name) => name,
        }
    }

    /// The persistent session asked for, if any (an error for a bad `+…` part).
    pub fn attach(&self) -> Result<Option<&Attach>, &SessionNameError> {
        match self {
            LoginName::Sandbox { session, .. } => session.as_ref().map(Option::as_ref),
            LoginName::Account(_) => Ok(None),
        }
    }

    pub fn token(&self) -> Option<&str> {
        match self {
            LoginName::Sandbox { token, .. } => token.as_deref(),
            LoginName::Account(_) => None,
        }
    }
}

/// Never prints the token.
impl fmt::Debug for LoginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginName::Sandbox {
                id, session, token, ..
            } => f
                .debug_struct("Sandbox")
                .field("id", id)
                .field("session", session)
                .field("token", &token.as_ref().map(|_| "<redacted>"))
                .finish(),
            LoginName::Account(name) => f.debug_tuple("Account").field(name).finish(),
        }
    }
}

fn parse_attach(rest: &str) -> Result<Attach, SessionNameError> {
    let (name, flag) = match rest.split_once(SEPARATOR) {
        Some((name, flag)) => (name, Some(flag)),
        None => (rest, None),
    };
    let session = SessionName::parse(name)?;
    let read_only = match flag {
        None => false,
        Some(READ_ONLY_FLAG) => true,
        Some(other) => {
            // Bounded, so a long user name cannot flood a message.
            let shown: String = other.chars().take(MAX_SESSION_NAME_LEN).collect();
            return Err(SessionNameError::UnknownFlag(shown));
        }
    };
    Ok(Attach { session, read_only })
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn session_of(user: &str) -> Result<Option<Attach>, SessionNameError> {
        match LoginName::parse(user) {
            LoginName::Sandbox { session, .. } => session,
            LoginName::Account(name) => panic!("{user} parsed as account {name}"),
        }
    }

    #[test]
    fn sandbox_ids_tokens_and_accounts() {
        let name = LoginName::parse("sbx-abc123#wst1.x");
        assert_eq!(name.token(), Some("wst1.x"));
        assert_eq!(name.without_token(), "sbx-abc123");
        assert!(!format!("{name:?}").contains("wst1.x"));
        assert_eq!(session_of("sbx-abc123"), Ok(None));
        assert!(matches!(LoginName::parse("alice"), LoginName::Account(n) if n == "alice"));
        // Not an sbx- id: an account, whatever follows.
        assert!(matches!(LoginName::parse("alice+x"), LoginName::Account(n) if n == "alice+x"));
        assert!(matches!(LoginName::parse("Sbx-1"), LoginName::Account(_)));
    }

    #[test]
    fn sessions_and_the_read_only_flag() {
        let work = SessionName::parse("work").ok();
        assert_eq!(
            session_of("sbx-abc123+work").map(|a| a.map(|a| a.session)),
            Ok(work.clone())
        );
        let ro = session_of("sbx-abc123+work+ro#wst1.x");
        assert_eq!(
            ro.as_ref().map(|a| a.as_ref().map(|a| a.read_only)),
            Ok(Some(true))
        );
        assert_eq!(
            LoginName::parse("sbx-abc123+work+ro#wst1.x").without_token(),
            "sbx-abc123+work+ro"
        );
        assert_eq!(
            LoginName::parse("sbx-abc123+A.b_c-9").without_token(),
            "sbx-abc123+A.b_c-9"
        );
    }

    #[test]
    fn bad_session_parts_are_errors_not_accounts() {
        assert_eq!(session_of("sbx-abc123+"), Err(SessionNameError::Empty));
        assert_eq!(session_of("sbx-abc123++ro"), Err(SessionNameError::Empty));
        assert_eq!(
            session_of("sbx-abc123+a b"),
            Err(SessionNameError::Character)
        );
        assert_eq!(
            session_of("sbx-abc123+a/b"),
            Err(SessionNameError::Character)
        );
        assert_eq!(
            session_of(&format!("sbx-abc123+{}", "a".repeat(33))),
            Err(SessionNameError::TooLong(33))
        );
        assert_eq!(
            session_of("sbx-abc123+work+rw"),
            Err(SessionNameError::UnknownFlag("rw".into()))
        );
        assert_eq!(
            session_of("sbx-abc123+work+ro+ro"),
            Err(SessionNameError::UnknownFlag("ro+ro".into()))
        );
        // Passed on as typed, so the agent reports the same error.
        assert_eq!(
            LoginName::parse("sbx-abc123+a b#t").without_token(),
            "sbx-abc123+a b"
        );
    }
}
