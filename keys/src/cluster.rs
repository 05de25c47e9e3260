//! The keys a gateway tier shares, sealed for the database: every gateway of a tier
//! presents one SSH host key and signs sandbox tokens with one key, so the first
//! gateway puts them in the shared store sealed under the operator's cluster secret
//! and the others open them.
//!
//! Sealing is AES-256-GCM (ring) with a key derived from the secret file by
//! HKDF-SHA256; each sealed value is `ws1.` + base64(nonce ‖ ciphertext ‖ tag), its
//! slot's name bound in as associated data (a host key cannot be swapped into the
//! signer's slot). A wrong secret fails to open, it never yields other keys.
//!
//! Not for: storage (the gateway's `tier` module reads and writes the rows), or the
//! single-gateway layout, whose keys stay files in the data directory.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{Algorithm, PrivateKey};
use thiserror::Error;

use crate::private_file::{self, FileError};
use crate::random::random_bytes;
use crate::token::TokenSigner;

/// The sealed host key's slot name.
pub const HOST_KEY_SLOT: &str = "host_key";
/// The sealed token signing key's slot name.
pub const TOKEN_SIGNER_SLOT: &str = "token_signer";

const SEALED_PREFIX: &str = "ws1.";
/// A secret file holds at least this many bytes (after trimming whitespace).
pub const MIN_SECRET_LEN: usize = 32;
/// Sealed values are short (a key); anything longer is refused before decoding.
const MAX_SEALED_LEN: usize = 8192;
const HKDF_SALT: &[u8] = b"warren-cluster-secret-v1";
const HKDF_INFO: &[u8] = b"warren gateway keys";

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("cluster secret {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cluster secret {} is accessible by group or others (mode {mode:04o}); run chmod 600",
        path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error(
        "cluster secret {} is too short: at least {MIN_SECRET_LEN} bytes (e.g. `openssl rand -hex 32`)",
        path.display()
    )]
    TooShort { path: PathBuf },
    #[error(
        "the cluster secret does not open the gateway keys in the database ({slot}): every \
         gateway of a tier needs the same --cluster-secret-file"
    )]
    WrongSecret { slot: String },
    #[error("the sealed {slot} in the database is damaged")]
    Damaged { slot: String },
    #[error("gateway key {slot}: {message}")]
    Key { slot: String, message: String },
}

impl From<FileError> for ClusterError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Io { path, source } => ClusterError::Io { path, source },
            FileError::InsecurePermissions { path, mode } => {
                ClusterError::InsecurePermissions { path, mode }
            }
        }
    }
}

/// The AES-256-GCM key derived from the operator's cluster secret. Never printed.
pub struct ClusterSecret {
    key: LessSafeKey,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

impl ClusterSecret {
    /// Reads the secret file (mode 0600 or stricter, at least 32 bytes) and derives
    /// the sealing key from it.
    pub fn load(path: &Path) -> Result<ClusterSecret, ClusterError> {
        let contents = private_file::read_private(path)?.ok_or_else(|| ClusterError::Io {
            path: path.to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        ClusterSecret::from_bytes(contents.trim_ascii()).ok_or_else(|| ClusterError::TooShort {
            path: path.to_owned(),
        })
    }

    /// The sealing key of `secret`, or `None` when it is shorter than 32 bytes.
    pub fn from_bytes(secret: &[u8]) -> Option<ClusterSecret> {
        if secret.len() < MIN_SECRET_LEN {
            return None;
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
        let mut key = [0u8; 32];
        prk.expand(&[HKDF_INFO], KeyLen)
            .and_then(|okm| okm.fill(&mut key))
            .ok()?;
        let key = UnboundKey::new(&AES_256_GCM, &key).ok()?;
        Some(ClusterSecret {
            key: LessSafeKey::new(key),
        })
    }

    /// `plaintext` sealed for slot `slot`, as text for a database column.
    pub fn seal(&self, slot: &str, plaintext: &[u8]) -> String {
        let nonce = random_bytes::<NONCE_LEN>();
        let mut out = plaintext.to_vec();
        // Fails only for inputs of gigabytes; a key is a few hundred bytes.
        if self
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(slot.as_bytes()),
                &mut out,
            )
            .is_err()
        {
            out.clear();
        }
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(sealed))
    }

    /// Opens what [`ClusterSecret::seal`] sealed for `slot`.
    pub fn open(&self, slot: &str, sealed: &str) -> Result<Vec<u8>, ClusterError> {
        let damaged = || ClusterError::Damaged {
            slot: slot.to_owned(),
        };
        if sealed.len() > MAX_SEALED_LEN {
            return Err(damaged());
        }
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b| STANDARD.decode(b).ok())
            .ok_or_else(damaged)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(damaged());
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged())?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(slot.as_bytes()), &mut body)
            .map_err(|_| ClusterError::WrongSecret {
                slot: slot.to_owned(),
            })?;
        Ok(plain.to_vec())
    }
}

