//! One user connection: russh's server `Handler`, each request forwarded to the
//! sandbox's agent over one upstream connection, or to the console.
//!
//! Requests are answered only after the agent answered them (clients hang on
//! unanswered requests, and a refusal must reach the user); data flows through
//! [`pipe`] with windows re-opened as bytes are delivered. An account login's
//! session channels go to the [`console`](super::console) instead.
//!
//! The decisions are elsewhere: who gets in and what the login gets, in
//! [`admission`] (asking the lifecycle's [`Access`]); jump mode in [`jump`]; a
//! session channel's halves and its audit in [`session`].

mod admission;
mod jump;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, ChannelWriteHalf, Pty, Sig};
use tokio::sync::watch;
use warren_keys::SandboxId;
use warren_store::{ChannelKind, NewSshSession, Sandbox, SessionEnd, SshSessionId};

use super::FrontDoor;
use super::channel_audit::{ChannelAudit, Program, Terminal};
use super::console::{ConsoleChannel, Context, PtyParams, WindowSize};
use super::login::LoginName;
use super::pipe::{self, Exit, Grant, Replies};
use super::upstream::{self, AgentEvents, Upstream};
use crate::guard::{Permit, Preauth, Refused};
use crate::lifecycle::live::{LiveEntry, Via};
use crate::lifecycle::{Access, Principal};

/// How long the agent may take to answer a request before the user gets a refusal.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime of the token the gateway mints to log in to an agent.
const UPSTREAM_TOKEN_TTL: Duration = Duration::from_secs(120);

type UpstreamWrite = Arc<ChannelWriteHalf<russh::client::Msg>>;

/// A session channel's upstream half: where requests go, and their answers; its
/// terminal, and its audit row and recording.
struct SessionPair {
    upstream: UpstreamWrite,
    replies: Replies,
    terminal: Option<Terminal>,
    audit: Arc<ChannelAudit>,
}

/// Byte counts and the last exit, shared with the relay tasks, for the audit trail.
#[derive(Default)]
struct Tally {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    exit: Mutex<Option<Exit>>,
}

pub struct Connection {
    door: Arc<FrontDoor>,
    peer: SocketAddr,
    name: Option<LoginName>,
    principal: Option<Principal>,
    /// The sandbox of a relay-mode login (none for a jump-host login).
    sandbox: Option<Sandbox>,
    /// What the principal may do with the named sandbox (read at login).
    access: Access,
    upstream: Option<Arc<Upstream>>,
    sessions: HashMap<ChannelId, SessionPair>,
    audit: Option<SshSessionId>,
    /// Session channels whose program started, for their audit rows' numbers.
    programs: u32,
    tally: Arc<Tally>,
    /// Until login: a place among the few unauthenticated connections allowed.
    preauth: Preauth,
    /// What let this connection in, and its entry among the live connections (for
    /// revocation), made once the login succeeded.
    via: Option<Via>,
    live: Option<LiveEntry>,
    /// Account logins' session channels before their `exec` or `shell`, and where
    /// their window changes go.
    consoles: HashMap<ChannelId, ConsoleChannel>,
    console_windows: HashMap<ChannelId, watch::Sender<Option<WindowSize>>>,
    /// This connection's place among its account's and sandbox's connections, and
    /// each open channel's; or why a login was refused at that bound.
    place: Option<Permit>,
    channel_places: HashMap<ChannelId, Permit>,
    over_bound: Option<Refused>,
    /// The store failed during this login: it is accepted with no principal and
    /// told so ([`admission`]), rather than refused as if its key were wrong.
    store_down: bool,
}

impl Connection {
    pub fn new(door: Arc<FrontDoor>, peer: SocketAddr, preauth: Preauth) -> Connection {
        Connection {
            door,
            peer,
            preauth,
            name: None,
            principal: None,
            sandbox: None,
            access: Access::None,
            upstream: None,
            sessions: HashMap::new(),
            audit: None,
            programs: 0,
            tally: Arc::new(Tally::default()),
            via: None,
            live: None,
            consoles: HashMap::new(),
            console_windows: HashMap::new(),
            place: None,
            channel_places: HashMap::new(),
            over_bound: None,
            store_down: false,
        }
    }

    /// The agent connection, made on first need (an sftp-only session needs it too).
    async fn upstream(&mut self, session: &mut Session) -> Result<Arc<Upstream>, String> {
        if let Some(up) = &self.upstream {
            return Ok(up.clone());
        }
        let sandbox = self
            .sandbox
            .clone()
            .ok_or_else(|| "log in as <sandbox-id>@ to use a sandbox".to_owned())?;
        let up = self
            .connect_upstream(&sandbox, session)
            .await
            .map_err(|e| format!("sandbox {} is unavailable: {e}", sandbox.id))?;
        let up = Arc::new(up);
        self.upstream = Some(up.clone());
        self.open_audit(&sandbox.id).await;
        Ok(up)
    }

