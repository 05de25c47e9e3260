//! The SSH front door: users log in with a sandbox id as the user name (or their
//! account name, as a jump host) and are relayed to that sandbox's agent.
//!
//! Not here: the runner tunnel ([`crate::tunnel`]) that carries the bytes to agents,
//! and the state ([`crate::store`]).

mod limiter;
mod login;
mod pipe;
mod relay;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::server::Config;
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;
use warren_keys::TokenSigner;

pub use limiter::{FailureLimiter, failures_total as limiter_failures_total};
pub use upstream::{AgentDialer, AgentStream, DialError, Dialing};

use crate::store::Store;

/// What every user connection shares.
pub struct FrontDoor {
    pub store: Store,
    /// Mints the short-lived tokens the gateway logs in to agents with, and checks
    /// the sandbox tokens users bring.
    pub signer: TokenSigner,
    pub dialer: Arc<dyn AgentDialer>,
    pub limiter: FailureLimiter,
}

/// russh settings for the users' side: keepalives instead of an inactivity cut,
/// consumption-based windows (a slow user cannot make the gateway buffer), a delay
/// on every refused login.
pub fn ssh_config(host_key: russh::keys::PrivateKey) -> Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    methods.push(MethodKind::Password);
    methods.push(MethodKind::None);
    Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-Warren_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods,
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        window_size: 2 * 1024 * 1024,
        maximum_packet_size: 65536,
        max_auth_attempts: 6,
        nodelay: true,
        window_adjust_on_consume: true,
        ..Config::default()
    }
}

/// Accepts users until the listener fails; each connection runs on its own task.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    door: Arc<FrontDoor>,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !door.limiter.allows(peer.ip()) {
            tracing::info!(%peer, "too many failed logins from this address; dropped");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let handler = relay::Connection::new(door.clone(), peer);
        let config = config.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(
                Duration::from_secs(30),
                russh::server::run_stream(config, stream, handler),
            )
            .await
            {
                Ok(Ok(running)) => {
                    if let Err(e) = running.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "handshake failed"),
                Err(_) => tracing::debug!(%peer, "handshake timed out"),
            }
        });
    }
}

/// The local address a listener is bound to, for logs and tests.
pub fn bound(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
