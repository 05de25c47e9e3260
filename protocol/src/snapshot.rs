//! Snapshots (issue 26): what a runner reports of a snapshot it took. The id type
//! is [`warren_keys::SnapshotId`].

use serde::{Deserialize, Serialize};
pub use warren_keys::SnapshotId;

/// What a runner reports of a snapshot it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTaken {
    /// The bytes the snapshot holds on the runner (its workspace copy; its root
    /// file system layer is in the engine's image store, counted here too).
    pub size_bytes: u64,
    /// How long the source sandbox was frozen (`docker pause` and the file system
    /// freeze), in milliseconds.
    pub frozen_ms: u64,
    /// The image the snapshot's root file system is (runner-local).
    pub image: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strings_on_the_wire() {
        let id = SnapshotId::generate();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<SnapshotId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SnapshotId>("\"snp_../x\"").is_err());
    }
}
