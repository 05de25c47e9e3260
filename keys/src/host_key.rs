//! SSH host keys: ed25519, generated once, kept in OpenSSH format with mode 0600.
//!
//! Not for user or runner authentication keys: those are public keys the gateway
//! stores, not files this crate manages.

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{self, LineEnding};
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};
use thiserror::Error;

use crate::private_file::{self, FileError};
use crate::random::random_bytes;

#[derive(Debug, Error)]
pub enum HostKeyError {
    #[error("host key {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "host key {} is accessible by group or others (mode {mode:04o}); run chmod 600",
        path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("host key {} is not an OpenSSH private key: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ssh_key::Error,
    },
    #[error("host key {} is passphrase-protected; Warren needs an unencrypted key", path.display())]
    Encrypted { path: PathBuf },
    #[error("host key {} is {algorithm}; Warren's host keys are ed25519", path.display())]
    UnsupportedAlgorithm { path: PathBuf, algorithm: String },
    #[error("could not encode the new host key: {0}")]
    Encode(#[source] ssh_key::Error),
}

impl From<FileError> for HostKeyError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Io { path, source } => HostKeyError::Io { path, source },
            FileError::InsecurePermissions { path, mode } => {
                HostKeyError::InsecurePermissions { path, mode }
            }
        }
    }
}

/// Loads the host key at `path`, or generates and persists an ed25519 one if there is
/// no file. Existing files must not be accessible by group or others.
pub fn load_or_generate_host_key(path: &Path) -> Result<PrivateKey, HostKeyError> {
    if let Some(contents) = private_file::read_private(path)? {
        return parse(path, &contents);
    }
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&random_bytes::<32>()));
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(HostKeyError::Encode)?;
    if private_file::create_private(path, pem.as_bytes())? {
        Ok(key)
    } else {
        // Another process created the key first; use theirs so we agree.
        load_host_key(path)
    }
}

/// Loads the host key at `path`, with the same checks as [`load_or_generate_host_key`]
/// but never creating a file.
pub fn load_host_key(path: &Path) -> Result<PrivateKey, HostKeyError> {
    match private_file::read_private(path)? {
        Some(contents) => parse(path, &contents),
        None => Err(HostKeyError::Io {
            path: path.to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        }),
    }
}

/// The key's SHA-256 fingerprint as OpenSSH prints it: `SHA256:<base64, no padding>`.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn parse(path: &Path, contents: &[u8]) -> Result<PrivateKey, HostKeyError> {
    let key = PrivateKey::from_openssh(contents).map_err(|source| HostKeyError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if key.is_encrypted() {
        return Err(HostKeyError::Encrypted {
            path: path.to_owned(),
        });
    }
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(HostKeyError::UnsupportedAlgorithm {
            path: path.to_owned(),
            algorithm: key.algorithm().to_string(),
        });
    }
    Ok(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::test_dir::TestDir;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn generates_0600_then_reloads_the_same_key() {
        let dir = TestDir::new();
        let path = dir.path().join("nested/deeper/host_ed25519");
        let key = load_or_generate_host_key(&path).unwrap();
        assert_eq!(key.algorithm(), Algorithm::Ed25519);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));

        let again = load_or_generate_host_key(&path).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let loaded = load_host_key(&path).unwrap();
        assert_eq!(loaded.public_key(), key.public_key());

        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn refuses_group_or_world_readable_keys() {
        let dir = TestDir::new();
        let path = dir.path().join("host_ed25519");
        load_or_generate_host_key(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        for result in [load_host_key(&path), load_or_generate_host_key(&path)] {
            match result {
                Err(HostKeyError::InsecurePermissions { mode, .. }) => assert_eq!(mode, 0o644),
                other => panic!("expected InsecurePermissions, got {other:?}"),
            }
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        load_host_key(&path).unwrap();
    }

    #[test]
    fn missing_and_garbage_files_are_errors() {
        let dir = TestDir::new();
        let path = dir.path().join("absent");
        assert!(matches!(
            load_host_key(&path),
            Err(HostKeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound
        ));
        assert!(!path.exists());

        fs::write(&path, b"not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_or_generate_host_key(&path),
            Err(HostKeyError::Parse { .. })
        ));
    }

    #[test]
    fn fingerprint_looks_like_openssh() {
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]));
        let fp = fingerprint(key.public_key());
        assert!(fp.starts_with("SHA256:"), "{fp}");
        assert_eq!(fp.len(), "SHA256:".len() + 43);
    }
}
