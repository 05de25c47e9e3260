//! One user connection: authentication, authorization, and the relay of every
//! channel and request to the sandbox's agent over one upstream connection.
//!
//! Requests are answered only after the agent answered them (clients hang on
//! unanswered requests, and a refusal must reach the user); data flows through
//! [`pipe`] with windows re-opened as bytes are delivered. An account login's
//! session channels go to the [`console`](super::console) instead.
//!
//! Over 600 lines because russh's server `Handler` is one trait: every request
//! kind is a method of it here, most a few lines that forward to the agent (the
//! decisions live in `login.rs`, the byte moving in `pipe.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::ssh_key::HashAlg;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{
    Channel, ChannelId, ChannelMsg, ChannelOpenFailure, ChannelWriteHalf, MethodKind, MethodSet,
    Pty, Sig,
};
use tokio::sync::{mpsc, watch};
use warren_keys::{SandboxId, Scope};

use super::bounds::{Permit, Refused};
use super::channel_audit::{ChannelAudit, Program, Terminal};
use super::console::{ConsoleChannel, Context, PtyParams, WindowSize};
use super::live::{LiveEntry, Via};
use super::login::{LoginName, Principal, token_opens};
use super::pipe::{self, Exit, Grant, Replies};
use super::upstream::{self, AgentEvents, Upstream};
use super::{FrontDoor, Preauth};
use crate::store::{ChannelKind, NewSshSession, Sandbox, SessionEnd, SshSessionId, StoreError};

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
    /// Who else the named sandbox is shared with (read with it at login).
    shared_with: Vec<crate::store::UserId>,
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
            shared_with: Vec::new(),
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
        }
    }

    /// A refusal that counts against the source address (a wrong password, token
    /// or key); OpenSSH's "none" probe and key offers are not failures.
    fn failed(&self) -> Auth {
        self.door.limiter.failed(self.peer.ip());
        self.refused()
    }

    fn refused(&self) -> Auth {
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        methods.push(MethodKind::Password);
        Auth::Reject {
            proceed_with_methods: Some(methods),
            partial_success: false,
        }
    }

    /// The sandbox a relay-mode login names, if it exists; `None` otherwise (an
    /// unknown sandbox and someone else's look the same from outside).
    async fn named_sandbox(&mut self, user: &str) -> Option<(LoginName, Option<Sandbox>)> {
        let name = LoginName::parse(user);
        let sandbox = match &name {
            LoginName::Sandbox { id, .. } => match self.door.store.get_sandbox(id).await {
                Ok(sandbox) => {
                    self.shared_with = self
                        .door
                        .store
                        .sandbox_shared_with(id)
                        .await
                        .unwrap_or_default();
                    Some(sandbox)
                }
                Err(StoreError::NotFound(_)) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "store unavailable during login");
                    None
                }
            },
            LoginName::Account(_) => None,
        };
        Some((name, sandbox))
    }

    /// Accepts `principal` if it may log in as `name`.
    fn admit(
        &mut self,
        name: LoginName,
        sandbox: Option<Sandbox>,
        principal: Principal,
        via: Via,
    ) -> Auth {
        let allowed = match (&name, &sandbox, &principal) {
            (LoginName::Sandbox { .. }, Some(sandbox), p) => p.may_use(sandbox, &self.shared_with),
            (LoginName::Account(account), None, Principal::User(user)) => user.name == *account,
            _ => false,
        };
        if !allowed {
            return self.failed();
        }
        // A login past its account's or sandbox's bound is accepted (it proved who
        // it is) and then told why it is closed: a refusal would read as a wrong
        // key. It gets no principal, so nothing it sends meanwhile is served.
        let sandbox_id = sandbox.as_ref().map(|s| &s.id);
        match self.door.bounds.connection(principal.user(), sandbox_id) {
            Ok(place) => self.place = Some(place),
            Err(refused) => {
                self.over_bound = Some(refused);
                return Auth::Accept;
            }
        }
        tracing::info!(
            peer = %self.peer,
            login = name.without_token(),
            user = principal.user().map(|u| u.name.as_str()),
            "authenticated"
        );
        self.name = Some(name);
        self.sandbox = sandbox;
        self.principal = Some(principal);
        self.via = Some(via);
        self.preauth.logged_in();
        Auth::Accept
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
        let token =
            self.door
                .signer
                .mint(&sandbox.id, self.scope(sandbox).await, UPSTREAM_TOKEN_TTL);
        let events = AgentEvents::new(session.handle(), user_grant(session))
            .forwarding_agent(self.forwards_agent());
        // The user name goes on (without its token): its `+<session>` part is the agent's.
        let user = match &self.name {
            Some(name @ LoginName::Sandbox { .. }) => name.without_token(),
            _ => sandbox.id.as_str(),
        };
        upstream::connect(stream, user, &token, events).await
    }

    /// Whether what let this connection in still holds, read fresh from the store:
    /// its key or API key, and the named sandbox's sharing. A store that cannot say
    /// is taken as yes (the login itself just succeeded against it).
    async fn still_allowed(&self) -> bool {
        let store = &self.door.store;
        let user = self.principal.as_ref().and_then(|p| p.user());
        match (&self.via, user) {
            (Some(Via::Key(fingerprint)), Some(user)) => {
                if let Ok(keys) = store.list_ssh_keys(&user.id).await
                    && !keys.iter().any(|k| &k.fingerprint == fingerprint)
                {
                    return false;
                }
            }
            (Some(Via::ApiKey(id)), Some(user)) => {
                if let Ok(keys) = store.list_api_keys(&user.id).await
                    && !keys.iter().any(|k| &k.id == id && k.revoked_at.is_none())
                {
                    return false;
                }
            }
            _ => {}
        }
        if let (Some(sandbox), Some(principal)) = (&self.sandbox, &self.principal)
            && let (Ok(fresh), Ok(shared)) = (
                store.get_sandbox(&sandbox.id).await,
                store.sandbox_shared_with(&sandbox.id).await,
            )
        {
            return principal.may_use(&fresh, &shared);
        }
        true
    }

    /// Whether `token` opens `sandbox` now: signed for it, unexpired, not revoked
    /// (a store that cannot say refuses).
    async fn token_valid(&self, token: &str, sandbox: &SandboxId) -> bool {
        match self.door.store.sandbox_tokens_revoked_at(sandbox).await {
            Ok(revoked) => token_opens(&self.door.signer.verifier(), token, sandbox, revoked),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check token revocation; refusing");
                false
            }
        }
    }

    /// Whether this login may forward the user's SSH agent into its sandbox: only
    /// the owner's own, and only if they turned it on for the sandboxes at create.
    /// Never a shared user (every session runs as the same user, so others could
    /// sign with their keys), never a token bearer.
    fn forwards_agent(&self) -> bool {
        match (
            &self.sandbox,
            self.principal.as_ref().and_then(|p| p.user()),
        ) {
            (Some(sandbox), Some(user)) => sandbox.forward_agent && user.id == sandbox.owner_id,
            _ => false,
        }
    }

    /// What the agent may give this login's sessions: everything for the owner and
    /// token bearers (agent forwarding for the owner if the sandbox allows it), the
    /// sandbox's secrets for a shared user only if the share says so.
    async fn scope(&self, sandbox: &Sandbox) -> Scope {
        let Some(user) = self.principal.as_ref().and_then(|p| p.user()) else {
            return Scope::Ssh;
        };
        if user.id == sandbox.owner_id {
            return if self.forwards_agent() {
                Scope::SshWithAgent
            } else {
                Scope::Ssh
            };
        }
        match self
            .door
            .store
            .sandbox_shared_with_secrets(&sandbox.id)
            .await
        {
            Ok(users) if users.contains(&user.id) => Scope::Ssh,
            _ => Scope::SshWithoutSecrets,
        }
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
        match self.door.store.open_ssh_session(&record).await {
            Ok(row) => self.audit = Some(row.id),
            Err(e) => tracing::warn!(error = %e, "cannot record the session for audit"),
        }
    }

    /// Sends a request upstream and waits for the agent's answer; false when the
    /// agent refused, did not answer in time, or the channel is unknown.
    async fn forward_request<F, Fut>(&mut self, channel: ChannelId, send: F) -> bool
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
    /// requires a recording that cannot be made.
    async fn start_program(&mut self, channel: ChannelId, program: Program) -> bool {
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

    /// What a console session runs with: the account that logged in.
    fn console_context(&self, session: &mut Session) -> Option<Context> {
        let lifecycle = self.door.console.clone()?;
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
        let store = self.door.store.clone();
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
        if let Some(refused) = &self.over_bound {
            // OpenSSH shows it: "Received disconnect from …: too many connections …".
            tracing::info!(peer = %self.peer, %refused, "login refused");
            return session.disconnect(
                russh::Disconnect::TooManyConnections,
                &refused.to_string(),
                "",
            );
        }
        if let Some(via) = self.via.clone() {
            let user = self
                .principal
                .as_ref()
                .and_then(|p| p.user())
                .map(|u| u.id.clone());
            let sandbox = self.sandbox.as_ref().map(|s| s.id.clone());
            self.live = Some(
                self.door
                    .live
                    .register(user, via, sandbox, session.handle()),
            );
            // A revocation between the login's checks and this registration found
            // nothing to end: look again now that any later one will find us.
            if !self.still_allowed().await {
                let handle = session.handle();
                tokio::spawn(async move {
                    let _ = handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "access revoked during login".into(),
                            String::new(),
                        )
                        .await;
                });
            }
        }
        Ok(())
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        // `<sandbox-id>#<token>`: a login without a prompt.
        if let Some((name, sandbox)) = self.named_sandbox(user).await
            && let (
                LoginName::Sandbox {
                    id,
                    token: Some(token),
                    ..
                },
                Some(_),
            ) = (&name, &sandbox)
        {
            if self.token_valid(token, id).await {
                let principal = Principal::Token(id.clone());
                return Ok(self.admit(name, sandbox, principal, Via::Token));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(self.failed());
        }
        Ok(self.refused())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let Some((name, sandbox)) = self.named_sandbox(user).await else {
            return Ok(self.refused());
        };
        // A sandbox token for this very sandbox...
        if let LoginName::Sandbox { id, .. } = &name
            && sandbox.is_some()
            && password.starts_with(warren_keys::TOKEN_PREFIX)
        {
            if self.token_valid(password, id).await {
                let principal = Principal::Token(id.clone());
                return Ok(self.admit(name, sandbox, principal, Via::Token));
            }
            return Ok(self.failed());
        }
        // ...or an API key of an account.
        match self.door.store.find_user_by_api_key(password).await {
            Ok(Some(owner)) => Ok(self.admit(
                name,
                sandbox,
                Principal::User(owner.user),
                Via::ApiKey(owner.key_id),
            )),
            _ => Ok(self.failed()),
        }
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Say yes only to keys someone registered; ownership is checked after the
        // signature, in auth_publickey.
        match self
            .door
            .store
            .find_users_by_ssh_key(offer.public_key)
            .await
        {
            Ok(users) if !users.is_empty() => Ok(Auth::Accept),
            _ => Ok(self.refused()),
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let Some((name, sandbox)) = self.named_sandbox(user).await else {
            return Ok(self.refused());
        };
        let users = self
            .door
            .store
            .find_users_by_ssh_key(key.public_key)
            .await
            .unwrap_or_default();
        // The key may be registered to several accounts; any that may use it will do.
        for candidate in users {
            let principal = Principal::User(candidate);
            let fits = match (&name, &sandbox) {
                (LoginName::Sandbox { .. }, Some(s)) => principal.may_use(s, &self.shared_with),
                (LoginName::Account(account), None) => {
                    principal.user().is_some_and(|u| u.name == *account)
                }
                _ => false,
            };
            if fits {
                let via = Via::Key(warren_keys::fingerprint(key.public_key));
                return Ok(self.admit(name, sandbox, principal, via));
            }
        }
        tracing::info!(
            peer = %self.peer,
            fingerprint = %key.public_key.fingerprint(HashAlg::Sha256),
            "key refused"
        );
        Ok(self.failed())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let place = match self.channel_place(self.sandbox.as_ref().map(|s| &s.id)) {
            Ok(place) => place,
            Err(refused) => {
                reply.reject(refused).await;
                return Ok(());
            }
        };
        if self.sandbox.is_none() && self.door.console.is_some() {
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
        let from_user = pipe::drain(user_read, None);
        let from_agent = pipe::drain(up_read, Some(replies_tx));
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
        let store = self.door.store.clone();
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

impl Connection {
    /// Jump mode: pipes the channel's bytes to the agent of `target`, if this
    /// principal may use it.
    async fn open_jump(
        &mut self,
        channel: Channel<Msg>,
        target: &SandboxId,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) {
        if self.door.recordings.policy().required {
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
        let shared_with = self
            .door
            .store
            .sandbox_shared_with(target)
            .await
            .unwrap_or_default();
        let sandbox = match self.door.store.get_sandbox(target).await {
            Ok(s)
                if self
                    .principal
                    .as_ref()
                    .is_some_and(|p| p.may_use(&s, &shared_with)) =>
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
