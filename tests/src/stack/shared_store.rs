//! Gateways on PostgreSQL: a fresh schema in the test server for each test
//! ([`postgres_schema`]), a private cluster a test may stop and start again
//! ([`PrivatePostgres`]), and [`Tier`]: several in-process gateways on one
//! database, each with its own data dir, keys and HTTP API, as several
//! `warren-gateway serve` share one PostgreSQL.
//!
//! In CI a missing PostgreSQL fails the test; elsewhere the test is skipped with a
//! note, as the store's own PostgreSQL tests are.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use sqlx::Connection;

use super::{ApiStack, StackBuilder};
use crate::workspace_root;

const POSTGRES_URL_VAR: &str = "WARREN_TEST_POSTGRES_URL";

/// `None` (after a note) when PostgreSQL is missing outside CI; an error in CI.
fn missing(what: &str) -> Result<()> {
    if std::env::var_os("CI").is_some() {
        bail!(
            "{what}, but CI is set: the PostgreSQL tier tests must run in CI (scripts/test-postgres)"
        );
    }
    eprintln!("note: {what}, so this PostgreSQL test did nothing");
    Ok(())
}

/// A schema of its own in the server at `WARREN_TEST_POSTGRES_URL`, dropped with
/// it; its URL puts the store's tables there.
pub struct SharedDb {
    pub url: String,
    admin_url: String,
    schema: String,
}

/// A fresh schema in the test server (`None` outside CI without one).
pub fn postgres_schema() -> Result<Option<SharedDb>> {
    let admin_url = std::env::var(POSTGRES_URL_VAR).unwrap_or_default();
    if admin_url.is_empty() {
        missing(&format!("{POSTGRES_URL_VAR} is not set"))?;
        return Ok(None);
    }
    // Ids are lowercase base32: a valid unquoted identifier.
    let schema = format!("tier_{}", &warren_store::UserId::generate().as_str()[4..]);
    on_server(&admin_url, &format!("CREATE SCHEMA {schema}"))?;
    let sep = if admin_url.contains('?') { '&' } else { '?' };
    let url = format!("{admin_url}{sep}options=-c%20search_path%3D{schema}");
    Ok(Some(SharedDb {
        url,
        admin_url,
        schema,
    }))
}

impl SharedDb {
    /// The schema the store's tables are in.
    pub fn schema(&self) -> &str {
        &self.schema
    }
}

impl Drop for SharedDb {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        if let Err(e) = on_server(&self.admin_url, &sql) {
            eprintln!("dropping schema {}: {e:#}", self.schema);
        }
    }
}

/// Runs one statement on the server at `url`, from a runtime of its own.
fn on_server(url: &str, sql: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::raw_sql(sql).execute(&mut conn).await?;
        conn.close().await?;
        anyhow::Ok(())
    })
}

/// A PostgreSQL cluster of the test's own (`scripts/test-postgres` in a directory
/// of its own), which it may stop and start again on the same port; removed on
/// drop.
pub struct PrivatePostgres {
    dir: PathBuf,
    pub url: String,
    port: String,
    bin: PathBuf,
}

impl PrivatePostgres {
    /// A new cluster (`None` outside CI when PostgreSQL is not installed).
    pub fn start() -> Result<Option<PrivatePostgres>> {
        let Some(bin) = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|dirs| {
                let mut bins: Vec<PathBuf> = dirs
                    .filter_map(|d| d.ok().map(|d| d.path().join("bin")))
                    .filter(|b| b.join("pg_ctl").exists())
                    .collect();
                bins.sort();
                bins.pop()
            })
        else {
            missing("PostgreSQL is not installed (scripts/test-postgres installs it)")?;
            return Ok(None);
        };
        // Not under a private temp dir: the cluster runs as `postgres`, which must
        // reach it.
        let dir = std::env::temp_dir().join(format!(
            "warren-tier-pg-{}-{}",
            std::process::id(),
            &warren_store::UserId::generate().as_str()[4..12]
        ));
        let out = Command::new(workspace_root().join("scripts/test-postgres"))
            .env("WARREN_TEST_POSTGRES_DIR", &dir)
            .output()
            .context("scripts/test-postgres")?;
        ensure!(
            out.status.success(),
            "scripts/test-postgres: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        let port = std::fs::read_to_string(dir.join("port"))?.trim().to_owned();
        Ok(Some(PrivatePostgres {
            dir,
            url,
            port,
            bin,
        }))
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let mut cmd = if nix_is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            cmd
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        cmd.arg("-D").arg(self.dir.join("data")).args(args);
        let out = cmd.output().context("pg_ctl")?;
        ensure!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Stops the server (fast: sessions are ended, as a restart ends them).
    pub fn stop(&self) -> Result<()> {
        self.pg_ctl(&["-m", "fast", "-w", "stop"])
    }

    /// Starts it again on the same port.
    pub fn start_again(&self) -> Result<()> {
        let log = self.dir.join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = log.to_string_lossy().into_owned();
        self.pg_ctl(&["-l", &log, "-w", "-t", "60", "-o", &options, "start"])
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new(workspace_root().join("scripts/test-postgres"))
            .arg("stop")
            .env("WARREN_TEST_POSTGRES_DIR", &self.dir)
            .output();
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Several gateways on one PostgreSQL database, each in-process with its own data
/// dir, keys and HTTP API, one admin `root` for all.
pub struct Tier {
    pub gateways: Vec<ApiStack>,
}

impl StackBuilder {
    /// This stack's store is the PostgreSQL database at `url`.
    pub fn on_postgres(mut self, url: &str) -> Self {
        self.postgres = Some(url.to_owned());
        self
    }

    /// `n` gateways in this process on the database at `url` (their runners
    /// tunnel to one gateway each: for the tier of processes, see
    /// [`StackBuilder::tier`]), their APIs reconciling every
    /// `reconcile_every` (one of them at a time: the tier's lease); the last one
    /// has a process runner `r1`, joined to it alone.
    pub fn in_process_tier(self, url: &str, n: usize, reconcile_every: Duration) -> Result<Tier> {
        ensure!(n >= 1, "a tier has a gateway at least");
        let mut gateways: Vec<ApiStack> = Vec::with_capacity(n);
        for i in 0..n {
            let stack = StackBuilder {
                options: self.options.clone(),
                profile: self.profile,
                postgres: Some(url.to_owned()),
            }
            .start()?;
            let runner = if i + 1 == n {
                Some(stack.runner("r1")?)
            } else {
                None
            };
            let admin = gateways.first().map(|g| g.admin.clone());
            gateways.push(ApiStack::over(stack, runner, reconcile_every, admin)?);
        }
        Ok(Tier { gateways })
    }
}
