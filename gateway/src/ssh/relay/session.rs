//! A session channel relayed to the agent: its two halves piped both ways, the
//! agent's answers to its requests, its audit row and its recording.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use russh::server::{ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure};
use tokio::sync::mpsc;

use super::{
    Connection, REQUEST_TIMEOUT, SessionPair, UpstreamWrite, pipe, reply_unavailable, user_grant,
};
use crate::ssh::channel_audit::{ChannelAudit, Program};
use crate::ssh::console::ConsoleChannel;

impl Connection {
    pub(super) async fn open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let place = match self.channel_place(self.sandbox.as_ref().map(|s| &s.id)) {
            Ok(place) => place,
            Err(refused) => {
                reply.reject(refused).await;
                return Ok(());
            }
        };
        if self.sandbox.is_none() {
            let id = channel.id();
            let (console, windows) = ConsoleChannel::new(channel);
            self.consoles.insert(id, console);
            self.console_windows.insert(id, windows);
            self.channel_places.insert(id, place);
            reply.accept().await;
            return Ok(());
        }
        let up = match self.upstream(session).await {
            Ok(up) => up,
            Err(message) => {
                reply_unavailable(reply, session, &message).await;
                return Ok(());
            }
        };
        let up_channel = match up.handle.channel_open_session().await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(error = %e, "agent refused a session channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        let (user_id, up_id) = (channel.id(), up_channel.id());
        let (user_read, user_write) = channel.split();
        let (up_read, up_write) = up_channel.split();
        let up_write = Arc::new(up_write);
        let (replies_tx, replies) = mpsc::unbounded_channel();
        let from_user = pipe::Inbox::new(user_read, None);
        let from_agent = pipe::Inbox::new(up_read, Some(replies_tx));
        let (user_g, up_g) = (user_grant(session), up.grant());
        let handle = session.handle();
        let tally = self.tally.clone();
        let audit = Arc::new(ChannelAudit::default());
        // The user's bytes to the agent.
        let to_agent = up_write.clone();
        let tally_in = tally.clone();
        let audit_in = audit.clone();
        let inbound = tokio::spawn(async move {
            let tap = audit_in.input_tap();
            let (n, _) = pipe::channel_to_channel(
                from_user,
                user_id,
                user_g,
                &to_agent,
                |_| None,
                Some(&tap),
            )
            .await;
            tally_in.bytes_in.fetch_add(n, Ordering::Relaxed);
            audit_in.add_bytes_in(n);
        });
        let store = self.door.lifecycle.store.clone();
        let audit_out = audit.clone();
        // The agent's bytes, exit status and close to the user.
        tokio::spawn(async move {
            let exit_signal = |msg: ChannelMsg| {
                let ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } = msg
                else {
                    return None;
                };
                let handle = handle.clone();
                Some(tokio::spawn(async move {
                    let _ = handle
                        .exit_signal_request(
                            user_id,
                            signal_name,
                            core_dumped,
                            error_message,
                            lang_tag,
                        )
                        .await;
                }))
            };
            let tap = audit_out.output_tap();
            let (n, exit) = pipe::channel_to_channel(
                from_agent,
                up_id,
                up_g,
                &user_write,
                exit_signal,
                Some(&tap),
            )
            .await;
            tally.bytes_out.fetch_add(n, Ordering::Relaxed);
            if (exit.status.is_some() || exit.signal)
                && let Ok(mut last) = tally.exit.lock()
            {
                *last = Some(exit);
            }
            // The user's side ends once the client answers our close; don't wait on
            // one that won't.
            let _ = tokio::time::timeout(Duration::from_secs(2), inbound).await;
            audit_out.finish(&store, n, exit).await;
        });
        self.sessions.insert(
            user_id,
            SessionPair {
                upstream: up_write,
                replies,
                terminal: None,
                audit,
            },
        );
        self.channel_places.insert(user_id, place);
        reply.accept().await;
        Ok(())
    }

    /// Sends a request upstream and waits for the agent's answer; false when the
    /// agent refused, did not answer in time, or the channel is unknown.
    pub(super) async fn forward_request<F, Fut>(&mut self, channel: ChannelId, send: F) -> bool
    where
        F: FnOnce(UpstreamWrite) -> Fut,
        Fut: std::future::Future<Output = Result<(), russh::Error>>,
    {
        let Some(pair) = self.sessions.get_mut(&channel) else {
            return false;
        };
        if send(pair.upstream.clone()).await.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(REQUEST_TIMEOUT, pair.replies.recv()).await,
            Ok(Some(true))
        )
    }

    /// Records that a session channel's program starts (its audit row, and its
    /// recording if it has a terminal); `false` if it must be refused: the policy
    /// requires a recording that cannot be made. Without a terminal nothing can
    /// refuse it, and the row is written while the program starts.
    pub(super) async fn start_program(&mut self, channel: ChannelId, program: Program) -> bool {
        let Some(pair) = self.sessions.get(&channel) else {
            return false;
        };
        self.programs += 1;
        let title = format!(
            "{} on {}",
            self.principal
                .as_ref()
                .and_then(|p| p.user())
                .map_or("a sandbox token", |u| u.name.as_str()),
            self.sandbox.as_ref().map_or("?", |s| s.id.as_str())
        );
        // A recording counts against the sandbox owner's share: the sandbox
        // decides what it holds.
        let account = match (
            &self.sandbox,
            self.principal.as_ref().and_then(|p| p.user()),
        ) {
            (Some(sandbox), _) => sandbox.owner_id.as_str().to_owned(),
            (None, Some(user)) => user.id.as_str().to_owned(),
            (None, None) => String::new(),
        };
        if pair.terminal.is_none() {
            pair.audit.open_in_background(
                self.door.clone(),
                self.audit.clone(),
                account,
                self.programs,
                program,
                title,
            );
            return true;
        }
        let started = pair
            .audit
            .start(
                &self.door,
                self.audit.as_ref(),
                &account,
                self.programs,
                program,
                pair.terminal.as_ref(),
                title,
            )
            .await;
        match started {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(peer = %self.peer, %reason, "terminal session refused");
                false
            }
        }
    }
}
