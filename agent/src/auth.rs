//! Who may log in: a sandbox token for this sandbox (as the SSH password, or after a
//! `#` in the user name), or a public key listed in the authorized-keys file.

use std::path::PathBuf;
use std::time::SystemTime;

use russh::keys::PublicKey;
use russh::keys::ssh_key::AuthorizedKeys;
use warren_keys::{SandboxId, Scope, TokenVerifier};

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
    /// Checks a token for this sandbox: what it grants, or `None` (the reason for a
    /// refusal is logged, the token never).
    pub fn check_token(&self, token: &str) -> Option<Grant> {
        let verifier = self.tokens.as_ref()?;
        match verifier.verify(token, &self.sandbox, SystemTime::now()) {
            Ok(claims) => Some(Grant {
                secrets: claims.scope == Scope::Ssh,
            }),
            Err(e) => {
                tracing::info!(reason = %e, "token refused");
                None
            }
        }
    }

    /// What `key` is granted by the authorized-keys file, if it is listed. The file
    /// is read on each attempt so the runner can change it while the agent runs.
    pub fn authorized_key(&self, key: &PublicKey) -> Option<Grant> {
        let path = self.authorized_keys.as_ref()?;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read authorized keys");
                return None;
            }
        };
        // Our own option is taken off by hand: ssh-key's parser takes a line of two
        // spaces for a bare key (`warren-no-secrets ssh-ed25519 AAAA…`).
        let listed: Vec<Grant> = text
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    return None;
                }
                Some(match line.strip_prefix(NO_SECRETS_OPTION) {
                    Some(rest) if rest.starts_with(' ') => (rest.trim_start(), false),
                    _ => (line, true),
                })
            })
            .filter_map(|(line, secrets)| {
                let entry = match AuthorizedKeys::new(line).next()? {
                    Ok(entry) => entry,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "skipping a bad authorized_keys line");
                        return None;
                    }
                };
                if entry.public_key().key_data() != key.key_data() {
                    return None;
                }
                // Options (from=, command=, restrict, ...) are not enforced, so a key
                // that carries any is refused rather than given more than it should.
                if !entry.config_opts().is_empty() {
                    tracing::warn!(path = %path.display(), "ignoring an authorized key with options");
                    return None;
                }
                Some(Grant { secrets })
            })
            .collect();
        // Listed twice (the owner's key also a shared user's): the larger grant.
        listed.iter().copied().max_by_key(|g| g.secrets)
    }
}

/// The authorized-keys option the runner puts before the keys of users a sandbox
/// is shared with without its secrets.
pub const NO_SECRETS_OPTION: &str = "warren-no-secrets";

/// What a login may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Sessions get the sandbox's create-time environment (its secrets).
    pub secrets: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_no_secrets_option_withholds_secrets_and_other_options_refuse() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("authorized_keys");
        let key = |seed: u8| {
            russh::keys::PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
                &[seed; 32],
            ))
            .public_key()
            .clone()
        };
        let line = |seed: u8| key(seed).to_openssh().unwrap();
        std::fs::write(
            &path,
            format!(
                "# comment\n{}\n{NO_SECRETS_OPTION} {}\nrestrict {}\n",
                line(1),
                line(2),
                line(3)
            ),
        )
        .unwrap();
        let auth = Authenticator {
            sandbox: SandboxId::generate(),
            tokens: None,
            authorized_keys: Some(path),
        };
        assert_eq!(auth.authorized_key(&key(1)), Some(Grant { secrets: true }));
        assert_eq!(auth.authorized_key(&key(2)), Some(Grant { secrets: false }));
        assert_eq!(auth.authorized_key(&key(3)), None);
        assert_eq!(auth.authorized_key(&key(4)), None);
    }
}
