//! The gateway's end of the runner tunnels: the SSH endpoint runners dial (their own
//! port, not the users'), joining with a one-time token, the registry of live runner
//! connections, and opening agent and control channels over them.
//!
//! The protocol (names, control messages) is defined once in
//! [`warren_protocol`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::{PrivateKey, PublicKey};
use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use warren_keys::SandboxId;
use warren_protocol::stream::{GrantingStream, MAX_PACKET, WINDOW_SIZE};
use warren_protocol::{
    self as protocol, CONTROL_ADDRESS, FORWARD_ADDRESS, JOIN_USER, MAX_CONTROL_LINE, Request,
    Response,
};
use warren_store::{NewRunner, RunnerId, RunnerState, Store, StoreError};

use crate::guard::{FailureLimiter, Preauth, PreauthGate, PreauthLimits, PreauthSlot};

/// How long opening a channel to a runner may take before it counts as offline.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a control request may take (creating a sandbox included).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// A create or start that runs a devcontainer.json's lifecycle commands may take
/// this long (the runner stops waiting for them at 150 s).
const DEVCONTAINER_TIMEOUT: Duration = Duration::from_secs(180);
/// Capacity recorded for a runner that joins (sandboxes at once).
pub const DEFAULT_RUNNER_CAPACITY: u32 = 16;

/// A byte stream to a sandbox's agent (or a control exchange) through a runner's
/// tunnel. The receive window re-opens as it is read.
pub type TunnelStream = GrantingStream<Msg>;

#[derive(Debug, Error)]
pub enum TunnelError {
    /// The runner has no live tunnel (never connected, or it dropped).
    #[error("runner offline")]
    RunnerOffline,
    /// The runner refused the channel: it has no such (running) sandbox.
    #[error("no such sandbox on this runner")]
    UnknownSandbox,
    /// The runner answered a control request wrongly, or not in time.
    #[error("runner protocol error: {0}")]
    Protocol(String),
}

struct Live {
    handle: server::Handle,
    generation: u64,
}

struct Inner {
    store: Store,
    config: Arc<server::Config>,
    fingerprint: String,
    local_addr: SocketAddr,
    /// Each runner's tunnels to this gateway, newest last (a runner whose seed is a
    /// load balancer may hold two here; a reconnect overlaps a dead one until it
    /// is noticed). The newest carries new channels.
    live: Mutex<HashMap<RunnerId, Vec<Live>>>,
    generation: AtomicU64,
    /// Failed joins and runner logins per source address: guessing join tokens or
    /// runner keys is slowed, then refused for a while.
    limiter: FailureLimiter,
    /// Connections that have not logged in (or joined) yet, bounded.
    gate: Arc<PreauthGate>,
    /// How long a connection may take to log in or join.
    login_grace: Duration,
}

impl Inner {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<RunnerId, Vec<Live>>> {
        crate::unpoisoned(&self.live)
    }

    fn handle(&self, runner: &RunnerId) -> Option<server::Handle> {
        self.live()
            .get(runner)
            .and_then(|tunnels| tunnels.last())
            .map(|l| l.handle.clone())
    }
}

/// The runners' endpoint: accepts tunnels, keeps the live ones, opens channels.
/// Dropping it (or [`RunnerHub::shutdown`]) stops listening and drops every tunnel.
pub struct RunnerHub {
    inner: Arc<Inner>,
    tasks: JoinSet<()>,
}

impl RunnerHub {
    /// Listens on `listen` with `host_key` (the gateway's persisted key, from
    /// [`warren_keys::load_or_generate_host_key`]). Runners the store marks online
    /// from an earlier run are marked offline until they reconnect.
    pub async fn bind(
        store: Store,
        host_key: PrivateKey,
        listen: SocketAddr,
    ) -> std::io::Result<RunnerHub> {
        RunnerHub::bind_with(store, host_key, listen, PreauthLimits::RUNNERS).await
    }

