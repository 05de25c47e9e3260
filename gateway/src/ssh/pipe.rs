//! Moving bytes between two SSH channels (the user's and the agent's), or between a
//! channel and a raw stream, with flow control end to end.
//!
//! Both of our russh connections run with consumption-based windows (our russh
//! patch): each side's window is re-opened only once its bytes have been written to
//! the other side. A slow user therefore slows the agent's output down to its pace,
//! and the gateway holds at most one window per direction per channel.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use russh::{Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use warren_store::SessionExit;

use crate::recordings::Tap;

/// Re-opens a channel's receive window by this many bytes.
pub type Grant = Arc<dyn Fn(ChannelId, u32) + Send + Sync>;

/// Requests' replies (success or failure) from one channel's peer, in order.
pub type Replies = mpsc::UnboundedReceiver<bool>;

/// Bytes read from a stream in one go.
const READ_CHUNK: usize = 64 * 1024;

/// Consumed bytes are granted back in batches of this size: every window here is
/// 2 MiB (ours, the user's and the agent's), so the peer always has most of it
/// open, and a 32 KiB packet no longer costs a window-adjust packet of its own.
const GRANT_BATCH: u32 = 256 * 1024;

/// Reads a channel's messages as they come, so the connection's read loop never
/// waits on us: replies to requests go to `replies`, everything else (in order) to
/// the returned queue. The queue is bounded by the channel's window.
pub fn drain(
    mut read: ChannelReadHalf,
    replies: Option<mpsc::UnboundedSender<bool>>,
) -> mpsc::UnboundedReceiver<ChannelMsg> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = read.wait().await {
            let Some(msg) = route(msg, replies.as_ref()) else {
                continue;
            };
            let close = matches!(msg, ChannelMsg::Close);
            if tx.send(msg).is_err() || close {
                break;
            }
        }
    });
    rx
}

/// Takes what the consumer of a channel's messages does not see: replies to
/// requests (sent to `replies`) and window news. The rest is returned, in order.
fn route(msg: ChannelMsg, replies: Option<&mpsc::UnboundedSender<bool>>) -> Option<ChannelMsg> {
    let reply = match msg {
        ChannelMsg::Success => true,
        ChannelMsg::Failure => false,
        ChannelMsg::WindowAdjusted { .. } => return None,
        other => return Some(other),
    };
    if let Some(r) = replies {
        let _ = r.send(reply);
    }
    None
}

/// A channel's incoming messages for one consumer, without a task between: the
/// consumer reads the channel itself, and keeps reading it (into a queue bounded by
/// the channel's window) while it waits on anything else, so the connection's read
/// loop never waits on us. Replies to requests go to `replies` as they come, ahead
/// of data still queued.
pub struct Inbox {
    read: ChannelReadHalf,
    replies: Option<mpsc::UnboundedSender<bool>>,
    queue: VecDeque<ChannelMsg>,
    /// False once CLOSE came (or the channel ended): nothing more to read.
    open: bool,
}

impl Inbox {
    pub fn new(read: ChannelReadHalf, replies: Option<mpsc::UnboundedSender<bool>>) -> Inbox {
        Inbox {
            read,
            replies,
            queue: VecDeque::new(),
            open: true,
        }
    }

    /// Routes a message (see [`route`]); the channel's end reads as CLOSE.
    fn sort(&mut self, msg: Option<ChannelMsg>) -> Option<ChannelMsg> {
        let msg = route(msg.unwrap_or(ChannelMsg::Close), self.replies.as_ref())?;
        if matches!(msg, ChannelMsg::Close) {
            self.open = false;
        }
        Some(msg)
    }
}

/// Where [`channel_to_channel`] takes a channel's messages from: a queue a [`drain`]
/// task fills, or an [`Inbox`].
pub trait Incoming: Send {
    /// The next message for the consumer; `None` once there is none.
    fn next(&mut self) -> impl Future<Output = Option<ChannelMsg>> + Send;
    /// Runs `work` while the channel goes on being read.
    fn meanwhile<F: Future + Send>(&mut self, work: F) -> impl Future<Output = F::Output> + Send;
}

