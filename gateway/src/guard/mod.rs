//! Connections before and around login: how many may wait to log in and for how
//! long ([`PreauthLimits`], [`PreauthGate`], [`run_with_grace`]), which addresses
//! keep failing ([`FailureLimiter`]), and what a logged-in account and sandbox may
//! hold at once ([`SessionBounds`]). The SSH front door, the runners' endpoint and
//! the HTTP API (its bad API keys) all use them; they know nothing of sandboxes'
//! rules.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use russh::server::Config;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

mod bounds;
mod limiter;
pub mod proxy;

pub use bounds::{AdmissionArgs, Permit, Refused, SessionBounds, SessionLimits};
pub(crate) use limiter::{Admission, PreauthGate, PreauthSlot};
pub use limiter::{FailureLimiter, failures_total as limiter_failures_total};

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
pub(crate) async fn run_until<H>(
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
        quick_acks: QUICK_ACKS,
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

/// How many of a connection's first reads are acknowledged at once (see
/// [`Severable::quick_acks`]): the version exchange, the key exchange, the login
/// and the first channel's requests take fewer.
const QUICK_ACKS: u8 = 32;

/// A socket [`Severance`] can cut.
struct Severable {
    inner: TcpStream,
    severance: Arc<Severance>,
    /// Reads left after which the socket acknowledges what it read at once. A
    /// client without TCP_NODELAY (OpenSSH's `ssh host cmd` has none) holds a small
    /// packet back until its previous one is acknowledged, and Linux delays that
    /// acknowledgement up to 40 ms while the server has nothing to send: its
    /// KEXINIT, sent as the server's, is acknowledged late and its key-exchange
    /// packet waits. Two in five `ssh true` took 60–70 ms instead of 20–25.
    quick_acks: u8,
}

impl AsyncRead for Severable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.severance.check(cx, READING)?;
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.quick_acks > 0 && matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before
        {
            self.quick_acks -= 1;
            quick_ack(&self.inner);
        }
        read
    }
}

/// Sends the acknowledgement of what `stream` received now rather than delayed
/// (Linux's TCP_QUICKACK, which lasts until the kernel's own heuristics change it
/// back; hence once per read).
fn quick_ack(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the length given.
    let _ = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
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