    /// [`RunnerHub::bind`] with `limits` on connections that have not logged in yet.
    pub async fn bind_with(
        store: Store,
        host_key: PrivateKey,
        listen: SocketAddr,
        limits: PreauthLimits,
    ) -> std::io::Result<RunnerHub> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        if let Ok(runners) = store.list_runners().await {
            for r in runners.iter().filter(|r| r.state == RunnerState::Online) {
                let _ = store.set_runner_state(&r.id, RunnerState::Offline).await;
            }
        }
        let fingerprint = warren_keys::fingerprint(host_key.public_key());
        let inner = Arc::new(Inner {
            store,
            config: Arc::new(ssh_config(host_key)),
            fingerprint,
            local_addr,
            live: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            limiter: FailureLimiter::default(),
            gate: PreauthGate::new(limits.per_address, limits.total, "runner port"),
            login_grace: limits.login_grace,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, inner.clone()));
        Ok(RunnerHub { inner, tasks })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The gateway host key's fingerprint, as runners are told to pin it.
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// The command an operator runs on the runner host to join with `token`;
    /// `gateway` is this endpoint's address as the runner reaches it (HOST:PORT).
    pub fn join_command_hint(&self, token: &str, gateway: &str) -> String {
        format!(
            "warren-runner join --gateway {gateway} --token {token} --fingerprint {} \
             --name <runner-name> --data-dir /var/lib/warren-runner",
            self.inner.fingerprint
        )
    }

    /// Whether `runner` has a live tunnel now.
    pub fn is_online(&self, runner: &RunnerId) -> bool {
        self.inner.live().contains_key(runner)
    }

    /// The runners with a live tunnel.
    pub fn online_runners(&self) -> Vec<RunnerId> {
        self.inner.live().keys().cloned().collect()
    }

    /// Each live tunnel's runner and a number that changes when the runner's tunnel
    /// is replaced (a reconnect), so a caller can tell a new tunnel from one it saw.
    pub fn online_tunnels(&self) -> Vec<(RunnerId, u64)> {
        self.inner
            .live()
            .iter()
            .filter_map(|(id, tunnels)| Some((id.clone(), tunnels.last()?.generation)))
            .collect()
    }

    /// Opens a byte stream to `sandbox`'s agent on `runner`. `originator` (the user's
    /// address) is passed on for the runner's logs. Fails at once with
    /// `RunnerOffline` when the runner has no tunnel.
    pub async fn open_agent_stream(
        &self,
        runner: &RunnerId,
        sandbox: &SandboxId,
        originator: SocketAddr,
    ) -> Result<TunnelStream, TunnelError> {
        self.open(runner, &protocol::sandbox_address(sandbox), originator)
            .await
    }

    /// One control exchange with `runner`.
    pub async fn control(
        &self,
        runner: &RunnerId,
        request: &Request,
    ) -> Result<Response, TunnelError> {
        self.control_reporting(runner, request, None).await
    }

    /// One control exchange with `runner`, the [`warren_protocol::Progress`]
    /// lines before its answer (a create's spec asks for them) sent to
    /// `progress` as they come.
    pub async fn control_reporting(
        &self,
        runner: &RunnerId,
        request: &Request,
        progress: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Result<Response, TunnelError> {
        let stream = self
            .open(runner, CONTROL_ADDRESS, self.inner.local_addr)
            .await
            .map_err(|e| match e {
                TunnelError::UnknownSandbox => {
                    TunnelError::Protocol("the runner refused the control channel".into())
                }
                e => e,
            })?;
        let exchange = async {
            let (read, mut write) = tokio::io::split(stream);
            let mut line =
                serde_json::to_string(request).map_err(|e| TunnelError::Protocol(e.to_string()))?;
            line.push('\n');
            write
                .write_all(line.as_bytes())
                .await
                .map_err(|_| TunnelError::RunnerOffline)?;
            let mut reader = BufReader::new(read);
            loop {
                let mut answer = String::new();
                (&mut reader)
                    .take(MAX_CONTROL_LINE as u64)
                    .read_line(&mut answer)
                    .await
                    .map_err(|_| TunnelError::RunnerOffline)?;
                if answer.is_empty() {
                    return Err(TunnelError::Protocol(
                        "the runner closed the control channel".into(),
                    ));
                }
                if let Some(sink) = &progress
                    && let Ok(line) = serde_json::from_str::<warren_protocol::Progress>(&answer)
                {
                    let _ = sink.send(line.progress);
                    continue;
                }
                return serde_json::from_str(&answer)
                    .map_err(|e| TunnelError::Protocol(e.to_string()));
            }
        };
        let limit = match request {
            Request::Create { spec, .. } if spec.devcontainer => DEVCONTAINER_TIMEOUT,
            _ => CONTROL_TIMEOUT,
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| TunnelError::Protocol("control request timed out".into()))?
    }

    async fn open(
        &self,
        runner: &RunnerId,
        address: &str,
        originator: SocketAddr,
    ) -> Result<TunnelStream, TunnelError> {
        let handle = self
            .inner
            .handle(runner)
            .ok_or(TunnelError::RunnerOffline)?;
        let opened = tokio::time::timeout(
            OPEN_TIMEOUT,
            handle.channel_open_forwarded_tcpip(
                address,
                0,
                originator.ip().to_string(),
                u32::from(originator.port()),
            ),
        )
        .await
        .map_err(|_| TunnelError::RunnerOffline)?;
        let channel = match opened {
            Ok(channel) => channel,
            Err(russh::Error::ChannelOpenFailure(_)) => return Err(TunnelError::UnknownSandbox),
            Err(_) => return Err(TunnelError::RunnerOffline),
        };
        Ok(granting(channel, handle))
    }

    /// Stops listening and drops every runner tunnel, marking those runners offline.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let live: Vec<_> = self.inner.live().drain().collect();
        for (id, tunnels) in live {
            for conn in tunnels {
                // The session runs in russh's own task: it ends only when told to.
                let _ = conn
                    .handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "gateway shutting down".into(),
                        String::new(),
                    )
                    .await;
            }
            let _ = self
                .inner
                .store
                .set_runner_state(&id, RunnerState::Offline)
                .await;
        }
    }
}

