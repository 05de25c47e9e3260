//! Bearer secrets (API keys `wk_…`, runner join tokens `wj_…`): generated here, stored
//! only as a hash, compared in constant time.
//!
//! Not for human-chosen passwords: those would need a slow, salted KDF (see
//! [`hash_secret`]).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use thiserror::Error;

use crate::random::random_bytes;

const HASH_PREFIX: &str = "sha256:";
const SHA256_HEX_LEN: usize = 64;
/// Characters of a secret safe to show in listings: the kind plus a few random
/// characters, far too few to guess the rest from.
const PREFIX_CHARS: usize = 12;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SecretError {
    #[error("secret hash must be \"sha256:\" followed by 64 lowercase hex digits")]
    MalformedHash,
}

/// A secret string: an API key, a token, an `env` value. `Debug` and `Display`
/// print `<redacted>`; serde writes it as itself (the runner protocol carries
/// secrets), so never put one in a view that is not meant to show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret text, to show the user once or to send. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// What is stored at rest for a secret: `sha256:<64 lowercase hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretHash(String);

impl SecretHash {
    pub fn parse(s: &str) -> Result<SecretHash, SecretError> {
        let hex = s
            .strip_prefix(HASH_PREFIX)
            .ok_or(SecretError::MalformedHash)?;
        let canonical = hex.len() == SHA256_HEX_LEN
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !canonical {
            return Err(SecretError::MalformedHash);
        }
        Ok(SecretHash(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SecretHash {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SecretHash::parse(s)
    }
}

/// A new secret `<kind>_<43 base64url chars>` (256 random bits) and its hash.
/// `kind` is a short fixed tag such as `"wk"` (API key) or `"wj"` (join token).
///
/// # Panics
///
/// If the OS random number generator fails.
pub fn generate_secret(kind: &str) -> (Secret, SecretHash) {
    let secret = format!("{kind}_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()));
    let hash = hash_secret(&secret);
    (Secret(secret), hash)
}

/// SHA-256 of the secret.
///
/// A single fast hash is right here, unlike for passwords: these secrets carry 256
/// random bits, so there is nothing to brute-force and a slow or salted KDF would only
/// cost time on every API request. The hash is deterministic, so a lookup by hash works.
pub fn hash_secret(secret: &str) -> SecretHash {
    let digest = digest(&SHA256, secret.as_bytes());
    let mut out = String::with_capacity(HASH_PREFIX.len() + SHA256_HEX_LEN);
    out.push_str(HASH_PREFIX);
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    SecretHash(out)
}

/// Whether `secret` hashes to `hash`, compared in constant time.
pub fn verify_secret(secret: &str, hash: &SecretHash) -> bool {
    constant_time_eq(
        hash_secret(secret).as_str().as_bytes(),
        hash.as_str().as_bytes(),
    )
}

/// The first 12 characters of `secret`, safe to show in listings. Cut on a character
/// boundary, so any input is fine; input of 12 characters or fewer is returned whole,
/// so call it only on generated secrets.
pub fn secret_prefix(secret: &str) -> &str {
    match secret.char_indices().nth(PREFIX_CHARS) {
        Some((end, _)) => secret.get(..end).unwrap_or(secret),
        None => secret,
    }
}

/// Whether `a == b`, taking time that depends only on the lengths.
///
/// Written here because ring 0.17 only offers a deprecated, internal comparison with
/// "no promises regarding side channels". Lengths are not secret (digests and tokens
/// have fixed sizes).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_verifies_and_others_do_not() {
        let (secret, hash) = generate_secret("wk");
        let text = secret.expose();
        assert!(text.starts_with("wk_"));
        assert_eq!(text.len(), 3 + 43);
        assert!(verify_secret(text, &hash));
        assert!(!verify_secret("wk_wrong", &hash));
        assert!(!verify_secret("", &hash));
        let (other, _) = generate_secret("wk");
        assert!(!verify_secret(other.expose(), &hash));
    }

    #[test]
    fn hash_is_stable_and_parses() {
        let hash = hash_secret("abc");
        assert_eq!(
            hash.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(SecretHash::parse(hash.as_str()).unwrap(), hash);
        assert_eq!(hash.to_string().parse::<SecretHash>().unwrap(), hash);
        for bad in [
            "",
            "sha256:",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a",
            "md5:900150983cd24fb0d6963f7d28e17f72",
        ] {
            assert_eq!(
                SecretHash::parse(bad),
                Err(SecretError::MalformedHash),
                "{bad}"
            );
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let (secret, _) = generate_secret("wj");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{secret:?}"), "<redacted>");
    }

    #[test]
    fn prefix_is_twelve_chars_on_char_boundaries() {
        let (secret, _) = generate_secret("wk");
        let prefix = secret_prefix(secret.expose());
        assert_eq!(prefix.len(), 12);
        assert!(secret.expose().starts_with(prefix));
        assert_eq!(secret_prefix("short"), "short");
        assert_eq!(secret_prefix("ééééééééééééé"), "éééééééééééé");
    }

    #[test]
    fn constant_time_eq_matches_eq() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
