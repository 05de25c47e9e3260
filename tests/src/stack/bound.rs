//! A whole gateway in the caller's own runtime, for async tests that drive its
//! sockets themselves (the pre-auth bounds flood them): [`StackBuilder::bind`].

use std::net::SocketAddr;

use anyhow::Result;
use tempfile::TempDir;
use warren_gateway::server::{Gateway, Listen};
use warren_store::Store;

use super::StackBuilder;

/// A gateway bound on loopback and served in the runtime that bound it.
pub struct BoundGateway {
    pub dir: TempDir,
    pub store: Store,
    pub ssh: SocketAddr,
    pub http: SocketAddr,
    /// The runners' endpoint and its host key's fingerprint (for `warren-runner join`).
    pub runners: SocketAddr,
    pub fingerprint: String,
}

impl StackBuilder {
    /// The gateway with the builder's options (its reconciler as `serve` runs it),
    /// SSH, HTTP and runners' ports on loopback, served by a task of the caller's
    /// runtime until that runtime ends.
    pub async fn bind(self) -> Result<BoundGateway> {
        let dir = TempDir::new()?;
        let store = Store::open_in_data_dir(dir.path()).await?;
        let gateway =
            Gateway::bind_with(store.clone(), dir.path(), Listen::loopback(), self.options).await?;
        let (runners, fingerprint) = gateway.runner_endpoint();
        let (ssh, http) = (gateway.ssh_addr, gateway.http_addr);
        tokio::spawn(gateway.serve(std::future::pending()));
        Ok(BoundGateway {
            dir,
            store,
            ssh,
            http,
            runners,
            fingerprint,
        })
    }
}
