//! A gateway tier: several `warren-gateway serve` on one PostgreSQL store, any of
//! them serving any sandbox. What makes the gateways interchangeable lives here:
//!
//! - `keys.rs`: one SSH host key and one token signing key for all, kept in the
//!   store sealed under the operator's cluster secret (`--cluster-secret-file`).
//! - `members.rs`: each gateway's row (heartbeat), and the gateway set each tells
//!   its runners, which then hold a tunnel to every gateway.
//!
//! Not for: what the gateways decide (the lifecycle, on the shared store), or
//! routing a login (each gateway reaches every runner through its own tunnel).

mod keys;
mod members;

use std::path::Path;

use anyhow::{Context, bail};
use warren_keys::cluster::{ClusterSecret, HOST_KEY_SLOT};
use warren_store::{Backend, Store};

pub use keys::SharedKeys;
pub use members::{FRESH, HEARTBEAT_EVERY, Membership};

/// How this gateway takes part in a tier.
#[derive(Debug)]
pub struct Tier {
    /// The tier's keys, opened.
    pub keys: SharedKeys,
    /// This gateway's runner endpoint as runners reach it (HOST:PORT), told to
    /// every runner in the gateway set.
    pub runner_address: String,
}

impl Tier {
    /// A member of the tier whose keys [`open_shared_keys`] opened.
    pub fn new(keys: SharedKeys, runner_address: String) -> Tier {
        Tier {
            keys,
            runner_address,
        }
    }
}

/// Opens the tier's keys in `store` with the secret in `secret_file` (0600),
/// storing them first if this is the first gateway. The store must be PostgreSQL:
/// a SQLite store belongs to one gateway's data directory.
pub async fn open_shared_keys(
    store: &Store,
    secret_file: &Path,
    data_dir: &Path,
) -> anyhow::Result<SharedKeys> {
    if store.backend() != Backend::Postgres {
        bail!(
            "--cluster-secret-file is for a gateway tier on PostgreSQL (--database-url \
             postgres://…); on SQLite a gateway serves alone with its keys in its data \
             directory"
        );
    }
    let secret = ClusterSecret::load(secret_file)?;
    keys::load(store, &secret, data_dir)
        .await
        .context("the gateway tier's shared keys")
}

/// A gateway started without a cluster secret on a store that holds a tier's keys
/// serves with keys of its own: say so (users and runners would see another host
/// key).
pub async fn warn_if_outside(store: &Store) {
    if let Ok(Some(_)) = store.sealed_gateway_key(HOST_KEY_SLOT).await {
        tracing::warn!(
            "this database holds a gateway tier's keys, but this gateway was started without \
             --cluster-secret-file: it uses its own keys and is not a member of the tier"
        );
    }
}
