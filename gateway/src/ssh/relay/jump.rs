//! Jump mode (`ssh -J <account>@gateway <sandbox-id>`): a channel piped raw to a
//! sandbox's agent, which authenticates the user's client again end to end. The
//! gateway checks the login may use that sandbox ([`crate::lifecycle::Access`])
//! and records that it reached it (for revocation); it cannot record the session.

use std::sync::atomic::Ordering;

use russh::server::{ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelOpenFailure};
use warren_keys::SandboxId;

use super::{Connection, pipe, user_grant};

impl Connection {
    /// Jump mode: pipes the channel's bytes to the agent of `target`, if this
    /// principal may use it.
    pub(super) async fn open_jump(
        &mut self,
        channel: Channel<Msg>,
        target: &SandboxId,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) {
        if self.door.lifecycle.recordings.policy().required {
            let message = format!(
                "this gateway records every session, and jump mode (-J) is encrypted end to \
                 end so it cannot be: log in as ssh {target}@<gateway> instead"
            );
            // OpenSSH prints the reason: "open failed: administratively prohibited: …".
            tracing::info!(peer = %self.peer, "jump mode refused: recording is required");
            let prohibited = ChannelOpenFailure::Other {
                code: 1,
                reason: message,
            };
            reply.reject(prohibited).await;
            return;
        }
        // Recorded before the checks: a revocation after them then finds this
        // connection (one before them is seen by them).
        if let Some(live) = &self.live {
            live.reached(target);
        }
        let Some(principal) = &self.principal else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        };
        let sandbox = match self.door.lifecycle.store.get_sandbox(target).await {
            Ok(s)
                if self
                    .door
                    .lifecycle
                    .access_to(principal, &s)
                    .await
                    .logs_in(&s) =>
            {
                s
            }
            // Unknown and not yours look the same.
            _ => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return;
            }
        };
        // Counted against the sandbox only once it is known to be this login's.
        let place = match self.channel_place(Some(&sandbox.id)) {
            Ok(place) => place,
            Err(refused) => {
                reply.reject(refused).await;
                return;
            }
        };
        let stream = match self.door.dialer.dial(&sandbox, self.peer).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::info!(sandbox = %sandbox.id, error = %e, "jump target unavailable");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return;
            }
        };
        if self.audit.is_none() {
            self.open_audit(&sandbox.id).await;
        }
        let id = channel.id();
        let (read, write) = channel.split();
        let from_user = pipe::drain(read, None);
        let grant = user_grant(session);
        let tally = self.tally.clone();
        self.channel_places.insert(id, place);
        reply.accept().await;
        tokio::spawn(async move {
            let (n_in, n_out) = pipe::channel_to_stream(from_user, id, grant, write, stream).await;
            tally.bytes_in.fetch_add(n_in, Ordering::Relaxed);
            tally.bytes_out.fetch_add(n_out, Ordering::Relaxed);
        });
    }
}
