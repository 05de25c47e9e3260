//! Sandbox ids: validated newtypes, safe as SSH user names, Docker container names and
//! DNS labels.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::random::random_bytes;

const MIN_LEN: usize = 3;
/// A DNS label holds at most 63 bytes.
const MAX_LEN: usize = 63;
const GENERATED_PREFIX: &str = "sbx-";
/// RFC 4648 base32, lowercased: 32 symbols, so `byte & 31` picks one without bias.
const BASE32_LOWER: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
const GENERATED_RANDOM_CHARS: usize = 12;

/// `prefix`, then `N` lowercase base32 characters (5 bits each) from the OS CSPRNG:
/// the one way Warren makes ids (sandboxes here, the store's rows with their own
/// prefixes).
///
/// # Panics
///
/// If the OS random number generator fails.
pub fn random_id<const N: usize>(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + N);
    id.push_str(prefix);
    for b in random_bytes::<N>() {
        id.push(char::from(BASE32_LOWER[usize::from(b & 31)]));
    }
    id
}

/// Whether `s` is `N` characters of what [`random_id`] draws from.
pub fn is_random_part<const N: usize>(s: &str) -> bool {
    s.len() == N && s.bytes().all(|b| BASE32_LOWER.contains(&b))
}

/// Why a string is not a sandbox id. Messages never echo the input: a user who types a
/// token where an id belongs must not find it in the logs.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdError {
    #[error("sandbox id must be {MIN_LEN} to {MAX_LEN} characters long (got {0})")]
    Length(usize),
    #[error("sandbox id must start with a lowercase ASCII letter")]
    Start,
    #[error("sandbox id must not end with '-'")]
    TrailingHyphen,
    #[error("sandbox id may contain only lowercase ASCII letters, digits and '-'")]
    Character,
}

/// A sandbox's id: 3..=63 chars of `[a-z0-9-]`, starting with a letter, not ending
/// with `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SandboxId(String);

impl SandboxId {
    pub fn parse(s: &str) -> Result<SandboxId, IdError> {
        // Byte length first: it bounds the work, and non-ASCII input fails below anyway.
        if !(MIN_LEN..=MAX_LEN).contains(&s.len()) {
            return Err(IdError::Length(s.len()));
        }
        let bytes = s.as_bytes();
        if !bytes.first().is_some_and(u8::is_ascii_lowercase) {
            return Err(IdError::Start);
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        {
            return Err(IdError::Character);
        }
        if bytes.last() == Some(&b'-') {
            return Err(IdError::TrailingHyphen);
        }
        Ok(SandboxId(s.to_owned()))
    }

    /// A fresh `sbx-` id with 12 base32 characters (60 bits) from the OS CSPRNG.
    ///
    /// # Panics
    ///
    /// If the OS random number generator fails.
    pub fn generate() -> SandboxId {
        SandboxId(random_id::<GENERATED_RANDOM_CHARS>(GENERATED_PREFIX))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SandboxId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SandboxId::parse(s)
    }
}

impl AsRef<str> for SandboxId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for ok in ["abc", "sbx-0a1b2c3d4e5f", "a-b", "x9z", &"a".repeat(63)] {
            assert_eq!(SandboxId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_invalid_ids() {
        let cases = [
            ("", IdError::Length(0)),
            ("ab", IdError::Length(2)),
            (&"a".repeat(64), IdError::Length(64)),
            ("1abc", IdError::Start),
            ("-abc", IdError::Start),
            ("Abc", IdError::Start),
            ("abC", IdError::Character),
            ("ab_c", IdError::Character),
            ("ab.c", IdError::Character),
            ("ab c", IdError::Character),
            ("abé", IdError::Character),
            ("abc-", IdError::TrailingHyphen),
        ];
        for (input, want) in cases {
            assert_eq!(SandboxId::parse(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = SandboxId::generate();
        let b = SandboxId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("sbx-"));
        assert_eq!(a.as_str().len(), 16);
        assert_eq!(SandboxId::parse(a.as_str()).unwrap(), a);
        assert_eq!(a.to_string().parse::<SandboxId>().unwrap(), a);
    }
}