    async fn connect_upstream(
        &self,
        sandbox: &Sandbox,
        session: &mut Session,
    ) -> Result<Upstream, upstream::UpstreamError> {
        let stream = self.door.dialer.dial(sandbox, self.peer).await?;
        let scope = self.scope(sandbox).await;
        let token = self
            .door
            .lifecycle
            .signer
            .mint(&sandbox.id, scope, UPSTREAM_TOKEN_TTL);
        let events = AgentEvents::new(session.handle(), user_grant(session))
            .forwarding_agent(self.forwards_agent());
        // The user name goes on (without its token): its `+<session>` part is the agent's.
        let user = match &self.name {
            Some(name @ LoginName::Sandbox { .. }) => name.without_token(),
            _ => sandbox.id.as_str(),
        };
        upstream::connect(stream, user, &token, events).await
    }

    async fn open_audit(&mut self, sandbox: &SandboxId) {
        let record = NewSshSession {
            user_id: self
                .principal
                .as_ref()
                .and_then(|p| p.user())
                .map(|u| u.id.clone()),
            sandbox_id: sandbox.clone(),
            source_addr: self.peer,
        };
        match self.door.lifecycle.store.open_ssh_session(&record).await {
            Ok(row) => self.audit = Some(row.id),
            Err(e) => tracing::warn!(error = %e, "cannot record the session for audit"),
        }
    }

    /// What a console session runs with: the account that logged in.
    fn console_context(&self, session: &mut Session) -> Option<Context> {
        let lifecycle = self.door.lifecycle.clone();
        let user = self.principal.as_ref()?.user()?.clone();
        Some(Context {
            lifecycle,
            door: self.door.clone(),
            user,
            peer: self.peer,
            handle: session.handle(),
            grant: user_grant(session),
        })
    }

    /// A place for a new channel of this login, into `sandbox` if it reaches one;
    /// refused (with the reason OpenSSH prints) at its account's or sandbox's bound,
    /// or before a login.
    fn channel_place(&self, sandbox: Option<&SandboxId>) -> Result<Permit, ChannelOpenFailure> {
        let Some(principal) = &self.principal else {
            return Err(ChannelOpenFailure::AdministrativelyProhibited);
        };
        self.door
            .bounds
            .channel(principal.user(), sandbox)
            .map_err(|refused| ChannelOpenFailure::Other {
                // OpenSSH: "channel 2: open failed: resource shortage: too many …".
                code: 4,
                reason: refused.to_string(),
            })
    }

    fn reply(session: &mut Session, channel: ChannelId, ok: bool) -> Result<(), russh::Error> {
        if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let Some(id) = self.audit.take() else {
            return;
        };
        let end = SessionEnd {
            bytes_in: self.tally.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.tally.bytes_out.load(Ordering::Relaxed),
            exit: self
                .tally
                .exit
                .lock()
                .ok()
                .and_then(|e| *e)
                .and_then(Exit::as_session_exit),
        };
        let store = self.door.lifecycle.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.close_ssh_session(&id, &end).await {
                tracing::warn!(error = %e, "cannot close the session's audit record");
            }
        });
    }
}

