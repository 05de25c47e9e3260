//! The tier's membership: this gateway's row in the store's `gateways` table
//! (registered at start, a heartbeat every 2 s, removed on a clean stop; a row
//! silent for 10 s is a dead gateway, deleted after a minute), and the gateway set
//! pushed to every runner whose tunnel reaches this gateway, on connect and on
//! every change, so runners hold a tunnel to each live gateway.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::{JoinHandle, JoinSet};
use warren_protocol::{GatewayEntry, GatewaySet, Request, Response};
use warren_store::{GatewayMember, RunnerId, Store};

use crate::tunnel::{RunnerHub, TunnelError};

/// How often this gateway's heartbeat is written and the set read.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A gateway whose heartbeat is older than this is not in the set.
pub const FRESH: Duration = Duration::from_secs(10);
/// A row older than this is deleted (the gateway died without leaving).
const EXPIRE: Duration = Duration::from_secs(60);
/// How often new runner tunnels are looked for (a push needs no query).
const PUSH_EVERY: Duration = Duration::from_millis(500);
/// A push to one runner may take this long.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// This gateway's membership; [`Membership::leave`] on a clean stop.
pub struct Membership {
    id: String,
    store: Store,
    task: JoinHandle<()>,
}

impl Membership {
    /// Registers this gateway (its SSH and runner addresses as clients reach them)
    /// and starts heartbeating and pushing the set. Fails when the store does.
    pub async fn start(
        store: Store,
        hub: Arc<RunnerHub>,
        ssh_address: String,
        runner_address: String,
    ) -> anyhow::Result<Membership> {
        let me = GatewayMember {
            id: warren_keys::random_id::<16>("gw-"),
            ssh_address,
            runner_address,
            heartbeat_at_ms: warren_store::now_ms(),
        };
        store
            .heartbeat_gateway(&me)
            .await
            .context("registering this gateway in the store")?;
        tracing::info!(gateway = %me.id, runners = %me.runner_address, "joined the gateway tier");
        let id = me.id.clone();
        let task = tokio::spawn(keep(store.clone(), hub, me));
        Ok(Membership { id, store, task })
    }

    /// Stops heartbeating and removes this gateway's row, so the others drop it from
    /// the set at once (runners then close their tunnels to it).
    pub async fn leave(self) {
        self.task.abort();
        if let Err(e) = self.store.remove_gateway(&self.id).await {
            tracing::warn!(error = %e, "leaving the gateway tier");
        }
    }
}

async fn keep(store: Store, hub: Arc<RunnerHub>, mut me: GatewayMember) {
    let mut set = GatewaySet {
        this: me.id.clone(),
        gateways: vec![entry(&me)],
    };
    let mut version = 0u64;
    // Per runner: the tunnel and the set version it was told.
    let mut told: HashMap<RunnerId, (u64, u64)> = HashMap::new();
    let mut store_ok = true;
    // When the store came back after an outage: every gateway's heartbeat stopped
    // with it, so for one freshness period a silent row proves nothing, and the set
    // only grows (telling runners a set without the others would close their
    // tunnels, and the sessions in them).
    let mut store_back: Option<tokio::time::Instant> = None;
    let mut last_beat = tokio::time::Instant::now();
    let mut first = true;
    let mut tick = tokio::time::interval(PUSH_EVERY);
    loop {
        tick.tick().await;
        if first || last_beat.elapsed() >= HEARTBEAT_EVERY {
            first = false;
            last_beat = tokio::time::Instant::now();
            me.heartbeat_at_ms = warren_store::now_ms();
            let read = async {
                store.heartbeat_gateway(&me).await?;
                store.live_gateways(FRESH, EXPIRE).await
            };
            match read.await {
                Ok(members) => {
                    if !store_ok {
                        tracing::info!("the store answers again: heartbeats resume");
                        store_back = Some(tokio::time::Instant::now());
                    }
                    store_ok = true;
                    let mut gateways: Vec<GatewayEntry> = members.iter().map(entry).collect();
                    if !gateways.iter().any(|g| g.id == me.id) {
                        gateways.push(entry(&me));
                    }
                    if store_back.is_some_and(|at| at.elapsed() < FRESH) {
                        for known in &set.gateways {
                            if !gateways.iter().any(|g| g.id == known.id) {
                                gateways.push(known.clone());
                            }
                        }
                    }
                    gateways.sort();
                    if gateways != set.gateways {
                        tracing::info!(
                            gateways = gateways.len(),
                            "the gateway set changed; telling the runners"
                        );
                        set.gateways = gateways;
                        version += 1;
                    }
                }
                Err(e) => {
                    if store_ok {
                        tracing::warn!(error = %e, "gateway heartbeat failed (store unreachable?)");
                    }
                    store_ok = false;
                }
            }
        }
        let tunnels = hub.online_tunnels();
        told.retain(|runner, _| tunnels.iter().any(|(r, _)| r == runner));
        let mut pushes = JoinSet::new();
        for (runner, generation) in tunnels {
            if told.get(&runner) == Some(&(generation, version)) {
                continue;
            }
            let hub = hub.clone();
            let request = Request::Gateways(set.clone());
            pushes.spawn(async move {
                let result =
                    tokio::time::timeout(PUSH_TIMEOUT, hub.control(&runner, &request)).await;
                (runner, generation, result)
            });
        }
        while let Some(Ok((runner, generation, result))) = pushes.join_next().await {
            match result {
                Ok(Ok(Response::Ok)) => {}
                // A runner from before tiers: it keeps its one tunnel; tell it once.
                Ok(Ok(other)) => {
                    tracing::debug!(runner = %runner.as_str(), ?other, "runner did not take the gateway set")
                }
                Ok(Err(TunnelError::RunnerOffline)) | Err(_) => continue,
                Ok(Err(e)) => {
                    tracing::debug!(runner = %runner.as_str(), error = %e, "pushing the gateway set");
                    continue;
                }
            }
            told.insert(runner, (generation, version));
        }
    }
}

fn entry(member: &GatewayMember) -> GatewayEntry {
    GatewayEntry {
        id: member.id.clone(),
        runner_address: member.runner_address.clone(),
    }
}
