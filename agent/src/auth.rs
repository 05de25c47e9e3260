//! Who may log in: a sandbox token for this sandbox (as the SSH password, or after a
//! `#` in the user name), or a public key listed in the authorized-keys file.

use std::path::PathBuf;
use std::time::SystemTime;

use russh::keys::PublicKey;
use russh::keys::ssh_key::AuthorizedKeys;
use warren_keys::{SandboxId, TokenVerifier};

/// How a session proved itself; logged, never the secret itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Token,
    PublicKey,
}

#[derive(Debug)]
pub struct Authenticator {
    pub sandbox: SandboxId,
    pub tokens: Option<TokenVerifier>,
    pub authorized_keys: Option<PathBuf>,
}

impl Authenticator {
    /// Checks a token for this sandbox; the reason for a refusal is logged, the token never.
    pub fn check_token(&self, token: &str) -> bool {
        let Some(verifier) = &self.tokens else {
            return false;
        };
        match verifier.verify(token, &self.sandbox, SystemTime::now()) {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(reason = %e, "token refused");
                false
            }
        }
    }

    /// The token carried in a `<sandbox-id>#<token>` user name, for clients that cannot
    /// prompt (scripts, VS Code).
    pub fn token_in_user_name<'a>(&self, user: &'a str) -> Option<&'a str> {
        user.split_once('#').map(|(_, token)| token)
    }

    /// True when `key` is listed in the authorized-keys file. The file is read on each
    /// attempt so the runner can change it while the agent runs.
    pub fn is_authorized_key(&self, key: &PublicKey) -> bool {
        let Some(path) = &self.authorized_keys else {
            return false;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read authorized keys");
                return false;
            }
        };
        AuthorizedKeys::new(&text)
            .filter_map(|entry| match entry {
                Ok(entry) => Some(entry),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping a bad authorized_keys line");
                    None
                }
            })
            .filter(|entry| {
                // Options (from=, command=, restrict, ...) are not enforced, so a key
                // that carries any is refused rather than given more than it should.
                let plain = entry.config_opts().is_empty();
                if !plain {
                    tracing::warn!(path = %path.display(), "ignoring an authorized key with options");
                }
                plain
            })
            .any(|entry| entry.public_key().key_data() == key.key_data())
    }
}

/// A user name fit for logs: anything after a `#` is a token.
pub fn loggable_user(user: &str) -> &str {
    user.split_once('#').map_or(user, |(name, _)| name)
}
