//! `warren up`'s in-process path to agents: the gateway and the runner are one
//! process, so a login to a sandbox of the local runner opens the agent's socket
//! directly instead of crossing loopback TCP and the tunnel's encryption twice.
//! Sandboxes on any other runner (one that joined this gateway) go through its
//! tunnel as always.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use warren_gateway::dial::TunnelDialer;
use warren_gateway::ssh::{AgentDialer, AgentStream, DialError, Dialing};
use warren_runner::backend::Backend;
use warren_store::{RunnerId, Sandbox};

/// What each direction between the gateway and a local agent may hold in flight.
const DECOUPLING: usize = 4 << 20;
/// The copy's buffers, as the runner's tunnel uses.
const COPY_BUFFER: usize = 64 << 10;

/// Set up in two steps: the gateway needs its dialer before the local runner
/// exists, and the runner needs the gateway's endpoint to join.
#[derive(Default)]
pub struct LocalDialer {
    tunnel: OnceLock<TunnelDialer>,
    local: OnceLock<(RunnerId, Arc<Backend>)>,
}

impl LocalDialer {
    /// The tunnels to every runner, for sandboxes that are not local.
    pub fn set_tunnel(&self, tunnel: TunnelDialer) {
        let _ = self.tunnel.set(tunnel);
    }

    /// The runner in this process.
    pub fn set_local(&self, runner: RunnerId, backend: Arc<Backend>) {
        let _ = self.local.set((runner, backend));
    }
}

impl AgentDialer for LocalDialer {
    fn dial<'a>(&'a self, sandbox: &'a Sandbox, originator: SocketAddr) -> Dialing<'a> {
        Box::pin(async move {
            if let Some((runner, backend)) = self.local.get()
                && sandbox.runner_id.as_ref() == Some(runner)
            {
                let Some(mut agent) = backend.connect_agent(&sandbox.id).await else {
                    return Err(DialError::NotRunning);
                };
                // Decoupled as the tunnel decouples them: the gateway's SSH session
                // and the agent's each stop reading while they write, so straight
                // over one socket pair a full buffer each way (`cat` of a large
                // stdin) would hold both. Here each direction has its own buffer
                // and a task that keeps both moving.
                let (ours, mut theirs) = tokio::io::duplex(DECOUPLING);
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut theirs,
                        &mut agent,
                        COPY_BUFFER,
                        COPY_BUFFER,
                    )
                    .await;
                });
                return Ok(Box::new(ours) as Box<dyn AgentStream>);
            }
            match self.tunnel.get() {
                Some(tunnel) => tunnel.dial(sandbox, originator).await,
                None => Err(DialError::RunnerOffline),
            }
        })
    }
}
