//! The HTTP API over TLS: rustls (ring) in front of the same axum router that
//! [`super::serve`] serves in plain HTTP; and [`serve_plain`], plain HTTP through
//! the same connection driver, so that both have a header read timeout (axum's
//! `serve` sets no timer, so hyper's default timeout never applies there).
//!
//! One task per connection: the TLS handshake (at most [`HANDSHAKE_TIMEOUT`]), then
//! HTTP/1.1 through hyper, with the peer's address handed to the handlers as
//! `ConnectInfo<SocketAddr>` like the plain listener does. A client that never
//! finishes its handshake, sends garbage or hangs up costs its own task only; the
//! accept loop never waits on a client and nothing here panics on what a peer sends.
//!
//! The identity (certificate and key) comes from `warren_keys::tls`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use warren_keys::tls::TlsIdentity;

/// How long a client has from connecting to finishing the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers once it starts one (and, on a
/// kept-alive connection, to start the next).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` over TLS with `identity` on `listener`. Returns only if the
/// listener cannot go on; failed accepts (a peer gone before it was accepted, too
/// many open files) are logged and retried.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    identity: TlsIdentity,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(identity.server_config());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        tokio::spawn(connection(acceptor.clone(), router.clone(), tcp, peer));
    }
}

/// Serves `router` in plain HTTP on `listener`, like [`super::serve`] but with
/// [`HEADER_READ_TIMEOUT`]: a client that opens a connection and sends nothing (or
/// headers a byte at a time) is dropped instead of held forever.
pub async fn serve_plain(listener: TcpListener, router: Router) -> io::Result<()> {
    serve_plain_with(listener, router, HEADER_READ_TIMEOUT).await
}

/// [`serve_plain`] with another header read timeout (for tests).
pub async fn serve_plain_with(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
) -> io::Result<()> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            http1(TokioIo::new(tcp), router, peer, header_read_timeout).await;
        });
    }
}

async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    // EMFILE and the like: give connections time to close instead of spinning.
    tracing::error!("HTTP accept failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn connection(acceptor: TlsAcceptor, router: Router, tcp: TcpStream, peer: SocketAddr) {
    // Small JSON replies: send each TLS record as soon as it is written.
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    http1(TokioIo::new(tls), router, peer, HEADER_READ_TIMEOUT).await;
}

/// HTTP/1.1 on one connection, plain or TLS.
async fn http1<I>(io: TokioIo<I>, router: Router, peer: SocketAddr, header_read_timeout: Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: axum::http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        // A router clone is a reference count; its future owns what it needs.
        tower_service::Service::call(&mut router.clone(), request)
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, "HTTP connection ended: {e}");
    }
}
