//! Snapshot ids (issue 26): `snp_` and 16 random base32 characters, shared by the
//! gateway, its store and the runners.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{is_random_part, random_id};

/// The prefix of every snapshot id.
pub const SNAPSHOT_PREFIX: &str = "snp_";
/// How many random base32 characters follow the prefix.
const RANDOM_CHARS: usize = 16;

/// A snapshot's id: `snp_` and 16 lowercase base32 characters. Safe in a path, a
/// Docker image tag and a label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(String);

/// Why a string is not a snapshot id (the input is never echoed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotIdError;

impl fmt::Display for SnapshotIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a snapshot id is {SNAPSHOT_PREFIX} and {RANDOM_CHARS} lowercase letters or digits 2-7"
        )
    }
}

impl std::error::Error for SnapshotIdError {}

impl SnapshotId {
    pub fn parse(s: &str) -> Result<SnapshotId, SnapshotIdError> {
        let random = s.strip_prefix(SNAPSHOT_PREFIX).ok_or(SnapshotIdError)?;
        if !is_random_part::<RANDOM_CHARS>(random) {
            return Err(SnapshotIdError);
        }
        Ok(SnapshotId(s.to_owned()))
    }

    /// A fresh id from the OS CSPRNG.
    ///
    /// # Panics
    ///
    /// If the OS random number generator fails.
    pub fn generate() -> SnapshotId {
        SnapshotId(random_id::<RANDOM_CHARS>(SNAPSHOT_PREFIX))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SnapshotId {
    type Err = SnapshotIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SnapshotId::parse(s)
    }
}

impl Serialize for SnapshotId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SnapshotId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SnapshotId, D::Error> {
        let text = String::deserialize(d)?;
        SnapshotId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_junk() {
        let id = SnapshotId::generate();
        assert!(id.as_str().starts_with(SNAPSHOT_PREFIX));
        assert_eq!(SnapshotId::parse(id.as_str()).unwrap(), id);
        for bad in [
            "",
            "snp_",
            "sbx-aaaaaaaaaaaa",
            "snp_AAAAAAAAAAAAAAAA",
            "snp_aaaaaaaaaaaaaaa",
            "snp_../../etc/passw",
            "snp_aaaaaaaaaaaaaaaaa",
        ] {
            assert!(SnapshotId::parse(bad).is_err(), "{bad}");
        }
    }
}
