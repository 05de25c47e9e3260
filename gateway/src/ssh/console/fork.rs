//! The console's `fork` and `snapshot` (issue 26), beside [`super::commands`]: each
//! a thin call into [`crate::lifecycle::snapshots`].

use std::sync::Arc;

use super::commands::Outcome;
use crate::lifecycle::snapshots::{ForkSandbox, TakeSnapshot};
use crate::lifecycle::{Error, Lifecycle};
use crate::views::{forked_view, snapshot_view};
use warren_store::User;

fn to_json<T: serde::Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// `fork <id> [--count N] [--branch-prefix P] [--json]`: one fork id a line; with
/// a terminal (and one fork, or several), the first fork's shell opens.
pub async fn fork(
    lc: &Arc<Lifecycle>,
    user: &User,
    id: &str,
    body: ForkSandbox,
    json: bool,
    attach: bool,
) -> Result<Outcome, Error> {
    let forked = lc.fork(user, id, body).await?;
    let stdout = if json {
        to_json(&forked_view(lc, &forked))
    } else {
        forked
            .forks
            .iter()
            .map(|c| format!("{}\n", c.sandbox.id))
            .collect()
    };
    let attach = if attach && !json {
        forked.forks.first().map(|c| c.sandbox.clone())
    } else {
        None
    };
    Ok(Outcome {
        stdout,
        attach,
        ..Outcome::default()
    })
}

/// `snapshot <id> [--name N] [--json]`: the snapshot's id, and how long the
/// sandbox was frozen.
pub async fn snapshot(
    lc: &Arc<Lifecycle>,
    user: &User,
    id: &str,
    name: Option<String>,
    json: bool,
) -> Result<Outcome, Error> {
    let snapshot = lc.snapshot(user, id, TakeSnapshot { name }).await?;
    let stdout = if json {
        to_json(&snapshot_view(&snapshot))
    } else {
        format!(
            "{} (frozen {} ms, {} MiB)\n",
            snapshot.id,
            snapshot.frozen_ms,
            snapshot.size_bytes >> 20
        )
    };
    Ok(Outcome {
        stdout,
        ..Outcome::default()
    })
}