impl Incoming for mpsc::UnboundedReceiver<ChannelMsg> {
    async fn next(&mut self) -> Option<ChannelMsg> {
        self.recv().await
    }

    /// The drain task reads the channel.
    async fn meanwhile<F: Future + Send>(&mut self, work: F) -> F::Output {
        work.await
    }
}

impl Incoming for Inbox {
    async fn next(&mut self) -> Option<ChannelMsg> {
        if let Some(msg) = self.queue.pop_front() {
            return Some(msg);
        }
        while self.open {
            let msg = self.read.wait().await;
            if let Some(msg) = self.sort(msg) {
                return Some(msg);
            }
        }
        None
    }

    async fn meanwhile<F: Future + Send>(&mut self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                msg = self.read.wait(), if self.open => {
                    if let Some(msg) = self.sort(msg) {
                        self.queue.push_back(msg);
                    }
                }
            }
        }
    }
}

/// Window re-opened in batches (see [`GRANT_BATCH`]).
struct Owed {
    grant: Grant,
    id: ChannelId,
    bytes: u32,
}

impl Owed {
    fn consumed(&mut self, n: u32) {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes >= GRANT_BATCH {
            (self.grant)(self.id, self.bytes);
            self.bytes = 0;
        }
    }
}

fn len_u32(data: &Bytes) -> u32 {
    u32::try_from(data.len()).unwrap_or(u32::MAX)
}

/// What happened to a channel's peer, for the audit trail.
#[derive(Debug, Default, Clone, Copy)]
pub struct Exit {
    pub status: Option<u32>,
    pub signal: bool,
}

impl Exit {
    /// As the audit trail keeps it (the signal's name is not kept).
    pub fn as_session_exit(self) -> Option<SessionExit> {
        match self {
            Exit {
                status: Some(s), ..
            } => Some(SessionExit::Status(s)),
            Exit { signal: true, .. } => Some(SessionExit::Signal("signal".into())),
            _ => None,
        }
    }
}

/// Copies `from` (read side of one channel) into `to` (write side of the other),
/// granting `from`'s window (in batches) as bytes are written. EOF and CLOSE are passed on;
/// exit-status and exit-signal too, the latter through `exit_signal` because only
/// a connection handle can send it. `tap` sees every data byte on the way (a
/// session's recording); if it says stop, the channel is closed. Returns the bytes
/// copied and the exit seen.
pub async fn channel_to_channel<S>(
    mut from: impl Incoming,
    from_id: ChannelId,
    grant: Grant,
    to: &ChannelWriteHalf<S>,
    exit_signal: impl Fn(ChannelMsg) -> Option<tokio::task::JoinHandle<()>> + Send,
    tap: Option<&Tap>,
) -> (u64, Exit)
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let mut bytes = 0u64;
    let mut exit = Exit::default();
    let mut owed = Owed {
        grant,
        id: from_id,
        bytes: 0,
    };
    while let Some(msg) = from.next().await {
        let ok = match msg {
            ChannelMsg::Data { data } => {
                let n = len_u32(&data);
                bytes += u64::from(n);
                let (kept, sent) = from
                    .meanwhile(async {
                        let kept = observe(tap, &data, to).await;
                        (kept, to.data_bytes(data).await.is_ok())
                    })
                    .await;
                owed.consumed(n);
                sent && kept
            }
            ChannelMsg::ExtendedData { data, ext } => {
                let n = len_u32(&data);
                bytes += u64::from(n);
                let (kept, sent) = from
                    .meanwhile(async {
                        let kept = observe(tap, &data, to).await;
                        (kept, to.extended_data_bytes(ext, data).await.is_ok())
                    })
                    .await;
                owed.consumed(n);
                sent && kept
            }
            ChannelMsg::Eof => from.meanwhile(to.eof()).await.is_ok(),
            ChannelMsg::ExitStatus { exit_status } => {
                exit.status = Some(exit_status);
                from.meanwhile(to.exit_status(exit_status)).await.is_ok()
            }
            msg @ ChannelMsg::ExitSignal { .. } => {
                exit.signal = true;
                if let Some(task) = exit_signal(msg) {
                    let _ = from.meanwhile(task).await;
                }
                true
            }
            ChannelMsg::Close => {
                let _ = to.close().await;
                return (bytes, exit);
            }
            _ => true,
        };
        if !ok {
            break;
        }
    }
    let _ = to.close().await;
    (bytes, exit)
}