/// The plaintext of a shared key for `slot`: the gateway's own file in `data_dir`
/// when it has one (so a single gateway becomes the first of a tier with the keys
/// its users and runners already trust), else a fresh key.
pub fn key_material(slot: &str, data_dir: &Path) -> Result<Vec<u8>, ClusterError> {
    if let Some(existing) = private_file::read_private(&data_dir.join(slot))? {
        return Ok(existing);
    }
    match slot {
        HOST_KEY_SLOT => PrivateKey::from(Ed25519Keypair::from_seed(&random_bytes::<32>()))
            .to_openssh(LineEnding::LF)
            .map(|pem| pem.as_bytes().to_vec())
            .map_err(|e| key_error(slot, e)),
        TOKEN_SIGNER_SLOT => TokenSigner::generate_pkcs8_der().map_err(|e| key_error(slot, e)),
        _ => Err(key_error(slot, "no such gateway key")),
    }
}

/// The host key of opened [`HOST_KEY_SLOT`] material (an OpenSSH ed25519 key).
pub fn host_key_from_material(material: &[u8]) -> Result<PrivateKey, ClusterError> {
    let key = PrivateKey::from_openssh(material).map_err(|e| key_error(HOST_KEY_SLOT, e))?;
    if key.is_encrypted() || key.algorithm() != Algorithm::Ed25519 {
        return Err(key_error(HOST_KEY_SLOT, "not an unencrypted ed25519 key"));
    }
    Ok(key)
}

/// The token signer of opened [`TOKEN_SIGNER_SLOT`] material (PKCS#8 DER).
pub fn signer_from_material(material: &[u8]) -> Result<TokenSigner, ClusterError> {
    TokenSigner::from_pkcs8_der(material).map_err(|e| key_error(TOKEN_SIGNER_SLOT, e))
}

fn key_error(slot: &str, e: impl fmt::Display) -> ClusterError {
    ClusterError::Key {
        slot: slot.to_owned(),
        message: e.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn secret(fill: u8) -> ClusterSecret {
        ClusterSecret::from_bytes(&[fill; 32]).unwrap()
    }

    #[test]
    fn seals_and_opens() {
        let s = secret(7);
        let sealed = s.seal("host_key", b"the key");
        assert!(!sealed.contains("the key"));
        assert_eq!(s.open("host_key", &sealed).unwrap(), b"the key");
        // A fresh nonce each time.
        assert_ne!(sealed, s.seal("host_key", b"the key"));
    }

    #[test]
    fn wrong_secret_slot_or_damage_is_refused() {
        let sealed = secret(7).seal("host_key", b"the key");
        assert!(matches!(
            secret(8).open("host_key", &sealed),
            Err(ClusterError::WrongSecret { .. })
        ));
        assert!(matches!(
            secret(7).open("token_signer", &sealed),
            Err(ClusterError::WrongSecret { .. })
        ));
        for bad in ["", "ws1.", "ws1.!!", "xx", &sealed[..sealed.len() - 4]] {
            assert!(secret(7).open("host_key", bad).is_err(), "{bad}");
        }
        assert!(ClusterSecret::from_bytes(&[1; 31]).is_none());
    }

    #[test]
    fn fresh_material_makes_keys() {
        let dir = crate::test_dir::TestDir::new();
        let host = key_material(HOST_KEY_SLOT, dir.path()).unwrap();
        host_key_from_material(&host).unwrap();
        let signer = key_material(TOKEN_SIGNER_SLOT, dir.path()).unwrap();
        signer_from_material(&signer).unwrap();
        assert!(signer_from_material(&host).is_err());
    }
}
