//! One client attached to a persistent session: what the session has for it goes to
//! its channel as its window allows; when it leaves, the session lives on.

use std::sync::Arc;

use russh::ChannelId;
use russh::ChannelWriteHalf;
use russh::server::{Handle, Msg};
use tokio::sync::Notify;

use super::terminal::{ClientSlot, Next, Persistent};
use crate::pump::Closed;
use crate::session::finish;

/// Sends session `session`'s screen, then its output, to the channel `write` until
/// the client leaves (`closed`) or the session ends (then its exit status, EOF and
/// CLOSE, as for a plain session).
pub fn attach_channel(
    session: Arc<Persistent>,
    slot: ClientSlot,
    write: ChannelWriteHalf<Msg>,
    channel: ChannelId,
    handle: Handle,
    closed: Closed,
) {
    tokio::spawn(async move {
        let ClientSlot { id, ready } = slot;
        serve(&session, id, &ready, &write, channel, &handle, closed).await;
        session.detach(id);
    });
}

async fn serve(
    session: &Persistent,
    id: u64,
    ready: &Notify,
    write: &ChannelWriteHalf<Msg>,
    channel: ChannelId,
    handle: &Handle,
    mut closed: Closed,
) {
    loop {
        match session.next(id) {
            Next::Data(data) => {
                tokio::select! {
                    sent = write.data_bytes(data) => if sent.is_err() { return },
                    () = closed.wait() => return,
                }
            }
            Next::Ended(ended) => {
                finish(channel, write, handle, ended.status()).await;
                return;
            }
            Next::Idle => tokio::select! {
                () = ready.notified() => {}
                () = closed.wait() => return,
            },
            Next::Gone => return,
        }
    }
}

/// Tells a client why it cannot attach (on stderr, so it shows on its terminal) and
/// ends its channel with status 1.
pub fn refuse(write: ChannelWriteHalf<Msg>, message: String) {
    tokio::spawn(async move {
        let text = format!("warren: {message}\r\n");
        let _ = write
            .extended_data_bytes(1, bytes::Bytes::from(text.into_bytes()))
            .await;
        let _ = write.exit_status(1).await;
        let _ = write.eof().await;
        let _ = write.close().await;
    });
}