/// Whether the session goes on after `tap` saw `data`; if not (its recording is
/// required and stopped), the user is told why on stderr.
async fn observe<S>(tap: Option<&Tap>, data: &Bytes, to: &ChannelWriteHalf<S>) -> bool
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let kept = match tap {
        Some(tap) => tap.observe(data).await,
        None => true,
    };
    if !kept {
        let why = "\r\nwarren: this session's recording stopped (size or disk limit), and \
                   this gateway records every terminal session: the session ends here\r\n";
        let _ = to
            .extended_data_bytes(1, Bytes::from_static(why.as_bytes()))
            .await;
    }
    kept
}

/// Joins a channel and a raw stream (the jump mode's pipe to an agent): both ways,
/// EOF as a half-close, until both directions are done or the channel closes.
pub async fn channel_to_stream<S>(
    from: mpsc::UnboundedReceiver<ChannelMsg>,
    from_id: ChannelId,
    grant: Grant,
    write: ChannelWriteHalf<S>,
    stream: impl AsyncRead + AsyncWrite + Unpin,
) -> (u64, u64)
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let (mut sock_read, mut sock_write) = tokio::io::split(stream);
    let mut from = from;
    let closed = tokio::sync::Notify::new();
    let inbound = async {
        let mut n_in = 0u64;
        while let Some(msg) = from.recv().await {
            match msg {
                ChannelMsg::Data { data } => {
                    let n = len_u32(&data);
                    n_in += u64::from(n);
                    let ok = sock_write.write_all(&data).await.is_ok();
                    grant(from_id, n);
                    if !ok {
                        break;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = sock_write.shutdown().await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        // The channel is gone: nobody will read the stream's output any more.
        closed.notify_one();
        n_in
    };
    let outbound = async {
        let mut n_out = 0u64;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.reserve(READ_CHUNK);
            let read = tokio::select! {
                read = sock_read.read_buf(&mut buf) => read,
                () = closed.notified() => break,
            };
            match read {
                Ok(0) | Err(_) => {
                    let _ = write.eof().await;
                    break;
                }
                Ok(n) => {
                    n_out += n as u64;
                    if write.data_bytes(buf.split().freeze()).await.is_err() {
                        break;
                    }
                }
            }
        }
        n_out
    };
    let result = tokio::join!(inbound, outbound);
    let _ = write.close().await;
    result
}

/// Joins two channels both ways (`ssh -L`, `ssh -R` and agent channels), each side's
/// window re-opened as its bytes reach the other.
pub async fn relay_channels<A, B>(a: Channel<A>, a_grant: Grant, b: Channel<B>, b_grant: Grant)
where
    A: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    B: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let (a_id, b_id) = (a.id(), b.id());
    let (a_read, a_write) = a.split();
    let (b_read, b_write) = b.split();
    let (a_in, b_in) = (drain(a_read, None), drain(b_read, None));
    tokio::join!(
        channel_to_channel(a_in, a_id, a_grant, &b_write, |_| None, None),
        channel_to_channel(b_in, b_id, b_grant, &a_write, |_| None, None),
    );
}
