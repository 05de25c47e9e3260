//! Persistent sessions (`ssh -t <sandbox-id>+<name>@gateway`): a terminal and its
//! programs that outlive the connections attached to them, like tmux or abduco with
//! nothing installed in the image.
//!
//! The agent holds the terminal, so a session survives its clients, the gateway and
//! the runner; it ends when its program exits, when the agent stops, or after the
//! operator's detached lifetime with nobody attached. Its output feeds a terminal
//! emulator ([`screen`]) and every attached client; a client that attaches, or falls
//! too far behind, gets the current screen redrawn instead of a byte log.
//!
//! Not for plain logins: `ssh <sandbox-id>@gateway` keeps sshd's semantics
//! (`session.rs`), and a dropped client hangs up its shell.

mod client;
mod screen;
mod terminal;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use warren_keys::SessionName;

pub use self::client::{attach_channel, refuse};
pub use self::terminal::Persistent;
use crate::process::{Launch, Program};
use crate::pty::PtyRequest;

/// Persistent sessions one agent keeps at most: each holds a terminal, its screen
/// and its programs.
const MAX_SESSIONS: usize = 32;

/// Why a client cannot attach; shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("a persistent session needs a terminal: use ssh -t")]
    NoTerminal,
    #[error("no session named {0} to watch (+ro never starts one)")]
    NoSuchSession(SessionName),
    #[error("session {0} already runs; attach without a command")]
    AlreadyRuns(SessionName),
    #[error("a read-only attach runs no commands and no subsystems")]
    ReadOnlyCommand,
    #[error(
        "session {0} has the sandbox's secrets, which this login is not given; attach with +ro"
    )]
    Secrets(SessionName),
    #[error("this sandbox already has {MAX_SESSIONS} persistent sessions")]
    TooManySessions,
    #[error("session {0} already has {max} clients", max = terminal::MAX_CLIENTS)]
    TooManyClients(SessionName),
    #[error("session {0} has just ended")]
    Ended(SessionName),
    #[error("cannot start session {name}: {source}")]
    Start {
        name: SessionName,
        #[source]
        source: io::Error,
    },
}

/// What a session is started with when it does not exist yet.
pub struct NewSession<'a> {
    /// The first client's terminal (type, size, modes).
    pub request: &'a PtyRequest,
    pub program: &'a Program,
    pub launch: Launch<'a>,
    pub env: Vec<(String, String)>,
    /// `env` holds the sandbox's secrets (the creator's login was granted them).
    pub secrets: bool,
}

/// The agent's persistent sessions, by name.
pub struct Sessions {
    live: Mutex<HashMap<SessionName, Arc<Persistent>>>,
    /// How long a session with nobody attached lives on; `None`: until it exits.
    detached_ttl: Option<Duration>,
}

impl Sessions {
    pub fn new(detached_ttl: Option<Duration>) -> Arc<Sessions> {
        Arc::new(Sessions {
            live: Mutex::new(HashMap::new()),
            detached_ttl,
        })
    }

    fn live(&self) -> MutexGuard<'_, HashMap<SessionName, Arc<Persistent>>> {
        // A poisoned map is still a consistent map: entries are inserted and removed whole.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session `name`, started as `create` says when there is none yet (`None`:
    /// only an existing one). Returns whether it was made now.
    pub fn open(
        self: &Arc<Self>,
        name: &SessionName,
        create: Option<NewSession<'_>>,
    ) -> Result<(Arc<Persistent>, bool), AttachError> {
        let mut live = self.live();
        if let Some(session) = live.get(name) {
            return Ok((session.clone(), false));
        }
        let Some(new) = create else {
            return Err(AttachError::NoSuchSession(name.clone()));
        };
        if live.len() >= MAX_SESSIONS {
            return Err(AttachError::TooManySessions);
        }
        let session = Persistent::start(
            name.clone(),
            new.request,
            new.program,
            &new.launch,
            new.env,
            new.secrets,
        )
        .map_err(|source| AttachError::Start {
            name: name.clone(),
            source,
        })?;
        live.insert(name.clone(), session.0.clone());
        drop(live);
        let (session, child) = session;
        tracing::info!(session = %name, "persistent session started");
        let sessions = self.clone();
        let ttl = self.detached_ttl;
        let running = session.clone();
        tokio::spawn(async move {
            running.run(child, ttl).await;
            sessions.ended(&running);
        });
        Ok((session, true))
    }

    fn ended(&self, session: &Arc<Persistent>) {
        let mut live = self.live();
        if live
            .get(session.name())
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            live.remove(session.name());
        }
    }

    /// Hangs up every session (the agent is stopping).
    pub fn hang_up_all(&self) {
        for session in self.live().values() {
            session.hang_up();
        }
    }
}
