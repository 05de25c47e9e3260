//! The gateway's SSH connection to a sandbox's agent: one per user connection, over a
//! byte stream the [`AgentDialer`] provides (the runner's tunnel), logged in with a
//! short-lived sandbox token the gateway mints.
//!
//! Channels the agent opens towards the user (`ssh -R` connections, `ssh -A` agent
//! requests) arrive here and are relayed to the user's connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use russh::client::{self, Msg};
use russh::{Channel, ChannelId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use warren_keys::SandboxToken;
use warren_store::Sandbox;

use super::pipe::{self, Grant};

/// A byte stream to an agent.
pub trait AgentStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AgentStream for T {}

/// A stream to a local agent whose writes never hold up its reads: what the socket
/// cannot take at once is kept here (up to `limit`) and written while the stream is
/// next read or written. An SSH session stops reading while it writes, and so does
/// the agent's; straight over one socket pair a full buffer each way (`cat` of a
/// large stdin) would hold both. The bytes go to the socket with no copy and no task
/// between as long as it has room, unlike a copy task behind an in-memory pipe.
pub struct WriteBehind<S> {
    inner: S,
    spill: BytesMut,
    limit: usize,
    /// A write error met while reading, reported by the next write.
    failed: Option<io::ErrorKind>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WriteBehind<S> {
    /// `limit`: the bytes kept back at most; past it, writes wait for the socket.
    pub fn new(inner: S, limit: usize) -> WriteBehind<S> {
        WriteBehind {
            inner,
            spill: BytesMut::new(),
            limit,
            failed: None,
        }
    }

    /// Writes what was kept back, as far as the socket takes it now. Pending (the
    /// caller's task woken when the socket has room) while some is left.
    fn write_spill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.spill.is_empty() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.spill)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.spill.advance(n),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // A burst's buffer is not kept for an idle connection.
        if self.spill.capacity() > SPILL_KEPT {
            self.spill = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

/// What an emptied spill buffer may keep of its capacity.
const SPILL_KEPT: usize = 256 << 10;

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WriteBehind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The session waits here most of the time: kept-back bytes move on as the
        // socket drains (its readiness wakes this same task).
        if let Poll::Ready(Err(e)) = this.write_spill(cx) {
            this.failed = Some(e.kind());
            this.spill = BytesMut::new();
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WriteBehind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(kind) = this.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if this.write_spill(cx)?.is_ready()
            && let Poll::Ready(written) = Pin::new(&mut this.inner).poll_write(cx, buf)
        {
            return Poll::Ready(written);
        }
        // The socket is full (and this task will be woken when it is not).
        let room = this.limit.saturating_sub(this.spill.len()).min(buf.len());
        if room == 0 {
            return Poll::Pending;
        }
        this.spill.extend_from_slice(&buf[..room]);
        Poll::Ready(Ok(room))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Not waiting for the kept-back bytes is the point: they go on while reading.
        let _ = this.write_spill(cx)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.write_spill(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Why no stream to a sandbox's agent could be had; the text is shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("runner offline")]
    RunnerOffline,
    #[error("the sandbox is not placed on any runner")]
    Unplaced,
    #[error("the sandbox's agent is not running")]
    NotRunning,
    #[error("{0}")]
    Other(String),
}

/// What [`AgentDialer::dial`] returns: a stream to the agent, once it is open.
pub type Dialing<'a> =
    Pin<Box<dyn Future<Output = Result<Box<dyn AgentStream>, DialError>> + Send + 'a>>;

/// Opens byte streams to agents: through runners' tunnels in production, straight
/// to a local agent in some tests.
pub trait AgentDialer: Send + Sync + 'static {
    fn dial<'a>(&'a self, sandbox: &'a Sandbox, originator: SocketAddr) -> Dialing<'a>;
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Dial(#[from] DialError),
    #[error("the sandbox's agent did not answer: {0}")]
    Ssh(#[from] russh::Error),
    #[error("the sandbox's agent refused the gateway's token")]
    Refused,
    #[error("the sandbox's agent did not answer in time")]
    Timeout,
}

/// An open, logged-in connection to an agent.
pub struct Upstream {
    pub handle: client::Handle<AgentEvents>,
}

impl Upstream {
    /// Grants window on this connection's channels (see `pipe`).
    pub fn grant(&self) -> Grant {
        let sender = self.handle.window_sender();
        Arc::new(move |id: ChannelId, n: u32| {
            let _ = sender.adjust_window(id, n);
        })
    }
}

/// How long logging in to an agent may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Ciphers offered to the agent, `none` first: this connection already travels
/// inside the runner's encrypted, authenticated tunnel, and from the runner to the
/// agent over a unix socket on the runner's host, so a second layer of encryption
/// only costs CPU (one encryption here, one decryption in the agent, per byte).
/// Agents accept `none` only on the runner's socket (`ssh_config_with` in the
/// agent); any other agent picks the next, a real cipher (AES-GCM first: AES-NI).
const UPSTREAM_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::NONE,
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// MACs offered to the agent: `none` goes with the `none` cipher (AEAD ciphers use
/// no MAC either). russh refuses `none` next to a cipher that needs a MAC (the CTR
/// ones), which agents never reach: they all offer AES-GCM.
const UPSTREAM_MACS: &[russh::mac::Name] = &[
    russh::mac::NONE,
    russh::mac::HMAC_SHA512_ETM,
    russh::mac::HMAC_SHA256_ETM,
    russh::mac::HMAC_SHA512,
    russh::mac::HMAC_SHA256,
];

fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        preferred: russh::Preferred {
            cipher: UPSTREAM_CIPHERS.into(),
            mac: UPSTREAM_MACS.into(),
            ..russh::Preferred::default()
        },
        // The user's own keepalives cross the relay; these keep the tunnel leg honest.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        inactivity_timeout: None,
        window_size: 2 * 1024 * 1024,
        // As large as the agent's: half the packets (and per-packet work in the agent
        // and here) for output; russh cuts them to the user's packet size for free.
        maximum_packet_size: 65536,
        nodelay: true,
        window_adjust_on_consume: true,
        ..client::Config::default()
    })
}

/// Logs in to the agent at the end of `stream` as `user` with `token`.
pub async fn connect(
    stream: Box<dyn AgentStream>,
    user: &str,
    token: &SandboxToken,
    events: AgentEvents,
) -> Result<Upstream, UpstreamError> {
    let login = async {
        let mut handle = client::connect_stream(client_config(), stream, events).await?;
        let auth = handle.authenticate_password(user, token.expose()).await?;
        if !auth.success() {
            return Err(UpstreamError::Refused);
        }
        Ok(Upstream { handle })
    };
    tokio::time::timeout(LOGIN_TIMEOUT, login)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

/// Handles what the agent starts: forwarded ports and agent-forwarding channels,
/// each relayed to the user's connection.
pub struct AgentEvents {
    pub user: russh::server::Handle,
    pub user_grant: Grant,
    upstream_grant: Option<Grant>,
    /// Whether this login may forward the user's SSH agent; the agent's requests
    /// for it are refused otherwise, whatever the agent says.
    forward_agent: bool,
}

impl AgentEvents {
    pub fn new(user: russh::server::Handle, user_grant: Grant) -> AgentEvents {
        AgentEvents {
            user,
            user_grant,
            upstream_grant: None,
            forward_agent: false,
        }
    }

    /// Lets the agent open agent-forwarding channels to the user (`ssh -A`).
    pub fn forwarding_agent(mut self, allowed: bool) -> AgentEvents {
        self.forward_agent = allowed;
        self
    }
}

impl client::Handler for AgentEvents {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // The stream reaches this sandbox's agent through the runner's authenticated
        // tunnel; the agent's own key is made fresh per sandbox and vouches for nothing
        // more. The user's end-to-end pinning is jump mode's job.
        Ok(true)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let user = self.user.clone();
        let user_grant = self.user_grant.clone();
        let up_grant = self.upstream_grant(session);
        let (address, originator) = (connected_address.to_owned(), originator_address.to_owned());
        tokio::spawn(async move {
            match user
                .channel_open_forwarded_tcpip(address, connected_port, originator, originator_port)
                .await
            {
                Ok(user_channel) => {
                    reply.accept().await;
                    pipe::relay_channels(user_channel, user_grant, channel, up_grant).await;
                }
                Err(_) => reply.reject(russh::ChannelOpenFailure::ConnectFailed).await,
            }
        });
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<Msg>,
        reply: client::ChannelOpenHandle,
        session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        if !self.forward_agent {
            tracing::warn!(
                "the agent asked for the user's SSH agent, which this login does not forward"
            );
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let user = self.user.clone();
        let user_grant = self.user_grant.clone();
        let up_grant = self.upstream_grant(session);
        tokio::spawn(async move {
            match user.channel_open_agent().await {
                Ok(user_channel) => {
                    reply.accept().await;
                    pipe::relay_channels(user_channel, user_grant, channel, up_grant).await;
                }
                Err(_) => reply.reject(russh::ChannelOpenFailure::ConnectFailed).await,
            }
        });
        Ok(())
    }
}

impl AgentEvents {
    fn upstream_grant(&mut self, session: &mut client::Session) -> Grant {
        self.upstream_grant
            .get_or_insert_with(|| {
                let sender = session.window_sender();
                Arc::new(move |id: ChannelId, n: u32| {
                    let _ = sender.adjust_window(id, n);
                })
            })
            .clone()
    }
}
