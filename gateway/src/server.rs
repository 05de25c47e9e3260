//! A whole gateway in one call: the SSH front door, the runners' endpoint and the
//! HTTP API on one store, as `warren-gateway serve` and `warren up` run it, and as
//! the tests and benchmarks start it (with [`Options::dialer`] when their agents
//! are not behind a runner).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use warren_keys::TokenSigner;
use warren_store::Store;

use crate::api::{self, ApiState};
use crate::dial::TunnelDialer;
use crate::lifecycle::{self, Lifecycle};
use crate::recordings::{RecordingPolicy, Recordings};
use crate::ssh::{
    self, AgentDialer, FailureLimiter, FrontDoor, PreauthLimits, SessionBounds, SessionLimits,
};
use crate::tier::{Membership, Tier};
use crate::tunnel::RunnerHub;

/// `$XDG_DATA_HOME/warren`, else `~/.local/share/warren`, else `/var/lib/warren`.
pub fn default_data_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("warren")
}

/// Where the gateway listens, and the name users reach the SSH front door by.
#[derive(Debug, Clone)]
pub struct Listen {
    pub ssh: SocketAddr,
    pub runners: SocketAddr,
    pub http: SocketAddr,
    /// The SSH host name the API hands out (default: the SSH listen address, or
    /// `localhost` for a wildcard address).
    pub public_host: Option<String>,
}

impl Listen {
    /// Every listener on 127.0.0.1, each on a free port (tests and benchmarks).
    pub fn loopback() -> Listen {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Listen {
            ssh: any,
            runners: any,
            http: any,
            public_host: None,
        }
    }
}

/// Bounds on connections that have not logged in yet, per SSH listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preauth {
    pub ssh: PreauthLimits,
    pub runners: PreauthLimits,
}

/// How a gateway runs, beyond where it listens.
#[derive(Clone)]
pub struct Options {
    pub preauth: Preauth,
    /// Bounds on what logged-in accounts and sandboxes hold at once.
    pub sessions: SessionLimits,
    /// What is recorded, under `<data-dir>/recordings`.
    pub recording: RecordingPolicy,
    /// How the front door reaches a sandbox's agent. None (the default): through
    /// its runner's tunnel. Tests put agents they started themselves here.
    pub dialer: Option<Arc<dyn AgentDialer>>,
    /// How often the store is reconciled with the runners (and TTLs reaped);
    /// None: never, for tests that drive runners by hand.
    pub reconcile_every: Option<std::time::Duration>,
    /// The SSH front door reads a PROXY protocol v2 header first on every
    /// connection (`--proxy-protocol`: behind a TCP load balancer).
    pub proxy_protocol: bool,
    /// A member of a gateway tier (the tier's shared keys, not the data
    /// directory's; registered and heartbeating while it serves).
    pub tier: Option<Arc<Tier>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            preauth: Preauth::default(),
            sessions: SessionLimits::default(),
            recording: RecordingPolicy::default(),
            dialer: None,
            reconcile_every: Some(lifecycle::RECONCILE_EVERY),
            proxy_protocol: false,
            tier: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("preauth", &self.preauth)
            .field("sessions", &self.sessions)
            .field("recording", &self.recording)
            .field(
                "dialer",
                &self.dialer.as_ref().map_or("tunnel", |_| "injected"),
            )
            .field("reconcile_every", &self.reconcile_every)
            .field("proxy_protocol", &self.proxy_protocol)
            .field("tier", &self.tier)
            .finish()
    }
}

impl Default for Preauth {
    fn default() -> Preauth {
        Preauth {
            ssh: PreauthLimits::FRONT_DOOR,
            runners: PreauthLimits::RUNNERS,
        }
    }
}

/// A bound gateway, ready to [`serve`](Gateway::serve).
pub struct Gateway {
    pub store: Store,
    pub hub: Arc<RunnerHub>,
    pub api: Arc<ApiState>,
    pub signer: Arc<TokenSigner>,
    pub ssh_addr: SocketAddr,
    pub http_addr: SocketAddr,
    ssh_listener: TcpListener,
    http_listener: TcpListener,
    door: Arc<FrontDoor>,
    host_key: russh::keys::PrivateKey,
    tls: Option<warren_keys::tls::TlsIdentity>,
    ssh_limits: PreauthLimits,
    reconcile_every: Option<std::time::Duration>,
    tier: Option<Arc<Tier>>,
}

impl Gateway {
    /// Loads (or makes) the gateway's keys in `data_dir` and binds every listener.
    pub async fn bind(store: Store, data_dir: &Path, listen: Listen) -> anyhow::Result<Gateway> {
        Gateway::bind_with(store, data_dir, listen, Options::default()).await
    }

