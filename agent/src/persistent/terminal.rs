//! One persistent session: its terminal and program, the screen its output drew, the
//! clients attached to it, and its lifetime.
//!
//! Output is read as the program writes it, whatever the clients do: each client has
//! a bounded queue, and one that falls behind loses it and gets a redraw of the
//! screen instead, so a slow client never stalls the program or the others.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use portable_pty::{MasterPty, PtySize};
use tokio::process::Child;
use tokio::sync::Notify;
use tokio::time::Instant;
use warren_keys::SessionName;

use super::AttachError;
use super::screen::Screen;
use crate::process::{Launch, Program};
use crate::pty::{PtyIo, PtyRequest};
use crate::pump::READ_CHUNK;
use crate::session::{hang_up, spawn_on_terminal};

/// Clients one session may have attached at once.
pub const MAX_CLIENTS: usize = 16;
/// Output queued for one client at most; past it the client gets a redraw instead.
const CLIENT_BACKLOG: usize = 256 * 1024;
/// How long a hung-up session's programs have before they are killed.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Cancels an escape sequence a client's terminal may be in the middle of (output
/// dropped for a redraw can end mid-sequence).
const CANCEL_SEQUENCE: &[u8] = b"\x18";

/// How a session's program ended.
#[derive(Debug, Clone, Copy)]
pub enum Ended {
    Exited(ExitStatus),
    /// Its status could not be read.
    Lost,
}

impl Ended {
    pub fn status(self) -> io::Result<ExitStatus> {
        match self {
            Ended::Exited(status) => Ok(status),
            Ended::Lost => Err(io::Error::other("lost track of the session's program")),
        }
    }
}

/// What a client should send next.
pub enum Next {
    Data(Bytes),
    Ended(Ended),
    /// Nothing yet: wait for the client's `ready`.
    Idle,
    /// The client is no longer attached.
    Gone,
}

/// An attached client, as the session knows it.
pub struct ClientSlot {
    pub id: u64,
    /// Notified when there is something to send.
    pub ready: Arc<Notify>,
}

struct Pending {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    /// The next thing to send is the whole screen (on attach, and after a drop).
    redraw: bool,
    ready: Arc<Notify>,
}

impl Pending {
    fn push(&mut self, chunk: &Bytes) {
        if !self.redraw {
            if self.bytes + chunk.len() > CLIENT_BACKLOG {
                self.chunks.clear();
                self.bytes = 0;
                self.redraw = true;
            } else {
                self.bytes += chunk.len();
                self.chunks.push_back(chunk.clone());
            }
        }
        self.ready.notify_one();
    }
}

struct State {
    screen: Screen,
    clients: HashMap<u64, Pending>,
    next_client: u64,
    ended: Option<Ended>,
    /// Since when nobody is attached (`None` while someone is).
    detached_since: Option<Instant>,
}

pub struct Persistent {
    name: SessionName,
    io: PtyIo,
    /// Kept for window changes.
    master: Mutex<Box<dyn MasterPty + Send>>,
    pid: Option<u32>,
    /// Whether its programs got the sandbox's secrets (the creator's grant).
    secrets: bool,
    state: Mutex<State>,
    /// Notified when clients attach or detach (the detached lifetime's clock).
    attachments: Notify,
}

impl Persistent {
    /// Starts `program` on a new terminal; [`Persistent::run`] must then drive it.
    pub fn start(
        name: SessionName,
        request: &PtyRequest,
        program: &Program,
        launch: &Launch<'_>,
        env: Vec<(String, String)>,
        secrets: bool,
    ) -> io::Result<(Arc<Persistent>, Child)> {
        let (terminal, child) = spawn_on_terminal(request, program, launch, env)?;
        let session = Persistent {
            name,
            io: terminal.io,
            master: Mutex::new(terminal.master),
            pid: child.id(),
            secrets,
            state: Mutex::new(State {
                screen: Screen::new(request.size),
                clients: HashMap::new(),
                next_client: 0,
                ended: None,
                detached_since: Some(Instant::now()),
            }),
            attachments: Notify::new(),
        };
        Ok((Arc::new(session), child))
    }

    pub fn name(&self) -> &SessionName {
        &self.name
    }

    /// Whether its programs hold the sandbox's secrets.
    pub fn has_secrets(&self) -> bool {
        self.secrets
    }

