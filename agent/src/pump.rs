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
use tokio::sync::{mpsc, watch};

/// Bytes read from a program or socket in one go.
pub const READ_CHUNK: usize = 64 * 1024;

/// How long input that arrived before a close may take to reach a slow local peer.
const FLUSH_AFTER_CLOSE: std::time::Duration = std::time::Duration::from_secs(10);

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

impl Drop for Backlog {
    /// Input nobody will read is given back as window, so a client writing to a
    /// program that closed its stdin is never left waiting.
    fn drop(&mut self) {
        self.queue.close();
        while let Ok(input) = self.queue.try_recv() {
            if let Input::Data(data) = input {
                self.window.consumed(data.len(), false);
            }
        }
        self.window.consumed(0, true);
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

/// Fires once the client has closed the channel or the connection is gone: the
/// signal for relays to stop waiting on a peer that will never answer.
#[derive(Clone)]
pub struct Closed(watch::Receiver<bool>);

impl Closed {
    pub async fn wait(&mut self) {
        // An error means the sender is gone, which also means closed.
        let _ = self.0.wait_for(|closed| *closed).await;
    }
}

/// Queues a channel's incoming messages as they arrive; the queue ends when the
/// client closes the channel. Once the consumer is gone, input is read, dropped and
/// its window given back, so the client is never left waiting.
pub fn drain_input(
    mut read: ChannelReadHalf,
    channel: ChannelId,
    handle: Handle,
) -> (Backlog, Closed) {
    let (tx, queue) = mpsc::unbounded_channel();
    let (closed_tx, closed_rx) = watch::channel(false);
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
                // Extended data from a client means nothing to a program, but it
                // used window, which is given back.
                ChannelMsg::ExtendedData { data, .. } => {
                    discarded.consumed(data.len(), true);
                    continue;
                }
                _ => continue,
            };
            if let Err(mpsc::error::SendError(Input::Data(data))) = tx.send(input) {
                discarded.consumed(data.len(), true);
            }
        }
        let _ = closed_tx.send(true);
    });
    let backlog = Backlog {
        queue,
        window: WindowGrant {
            handle,
            channel,
            owed: 0,
        },
    };
    (backlog, Closed(closed_rx))
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
                crate::activity::touch();
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

/// Joins a channel and a socket both ways. EOF is passed on in each direction
/// (half-close); the channel is closed once both directions are done, and
/// everything stops at once when the client closes the channel.
pub async fn splice(
    channel: Channel<Msg>,
    handle: Handle,
    stream: impl AsyncRead + AsyncWrite + Unpin,
) {
    let id = channel.id();
    let (read, write) = channel.split();
    let (mut input, mut closed) = drain_input(read, id, handle);
    let (mut sock_read, mut sock_write) = tokio::io::split(stream);
    let inbound = async {
        while let Some(item) = input.recv().await {
            match item {
                Input::Data(data) => {
                    crate::activity::touch();
                    if sock_write.write_all(&data).await.is_err() {
                        return;
                    }
                }
                Input::Eof => {
                    let _ = sock_write.shutdown().await;
                }
            }
        }
    };
    // Output stops as soon as the client closes the channel; input still queued is
    // delivered (it came before the close), with a bound for a peer that never reads.
    let mut closed_out = closed.clone();
    let outbound = async {
        tokio::select! {
            done = send_output(&mut sock_read, &write, None) => {
                if done {
                    let _ = write.eof().await;
                }
            }
            () = closed_out.wait() => {}
        }
    };
    let inbound = async {
        tokio::select! {
            () = inbound => {}
            () = async {
                closed.wait().await;
                tokio::time::sleep(FLUSH_AFTER_CLOSE).await;
            } => {}
        }
    };
    tokio::join!(inbound, outbound);
    let _ = write.close().await;
}
