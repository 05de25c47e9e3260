//! The SSH front door: users log in with a sandbox id as the user name and are
//! relayed to that sandbox's agent, or with their account name: a jump host for
//! `ssh -J`, and the account console ([`console`]) for commands.
//!
//! Not here: the runner tunnel ([`crate::tunnel`]) that carries the bytes to agents,
//! and the state ([`crate::store`]).

mod bounds;
mod channel_audit;
pub mod console;
mod limiter;
pub mod live;
mod login;
mod pipe;
mod relay;
mod upstream;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use russh::server::Config;
use russh::{MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use warren_keys::TokenSigner;

pub use bounds::{AdmissionArgs, SessionBounds, SessionLimits};
pub(crate) use limiter::{Admission, PreauthGate, PreauthSlot};
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
    /// Logged-in connections, for revocation (shared with the API).
    pub live: Arc<live::LiveConnections>,
    /// The lifecycle behind the account console (`ssh <account>@gateway ls`); without
    /// one, account logins are jump hosts only.
    pub console: Option<Arc<crate::lifecycle::Lifecycle>>,
    /// Where terminal sessions are recorded, and the policy.
    pub recordings: Arc<crate::recordings::Recordings>,
    /// What logged-in accounts and sandboxes hold, against their bounds.
    pub bounds: Arc<SessionBounds>,
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

/// Bounds on connections that have not logged in yet, like sshd's LoginGraceTime and
/// MaxStartups: a connection gets `login_grace` from accept to log in, and at most
/// `per_address` of them from one source (an IPv4 address or an IPv6 /64) and
/// `total` in all go through the handshake at once. Past that, up to
/// `backlog_per_address` from one source and `backlog` in all wait (within their
/// grace time, silently, like a listen backlog) for a place; beyond those too, new
/// connections are closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreauthLimits {
    pub login_grace: Duration,
    pub per_address: usize,
    pub total: usize,
    pub backlog_per_address: usize,
    pub backlog: usize,
}

impl PreauthLimits {
    /// The users' front door. Logins here are keys (milliseconds, a few seconds with
    /// a hardware key's touch) or a pasted API key or token, never a typed system
    /// password: 30 s, not sshd's 120 s. 32 per address in the handshake keep a
    /// busy client host (an orchestrator, a CI box behind NAT) at the speed the CPU
    /// allows, and its bursts wait their turn in the backlog (128 from one address,
    /// 512 in all) instead of being dropped; 256 + 512 sockets stay under the usual
    /// 1024 open files even where the limit cannot be raised.
    pub const FRONT_DOOR: PreauthLimits = PreauthLimits {
        login_grace: Duration::from_secs(30),
        per_address: 32,
        total: 256,
        backlog_per_address: 128,
        backlog: 512,
    };
    /// The runners' endpoint: runners log in by key or join by token, unattended,
    /// and reconnect with backoff if dropped, so no backlog.
    pub const RUNNERS: PreauthLimits = PreauthLimits {
        login_grace: Duration::from_secs(30),
        per_address: 10,
        total: 64,
        backlog_per_address: 0,
        backlog: 0,
    };
}

impl Default for PreauthLimits {
    fn default() -> PreauthLimits {
        PreauthLimits::FRONT_DOOR
    }
}

/// Accepts users until the listener fails; each connection runs on its own task.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    door: Arc<FrontDoor>,
) -> std::io::Result<()> {
    serve_with(listener, config, door, PreauthLimits::FRONT_DOOR).await
}