fn granting(channel: Channel<Msg>, handle: server::Handle) -> TunnelStream {
    let id = channel.id();
    GrantingStream::new(
        channel.into_stream(),
        id,
        Box::new(move |id: ChannelId, n| {
            let _ = handle.adjust_window(id, n);
        }),
    )
}

fn ssh_config(host_key: PrivateKey) -> server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    methods.push(MethodKind::Password);
    server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-WarrenGateway_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods,
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        preferred: warren_protocol::stream::tunnel_preferred(),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(10)),
        keepalive_max: 3,
        window_size: WINDOW_SIZE,
        maximum_packet_size: MAX_PACKET,
        max_auth_attempts: 6,
        nodelay: true,
        window_adjust_on_consume: true,
        ..server::Config::default()
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    // Connection tasks live in this set, so aborting the accept loop drops them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if !inner.limiter.allows(peer.ip()) {
                    tracing::debug!(%peer, "refusing a runner connection: too many failures");
                    continue;
                }
                // Logged (rate-limited) by the gate; closing the socket is the answer.
                let Ok(slot) = inner.gate.admit(peer.ip()) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                connections.spawn(run_connection(inner.clone(), stream, peer, slot));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Who the connection is, once authenticated, and its registration.
#[derive(Default)]
struct ConnState {
    join_token: Option<String>,
    runner: Option<RunnerId>,
    registered: Option<u64>,
}

async fn run_connection(
    inner: Arc<Inner>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: PreauthSlot,
) {
    let state = Arc::new(Mutex::new(ConnState::default()));
    let (preauth, logged_in) = Preauth::new(slot);
    let handler = RunnerConn {
        inner: inner.clone(),
        state: state.clone(),
        peer,
        preauth,
    };
    crate::guard::run_with_grace(
        inner.config.clone(),
        stream,
        handler,
        logged_in,
        inner.login_grace,
        peer,
    )
    .await;
    let registered = {
        let state = crate::unpoisoned(&state);
        state.runner.clone().zip(state.registered)
    };
    if let Some((id, generation)) = registered {
        let last_gone = {
            let mut live = inner.live();
            match live.get_mut(&id) {
                Some(tunnels) => {
                    tunnels.retain(|l| l.generation != generation);
                    let empty = tunnels.is_empty();
                    if empty {
                        live.remove(&id);
                    }
                    empty
                }
                None => false,
            }
        };
        if last_gone {
            tracing::info!(runner = %id.as_str(), "runner offline");
            let _ = inner
                .store
                .set_runner_state(&id, RunnerState::Offline)
                .await;
        }
    }
}

/// How long a refused join waits before it is answered.
const FAILED_JOIN_DELAY: Duration = Duration::from_secs(1);

