//! Snapshots and forks (issue 26): what `POST /v1/sandboxes/{id}/snapshots` and
//! `POST /v1/sandboxes/{id}/fork` take, and what they and `GET /v1/snapshots`
//! answer. A create from a snapshot is [`crate::CreateSandbox`] with `snapshot`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::views::CreatedSandbox;

/// The most forks one request makes.
pub const MAX_FORKS: u32 = 16;

/// What `POST /v1/sandboxes/{id}/snapshots` takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TakeSnapshot {
    /// A name to recognise it by (at most 128 characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What `POST /v1/sandboxes/{id}/fork` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkSandbox {
    /// How many forks, 1 to 16 (default 1).
    #[serde(default = "one")]
    pub count: u32,
    /// Each fork's branch is `<prefix>-<n>` (n from 1); default `warren/<fork-id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch_prefix: Option<String>,
}

impl Default for ForkSandbox {
    fn default() -> ForkSandbox {
        ForkSandbox {
            count: 1,
            branch_prefix: None,
        }
    }
}

fn one() -> u32 {
    1
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotView {
    /// `snp_…`
    pub id: String,
    pub name: Option<String>,
    /// The sandbox it was taken of (it may since be deleted).
    pub source: String,
    pub owner: String,
    pub runner: String,
    pub image: String,
    pub repo: Option<String>,
    pub size_bytes: u64,
    /// How long the source was frozen for the capture, in milliseconds.
    pub frozen_ms: u64,
    /// Unix seconds.
    pub created_at: i64,
}

/// The snapshots you may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotView>,
}

/// Forks made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ForkedView {
    /// The snapshot they were made from (already deleted: its storage goes with the
    /// last fork).
    pub snapshot: SnapshotView,
    /// How long the source was frozen, in milliseconds.
    pub frozen_ms: u64,
    /// Each fork, with its token (shown once).
    pub sandboxes: Vec<CreatedSandbox>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fork_bodies_are_checked() {
        let body: ForkSandbox = serde_json::from_str("{}").unwrap();
        assert_eq!(body, ForkSandbox::default());
        assert!(serde_json::from_str::<ForkSandbox>(r#"{"count":2,"x":1}"#).is_err());
        assert!(serde_json::from_str::<ForkSandbox>(r#"{"count":-1}"#).is_err());
        // What a client sends leaves out what it does not set.
        assert_eq!(
            serde_json::to_string(&ForkSandbox::default()).unwrap(),
            r#"{"count":1}"#
        );
        assert_eq!(
            serde_json::to_string(&TakeSnapshot::default()).unwrap(),
            "{}"
        );
    }
}
