//! The runner's side of the tunnel: joining, and the connection it keeps to one
//! gateway (dial, pin the host key, authenticate, ask for forwarding, serve the
//! channels the gateway opens, reconnect with backoff). `mesh.rs` keeps one such
//! link per gateway of a tier.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use russh::client::{self, Msg, Session};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use warren_keys::SandboxId;

use crate::backend::Backend;
use crate::protocol::{
    self, CONTROL_ADDRESS, FORWARD_ADDRESS, GatewaySet, JOIN_USER, MAX_CONTROL_LINE, Request,
    Response, RunnerCapacity, SANDBOX_PREFIX,
};
use crate::state::{DataDir, Identity};
use crate::stream::{GrantingStream, MAX_PACKET, WINDOW_SIZE};

/// Dialing and the SSH handshake together may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

fn client_config() -> client::Config {
    client::Config {
        client_id: russh::SshId::Standard(
            format!("SSH-2.0-WarrenRunner_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(10)),
        keepalive_max: 3,
        window_size: WINDOW_SIZE,
        maximum_packet_size: MAX_PACKET,
        nodelay: true,
        window_adjust_on_consume: true,
        // AES-GCM (AES-NI) over chacha20, russh's first choice: a third of the
        // tunnel's CPU went to chacha20 under bulk transfers.
        preferred: crate::stream::tunnel_preferred(),
        ..client::Config::default()
    }
}

async fn dial(gateway: &str) -> Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(gateway))
        .await
        .with_context(|| format!("connecting to {gateway}: timed out"))?
        .with_context(|| format!("connecting to {gateway}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

// ---------------------------------------------------------------------------------
// Join

struct JoinClient {
    expected_fingerprint: String,
    /// The key the gateway presented, and whether it matched.
    seen: Arc<Mutex<Option<(PublicKey, bool)>>>,
}

impl client::Handler for JoinClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        let ok = warren_keys::fingerprint(key) == self.expected_fingerprint;
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((key.clone(), ok));
        }
        Ok(ok)
    }
}

/// `warren-runner join`: registers this runner's key with the gateway using a
/// one-time join token, and saves the runner id and the gateway's (pinned) host key.
pub async fn join(
    data: &DataDir,
    gateway: &str,
    token: &str,
    fingerprint: &str,
    name: &str,
) -> Result<Identity> {
    let key = data.key()?;
    let key_line = key
        .public_key()
        .to_openssh()
        .context("encoding runner key")?;
    let seen = Arc::new(Mutex::new(None));
    let handler = JoinClient {
        expected_fingerprint: fingerprint.to_owned(),
        seen: seen.clone(),
    };
    let stream = dial(gateway).await?;
    let connected = tokio::time::timeout(
        CONNECT_TIMEOUT,
        client::connect_stream(Arc::new(client_config()), stream, handler),
    )
    .await
    .context("SSH handshake with the gateway timed out")?;
    let seen = seen.lock().ok().and_then(|s| s.clone());
    let (mut handle, gateway_key) = match (connected, seen) {
        (_, Some((key, false))) => bail!(
            "the gateway's host key is {}, not {fingerprint} as given: refusing to join",
            warren_keys::fingerprint(&key)
        ),
        (Ok(handle), Some((key, true))) => (handle, key),
        (Ok(_), None) => bail!("the gateway presented no host key"),
        (Err(e), _) => return Err(e).context("SSH handshake with the gateway"),
    };
    let auth = handle.authenticate_password(JOIN_USER, token).await?;
    if !auth.success() {
        bail!("the gateway refused the join login");
    }
    let mut channel = handle.channel_open_session().await?;
    channel
        .exec(true, protocol::join_command(name, &key_line))
        .await?;
    let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), None);
    let wait = async {
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                _ => {}
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, wait)
        .await
        .context("the gateway did not answer the join request")?;
    let stdout = String::from_utf8_lossy(&stdout);
    let stderr = String::from_utf8_lossy(&stderr);
    if status != Some(0) {
        let message = stderr.trim();
        bail!(
            "join refused: {}",
            if message.is_empty() {
                "no reason given"
            } else {
                message
            }
        );
    }
    let runner_id = stdout
        .trim()
        .strip_prefix("runner ")
        .context("unexpected answer from the gateway")?
        .to_owned();
    let identity = Identity {
        runner_id,
        name: name.to_owned(),
        gateway: gateway.to_owned(),
    };
    data.save_identity(&identity, &gateway_key)?;
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    Ok(identity)
}

