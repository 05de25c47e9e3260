//! Who is logging in, and to what: the SSH user name names a sandbox (relay mode,
//! optionally `<sandbox-id>#<token>` for clients that cannot prompt, and
//! `+<session>[+ro]` for a persistent session, which the agent handles) or an account
//! (a jump host for `ssh -J`, reaching that account's sandboxes).

use std::time::SystemTime;

use warren_keys::{SandboxId, TokenVerifier};

use crate::store::{Sandbox, SandboxState, User, UserId};

/// What the SSH user name asks for; one parser for the gateway and the agent.
pub use warren_keys::LoginName;

/// Who got in.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An account, by key or API key.
    User(User),
    /// A bearer of a sandbox token: that sandbox and nothing else.
    Token(SandboxId),
}

impl Principal {
    pub fn user(&self) -> Option<&User> {
        match self {
            Principal::User(user) => Some(user),
            Principal::Token(_) => None,
        }
    }

    /// Explicit authorization for every sandbox access: the owner, a user it is
    /// `shared_with`, or a token for exactly this sandbox; never a deleted sandbox.
    pub fn may_use(&self, sandbox: &Sandbox, shared_with: &[UserId]) -> bool {
        if sandbox.state == SandboxState::Deleted {
            return false;
        }
        match self {
            Principal::User(user) => user.id == sandbox.owner_id || shared_with.contains(&user.id),
            Principal::Token(id) => *id == sandbox.id,
        }
    }
}

/// Whether `token` is a valid sandbox token for `sandbox`, not revoked: tokens
/// handed to users live [`SANDBOX_TOKEN_TTL`](crate::lifecycle::SANDBOX_TOKEN_TTL), so
/// one that expires no later than that after the revocation was minted before it.
pub fn token_opens(
    verifier: &TokenVerifier,
    token: &str,
    sandbox: &SandboxId,
    revoked_at: Option<crate::store::Timestamp>,
) -> bool {
    match verifier.verify(token, sandbox, SystemTime::now()) {
        Ok(claims) => {
            let cutoff = revoked_at.map(|at| {
                u64::try_from(at.unix_seconds()).unwrap_or(0)
                    + crate::lifecycle::SANDBOX_TOKEN_TTL.as_secs()
            });
            if cutoff.is_some_and(|cutoff| claims.expires_at <= cutoff) {
                tracing::info!("sandbox token refused: revoked");
                return false;
            }
            true
        }
        Err(e) => {
            tracing::info!(reason = %e, "sandbox token refused");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_parse() {
        assert!(matches!(
            LoginName::parse("sbx-abc123"),
            LoginName::Sandbox { token: None, .. }
        ));
        assert_eq!(
            LoginName::parse("sbx-abc123#wst1.x").token(),
            Some("wst1.x")
        );
        assert!(matches!(LoginName::parse("alice"), LoginName::Account(n) if n == "alice"));
        // The session part is the agent's; the token never leaves the gateway.
        assert_eq!(
            LoginName::parse("sbx-abc123+work+ro#secret").without_token(),
            "sbx-abc123+work+ro"
        );
    }
}