    /// Where attached writers' input goes.
    pub fn input(&self) -> PtyIo {
        self.io.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state whole, so a poisoned lock's data is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a client; its first [`Next`] is a redraw. A writer (`size` given)
    /// also sets the window size: it follows the latest writer.
    pub fn attach(&self, size: Option<PtySize>) -> Result<ClientSlot, AttachError> {
        let mut state = self.state();
        if state.ended.is_some() {
            return Err(AttachError::Ended(self.name.clone()));
        }
        if state.clients.len() >= MAX_CLIENTS {
            return Err(AttachError::TooManyClients(self.name.clone()));
        }
        if let Some(size) = size {
            self.resize_locked(&mut state, size);
        }
        let id = state.next_client;
        state.next_client += 1;
        let ready = Arc::new(Notify::new());
        ready.notify_one();
        state.clients.insert(
            id,
            Pending {
                chunks: VecDeque::new(),
                bytes: 0,
                redraw: true,
                ready: ready.clone(),
            },
        );
        state.detached_since = None;
        drop(state);
        self.attachments.notify_one();
        Ok(ClientSlot { id, ready })
    }

    pub fn detach(&self, id: u64) {
        let mut state = self.state();
        state.clients.remove(&id);
        if state.clients.is_empty() && state.ended.is_none() {
            state.detached_since = Some(Instant::now());
            tracing::info!(session = %self.name, "persistent session detached");
        }
        drop(state);
        self.attachments.notify_one();
    }

    /// What client `id` should send next.
    pub fn next(&self, id: u64) -> Next {
        let mut state = self.state();
        let State {
            screen,
            clients,
            ended,
            ..
        } = &mut *state;
        let Some(pending) = clients.get_mut(&id) else {
            return Next::Gone;
        };
        if pending.redraw {
            pending.redraw = false;
            pending.chunks.clear();
            pending.bytes = 0;
            let mut redraw = BytesMut::from(CANCEL_SEQUENCE);
            redraw.extend_from_slice(&screen.redraw());
            return Next::Data(redraw.freeze());
        }
        if pending.chunks.len() == 1 {
            pending.bytes = 0;
            if let Some(chunk) = pending.chunks.pop_front() {
                return Next::Data(chunk);
            }
        }
        if !pending.chunks.is_empty() {
            let mut all = BytesMut::with_capacity(pending.bytes);
            for chunk in pending.chunks.drain(..) {
                all.extend_from_slice(&chunk);
            }
            pending.bytes = 0;
            return Next::Data(all.freeze());
        }
        match ended {
            Some(ended) => Next::Ended(*ended),
            None => Next::Idle,
        }
    }

    pub fn resize(&self, size: PtySize) {
        let mut state = self.state();
        self.resize_locked(&mut state, size);
    }

    fn resize_locked(&self, state: &mut State, size: PtySize) {
        let master = self.master.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = master.resize(size) {
            tracing::debug!(error = %e, "window change failed");
        }
        state.screen.resize(size);
    }

    /// SIGHUP to the session's programs, as when a terminal hangs up.
    pub fn hang_up(&self) {
        hang_up(self.pid);
    }

    fn output(&self, data: &[u8]) {
        // A detached session that prints is busy; an idle one prints nothing.
        crate::activity::touch();
        let chunk = Bytes::copy_from_slice(data);
        let mut state = self.state();
        state.screen.process(data);
        for pending in state.clients.values_mut() {
            pending.push(&chunk);
        }
    }

    /// Reads the program's output until it exits (or is ended after `detached_ttl`
    /// with nobody attached), then tells every client how it ended.
    pub async fn run(self: &Arc<Self>, mut child: Child, detached_ttl: Option<Duration>) {
        let mut buf = vec![0u8; READ_CHUNK];
        let exited = child.wait();
        tokio::pin!(exited);
        let mut status = None;
        let mut kill_at: Option<Instant> = None;
        loop {
            tokio::select! {
                read = self.io.read(&mut buf) => match read {
                    Ok(n) if n > 0 => self.output(buf.get(..n).unwrap_or_default()),
                    _ => break,
                },
                result = &mut exited => {
                    status = Some(result);
                    // What the program wrote before it exited is part of the screen.
                    while let Ok(n) = self.io.try_read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        self.output(buf.get(..n).unwrap_or_default());
                    }
                    break;
                }
                () = self.detached_expiry(detached_ttl), if kill_at.is_none() => {
                    tracing::info!(session = %self.name, "detached lifetime over; hanging up");
                    self.hang_up();
                    kill_at = Some(Instant::now() + KILL_GRACE);
                }
                () = sleep_until(kill_at), if kill_at.is_some() => {
                    kill_group(self.pid);
                    kill_at = None;
                }
            }
        }
        let status = match status {
            Some(status) => status,
            None => exited.await,
        };
        let ended = match status {
            Ok(status) => Ended::Exited(status),
            Err(e) => {
                tracing::warn!(error = %e, "lost track of a persistent session's program");
                Ended::Lost
            }
        };
        tracing::info!(session = %self.name, ?ended, "persistent session ended");
        let mut state = self.state();
        state.ended = Some(ended);
        for pending in state.clients.values() {
            pending.ready.notify_one();
        }
    }

    /// Completes once nobody has been attached for `ttl`; never without one.
    async fn detached_expiry(&self, ttl: Option<Duration>) {
        let Some(ttl) = ttl else {
            return std::future::pending().await;
        };
        loop {
            let since = self.state().detached_since;
            match since {
                None => self.attachments.notified().await,
                Some(since) => tokio::select! {
                    () = tokio::time::sleep_until(since + ttl) => {
                        if self.state().detached_since == Some(since) {
                            return;
                        }
                    }
                    () = self.attachments.notified() => {}
                },
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGKILL to a session's process group, for programs that ignored the hang-up.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}