// ---------------------------------------------------------------------------------
// The tunnel

/// What every link of a runner shares: who it is, what it serves, and where the
/// gateway sets it is told go.
pub(crate) struct LinkConfig {
    pub identity: Identity,
    pub key: Arc<PrivateKey>,
    pub pinned: PublicKey,
    pub backend: Arc<Backend>,
    pub capacity: RunnerCapacity,
    /// Gateway sets received on any link (`Request::Gateways`), for the mesh.
    pub sets: mpsc::UnboundedSender<GatewaySet>,
}

struct RunnerClient {
    pinned: PublicKey,
    backend: Arc<Backend>,
    capacity: RunnerCapacity,
    sets: mpsc::UnboundedSender<GatewaySet>,
    /// Window grants for the connection's handle, which the session loop owns.
    grants: mpsc::UnboundedSender<(ChannelId, u32)>,
}

impl RunnerClient {
    fn stream(&self, channel: Channel<Msg>) -> GrantingStream<Msg> {
        let id = channel.id();
        let grants = self.grants.clone();
        GrantingStream::new(
            channel.into_stream(),
            id,
            Box::new(move |id, n| {
                let _ = grants.send((id, n));
            }),
        )
    }
}

impl client::Handler for RunnerClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        let ok = key.key_data() == self.pinned.key_data();
        if !ok {
            tracing::error!(
                presented = %warren_keys::fingerprint(key),
                pinned = %warren_keys::fingerprint(&self.pinned),
                "the gateway's host key is not the one pinned at join: refusing it"
            );
        }
        Ok(ok)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if connected_address == CONTROL_ADDRESS {
            reply.accept().await;
            let stream = self.stream(channel);
            let backend = self.backend.clone();
            tokio::spawn(serve_control(
                stream,
                backend,
                self.capacity,
                self.sets.clone(),
            ));
            return Ok(());
        }
        let sandbox = connected_address
            .strip_prefix(SANDBOX_PREFIX)
            .and_then(|id| SandboxId::parse(id).ok());
        let unix = match &sandbox {
            Some(id) => self.backend.connect_agent(id).await,
            None => None,
        };
        let Some(mut unix) = unix else {
            tracing::debug!(
                address = connected_address,
                "refusing channel: no such sandbox"
            );
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        reply.accept().await;
        let mut stream = self.stream(channel);
        tokio::spawn(async move {
            // 64 KiB, not tokio's 8 KiB default: fewer, fuller tunnel packets.
            let _ = tokio::io::copy_bidirectional_with_sizes(
                &mut stream,
                &mut unix,
                crate::stream::COPY_BUFFER,
                crate::stream::COPY_BUFFER,
            )
            .await;
        });
        Ok(())
    }
}

async fn serve_control(
    stream: GrantingStream<Msg>,
    backend: Arc<Backend>,
    capacity: RunnerCapacity,
    sets: mpsc::UnboundedSender<GatewaySet>,
) {
    let (read, mut write) = tokio::io::split(stream);
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_CONTROL_LINE as u64));
    let response = match tokio::time::timeout(CONNECT_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(Request::Gateways(set)) => match set.check() {
                Ok(()) => {
                    let _ = sets.send(set);
                    Response::Ok
                }
                Err(message) => Response::Error {
                    message: format!("bad gateway set: {message}"),
                },
            },
            Ok(request) => {
                let wants_progress =
                    matches!(&request, Request::Create { spec, .. } if spec.progress);
                if wants_progress {
                    reporting(request, &backend, capacity, &mut write).await
                } else {
                    handle_control(request, &backend, capacity, None).await
                }
            }
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        },
        _ => return,
    };
    let Ok(mut out) = serde_json::to_string(&response) else {
        return;
    };
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
    let _ = write.shutdown().await;
}

