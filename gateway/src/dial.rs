//! Where the front door's agent connections go: through the tunnel of the runner the
//! sandbox is placed on.

use std::net::SocketAddr;
use std::sync::Arc;

use warren_store::Sandbox;

use crate::ssh::{AgentDialer, AgentStream, DialError, Dialing};
use crate::tunnel::{RunnerHub, TunnelError};

pub struct TunnelDialer {
    hub: Arc<RunnerHub>,
}

impl TunnelDialer {
    pub fn new(hub: Arc<RunnerHub>) -> TunnelDialer {
        TunnelDialer { hub }
    }
}

impl AgentDialer for TunnelDialer {
    fn dial<'a>(&'a self, sandbox: &'a Sandbox, originator: SocketAddr) -> Dialing<'a> {
        Box::pin(async move {
            let runner = sandbox.runner_id.as_ref().ok_or(DialError::Unplaced)?;
            match self
                .hub
                .open_agent_stream(runner, &sandbox.id, originator)
                .await
            {
                Ok(stream) => Ok(Box::new(stream) as Box<dyn AgentStream>),
                Err(TunnelError::RunnerOffline) => Err(DialError::RunnerOffline),
                Err(TunnelError::UnknownSandbox) => Err(DialError::NotRunning),
                Err(e) => Err(DialError::Other(e.to_string())),
            }
        })
    }
}
