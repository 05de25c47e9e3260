//! A runner's tunnels to a gateway tier: one link per live gateway, each
//! reconnecting on its own (`tunnel::keep_link`), following the gateway set the
//! gateways send ([`crate::protocol::Request::Gateways`]) as gateways come and go —
//! Teleport's strategy for agents and proxies. The gateway the runner joined
//! through (its seed) is always kept: it is where a runner that lost every other
//! gateway learns the set again (it may be a load balancer's address).
//!
//! A gateway that is no tier's member never sends a set, so the runner keeps its
//! one tunnel, as before.
//!
//! Every gateway sends the set it last read, so sets arrive out of date: one read
//! before another gateway registered lacks that gateway. A tunnel therefore closes
//! only once its gateway has been missing from the sets for [`LEAVE_GRACE`]; a
//! live gateway is back in the next set (each comes every 2 s), and closing its
//! tunnel on one stale set would cut the sessions and requests it carries.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::protocol::RunnerCapacity;
use crate::state::DataDir;
use crate::tunnel::{self, LinkConfig};

/// How long a gateway must be missing from the sets before its tunnel closes
/// (three of its heartbeats).
const LEAVE_GRACE: Duration = Duration::from_secs(6);

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

/// Since when each linked gateway has been missing from the sets received.
#[derive(Default)]
struct Missing(HashMap<String, Instant>);

impl Missing {
    /// After a set naming `wanted` (the seed included): the linked gateways missing
    /// from the sets for [`LEAVE_GRACE`] by `now`, whose tunnels close (forgotten
    /// here); one that is back is forgiven.
    fn update(
        &mut self,
        linked: &[&String],
        wanted: &BTreeSet<String>,
        now: Instant,
    ) -> Vec<String> {
        self.0
            .retain(|a, _| linked.contains(&a) && !wanted.contains(a));
        for address in linked.iter().filter(|a| !wanted.contains(**a)) {
            self.0.entry((*address).clone()).or_insert_with(|| {
                tracing::info!(gateway = %address, "gateway left the set; its tunnel closes in {LEAVE_GRACE:?} unless it returns");
                now
            });
        }
        let gone: Vec<String> = self
            .0
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= LEAVE_GRACE)
            .map(|(a, _)| a.clone())
            .collect();
        for address in &gone {
            self.0.remove(address);
        }
        gone
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
    let mut missing = Missing::default();
    loop {
        tokio::select! {
            Some(set) = set_rx.recv() => {
                let mut wanted: BTreeSet<String> = set
                    .gateways
                    .iter()
                    .map(|g| g.runner_address.clone())
                    .collect();
                wanted.insert(seed.clone());
                let linked: Vec<&String> = links.keys().collect();
                let gone = missing.update(&linked, &wanted, Instant::now());
                for address in gone {
                    if let Some(link) = links.remove(&address) {
                        tracing::info!(gateway = %address, "gateway still not in the set; closing its tunnel");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addresses: &[&str]) -> BTreeSet<String> {
        addresses.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn a_gateway_missing_from_one_stale_set_keeps_its_tunnel_and_one_gone_for_good_loses_it() {
        let (a, b, c) = ("a".to_owned(), "b".to_owned(), "c".to_owned());
        let linked = [&a, &b, &c];
        let mut missing = Missing::default();
        let t0 = Instant::now();
        // A stale set without c, then c is back: nothing closes.
        assert!(missing.update(&linked, &set(&["a", "b"]), t0).is_empty());
        assert!(
            missing
                .update(&linked, &set(&["a", "b", "c"]), t0 + Duration::from_secs(2))
                .is_empty()
        );
        assert!(
            missing
                .update(&linked, &set(&["a", "b"]), t0 + Duration::from_secs(7))
                .is_empty()
        );
        // c stays away past the grace (counted from the set that dropped it again).
        assert!(
            missing
                .update(&linked, &set(&["a", "b"]), t0 + Duration::from_secs(10))
                .is_empty()
        );
        assert_eq!(
            missing.update(&linked, &set(&["a", "b"]), t0 + Duration::from_secs(13)),
            vec!["c".to_owned()]
        );
        assert!(missing.0.is_empty());
    }
}