    /// [`Gateway::bind`] with `options`: bounds on connections not logged in yet,
    /// the recording policy.
    pub async fn bind_with(
        store: Store,
        data_dir: &Path,
        listen: Listen,
        options: Options,
    ) -> anyhow::Result<Gateway> {
        let preauth = options.preauth;
        let (host_key, signer) = match &options.tier {
            Some(tier) => (tier.keys.host_key.clone(), tier.keys.signer.clone()),
            None => (
                warren_keys::load_or_generate_host_key(&data_dir.join("host_key"))
                    .context("the gateway's host key")?,
                Arc::new(
                    TokenSigner::load_or_generate(&data_dir.join("token_signer"))
                        .context("the gateway's token signer")?,
                ),
            ),
        };
        let hub = RunnerHub::bind_with(
            store.clone(),
            host_key.clone(),
            listen.runners,
            preauth.runners,
        )
        .await
        .with_context(|| format!("cannot listen for runners on {}", listen.runners))?;
        let hub = Arc::new(hub);
        let ssh_listener = TcpListener::bind(listen.ssh)
            .await
            .with_context(|| format!("cannot listen for SSH on {}", listen.ssh))?;
        let Some(ssh_addr) = ssh::bound(&ssh_listener) else {
            bail!("the SSH listener has no address");
        };
        let http_listener = TcpListener::bind(listen.http)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", listen.http))?;
        let http_addr = http_listener.local_addr()?;
        let ssh_host = listen.public_host.unwrap_or_else(|| {
            if ssh_addr.ip().is_unspecified() {
                "localhost".to_owned()
            } else {
                ssh_addr.ip().to_string()
            }
        });
        let host_key_line =
            russh::keys::PublicKey::new(host_key.public_key().key_data().clone(), "")
                .to_openssh()
                .context("encoding the host key")?;
        let mut recordings = Recordings::in_data_dir(data_dir, options.recording);
        if store.backend() == warren_store::Backend::Postgres {
            // A tier: every gateway serves every recording (docs/gateway-tier.md).
            recordings = recordings.archived_in(store.clone());
        }
        let recordings = Arc::new(recordings);
        let mut lifecycle = Lifecycle::new(
            store.clone(),
            hub.clone(),
            signer.clone(),
            ssh_host,
            ssh_addr.port(),
            host_key_line,
        );
        lifecycle.recordings = recordings.clone();
        let lifecycle = Arc::new(lifecycle);
        let api = Arc::new(ApiState::over(lifecycle.clone()));
        let door = Arc::new(FrontDoor {
            lifecycle: lifecycle.clone(),
            dialer: options
                .dialer
                .unwrap_or_else(|| Arc::new(TunnelDialer::new(hub.clone()))),
            limiter: FailureLimiter::default(),
            bounds: SessionBounds::new(options.sessions),
            proxy_protocol: options.proxy_protocol,
        });
        Ok(Gateway {
            store,
            hub,
            api,
            signer,
            ssh_addr,
            http_addr,
            ssh_listener,
            http_listener,
            door,
            host_key,
            tls: None,
            ssh_limits: preauth.ssh,
            reconcile_every: options.reconcile_every,
            tier: options.tier,
        })
    }

    /// Serve the HTTP API over TLS with `identity`.
    pub fn with_tls(mut self, identity: warren_keys::tls::TlsIdentity) -> Gateway {
        self.tls = Some(identity);
        self
    }

    /// The front door's host key (runners and users see the same one).
    pub fn host_key(&self) -> &russh::keys::PublicKey {
        self.host_key.public_key()
    }

    /// The runners' endpoint address and the host key fingerprint runners pin.
    pub fn runner_endpoint(&self) -> (SocketAddr, String) {
        (self.hub.local_addr(), self.hub.fingerprint().to_owned())
    }

    /// Serves SSH and HTTP (and reconciles runners' sandboxes) until `shutdown`
    /// completes or a listener fails.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let reconciler = self
            .reconcile_every
            .map(|every| lifecycle::spawn_reconciler(self.api.lifecycle.clone(), every));
        let sweeper = self.api.lifecycle.recordings.clone().spawn_sweeper();
        let applier = lifecycle::events::spawn_applier(self.api.lifecycle.clone());
        let membership = match &self.tier {
            Some(tier) => Some(
                Membership::start(
                    self.store.clone(),
                    self.hub.clone(),
                    self.ssh_addr.to_string(),
                    tier.runner_address.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let result = tokio::select! {
            result = ssh::serve_with(
                self.ssh_listener,
                ssh::ssh_config(self.host_key),
                self.door,
                self.ssh_limits,
            ) => {
                result.context("the SSH front door stopped")
            }
            result = serve_http(self.http_listener, api::router(self.api.clone()), self.tls) => {
                result.context("the HTTP API stopped")
            }
            () = shutdown => Ok(()),
        };
        if let Some(reconciler) = reconciler {
            reconciler.abort();
        }
        sweeper.abort();
        applier.abort();
        if let Some(membership) = membership {
            membership.leave().await;
        }
        result
    }
}

async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<warren_keys::tls::TlsIdentity>,
) -> std::io::Result<()> {
    match tls {
        Some(identity) => api::tls::serve_tls(listener, router, identity).await,
        None => api::tls::serve_plain(listener, router).await,
    }
}
