//! Moving bytes between SSH channels and local pipes or sockets.
//!
//! Input flows under the client's window: it is queued as it arrives and the window
//! is re-opened only as the program consumes it (our russh patch,
//! `window_adjust_on_consume`). The client thus never has more than one window in
//! flight per channel, and the connection's read loop never waits on a slow program:
//! a full queue would stall every channel and could deadlock a program that needs
//! the client's window adjust (queued behind that input) to write its output.

use bytes::{Bytes, BytesMut};
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Bytes read from a program or socket in one go.
pub const READ_CHUNK: usize = 64 * 1024;

/// Consumed bytes are granted back to the client in batches of this size (or when
/// the queue runs dry), so small writes don't each cost a window-adjust packet.
const GRANT_BATCH: u32 = 256 * 1024;

/// What the client sent on a channel.
pub enum Input {
    Data(Bytes),
    Eof,
}

/// A channel's unread input, bounded by the channel's window.
pub struct Backlog {
    queue: mpsc::UnboundedReceiver<Input>,
    window: WindowGrant,
}

impl Backlog {
    /// The next piece of input; `None` once the client closed the channel. Taking a
    /// piece counts it as consumed.
    pub async fn recv(&mut self) -> Option<Input> {
        let input = self.queue.recv().await?;
        if let Input::Data(data) = &input {
            self.window.consumed(data.len(), self.queue.is_empty());
        }
        Some(input)
    }
}

/// Re-opens a channel's receive window as its data is consumed.
struct WindowGrant {
    handle: Handle,
    channel: ChannelId,
    owed: u32,
}

impl WindowGrant {
    fn consumed(&mut self, len: usize, flush: bool) {
        self.owed = self
            .owed
            .saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
        if self.owed >= GRANT_BATCH || (flush && self.owed > 0) {
            // Fails only when the connection is gone, and then nothing is owed.
            let _ = self.handle.adjust_window(self.channel, self.owed);
            self.owed = 0;
        }
    }
}

/// Queues a channel's incoming messages as they arrive; the queue ends when the
/// client closes the channel. Once the consumer is gone, input is read, dropped and
/// its window given back, so the client is never left waiting.
pub fn drain_input(mut read: ChannelReadHalf, channel: ChannelId, handle: Handle) -> Backlog {
    let (tx, queue) = mpsc::unbounded_channel();
    let mut discarded = WindowGrant {
        handle: handle.clone(),
        channel,
        owed: 0,
    };
    tokio::spawn(async move {
        while let Some(msg) = read.wait().await {
            let input = match msg {
                ChannelMsg::Data { data } => Input::Data(data),
                ChannelMsg::Eof => Input::Eof,
                ChannelMsg::Close => break,
                _ => continue,
            };
            if let Err(mpsc::error::SendError(Input::Data(data))) = tx.send(input) {
                discarded.consumed(data.len(), true);
            }
        }
    });
    Backlog {
        queue,
        window: WindowGrant {
            handle,
            channel,
            owed: 0,
        },
    }
}

/// Sends everything `reader` yields as channel data (`ext` = Some(1) for stderr),
/// as the client's window allows. Returns false when the channel went away.
pub async fn send_output(
    mut reader: impl AsyncRead + Unpin,
    write: &ChannelWriteHalf<Msg>,
    ext: Option<u32>,
) -> bool {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buf.reserve(READ_CHUNK);
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {
                let chunk = buf.split().freeze();
                let sent = match ext {
                    None => write.data_bytes(chunk).await,
                    Some(code) => write.extended_data_bytes(code, chunk).await,
                };
                if sent.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Joins a channel and a socket both ways, passing EOF on in each direction, and
/// closes the channel when both directions are done.
pub async fn splice(
    channel: Channel<Msg>,
    handle: Handle,
    stream: impl AsyncRead + AsyncWrite + Unpin,
) {
    let id = channel.id();
    let (read, write) = channel.split();
    let mut input = drain_input(read, id, handle);
    let (mut sock_read, mut sock_write) = tokio::io::split(stream);
    let inbound = async {
        while let Some(Input::Data(data)) = input.recv().await {
            if sock_write.write_all(&data).await.is_err() {
                return;
            }
        }
        // EOF or close from the client: half-close the socket.
        let _ = sock_write.shutdown().await;
    };
    let outbound = async {
        if send_output(&mut sock_read, &write, None).await {
            let _ = write.eof().await;
        }
    };
    tokio::join!(inbound, outbound);
    let _ = write.close().await;
}
