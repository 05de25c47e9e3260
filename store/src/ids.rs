//! Row ids: one newtype per table, `<prefix>-` plus 16 random base32 characters
//! (80 bits, drawn by [`warren_keys::random_id`]), e.g. `usr-k3j5b2mq7x4hd6ta`.
//! Sandbox ids are [`warren_keys::SandboxId`], because the SSH front door and the
//! tokens use them too.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// 80 bits: 16 base32 characters of 5 bits.
const RANDOM_CHARS: usize = 16;

/// Why a string is not a valid value of some store type (an id, a state, a label, a
/// page cursor). The message never echoes the input.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("not a valid {what}")]
pub struct ParseError {
    what: &'static str,
}

impl ParseError {
    pub(crate) fn new(what: &'static str) -> ParseError {
        ParseError { what }
    }
}

fn is_valid(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(warren_keys::is_random_part::<RANDOM_CHARS>)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The fixed part every id of this kind starts with (before the `-`).
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id.
            ///
            /// # Panics
            ///
            /// If the OS random number generator fails.
            pub fn generate() -> $name {
                $name(warren_keys::random_id::<RANDOM_CHARS>(concat!($prefix, "-")))
            }

            /// Accepts exactly what [`Self::generate`] makes.
            pub fn parse(s: &str) -> Result<$name, ParseError> {
                if is_valid($prefix, s) {
                    Ok($name(s.to_owned()))
                } else {
                    Err(ParseError::new($what))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = ParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A user account.
    UserId,
    "usr",
    "user id"
);
id_type!(
    /// An API key (the row, not the secret).
    ApiKeyId,
    "apk",
    "API key id"
);
id_type!(
    /// An SSH public key registered to a user.
    SshKeyId,
    "ssk",
    "SSH key id"
);
id_type!(
    /// A runner (one per Docker host).
    RunnerId,
    "run",
    "runner id"
);
id_type!(
    /// A runner join token (the row, not the secret).
    JoinTokenId,
    "jtk",
    "join token id"
);
id_type!(
    /// One SSH connection's audit record.
    SshSessionId,
    "ses",
    "SSH session id"
);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = UserId::generate();
        let b = UserId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("usr-"));
        assert_eq!(a.as_str().len(), 4 + RANDOM_CHARS);
        assert_eq!(UserId::parse(a.as_str()).unwrap(), a);
        assert_eq!(a.to_string().parse::<UserId>().unwrap(), a);
    }

    #[test]
    fn malformed_ids_are_refused_without_echo() {
        let runner = RunnerId::generate();
        for bad in [
            "",
            "usr-",
            "usr-abcdefghijklmnop1",
            "usr-ABCDEFGHIJKLMNOP",
            "usr-abcdefghijklmno1",
            "usr_abcdefghijklmnop",
            "usrabcdefghijklmnopq",
            runner.as_str(),
        ] {
            let err = UserId::parse(bad).unwrap_err();
            assert_eq!(err.to_string(), "not a valid user id", "{bad:?}");
        }
        assert!(UserId::parse("usr-abcdefghijklmnop").is_ok());
        assert!(UserId::parse("usr-234567abcdefghij").is_ok());
    }
}
