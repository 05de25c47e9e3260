//! The schema migrations in `store/migrations/`, compiled into the binary and run by
//! sqlx's migrator at open (it records them in `_sqlx_migrations`, checks the
//! checksums of those already applied and, on PostgreSQL, holds an advisory lock so
//! two gateways starting together do not both migrate).
//!
//! `sqlx::migrate!` would embed the directory by itself but needs sqlx's proc macros;
//! this list avoids that compile cost. A test checks it matches the directory.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// `(version, description, sql)`, in version order. Never edit a released entry:
/// add a new file and a new line.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (
        2,
        "sandbox_shares",
        include_str!("../migrations/0002_sandbox_shares.sql"),
    ),
    (
        3,
        "share_secrets",
        include_str!("../migrations/0003_share_secrets.sql"),
    ),
    (
        4,
        "token_revocation",
        include_str!("../migrations/0004_token_revocation.sql"),
    ),
    (
        5,
        "ssh_channels",
        include_str!("../migrations/0005_ssh_channels.sql"),
    ),
    (
        6,
        "sandbox_disk",
        include_str!("../migrations/0006_sandbox_disk.sql"),
    ),
    (
        7,
        "forward_agent",
        include_str!("../migrations/0007_forward_agent.sql"),
    ),
    (
        8,
        "snapshots",
        include_str!("../migrations/0008_snapshots.sql"),
    ),
    (
        9,
        "gateway_tier",
        include_str!("../migrations/0009_gateway_tier.sql"),
    ),
    (
        10,
        "recording_chunks",
        include_str!("../migrations/0010_recording_chunks.sql"),
    ),
];

#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

pub(crate) async fn migrator() -> Result<Migrator, sqlx::Error> {
    Ok(Migrator::new(Embedded).await?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every file in `migrations/` is listed, with the same version, description and
    /// text, so sqlx-cli and this list agree.
    #[test]
    fn list_matches_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                let stem = name.strip_suffix(".sql").expect("only .sql files");
                let (version, description) = stem.split_once('_').unwrap();
                let sql = std::fs::read_to_string(&path).unwrap();
                (version.parse().unwrap(), description.to_owned(), sql)
            })
            .collect();
        files.sort();
        let listed: Vec<(i64, String, String)> = MIGRATIONS
            .iter()
            .map(|&(v, d, s)| (v, d.to_owned(), s.to_owned()))
            .collect();
        assert_eq!(listed, files);
    }
}
