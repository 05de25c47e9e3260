//! The russh handler for one client connection. It stays thin: it answers each
//! request at once (clients hang on unanswered ones) and hands the work to
//! [`SessionChannel`] and the forwarding module.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use russh::keys::ssh_key::HashAlg;
use russh::server::{
    Auth, ChannelOpenHandle, Handle, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Pty, Sig};

use warren_keys::{Attach, LoginName, SessionNameError};

use crate::auth::{Credential, Grant};
use crate::forward::{self, AgentSocket, RemoteForward};
use crate::persistent::{AttachError, NewSession};
use crate::process::Program;
use crate::pty::{self, PtyRequest};
use crate::server::Agent;
use crate::session::SessionChannel;

pub struct Connection {
    agent: Arc<Agent>,
    /// Client and server address of a TCP connection (none over a unix socket).
    peer: Option<(SocketAddr, SocketAddr)>,
    credential: Option<Credential>,
    /// What the login was granted (the sandbox's secrets or not).
    grant: Option<Grant>,
    /// The persistent session the user name asks for (`<sandbox-id>+<name>[+ro]`),
    /// or why that part of it is wrong.
    attach: Result<Option<Attach>, SessionNameError>,
    sessions: HashMap<ChannelId, SessionChannel>,
    remote_forwards: HashMap<(String, u32), RemoteForward>,
    agent_socket: Option<AgentSocket>,
    /// Set on login; the server cuts connections that stay anonymous too long.
    authenticated: Arc<AtomicBool>,
    /// Held until login: a place among the few unauthenticated connections allowed.
    unauthenticated_slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Session channels one connection may have open at once (sshd's MaxSessions is
/// 10; VS Code opens several).
const MAX_SESSIONS: usize = 64;
/// How long a refused `<id>#<token>` user name waits, like any refused login.
const REFUSAL_DELAY: Duration = Duration::from_secs(1);

impl Connection {
    pub fn new(
        agent: Arc<Agent>,
        peer: Option<(SocketAddr, SocketAddr)>,
        authenticated: Arc<AtomicBool>,
        unauthenticated_slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Connection {
        Connection {
            agent,
            peer,
            credential: None,
            grant: None,
            attach: Ok(None),
            sessions: HashMap::new(),
            remote_forwards: HashMap::new(),
            agent_socket: None,
            authenticated,
            unauthenticated_slot: Some(unauthenticated_slot),
        }
    }

    fn accepted(&mut self, credential: Credential, grant: Grant, user: &str) -> Auth {
        let login = LoginName::parse(user);
        tracing::info!(
            peer = ?self.peer.map(|p| p.0),
            ssh_user = login.without_token(),
            ?credential,
            secrets = grant.secrets,
            "authenticated"
        );
        self.credential = Some(credential);
        self.grant = Some(grant);
        self.attach = login
            .attach()
            .map(Option::<&Attach>::cloned)
            .map_err(Clone::clone);
        self.authenticated.store(true, Ordering::Release);
        self.unauthenticated_slot = None;
        Auth::Accept
    }

    fn rejected(&self) -> Auth {
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        if self.agent.auth.tokens.is_some() {
            methods.push(MethodKind::Password);
        }
        Auth::Reject {
            proceed_with_methods: Some(methods),
            partial_success: false,
        }
    }

    /// Variables every session of this connection gets.
    fn connection_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some((client, server)) = self.peer {
            env.push((
                "SSH_CLIENT".to_owned(),
                format!("{} {} {}", client.ip(), client.port(), server.port()),
            ));
            env.push((
                "SSH_CONNECTION".to_owned(),
                format!(
                    "{} {} {} {}",
                    client.ip(),
                    client.port(),
                    server.ip(),
                    server.port()
                ),
            ));
        }
        if let Some(socket) = &self.agent_socket {
            env.push((
                "SSH_AUTH_SOCK".to_owned(),
                socket.path().to_string_lossy().into_owned(),
            ));
        }
        if self.grant.is_some_and(|g| g.secrets) {
            env.extend(self.agent.session_env.iter().cloned());
        }
        env
    }

    fn start(&mut self, channel: ChannelId, program: Program, session: &mut Session) {
        let extra_env = self.connection_env();
        let launch = self.agent.launch();
        let handle = session.handle();
        let started = match self.sessions.get_mut(&channel) {
            Some(s) if !s.is_running() => s.start(program.clone(), &launch, &extra_env, handle),
            _ => Err(std::io::Error::other("no idle session on this channel")),
        };
        let reply = match started {
            Ok(()) => {
                tracing::debug!(?channel, ?program, "session started");
                session.channel_success(channel)
            }
            Err(e) => {
                tracing::warn!(?channel, error = %e, "cannot start the session's program");
                session.channel_failure(channel)
            }
        };
        if let Err(e) = reply {
            tracing::debug!(error = %e, "reply failed");
        }
    }

    /// Serves a shell, exec or subsystem request on a login that names a persistent
    /// session: attaches (or refuses, with the reason on the client's terminal).
    /// False when the login names none and the request runs as usual.
    fn persistent(&mut self, channel: ChannelId, program: &Program, session: &mut Session) -> bool {
        let attach = match &self.attach {
            Ok(None) => return false,
            // SFTP and scp beside a session work as usual; a watcher runs nothing.
            Ok(Some(a)) if matches!(program, Program::SftpServer) && !a.read_only => return false,
            Ok(Some(a)) => Ok(a.clone()),
            Err(e) => Err(e.to_string()),
        };
        let outcome = attach.and_then(|a| {
            self.attach_to(channel, &a, program, session)
                .map_err(|e| e.to_string())
        });
        let Some(channel_session) = self.sessions.get_mut(&channel) else {
            return true;
        };
        if let Err(message) = outcome {
            tracing::info!(?channel, reason = %message, "persistent session refused");
            channel_session.refuse(message);
        }
        // Answered yes either way: a refusal is told on the channel, which OpenSSH
        // shows, where a failed request would only say "shell request failed".
        if let Err(e) = session.channel_success(channel) {
            tracing::debug!(error = %e, "reply failed");
        }
        true
    }

    fn attach_to(
        &mut self,
        channel: ChannelId,
        attach: &Attach,
        program: &Program,
        session: &mut Session,
    ) -> Result<(), AttachError> {
        if attach.read_only && !matches!(program, Program::LoginShell) {
            return Err(AttachError::ReadOnlyCommand);
        }
        let extra_env = self.connection_env();
        let launch = self.agent.launch();
        let Some(channel_session) = self.sessions.get_mut(&channel) else {
            return Err(AttachError::NoTerminal);
        };
        let request = channel_session
            .pty()
            .cloned()
            .ok_or(AttachError::NoTerminal)?;
        let env = channel_session.program_env(&extra_env);
        let secrets = self.grant.is_some_and(|g| g.secrets);
        let create = (!attach.read_only).then_some(NewSession {
            request: &request,
            program,
            launch,
            env,
            secrets,
        });
        let (persistent, created) = self.agent.sessions.open(&attach.session, create)?;
        if !created && matches!(program, Program::Command(_)) {
            return Err(AttachError::AlreadyRuns(attach.session.clone()));
        }
        // Typing into a shell that has the secrets would give them to a login that
        // was not (a user the sandbox is shared with without them): watching only.
        if persistent.has_secrets() && !secrets && !attach.read_only {
            return Err(AttachError::Secrets(attach.session.clone()));
        }
        channel_session.attach(&persistent, attach.read_only, session.handle())?;
        tracing::info!(?channel, session = %attach, created, "attached to a persistent session");
        Ok(())
    }

    fn reply(session: &mut Session, channel: ChannelId, ok: bool) -> Result<(), russh::Error> {
        if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        // `<sandbox-id>#<token>` logs in without a prompt (scripts, VS Code).
        if let Some(token) = LoginName::parse(user).token() {
            if let Some(grant) = self.agent.auth.check_token(token) {
                return Ok(self.accepted(Credential::Token, grant, user));
            }
            // A guessed token waits like any refused login (russh does not slow the
            // first "none" attempt, which OpenSSH sends to probe).
            tokio::time::sleep(REFUSAL_DELAY).await;
        }
        Ok(self.rejected())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if let Some(grant) = self.agent.auth.check_token(password) {
            return Ok(self.accepted(Credential::Token, grant, user));
        }
        tracing::info!(peer = ?self.peer.map(|p| p.0), "password login refused");
        Ok(self.rejected())
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.agent.auth.authorized_key(offer.public_key).is_some() {
            Ok(Auth::Accept)
        } else {
            Ok(self.rejected())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if let Some(grant) = self.agent.auth.authorized_key(key.public_key) {
            tracing::debug!(fingerprint = %key.public_key.fingerprint(HashAlg::Sha256), "key accepted");
            return Ok(self.accepted(Credential::PublicKey, grant, user));
        }
        tracing::info!(peer = ?self.peer.map(|p| p.0), fingerprint = %key.public_key.fingerprint(HashAlg::Sha256), "key refused");
        Ok(self.rejected())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.sessions.len() >= MAX_SESSIONS {
            tracing::info!("too many sessions on one connection; refused");
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        }
        self.sessions.insert(
            channel.id(),
            SessionChannel::open(channel, session.handle()),
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        forward::open_direct_tcpip(
            channel,
            session.handle(),
            host_to_connect.to_owned(),
            port_to_connect,
            reply,
        );
        Ok(())
    }

    // X11 channels and unix-socket forwarding are not offered: dropping the reply
    // handle (the default) refuses them cleanly.

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sessions.remove(&channel);
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
        let request = PtyRequest {
            term: term.to_owned(),
            size: pty::size(col_width, row_height, pix_width, pix_height),
            modes: modes.to_vec(),
        };
        let ok = self
            .sessions
            .get_mut(&channel)
            .is_some_and(|s| s.set_pty(request));
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
        // Refused on purpose: sandboxes have no X server to forward to.
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = self.agent.env_policy.allows(variable_name);
        let ok = allowed
            && self
                .sessions
                .get_mut(&channel)
                .is_some_and(|s| s.set_env(variable_name, variable_value));
        if !allowed {
            tracing::debug!(name = variable_name, "env request refused");
        }
        Self::reply(session, channel, ok)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.persistent(channel, &Program::LoginShell, session) {
            self.start(channel, Program::LoginShell, session);
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Bytes, not text: a command line may name files in any encoding.
        let program = Program::Command(data.to_vec());
        if !self.persistent(channel, &program, session) {
            self.start(channel, program, session);
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            if !self.persistent(channel, &Program::SftpServer, session) {
                self.start(channel, Program::SftpServer, session);
            }
            Ok(())
        } else {
            tracing::debug!(name, "unknown subsystem refused");
            session.channel_failure(channel)
        }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = match self.sessions.get_mut(&channel) {
            Some(s) => {
                s.resize(pty::size(col_width, row_height, pix_width, pix_height));
                true
            }
            None => false,
        };
        Self::reply(session, channel, ok)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Only a login the owner let forward (a `warren-forward-agent` key, a
        // `SshWithAgent` token): otherwise code in the sandbox could sign with the
        // client's keys. OpenSSH asks without wanting a reply, so say why on stderr.
        if !self.grant.is_some_and(|g| g.forward_agent) {
            tracing::info!(
                ?channel,
                "agent forwarding refused: not enabled for this login"
            );
            let _ = session.extended_data(
                channel,
                1,
                warren_keys::AGENT_FORWARDING_REFUSED.as_bytes().to_vec(),
            );
            return Ok(false);
        }
        if self.agent_socket.is_none() {
            let owner = self.agent.owner();
            match AgentSocket::create(session.handle(), owner) {
                Ok(socket) => self.agent_socket = Some(socket),
                Err(e) => {
                    tracing::warn!(?channel, error = %e, "cannot create the agent socket");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(s) = self.sessions.get(&channel) {
            s.signal(&signal);
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let handle: Handle = session.handle();
        match forward::listen_remote(handle, address, *port, self.agent.may_bind_privileged()).await
        {
            Ok((bound, forward)) => {
                tracing::debug!(address, port = bound, "remote forward listening");
                *port = bound;
                self.remote_forwards
                    .insert((address.to_owned(), bound), forward);
                Ok(true)
            }
            Err(e) => {
                tracing::info!(address, port = *port, error = %e, "remote forward refused");
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self
            .remote_forwards
            .remove(&(address.to_owned(), port))
            .is_some())
    }
}