/// [`serve`] with `limits` on connections that have not logged in yet.
pub async fn serve_with(
    listener: TcpListener,
    config: Config,
    door: Arc<FrontDoor>,
    limits: PreauthLimits,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let gate = PreauthGate::with_backlog(
        limits.per_address,
        limits.total,
        limits.backlog_per_address,
        limits.backlog,
        "SSH front door",
    );
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
        // Logged (rate-limited) by the gate; closing the socket is the answer.
        let Ok(admission) = gate.admit_or_queue(peer.ip()) else {
            continue;
        };
        let deadline = tokio::time::Instant::now() + limits.login_grace;
        let (config, door) = (config.clone(), door.clone());
        tokio::spawn(async move {
            let slot = match admission {
                Admission::Now(slot) => slot,
                // The client has sent its version line (or nothing) and waits for
                // ours, as it would in a listen backlog; the grace time runs.
                Admission::Queued(ticket) => match ticket.wait(deadline).await {
                    Some(slot) => slot,
                    None => {
                        return tracing::debug!(%peer, "no place within the grace time; closed");
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (preauth, logged_in) = Preauth::new(slot);
            let handler = relay::Connection::new(door, peer, preauth);
            let grace = limits.login_grace;
            run_until(config, stream, handler, logged_in, deadline, grace, peer).await;
        });
    }
}

/// A connection's state before login, kept by its handler: its place at the
/// [`PreauthGate`] (given back at login, or when the handler is dropped with the
/// connection) and the flag [`run_with_grace`] looks at when the grace time is up.
pub(crate) struct Preauth {
    slot: Option<PreauthSlot>,
    logged_in: Arc<AtomicBool>,
}

impl Preauth {
    pub(crate) fn new(slot: PreauthSlot) -> (Preauth, Arc<AtomicBool>) {
        let logged_in = Arc::new(AtomicBool::new(false));
        let preauth = Preauth {
            slot: Some(slot),
            logged_in: logged_in.clone(),
        };
        (preauth, logged_in)
    }

    /// The connection logged in: no grace time, no place among the unauthenticated.
    pub(crate) fn logged_in(&mut self) {
        self.logged_in.store(true, Ordering::Release);
        if let Some(slot) = self.slot.take() {
            slot.release();
        }
    }
}

/// How long a connection told to go (no login in time) has to close before its
/// socket is cut. A client in the middle of the key exchange never hears the
/// disconnect (russh holds it until the exchange is done), so this is short.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

/// Runs one connection to its end. The version exchange and the login must be done
/// within `grace` of now, unless `logged_in` says so by then; otherwise the client
/// is told why and the connection closed, by cutting the socket if it must (russh
/// would wait for a silent client forever).
pub(crate) async fn run_with_grace<H>(
    config: Arc<Config>,
    stream: TcpStream,
    handler: H,
    logged_in: Arc<AtomicBool>,
    grace: Duration,
    peer: SocketAddr,
) where
    H: russh::server::Handler + Send + 'static,
    H::Error: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + grace;
    run_until(config, stream, handler, logged_in, deadline, grace, peer).await;
}

/// [`run_with_grace`] with the grace time (`grace`, for the message) ending at
/// `deadline`: a connection that waited for its place has had part of it.
async fn run_until<H>(
    config: Arc<Config>,
    stream: TcpStream,
    handler: H,
    logged_in: Arc<AtomicBool>,
    deadline: tokio::time::Instant,
    grace: Duration,
    peer: SocketAddr,
) where
    H: russh::server::Handler + Send + 'static,
    H::Error: std::fmt::Display,
{
    let severance = Arc::new(Severance::default());
    let stream = Severable {
        inner: stream,
        severance: severance.clone(),
    };
    let started =
        tokio::time::timeout_at(deadline, russh::server::run_stream(config, stream, handler)).await;
    let running = match started {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "handshake failed"),
        Err(_) => return tracing::debug!(%peer, "no SSH version line within the grace time"),
    };
    let handle = running.handle();
    tokio::pin!(running);
    let ended = tokio::select! {
        result = &mut running => Some(result),
        () = tokio::time::sleep_until(deadline) => None,
    };
    let result = match ended {
        Some(result) => result,
        None if logged_in.load(Ordering::Acquire) => {
            severance.keep();
            running.await
        }
        None => {
            tracing::debug!(%peer, "no login within the grace time; disconnecting");
            let told = async {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        format!("no login within {} s", grace.as_secs()),
                        String::new(),
                    )
                    .await;
                (&mut running).await
            };
            match tokio::time::timeout(DISCONNECT_WAIT, told).await {
                Ok(result) => result,
                Err(_) => {
                    severance.cut();
                    // The session's next read or write fails, and it ends.
                    running.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// What lets [`run_with_grace`] close a socket that russh's own task owns: once
/// cut, every read and write on the [`Severable`] fails, and the task waiting on it
/// is woken to see that.
#[derive(Default)]
struct Severance {
    cut: AtomicBool,
    /// Logged in: never cut, and polls no longer note their waker.
    kept: AtomicBool,
    /// The tasks last waiting to read and to write.
    wakers: Mutex<[Option<Waker>; 2]>,
}

const READING: usize = 0;
const WRITING: usize = 1;

impl Severance {
    fn check(&self, cx: &Context<'_>, which: usize) -> io::Result<()> {
        if self.kept.load(Ordering::Acquire) {
            return Ok(());
        }
        if !self.cut.load(Ordering::Acquire) {
            let mut wakers = crate::unpoisoned(&self.wakers);
            if !wakers[which]
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                wakers[which] = Some(cx.waker().clone());
            }
        }
        // Checked again after noting the waker: a cut in between has woken it or
        // is seen here.
        if self.cut.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "no login within the grace time",
            ));
        }
        Ok(())
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut *crate::unpoisoned(&self.wakers));
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }

    fn keep(&self) {
        self.kept.store(true, Ordering::Release);
        *crate::unpoisoned(&self.wakers) = [None, None];
    }
}

/// A socket [`Severance`] can cut.
struct Severable {
    inner: TcpStream,
    severance: Arc<Severance>,
}

impl AsyncRead for Severable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.severance.check(cx, READING)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Severable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.severance.check(cx, WRITING)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.severance.check(cx, WRITING)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.severance.check(cx, WRITING)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.severance.check(cx, WRITING)?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises this process's open-file limit to its hard limit (every connection, its
/// agent leg and the store need descriptors), logs what it got, and returns it.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "cannot read the open-file limit");
        return None;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            tracing::warn!(
                error = %io::Error::last_os_error(), open_files = before,
                "cannot raise the open-file limit; keeping it"
            );
            return Some(before);
        }
    }
    let now = limit.rlim_cur;
    let wanted = PreauthLimits::FRONT_DOOR.total + PreauthLimits::FRONT_DOOR.backlog + 1024;
    if usize::try_from(now).is_ok_and(|n| n < wanted) {
        tracing::warn!(
            open_files = now,
            "the open-file limit is low for a gateway (raise the hard limit: ulimit -Hn)"
        );
    } else {
        tracing::info!(open_files = now, was = before, "open-file limit");
    }
    Some(now)
}

/// The local address a listener is bound to, for logs and tests.
pub fn bound(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
