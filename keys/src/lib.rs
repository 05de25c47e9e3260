//! All of Warren's cryptography, in one place.
//!
//! For: sandbox ids, SSH host keys (ed25519, persisted 0600), sandbox tokens (Ed25519
//! signed by the gateway, verified offline by the agent), and API-key / join-token
//! secrets (generated, hashed at rest, compared in constant time); and the SSH user
//! names both the gateway and the agent read (`<sandbox-id>[+<session>[+ro]][#<token>]`).
//!
//! Not for: the SSH protocol itself (russh does that), user authorization policy, or
//! storage. Callers get typed values (`SandboxId`, `SandboxToken`, `Secret`) whose
//! `Debug`/`Display` never print secret material.

pub mod cluster;
mod host_key;
mod ids;
mod login;
mod private_file;
mod random;
mod secret;
mod snapshot_id;
#[cfg(test)]
mod test_dir;
pub mod tls;
mod token;

pub use host_key::{HostKeyError, fingerprint, load_host_key, load_or_generate_host_key};
pub use ids::{IdError, SandboxId, is_random_part, random_id};
pub use login::{Attach, LoginName, MAX_SESSION_NAME_LEN, SessionName, SessionNameError};
pub use secret::{
    Secret, SecretError, SecretHash, constant_time_eq, generate_secret, hash_secret, secret_prefix,
    verify_secret,
};
pub use snapshot_id::{SNAPSHOT_PREFIX, SnapshotId, SnapshotIdError};
pub use token::{
    AGENT_FORWARDING_REFUSED, Claims, MAX_TOKEN_LEN, SandboxToken, Scope, TOKEN_PREFIX, TokenError,
    TokenSigner, TokenVerifier,
};
