//! A runner's tunnels to a gateway tier: one link per live gateway, each
//! reconnecting on its own (`tunnel::keep_link`), following the gateway set the
//! gateways send ([`crate::protocol::Request::Gateways`]) as gateways come and go —
//! Teleport's strategy for agents and proxies. The gateway the runner joined
//! through (its seed) is always kept: it is where a runner that lost every other
//! gateway learns the set again (it may be a load balancer's address).
//!
//! A gateway that is no tier's member never sends a set, so the runner keeps its
//! one tunnel, as before.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::protocol::RunnerCapacity;
use crate::state::DataDir;
use crate::tunnel::{self, LinkConfig};

/// One gateway's link: its task and how to stop it.
struct Link {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn start(address: &str, config: &Arc<LinkConfig>) -> Link {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(tunnel::keep_link(
        address.to_owned(),
        config.clone(),
        stopped,
    ));
    Link { stop, task }
}

async fn stop(address: &str, link: Link) {
    let _ = link.stop.send(true);
    if tokio::time::timeout(std::time::Duration::from_secs(5), link.task)
        .await
        .is_err()
    {
        tracing::warn!(gateway = %address, "a tunnel did not close in 5 s");
    }
}

/// Keeps a tunnel to every gateway of the set (and to the seed) until `shutdown`
/// fires; then closes them all and shuts the backend down. Started through
/// [`crate::service::Runner::run`].
pub(crate) async fn run(
    data: &DataDir,
    backend: Arc<Backend>,
    capacity: RunnerCapacity,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let (identity, pinned) = data.load_identity()?;
    let seed = identity.gateway.clone();
    let (sets, mut set_rx) = mpsc::unbounded_channel();
    let config = Arc::new(LinkConfig {
        identity,
        key: Arc::new(data.key()?),
        pinned,
        backend: backend.clone(),
        capacity,
        sets,
    });
    let mut links: HashMap<String, Link> = HashMap::new();
    links.insert(seed.clone(), start(&seed, &config));
    loop {
        tokio::select! {
            Some(set) = set_rx.recv() => {
                let mut wanted: BTreeSet<String> = set
                    .gateways
                    .iter()
                    .map(|g| g.runner_address.clone())
                    .collect();
                wanted.insert(seed.clone());
                let gone: Vec<String> = links
                    .keys()
                    .filter(|a| !wanted.contains(*a))
                    .cloned()
                    .collect();
                for address in gone {
                    if let Some(link) = links.remove(&address) {
                        tracing::info!(gateway = %address, "gateway left the set; closing its tunnel");
                        stop(&address, link).await;
                    }
                }
                for address in wanted {
                    if let std::collections::hash_map::Entry::Vacant(slot) = links.entry(address) {
                        tracing::info!(gateway = %slot.key(), "gateway joined the set; opening a tunnel");
                        let link = start(slot.key(), &config);
                        slot.insert(link);
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    for (address, link) in links {
        stop(&address, link).await;
    }
    backend.shutdown().await;
    Ok(())
}
