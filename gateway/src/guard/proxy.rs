//! PROXY protocol version 2 (HAProxy's `send-proxy-v2`) on a listener behind a TCP
//! load balancer, so that the failed-login limiter, the pre-auth bounds and the
//! audit trail see the client's address rather than the balancer's.
//!
//! For: [`read_client_addr`], called on each accepted connection of a listener
//! that has it turned on (`--proxy-protocol`), before anything else is read. A
//! connection without a valid header within [`HEADER_TIMEOUT`] is closed: with
//! the option on, a client that reaches the gateway around the balancer cannot
//! claim an address, and one that sends nothing holds no place for long. Exactly
//! the header's bytes are read, so what follows (the SSH version line) is left in
//! the socket. Not for: version 1 (text) headers, which HAProxy sends only when
//! told to; `send-proxy-v2` is the one to use.
//!
//! The parsing is the `ppp` crate's (`ppp::v2::Header`): a small, maintained
//! parser of both versions with no dependencies beyond `thiserror`, which the
//! workspace has already; Warren reads the fixed 16-byte prefix itself to know how
//! much to read.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2::{Addresses, Command, Header};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a connection has to send its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a header may carry after its 16-byte prefix (addresses and TLVs;
/// HAProxy's are far smaller).
const MAX_TAIL: usize = 4096;
/// The 12 bytes every version 2 header starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection's header was refused (the connection is then closed).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("not a PROXY protocol v2 header")]
    NotV2,
    #[error("a PROXY protocol header of {0} bytes is too long")]
    TooLong(usize),
    #[error("a malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one version 2 header from `stream` within `timeout`: the client's address
/// as the balancer saw it, or `peer` for a `LOCAL` header (the balancer's own
/// health check) or one without an IP address.
pub async fn read_client_addr<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, ProxyError> {
    tokio::time::timeout(timeout, read_header(stream, peer))
        .await
        .map_err(|_| ProxyError::Timeout(timeout))?
}

async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyError> {
    let mut prefix = [0u8; 16];
    stream.read_exact(&mut prefix).await?;
    if prefix[..12] != SIGNATURE {
        return Err(ProxyError::NotV2);
    }
    let tail = usize::from(u16::from_be_bytes([prefix[14], prefix[15]]));
    if tail > MAX_TAIL {
        return Err(ProxyError::TooLong(16 + tail));
    }
    let mut header = Vec::with_capacity(16 + tail);
    header.extend_from_slice(&prefix);
    header.resize(16 + tail, 0);
    stream.read_exact(&mut header[16..]).await?;
    client_addr(&header, peer)
}

/// What a whole header says the client's address is.
pub fn client_addr(header: &[u8], peer: SocketAddr) -> Result<SocketAddr, ProxyError> {
    let header = Header::try_from(header).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    Ok(match (header.command, header.addresses) {
        (Command::Proxy, Addresses::IPv4(a)) => SocketAddr::from((a.source_address, a.source_port)),
        (Command::Proxy, Addresses::IPv6(a)) => SocketAddr::from((a.source_address, a.source_port)),
        // A health check of the balancer's own, or a client without an IP address.
        (Command::Local, _) | (Command::Proxy, Addresses::Unspecified | Addresses::Unix(_)) => peer,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.1:40000".parse().unwrap()
    }

    fn v4_header(tlvs: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(0x21); // version 2, PROXY
        h.push(0x11); // IPv4, stream
        let len = 12 + tlvs.len();
        h.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        h.extend_from_slice(&[127, 0, 0, 7, 127, 0, 0, 1]);
        h.extend_from_slice(&51000u16.to_be_bytes());
        h.extend_from_slice(&2222u16.to_be_bytes());
        h.extend_from_slice(tlvs);
        h
    }

    #[tokio::test]
    async fn the_client_address_comes_from_the_header_and_the_rest_stays() {
        let mut bytes = v4_header(&[0x04, 0x00, 0x01, 0x00]); // a NOOP TLV
        bytes.extend_from_slice(b"SSH-2.0-OpenSSH\r\n");
        let mut stream = &bytes[..];
        let addr = read_client_addr(&mut stream, peer(), HEADER_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(addr, "127.0.0.7:51000".parse().unwrap());
        assert_eq!(stream, b"SSH-2.0-OpenSSH\r\n");
    }

    #[tokio::test]
    async fn local_headers_keep_the_peer() {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        let addr = read_client_addr(&mut &h[..], peer(), HEADER_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(addr, peer());
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let mut too_long = v4_header(&[]);
        too_long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        let mut bad_version = v4_header(&[]);
        bad_version[12] = 0x31;
        let cases: [&[u8]; 5] = [
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"PROXY TCP4 127.0.0.7 127.0.0.1 51000 2222\r\n",
            &too_long,
            &bad_version,
            &v4_header(&[])[..20],
        ];
        for case in cases {
            assert!(
                read_client_addr(&mut &case[..], peer(), HEADER_TIMEOUT)
                    .await
                    .is_err(),
                "{case:?}"
            );
        }
    }

    #[tokio::test]
    async fn silence_times_out() {
        let (mut quiet, _keep) = tokio::io::duplex(64);
        let err = read_client_addr(&mut quiet, peer(), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Timeout(_)), "{err}");
    }
}