/// Grants window on the user's connection.
fn user_grant(session: &mut Session) -> Grant {
    let handle = session.handle();
    Arc::new(move |id: ChannelId, n: u32| {
        let _ = handle.adjust_window(id, n);
    })
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.logged_in(session).await
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.login_none(user).await)
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(self.login_password(user, password).await)
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.key_offered(offer).await)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.login_key(user, key).await)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.open_session(channel, reply, session).await
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sessions.remove(&channel);
        self.consoles.remove(&channel);
        self.console_windows.remove(&channel);
        self.channel_places.remove(&channel);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(console) = self.consoles.get_mut(&channel) {
            console.set_pty(PtyParams {
                term: term.to_owned(),
                cols: col_width,
                rows: row_height,
                pix_width,
                pix_height,
                modes: modes.to_vec(),
            });
            return session.channel_success(channel);
        }
        let (term, modes) = (term.to_owned(), modes.to_vec());
        let terminal = Terminal {
            term: term.clone(),
            cols: col_width,
            rows: row_height,
        };
        let ok = self
            .forward_request(channel, |up| async move {
                up.request_pty(
                    true, &term, col_width, row_height, pix_width, pix_height, &modes,
                )
                .await
            })
            .await;
        if ok && let Some(pair) = self.sessions.get_mut(&channel) {
            pair.terminal = Some(terminal);
        }
        Self::reply(session, channel, ok)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.consoles.contains_key(&channel) {
            // Nothing in the console reads the environment.
            return session.channel_success(channel);
        }
        let (name, value) = (variable_name.to_owned(), variable_value.to_owned());
        let ok = self
            .forward_request(
                channel,
                |up| async move { up.set_env(true, name, value).await },
            )
            .await;
        Self::reply(session, channel, ok)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(console) = self.consoles.remove(&channel) {
            let Some(ctx) = self.console_context(session) else {
                return session.channel_failure(channel);
            };
            session.channel_success(channel)?;
            console.shell(ctx);
            return Ok(());
        }
        let program = Program {
            kind: ChannelKind::Shell,
            command: None,
        };
        if !self.start_program(channel, program).await {
            return session.channel_failure(channel);
        }
        let ok = self
            .forward_request(channel, |up| async move { up.request_shell(true).await })
            .await;
        Self::reply(session, channel, ok)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(console) = self.consoles.remove(&channel) {
            let Some(ctx) = self.console_context(session) else {
                return session.channel_failure(channel);
            };
            session.channel_success(channel)?;
            console.exec(ctx, String::from_utf8_lossy(data).into_owned());
            return Ok(());
        }
        let program = Program {
            kind: ChannelKind::Exec,
            command: Some(String::from_utf8_lossy(data).into_owned()),
        };
        if !self.start_program(channel, program).await {
            return session.channel_failure(channel);
        }
        let command = data.to_vec();
        let ok = self
            .forward_request(channel, |up| async move { up.exec(true, command).await })
            .await;
        Self::reply(session, channel, ok)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.consoles.contains_key(&channel) {
            // No sftp on the console: files live in sandboxes.
            return session.channel_failure(channel);
        }
        let program = Program {
            kind: ChannelKind::Subsystem,
            command: Some(name.to_owned()),
        };
        if !self.start_program(channel, program).await {
            return session.channel_failure(channel);
        }
        let name = name.to_owned();
        let ok = self
            .forward_request(channel, |up| async move {
                up.request_subsystem(true, name).await
            })
            .await;
        Self::reply(session, channel, ok)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Refused on purpose, as the agent would: sandboxes have no X server.
        session.channel_failure(channel)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Clients send window-change without asking for a reply.
        if let Some(windows) = self.console_windows.get(&channel) {
            windows.send_replace(Some((col_width, row_height, pix_width, pix_height)));
            return Ok(());
        }
        if let Some(pair) = self.sessions.get(&channel) {
            let _ = pair
                .upstream
                .window_change(col_width, row_height, pix_width, pix_height)
                .await;
            pair.audit.resize(col_width, row_height).await;
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(pair) = self.sessions.get(&channel) {
            let _ = pair.upstream.signal(signal).await;
        }
        Ok(())
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if !self.sessions.contains_key(&channel) {
            return Ok(false);
        }
        if !self.forwards_agent() {
            // OpenSSH asks without wanting a reply: a line on the channel's stderr is
            // the only way the user learns why `ssh -A` gave them no agent.
            tracing::info!(peer = %self.peer, "agent forwarding refused");
            let _ = session.extended_data(
                channel,
                1,
                warren_keys::AGENT_FORWARDING_REFUSED.as_bytes().to_vec(),
            );
            return Ok(false);
        }
        Ok(self
            .forward_request(channel, |up| async move { up.agent_forward(true).await })
            .await)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Jump mode: the host is a sandbox id; the user's client speaks SSH end to end
        // with the agent, which authenticates it again.
        if let Ok(target) = SandboxId::parse(host_to_connect)
            && host_to_connect.starts_with("sbx-")
        {
            self.open_jump(channel, &target, reply, session).await;
            return Ok(());
        }
        // Relay mode `ssh -L`: the agent connects from inside the sandbox.
        let place = match self.channel_place(self.sandbox.as_ref().map(|s| &s.id)) {
            Ok(place) => place,
            Err(refused) => {
                reply.reject(refused).await;
                return Ok(());
            }
        };
        let up = match self.upstream(session).await {
            Ok(up) => up,
            Err(message) => {
                reply_unavailable(reply, session, &message).await;
                return Ok(());
            }
        };
        let opened = up
            .handle
            .channel_open_direct_tcpip(
                host_to_connect,
                port_to_connect,
                originator_address,
                originator_port,
            )
            .await;
        match opened {
            Ok(up_channel) => {
                let (user_g, up_g) = (user_grant(session), up.grant());
                self.channel_places.insert(channel.id(), place);
                reply.accept().await;
                tokio::spawn(pipe::relay_channels(channel, user_g, up_channel, up_g));
            }
            Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Ok(up) = self.upstream(session).await else {
            return Ok(false);
        };
        match up.handle.tcpip_forward(address, *port).await {
            Ok(bound) => {
                if *port == 0 {
                    *port = bound;
                }
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Ok(up) = self.upstream(session).await else {
            return Ok(false);
        };
        Ok(up.handle.cancel_tcpip_forward(address, port).await.is_ok())
    }
}

impl Connection {}

/// Refuses a channel because the sandbox cannot be reached, and says why: OpenSSH
/// shows the disconnect message to the user ("runner offline"), where a bare
/// refusal would leave them guessing.
async fn reply_unavailable(reply: ChannelOpenHandle, session: &mut Session, message: &str) {
    tracing::info!(%message, "sandbox unavailable");
    reply.reject(ChannelOpenFailure::ConnectFailed).await;
    let _ = session
        .handle()
        .disconnect(
            russh::Disconnect::ServiceNotAvailable,
            message.to_owned(),
            String::new(),
        )
        .await;
}
