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
                secrets: claims.scope != Scope::SshWithoutSecrets,
                forward_agent: claims.scope == Scope::SshWithAgent,
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
        // Our own options are taken off by hand: ssh-key's parser takes a line of two
        // spaces for a bare key (`warren-no-secrets ssh-ed25519 AAAA…`).
        let listed: Vec<Grant> = text
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    return None;
                }
                Some(warren_options(line))
            })
            .filter_map(|(line, grant)| {
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
                Some(grant)
            })
            .collect();
        // Listed twice (the owner's key also a shared user's): the larger grant.
        listed.into_iter().reduce(|a, b| Grant {
            secrets: a.secrets || b.secrets,
            forward_agent: a.forward_agent || b.forward_agent,
        })
    }
}

/// Takes Warren's own options off the front of an authorized-keys line: the rest
/// of the line, and what they grant (without any: the secrets, no forwarding).
fn warren_options(mut line: &str) -> (&str, Grant) {
    let mut grant = Grant {
        secrets: true,
        forward_agent: false,
    };
    loop {
        let (option, rest) = line.split_once(' ').unwrap_or((line, ""));
        match option {
            NO_SECRETS_OPTION => grant.secrets = false,
            FORWARD_AGENT_OPTION => grant.forward_agent = true,
            _ => return (line, grant),
        }
        line = rest.trim_start();
    }
}

/// The authorized-keys option the runner puts before the keys of users a sandbox
/// is shared with without its secrets.
pub const NO_SECRETS_OPTION: &str = "warren-no-secrets";
/// The option the runner puts before the owner's keys when the sandbox's owner let
/// their sessions forward an SSH agent (`ssh -A`); without it `-A` is refused.
pub const FORWARD_AGENT_OPTION: &str = "warren-forward-agent";

/// What a login may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Sessions get the sandbox's create-time environment (its secrets).
    pub secrets: bool,
    /// Sessions may forward the client's SSH agent (`ssh -A`).
    pub forward_agent: bool,
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
                "# comment\n{}\n{NO_SECRETS_OPTION} {}\nrestrict {}\n\
                 {FORWARD_AGENT_OPTION} {}\n{NO_SECRETS_OPTION} {FORWARD_AGENT_OPTION} {}\n",
                line(1),
                line(2),
                line(3),
                line(5),
                line(6)
            ),
        )
        .unwrap();
        let auth = Authenticator {
            sandbox: SandboxId::generate(),
            tokens: None,
            authorized_keys: Some(path),
        };
        let grant = |secrets, forward_agent| {
            Some(Grant {
                secrets,
                forward_agent,
            })
        };
        assert_eq!(auth.authorized_key(&key(1)), grant(true, false));
        assert_eq!(auth.authorized_key(&key(2)), grant(false, false));
        assert_eq!(auth.authorized_key(&key(3)), None);
        assert_eq!(auth.authorized_key(&key(4)), None);
        assert_eq!(auth.authorized_key(&key(5)), grant(true, true));
        assert_eq!(auth.authorized_key(&key(6)), grant(false, true));
    }
}