/// Handles `request` while writing its progress lines to `write` as they come;
/// the last before the answer.
async fn reporting<W: tokio::io::AsyncWrite + Unpin>(
    request: Request,
    backend: &Backend,
    capacity: RunnerCapacity,
    write: &mut W,
) -> Response {
    let (sink, mut lines) = mpsc::unbounded_channel::<String>();
    let work = handle_control(request, backend, capacity, Some(sink));
    tokio::pin!(work);
    let response = loop {
        tokio::select! {
            response = &mut work => break response,
            Some(line) = lines.recv() => write_progress(write, line).await,
        }
    };
    while let Ok(line) = lines.try_recv() {
        write_progress(write, line).await;
    }
    response
}

/// One progress line on the control channel (a gateway gone is noticed by the
/// answer's write).
async fn write_progress<W: tokio::io::AsyncWrite + Unpin>(write: &mut W, line: String) {
    let progress = crate::protocol::Progress { progress: line };
    if let Ok(mut out) = serde_json::to_string(&progress) {
        out.push('\n');
        let _ = write.write_all(out.as_bytes()).await;
    }
}

async fn handle_control(
    request: Request,
    backend: &Backend,
    capacity: RunnerCapacity,
    progress: Option<mpsc::UnboundedSender<String>>,
) -> Response {
    let result = match request {
        Request::Create {
            sandbox,
            token_key,
            authorized_keys,
            spec,
        } => {
            crate::devsetup::create(
                backend,
                &sandbox,
                &token_key,
                &authorized_keys,
                &spec,
                capacity,
                progress,
            )
            .await
        }
        Request::Keepalive { sandbox } => backend.keepalive(&sandbox).await.map(|()| Response::Ok),
        Request::Stop { sandbox } => backend.stop(&sandbox).await.map(|()| Response::Ok),
        Request::Delete { sandbox } => {
            crate::devsetup::forget(backend, &sandbox);
            backend.delete(&sandbox).await.map(|()| Response::Ok)
        }
        Request::AuthorizedKeys { sandboxes } => {
            for s in &sandboxes {
                if let Err(e) = backend.set_authorized_keys(&s.sandbox, &s.keys).await {
                    tracing::warn!(sandbox = %s.sandbox, "updating authorized keys: {e:#}");
                }
            }
            Ok(Response::Ok)
        }
        Request::Env { sandbox } => backend.env(&sandbox).await.map(|env| Response::Env { env }),
        Request::Check { spec } => backend.check(&spec).await.map(|()| Response::Ok),
        Request::Snapshot { sandbox, snapshot } => backend
            .snapshot(&sandbox, &snapshot)
            .await
            .map(Response::Snapshot),
        Request::CreateFromSnapshot {
            sandbox,
            snapshot,
            token_key,
            authorized_keys,
            spec,
            branch,
        } => backend
            .create_from_snapshot(
                &sandbox,
                &snapshot,
                &token_key,
                &authorized_keys,
                &spec,
                branch.as_deref(),
            )
            .await
            .map(|()| Response::Ok),
        Request::DeleteSnapshot { snapshot } => backend
            .delete_snapshot(&snapshot)
            .await
            .map(|()| Response::Ok),
        Request::Capacity => Ok(Response::Capacity(capacity)),
        // Answered by `serve_control`, which hands the set to the mesh.
        Request::Gateways(_) => Ok(Response::Ok),
        Request::List => backend
            .list()
            .await
            .map(|sandboxes| Response::Sandboxes { sandboxes }),
        Request::CommitAndPush {
            sandbox,
            message,
            branch,
            author_name,
            author_email,
            base,
            remote_url,
            token,
        } => {
            let req = crate::git::CommitPush {
                message: &message,
                branch: &branch,
                author_name: &author_name,
                author_email: &author_email,
                base: base.as_deref(),
                remote_url: remote_url.as_deref(),
                token: token.as_ref().map(protocol::Secret::expose),
            };
            backend
                .commit_and_push(&sandbox, &req)
                .await
                .map(|pushed| Response::Pushed {
                    commit: pushed.commit,
                    committed: pushed.committed,
                    default_branch: pushed.default_branch,
                })
        }
    };
    result.unwrap_or_else(|e| match e {
        crate::Error::Refused { code, message } => Response::Refused {
            code: code.to_owned(),
            message,
        },
        crate::Error::Failed(e) => Response::Error {
            message: format!("{e:#}"),
        },
    })
}

