//! `warren up`'s in-process path to agents: the gateway and the runner are one
//! process, so a login to a sandbox of the local runner opens the agent's socket
//! directly instead of crossing loopback TCP and the tunnel's encryption twice.
//! Sandboxes on any other runner (one that joined this gateway) go through its
//! tunnel as always.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use warren_gateway::dial::TunnelDialer;
use warren_gateway::ssh::{AgentDialer, AgentStream, DialError, Dialing, WriteBehind};
use warren_runner::backend::Backend;
use warren_store::{RunnerId, Sandbox};

/// What the gateway may hold back towards a local agent while that agent's socket
/// is full (as the in-memory pipe this replaced held at most).
const DECOUPLING: usize = 4 << 20;

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
                let Some(agent) = backend.connect_agent(&sandbox.id).await else {
                    return Err(DialError::NotRunning);
                };
                // The gateway's SSH session and the agent's each stop reading while
                // they write, so straight over one socket pair a full buffer each way
                // (`cat` of a large stdin) would hold both. The gateway's side never
                // waits on its writes (up to DECOUPLING), so it always reads and the
                // agent's writes always finish.
                return Ok(Box::new(WriteBehind::new(agent, DECOUPLING)) as Box<dyn AgentStream>);
            }
            match self.tunnel.get() {
                Some(tunnel) => tunnel.dial(sandbox, originator).await,
                None => Err(DialError::RunnerOffline),
            }
        })
    }
}
