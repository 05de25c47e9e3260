//! One SFTP session as a pipeline: frame requests, answer them, write replies.
//!
//! ```text
//! client ─▶ read_requests (async) ─▶ Handler on a blocking thread ─▶ write_replies (async) ─▶ client
//! ```
//!
//! The three stages overlap, so while one request touches the disk the next is being
//! read and the previous reply written. Requests are answered strictly in order (as
//! OpenSSH's server does), which keeps every reply matched to its id trivially. Both
//! queues are bounded, so a client that sends faster than the disk takes is slowed by
//! ordinary flow control, and memory stays at a few megabytes.

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::MAX_PACKET_LEN;
use super::handler::{Handler, Reply};
use super::paths::Roots;

/// Requests read ahead of the one being answered (OpenSSH's client keeps up to 64 in
/// flight; the rest wait in the socket).
const REQUEST_QUEUE: usize = 16;
/// Replies waiting to be written.
const REPLY_QUEUE: usize = 16;
/// How much the reader asks the stream for at once.
const READ_CHUNK: usize = 512 * 1024;
/// Small replies (write acknowledgements, attributes) are gathered up to this much
/// before a write system call; large DATA replies go straight out.
const WRITE_BUFFER: usize = 64 * 1024;

/// Runs the session until the client closes its side, then closes every open handle.
pub(super) async fn run<R, W>(reader: R, writer: W, roots: Roots) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (request_tx, request_rx) = mpsc::channel(REQUEST_QUEUE);
    let (reply_tx, reply_rx) = mpsc::channel(REPLY_QUEUE);
    // File system calls block, so the handler lives on a blocking thread for the whole
    // session (one per sftp-server process), rather than one spawn per request.
    let worker = tokio::task::spawn_blocking(move || {
        answer_requests(Handler::new(roots), request_rx, reply_tx)
    });
    // If either side fails, try_join drops the other; the closed queues stop the worker.
    let io = tokio::try_join!(
        read_requests(reader, request_tx),
        write_replies(writer, reply_rx)
    );
    worker.await.context("SFTP worker thread failed")?;
    io.map(|_| ())
}

/// Splits the byte stream into packets and queues them, until end of stream.
async fn read_requests<R>(mut reader: R, requests: mpsc::Sender<Bytes>) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        while let Some(packet) = next_packet(&mut buf)? {
            if requests.send(packet).await.is_err() {
                return Ok(()); // the worker has stopped: the session is over
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let n = reader
            .read_buf(&mut buf)
            .await
            .context("reading SFTP requests")?;
        if n == 0 {
            if !buf.is_empty() {
                debug!(bytes = buf.len(), "SFTP client closed mid-packet");
            }
            return Ok(());
        }
    }
}

/// Takes one whole packet (without its length field) off the front of `buf`.
fn next_packet(buf: &mut BytesMut) -> anyhow::Result<Option<Bytes>> {
    let Some(&[a, b, c, d]) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([a, b, c, d]);
    // A bad length cannot be skipped over: nothing after it can be trusted to be framed.
    anyhow::ensure!(len > 0, "empty SFTP packet");
    anyhow::ensure!(
        len <= MAX_PACKET_LEN,
        "SFTP packet of {len} bytes exceeds {MAX_PACKET_LEN}"
    );
    let total = 4 + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len as usize).freeze()))
}

/// The worker: answers each request in order and queues the encoded reply.
fn answer_requests(
    mut handler: Handler,
    mut requests: mpsc::Receiver<Bytes>,
    replies: mpsc::Sender<Bytes>,
) {
    while let Some(packet) = requests.blocking_recv() {
        let reply = encode(handler.handle_packet(packet));
        if replies.blocking_send(reply).is_err() {
            break; // the client is gone
        }
    }
    debug!("SFTP session ended");
    // `handler` drops here, closing whatever the client left open.
}

fn encode(reply: Reply) -> Bytes {
    let reply = match reply {
        Reply::Encoded(bytes) => return bytes,
        Reply::Packet(packet) => packet,
    };
    let id = reply.get_request_id();
    Bytes::try_from(reply).unwrap_or_else(|err| {
        // Only a reply over 4 GiB could fail to encode; answer with a status instead.
        warn!(%err, "could not encode SFTP reply");
        let status = Packet::status(id, StatusCode::Failure, "could not encode reply", "en");
        Bytes::try_from(status).unwrap_or_default()
    })
}

/// Writes replies as they come, flushing whenever the queue runs dry.
async fn write_replies<W>(writer: W, mut replies: mpsc::Receiver<Bytes>) -> anyhow::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, writer);
    while let Some(reply) = replies.recv().await {
        out.write_all(&reply)
            .await
            .context("writing SFTP replies")?;
        // Everything already answered goes out in the same system call or few.
        while let Ok(reply) = replies.try_recv() {
            out.write_all(&reply)
                .await
                .context("writing SFTP replies")?;
        }
        out.flush().await.context("writing SFTP replies")?;
    }
    if let Err(err) = out.shutdown().await {
        debug!(%err, "closing the SFTP reply stream");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_split_on_their_length_field() -> anyhow::Result<()> {
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 7, 8, 0, 0, 0, 1, 9, 0][..]);
        assert_eq!(next_packet(&mut buf)?.as_deref(), Some(&[7, 8][..]));
        assert_eq!(next_packet(&mut buf)?.as_deref(), Some(&[9][..]));
        assert_eq!(next_packet(&mut buf)?, None);
        assert_eq!(buf.len(), 1);
        Ok(())
    }

    #[test]
    fn oversized_and_empty_packets_end_the_session() {
        let mut huge = BytesMut::from(&(MAX_PACKET_LEN + 1).to_be_bytes()[..]);
        assert!(next_packet(&mut huge).is_err());
        let mut empty = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(next_packet(&mut empty).is_err());
    }
}