/// One tunnel connection, until it drops or `shutdown` fires. Sets `connected` once
/// the gateway has accepted the forwarding request.
async fn tunnel_once(
    gateway: &str,
    link: &LinkConfig,
    shutdown: &mut watch::Receiver<bool>,
    connected: &mut bool,
) -> Result<()> {
    let identity = &link.identity;
    let (grants, mut grant_rx) = mpsc::unbounded_channel();
    let handler = RunnerClient {
        pinned: link.pinned.clone(),
        backend: link.backend.clone(),
        capacity: link.capacity,
        sets: link.sets.clone(),
        grants,
    };
    let stream = dial(gateway).await?;
    let mut handle = tokio::time::timeout(
        CONNECT_TIMEOUT,
        client::connect_stream(Arc::new(client_config()), stream, handler),
    )
    .await
    .context("SSH handshake timed out")?
    .context("SSH handshake")?;
    let auth = handle
        .authenticate_publickey(
            identity.runner_id.as_str(),
            PrivateKeyWithHashAlg::new(link.key.clone(), None),
        )
        .await?;
    if !auth.success() {
        bail!("the gateway refused this runner's key (was the runner removed?)");
    }
    handle.tcpip_forward(FORWARD_ADDRESS, 0).await?;
    *connected = true;
    tracing::info!(gateway = %gateway, runner = %identity.runner_id, "tunnel up");
    loop {
        tokio::select! {
            ended = &mut handle => {
                return match ended {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e).context("tunnel lost"),
                };
            }
            Some((id, n)) = grant_rx.recv() => {
                let _ = handle.adjust_window(id, n);
            }
            _ = shutdown.changed() => {
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, "runner shutting down", "en")
                    .await;
                return Ok(());
            }
        }
    }
}

/// A random duration in [d/2, d] (jitter, so runners don't reconnect in lockstep).
fn jitter(d: Duration) -> Duration {
    let r = RandomState::new().hash_one(std::time::SystemTime::now());
    let frac = (r % 1000) as f64 / 1000.0;
    d.mul_f64(0.5 + frac * 0.5)
}

/// Keeps the tunnel to `gateway` up, reconnecting with exponential backoff (0.5 s
/// doubling to 30 s, with jitter) forever, until `shutdown` fires.
pub(crate) async fn keep_link(
    gateway: String,
    link: Arc<LinkConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_START;
    while !*shutdown.borrow() {
        let mut connected = false;
        let result = tunnel_once(&gateway, &link, &mut shutdown, &mut connected).await;
        if connected {
            backoff = BACKOFF_START;
        }
        if *shutdown.borrow() {
            break;
        }
        let delay = jitter(backoff);
        match result {
            Ok(()) => tracing::warn!(gateway = %gateway, ?delay, "tunnel closed; reconnecting"),
            Err(e) => {
                tracing::warn!(gateway = %gateway, error = %format!("{e:#}"), ?delay, "tunnel down; reconnecting")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
