//! A sandbox's own bridge network, on the first free /28 of the runner's pool.

use super::*;

impl DockerBackend {
    /// Makes the sandbox's bridge on the first free /28 of the network pool.
    pub(super) async fn create_network(
        &self,
        id: &SandboxId,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        // Another runner on this engine may take the same subnet at the same moment:
        // Docker refuses the overlap, and we look again.
        let mut attempts = 0;
        loop {
            // Only the pick is one at a time; the networks are made in parallel.
            let subnet = self.reserve_subnet().await?;
            let request = NetworkCreateRequest {
                name: name.to_owned(),
                driver: Some("bridge".into()),
                labels: Some(labels.clone()),
                ipam: Some(Ipam {
                    driver: Some("default".into()),
                    config: Some(vec![IpamConfig {
                        subnet: Some(subnet.subnet.clone()),
                        ..Default::default()
                    }]),
                    options: None,
                }),
                options: Some(HashMap::from([
                    (
                        "com.docker.network.bridge.enable_icc".to_owned(),
                        "false".to_owned(),
                    ),
                    (
                        "com.docker.network.bridge.name".to_owned(),
                        netpolicy::bridge_name(id),
                    ),
                ])),
                ..Default::default()
            };
            match self.docker.create_network(request).await {
                Ok(_) => return Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError { message, .. })
                    if message.contains("overlaps") && attempts < 20 =>
                {
                    attempts += 1;
                    let pause = 10 + u64::from(std::process::id() % 40);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(e).context("creating the sandbox's network"),
            }
        }
    }

    /// Picks the first free /28 and holds it for this create until the returned
    /// reservation is dropped (by then Docker lists the network, or it failed).
    async fn reserve_subnet(&self) -> Result<SubnetReservation<'_>> {
        let _held = self.subnet_lock.lock().await;
        let subnet = self.free_subnet().await?;
        self.pending_subnets().insert(subnet.clone());
        Ok(SubnetReservation {
            backend: self,
            subnet,
        })
    }

    fn pending_subnets(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.pending_subnets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The first /28 of the network pool that no Docker network uses and no
    /// create in flight holds.
    async fn free_subnet(&self) -> Result<String> {
        let taken: std::collections::HashSet<String> = self
            .docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .context("listing networks")?
            .into_iter()
            .flat_map(|n| n.ipam.and_then(|i| i.config).unwrap_or_default())
            .filter_map(|c| c.subnet)
            .chain(self.pending_subnets().iter().cloned())
            .collect();
        let (base, bits) = self.defaults.network_pool;
        let count = 1u32 << (28 - u32::from(bits.min(28)));
        let base = u32::from(base) & !(u32::MAX.checked_shr(u32::from(bits)).unwrap_or(0));
        (0..count)
            .map(|i| format!("{}/28", std::net::Ipv4Addr::from(base + i * 16)))
            .find(|s| !taken.contains(s))
            .context("the sandbox network pool is exhausted")
    }
}

/// A subnet picked for a network being made.
struct SubnetReservation<'a> {
    backend: &'a DockerBackend,
    subnet: String,
}

impl Drop for SubnetReservation<'_> {
    fn drop(&mut self) {
        self.backend.pending_subnets().remove(&self.subnet);
    }
}