struct RunnerConn {
    inner: Arc<Inner>,
    state: Arc<Mutex<ConnState>>,
    peer: SocketAddr,
    /// Until a key login or a successful join (a join token is only checked by the
    /// join itself, so the password login before it does not count).
    preauth: Preauth,
}

impl RunnerConn {
    async fn runner_key_matches(&self, user: &str, key: &PublicKey) -> Option<RunnerId> {
        let id = RunnerId::parse(user).ok()?;
        let runner = self.inner.store.get_runner(&id).await.ok()?;
        (runner.public_key.key_data() == key.key_data()).then_some(id)
    }

    async fn join(&mut self, command: &str) -> Result<String, String> {
        let token = crate::unpoisoned(&self.state)
            .join_token
            .clone()
            .ok_or_else(|| "not logged in with a join token".to_owned())?;
        let (name, key_line) = protocol::parse_join_command(command)
            .ok_or_else(|| "expected: join <name> <public key>".to_owned())?;
        let public_key =
            PublicKey::from_openssh(key_line).map_err(|_| "invalid public key".to_owned())?;
        let new = NewRunner {
            name: name.to_owned(),
            public_key,
            labels: Vec::new(),
            capacity: DEFAULT_RUNNER_CAPACITY,
        };
        let result = self.inner.store.join_runner(&token, &new).await;
        if result.is_err() {
            self.inner.limiter.failed(self.peer.ip());
            // Slows guessing; a real operator's typo costs a second.
            tokio::time::sleep(FAILED_JOIN_DELAY).await;
        }
        match result {
            Ok(runner) => {
                tracing::info!(runner = %runner.id.as_str(), name, peer = %self.peer, "runner joined");
                self.preauth.logged_in();
                Ok(runner.id.as_str().to_owned())
            }
            Err(StoreError::NotFound(_)) => Err("join token unknown".into()),
            Err(StoreError::Conflict(message)) | Err(StoreError::Invalid(message)) => Err(message),
            Err(e) => {
                tracing::error!(error = %e, "runner join failed");
                Err("internal error".into())
            }
        }
    }
}

impl server::Handler for RunnerConn {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if user != JOIN_USER {
            return Ok(Auth::reject());
        }
        // The token is checked (and used up) by the join request, which can then say
        // why it was refused.
        crate::unpoisoned(&self.state).join_token = Some(password.to_owned());
        Ok(Auth::Accept)
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(
            match self.runner_key_matches(user, offer.public_key).await {
                Some(_) => Auth::Accept,
                None => Auth::reject(),
            },
        )
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.runner_key_matches(user, key.public_key).await {
            Some(id) => {
                crate::unpoisoned(&self.state).runner = Some(id);
                self.preauth.logged_in();
                Ok(Auth::Accept)
            }
            None => {
                self.inner.limiter.failed(self.peer.ip());
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only joining uses a session channel.
        let joining = crate::unpoisoned(&self.state).join_token.is_some();
        if joining {
            reply.accept().await;
        } else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        session.channel_success(channel)?;
        let status = match self.join(&command).await {
            Ok(id) => {
                session.data(channel, format!("runner {id}\n").into_bytes())?;
                0
            }
            Err(message) => {
                session.extended_data(channel, 1, format!("{message}\n").into_bytes())?;
                1
            }
        };
        session.exit_status_request(channel, status)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(id) = crate::unpoisoned(&self.state).runner.clone() else {
            return Ok(false);
        };
        if address != FORWARD_ADDRESS || *port != 0 {
            return Ok(false);
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let earlier = crate::unpoisoned(&self.state)
            .registered
            .replace(generation);
        // A newer tunnel takes new channels before an older one (which may be dead
        // but not yet noticed, or the same runner's second link, through a load
        // balancer).
        {
            let mut live = self.inner.live();
            let tunnels = live.entry(id.clone()).or_default();
            tunnels.retain(|l| Some(l.generation) != earlier);
            tunnels.push(Live {
                handle: session.handle(),
                generation,
            });
        }
        if let Err(e) = self
            .inner
            .store
            .set_runner_state(&id, RunnerState::Online)
            .await
        {
            tracing::error!(error = %e, "marking runner online");
        }
        tracing::info!(runner = %id.as_str(), peer = %self.peer, "runner online");
        Ok(true)
    }
}
