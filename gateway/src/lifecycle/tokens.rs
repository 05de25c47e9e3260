//! Sandbox tokens: the bearer logins of one sandbox (`ssh <sandbox-id>@gateway`
//! with the token as the password, or after `#` in the user name). Minted at create
//! and by rotation; a rotation revokes every token handed out before it and ends
//! the logins made with them.

use std::time::SystemTime;

use warren_keys::{SandboxId, SandboxToken, Scope};
use warren_store::events::TierEvent;
use warren_store::{SandboxState, Timestamp, User};

use super::{Error, Lifecycle, Result, SANDBOX_TOKEN_TTL};

impl Lifecycle {
    /// Revokes every token of the sandbox handed out so far and returns a new one
    /// (shown once); logins with the old ones end.
    pub async fn rotate_token(&self, owner: &User, id: &str) -> Result<SandboxToken> {
        let sandbox = self.managed(owner, id).await?;
        if sandbox.state == SandboxState::Deleted {
            return Err(Error::conflict("the sandbox is deleted"));
        }
        let _guard = self.lock(&sandbox.id).await;
        // Never earlier than the last revocation (a clock stepped back must not bring
        // revoked tokens back), and a second past it when two come within a second.
        let now = Timestamp::now().unix_seconds();
        let at = match self.store.sandbox_tokens_revoked_at(&sandbox.id).await? {
            Some(last) => now.max(last.unix_seconds() + 1),
            None => now,
        };
        self.store
            .revoke_sandbox_tokens(&sandbox.id, Timestamp::from_unix_seconds(at))
            .await?;
        self.store
            .publish(TierEvent::TokensRevoked {
                sandbox: sandbox.id.clone(),
            })
            .await;
        // One second longer than the revoked ones could live, so that a token minted
        // in the very second of the revocation is told apart from them.
        let ahead = u64::try_from(at - now).unwrap_or(0);
        Ok(self.signer.mint(
            &sandbox.id,
            Scope::Ssh,
            SANDBOX_TOKEN_TTL + std::time::Duration::from_secs(ahead + 1),
        ))
    }

    /// Whether `token` opens `sandbox` now: signed for it, unexpired, not revoked
    /// (a store that cannot say refuses).
    pub async fn token_opens(&self, token: &str, sandbox: &SandboxId) -> bool {
        match self.store.sandbox_tokens_revoked_at(sandbox).await {
            Ok(revoked) => token_valid(&self.signer.verifier(), token, sandbox, revoked),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check token revocation; refusing");
                false
            }
        }
    }
}

/// Whether `token` is a valid sandbox token for `sandbox`, not revoked: tokens
/// handed to users live [`SANDBOX_TOKEN_TTL`], so one that expires no later than
/// that after the revocation was minted before it.
fn token_valid(
    verifier: &warren_keys::TokenVerifier,
    token: &str,
    sandbox: &SandboxId,
    revoked_at: Option<Timestamp>,
) -> bool {
    match verifier.verify(token, sandbox, SystemTime::now()) {
        Ok(claims) => {
            let cutoff = revoked_at.map(|at| {
                u64::try_from(at.unix_seconds()).unwrap_or(0) + SANDBOX_TOKEN_TTL.as_secs()
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
