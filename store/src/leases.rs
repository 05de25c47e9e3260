//! Who does the tier's periodic work (the reconciler and TTL reaper): one gateway
//! of those sharing a database, not each of them.
//!
//! For: [`Lease::held`], asked before each round. On PostgreSQL a lease is a
//! session-level advisory lock (`pg_try_advisory_lock`, keyed by the tier's schema
//! and the lease's name) taken on a connection of
//! the lease's own, outside the pool: it is held as long as that connection lives,
//! so a gateway that dies or loses the database frees it at once, and another
//! takes it at its next round. Each round checks the connection first; a lost one
//! is a lost lease. On SQLite (one gateway per database) every lease is held.
//! Not for: mutual exclusion of single changes (those are transactions and the
//! sandbox's lock).

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::sync::Mutex;

use super::{Backend, STORE_WAIT, Store};

/// A named piece of periodic work that one gateway of the tier does.
pub struct Lease {
    name: &'static str,
    keys: (i32, i32),
    url: Option<String>,
    /// The lease's connection (kept between rounds), and whether it holds the lock.
    conn: Mutex<Option<(PgConnection, bool)>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The advisory lock's two keys: the tier's schema and the lease's name, hashed
/// (FNV-1a, stable across versions and builds).
fn lock_keys(schema: &str, name: &str) -> (i32, i32) {
    let half = |s: &str| {
        let h = super::events::fnv1a(s.as_bytes());
        i32::from_ne_bytes(((h ^ (h >> 32)) as u32).to_ne_bytes())
    };
    (half(schema), half(&format!("warren:{name}")))
}

impl Store {
    /// The lease `name` (not taken yet: [`Lease::held`] takes it).
    pub fn lease(&self, name: &'static str) -> Lease {
        Lease {
            name,
            keys: lock_keys(self.bus.schema(), name),
            url: match self.backend {
                Backend::Postgres => self.bus.url().map(str::to_owned),
                Backend::Sqlite => None,
            },
            conn: Mutex::new(None),
        }
    }
}

impl Lease {
    /// Whether this gateway holds the lease now, taking it if it is free. Never
    /// waits much longer than a query may.
    pub async fn held(&self) -> bool {
        let Some(url) = &self.url else {
            return true;
        };
        let mut state = self.conn.lock().await;
        match tokio::time::timeout(STORE_WAIT, self.check(url, &mut state)).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                if state.as_ref().is_some_and(|(_, held)| *held) {
                    tracing::warn!(lease = self.name, error = %e, "lost the lease");
                }
                *state = None;
                false
            }
            Err(_) => {
                *state = None;
                false
            }
        }
    }

    async fn check(
        &self,
        url: &str,
        state: &mut Option<(PgConnection, bool)>,
    ) -> Result<bool, sqlx::Error> {
        if state.is_none() {
            *state = Some((PgConnection::connect(url).await?, false));
        }
        let Some((conn, held)) = state.as_mut() else {
            return Ok(false);
        };
        if *held {
            // Still ours as long as the session lives.
            conn.ping().await?;
            return Ok(true);
        }
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(self.keys.0)
            .bind(self.keys.1)
            .fetch_one(&mut *conn)
            .await?;
        if taken {
            tracing::info!(lease = self.name, "this gateway holds the lease");
            *held = true;
        }
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_per_name_and_stay_put() {
        assert_ne!(
            lock_keys("public", "reconcile"),
            lock_keys("public", "recordings")
        );
        assert_ne!(
            lock_keys("public", "reconcile"),
            lock_keys("t_a", "reconcile")
        );
        assert_eq!(
            lock_keys("public", "reconcile"),
            lock_keys("public", "reconcile")
        );
    }
}
