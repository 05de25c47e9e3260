//! A tunnel channel as a byte stream whose receive window re-opens as the reader
//! consumes bytes (our russh patch, `window_adjust_on_consume`), used on both ends
//! of the tunnel. The peer can never have more than one window in flight, so a slow
//! reader bounds the sender instead of making anyone buffer without limit.

use std::pin::Pin;
use std::task::{Context, Poll};

use russh::{ChannelId, ChannelMsg, ChannelStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Channel windows on both sides of the tunnel.
pub const WINDOW_SIZE: u32 = 2 * 1024 * 1024;
/// Largest packet on the tunnel.
pub const MAX_PACKET: u32 = 64 * 1024;
/// Buffer for copying between a tunnel stream and an agent's socket, each way
/// (`tokio::io::copy_bidirectional_with_sizes`). Each read from the agent's socket
/// becomes one tunnel packet, so tokio's default (8 KiB) would cut the agent's output
/// into 8 KiB packets: eight times the packets, wake-ups and grants of
/// [`MAX_PACKET`]-sized ones.
pub const COPY_BUFFER: usize = MAX_PACKET as usize;

/// Ciphers for the tunnel, both ends: AES-GCM first. Every byte to and from every
/// sandbox crosses the tunnel, and with AES-NI and carry-less multiply (any x86-64
/// server of the last decade) AES-GCM costs a fraction of ChaCha20-Poly1305, russh's
/// first choice (Poly1305 alone was a fifth of the gateway's and the runner's CPU
/// time in bulk transfers). The client's (runner's) order decides.
pub const TUNNEL_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
];

/// russh's algorithm preferences for the tunnel: its defaults, with [`TUNNEL_CIPHERS`].
pub fn tunnel_preferred() -> russh::Preferred {
    russh::Preferred {
        cipher: TUNNEL_CIPHERS.into(),
        ..russh::Preferred::default()
    }
}

/// Keeps freed packet buffers in the process's heap. By default glibc gives a thread
/// arena's free top back to the kernel once it passes 128 KiB, so the relay's 64 KiB
/// buffers were faulted in, zeroed by the kernel and handed back over and over (the
/// `madvise` calls, page faults and `clear_page_rep` of a transfer's profile). With a
/// few MiB kept per arena, sftp through the gateway was 12–18 % faster in three A/B
/// pairs (docs/benchmarks.md, "Through the gateway"). Called once at start-up by the
/// processes that relay every sandbox's bytes, one of each per host: the gateway,
/// the runner and `warren up`. Not the agent: one runs in every sandbox, and what it
/// kept after a transfer would count against each container's memory.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters (it takes its own locks).
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Consumed bytes are granted back in batches this size: with a 2 MiB window the
/// peer always has most of it open, and grants cost few packets.
const GRANT_BATCH: u32 = 256 * 1024;

/// Tells the peer it may send `n` more bytes on a channel.
pub type Grant = Box<dyn Fn(ChannelId, u32) + Send + Sync>;

/// A channel's byte stream that grants window as it is read.
pub struct GrantingStream<S>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    inner: ChannelStream<S>,
    id: ChannelId,
    grant: Grant,
    owed: u32,
}

impl<S> GrantingStream<S>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    pub fn new(inner: ChannelStream<S>, id: ChannelId, grant: Grant) -> Self {
        GrantingStream {
            inner,
            id,
            grant,
            owed: 0,
        }
    }

    pub fn channel_id(&self) -> ChannelId {
        self.id
    }
}

impl<S> AsyncRead for GrantingStream<S>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            let this = &mut *self;
            this.owed = this
                .owed
                .saturating_add(u32::try_from(read).unwrap_or(u32::MAX));
            if this.owed >= GRANT_BATCH {
                (this.grant)(this.id, this.owed);
                this.owed = 0;
            }
        }
        res
    }
}

impl<S> AsyncWrite for GrantingStream<S>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
