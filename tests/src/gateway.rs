//! A gateway for tests, run in-process on its own tokio runtime: the real
//! [`server::Gateway`] on a fresh SQLite store, with accounts and sandboxes the test
//! adds, its front door routing each sandbox to an agent the test started (or to
//! nowhere, to see "runner offline") instead of through a runner.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tempfile::TempDir;
use warren_gateway::recordings::RecordingPolicy;
use warren_gateway::server::{self, Listen, Options};
use warren_gateway::ssh::{AgentDialer, AgentStream, DialError, Dialing};
use warren_keys::SandboxId;
use warren_store::{NewSandbox, Sandbox, SandboxState, Store, User};

use crate::client::{Client, Target};

/// Where each sandbox's agent listens; a sandbox without one has an "offline" runner.
#[derive(Default, Clone)]
pub struct DirectDialer {
    agents: Arc<Mutex<HashMap<SandboxId, SocketAddr>>>,
}

impl AgentDialer for DirectDialer {
    fn dial<'a>(&'a self, sandbox: &'a Sandbox, _originator: SocketAddr) -> Dialing<'a> {
        let addr = self
            .agents
            .lock()
            .ok()
            .and_then(|m| m.get(&sandbox.id).copied());
        Box::pin(async move {
            let addr = addr.ok_or(DialError::RunnerOffline)?;
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| DialError::Other(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as Box<dyn AgentStream>)
        })
    }
}

pub struct Gateway {
    runtime: tokio::runtime::Runtime,
    pub store: Store,
    pub port: u16,
    dialer: DirectDialer,
    dir: TempDir,
}

impl Gateway {
    /// Starts a front door on 127.0.0.1 with an empty store, recording nothing.
    pub fn start() -> Result<Gateway> {
        Gateway::start_recording(None)
    }

    /// [`Gateway::start`], recording terminal sessions by `policy` (none: nothing)
    /// under [`Gateway::data_dir`]`/recordings`.
    pub fn start_recording(policy: Option<RecordingPolicy>) -> Result<Gateway> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let dir = tempfile::Builder::new()
            .prefix("warren-gateway-")
            .tempdir()?;
        let dialer = DirectDialer::default();
        let listen = Listen::loopback();
        let options = Options {
            recording: policy.unwrap_or(RecordingPolicy {
                enabled: false,
                ..RecordingPolicy::default()
            }),
            dialer: Some(Arc::new(dialer.clone())),
            ..Options::default()
        };
        let (store, port) = runtime.block_on(async {
            let store = Store::open_in_data_dir(dir.path()).await?;
            let gateway =
                server::Gateway::bind_with(store.clone(), dir.path(), listen, options).await?;
            let port = gateway.ssh_addr.port();
            tokio::spawn(gateway.serve(std::future::pending()));
            anyhow::Ok((store, port))
        })?;
        Ok(Gateway {
            runtime,
            store,
            port,
            dialer,
            dir,
        })
    }

    /// The gateway's data directory (its recordings are in `recordings/`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// The file holding the gateway's token signer, for agents to trust.
    pub fn signer_file(&self) -> PathBuf {
        self.dir.path().join("token_signer")
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// An account with `client`'s key registered.
    pub fn user_with_key(&self, name: &str, client: &Client) -> Result<User> {
        let key = russh::keys::PublicKey::from_openssh(client.public_key().trim())
            .context("parsing the client's key")?;
        self.block_on(async {
            let user = self.store.create_user(name, false).await?;
            self.store.add_ssh_key(&user.id, "test", &key).await?;
            anyhow::Ok(user)
        })
    }

    /// A running sandbox owned by `owner`, routed to the agent at `agent` (none: its
    /// runner is offline).
    pub fn sandbox(&self, id: &SandboxId, owner: &User, agent: Option<SocketAddr>) -> Result<()> {
        self.block_on(async {
            self.store
                .create_sandbox(&NewSandbox {
                    id: id.clone(),
                    owner_id: owner.id.clone(),
                    runner_id: None,
                    image: "test".into(),
                    repo: None,
                    branch: None,
                    // The shared scenarios include `ssh -A`, which sshd allows.
                    forward_agent: true,
                    cpus: 1.0,
                    memory_mb: 512,
                    idle_timeout_s: None,
                    ttl_s: None,
                    disk_mb: None,
                })
                .await?;
            self.store
                .set_sandbox_state(id, SandboxState::Running, "test")
                .await?;
            anyhow::Ok(())
        })?;
        if let (Some(addr), Ok(mut agents)) = (agent, self.dialer.agents.lock()) {
            agents.insert(id.clone(), addr);
        }
        Ok(())
    }

    /// Where to point an SSH client to reach `sandbox` through this gateway.
    pub fn target(&self, login: &str) -> Target {
        Target::new("127.0.0.1", self.port, login)
    }
}
