//! A session channel's audit row and recording: opened when its program starts
//! (a shell, an exec's command line, a subsystem), closed with its exit and byte
//! counts when its output ends. A channel with a terminal is recorded if the
//! policy says so ([`crate::recordings`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use warren_store::{ChannelKind, NewSshChannel, SessionEnd, SshSessionId, Store, Timestamp};

use super::FrontDoor;
use super::pipe::Exit;
use crate::recordings::asciicast::Header;
use crate::recordings::{RecorderSlot, RecordingError, Tap};

/// The terminal a channel asked for.
#[derive(Debug, Clone)]
pub struct Terminal {
    pub term: String,
    pub cols: u32,
    pub rows: u32,
}

/// What a channel's program is.
#[derive(Debug, Clone)]
pub struct Program {
    pub kind: ChannelKind,
    /// An exec's command line, a subsystem's name.
    pub command: Option<String>,
}

/// Shared by a channel's relay tasks and its connection.
#[derive(Default)]
pub struct ChannelAudit {
    /// Its row, once the program started.
    row: OnceLock<(SshSessionId, u32)>,
    recorder: RecorderSlot,
    bytes_in: AtomicU64,
    /// The row's write while the program starts ([`ChannelAudit::open_in_background`]):
    /// [`ChannelAudit::finish`] waits for it, so the row it closes exists.
    opening: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ChannelAudit {
    /// What the user's bytes pass through.
    pub fn input_tap(&self) -> Tap {
        Tap::input(&self.recorder)
    }

    /// What the sandbox's bytes pass through.
    pub fn output_tap(&self) -> Tap {
        Tap::output(&self.recorder)
    }

    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Records that the program starts, as channel `seq` of `session` (no row
    /// without a session: its audit record could not be written), its recording
    /// counted in `account`'s share. `Err` with the reason when the policy
    /// requires a recording that cannot be made.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        &self,
        door: &FrontDoor,
        session: Option<&SshSessionId>,
        account: &str,
        seq: u32,
        program: Program,
        terminal: Option<&Terminal>,
        title: String,
    ) -> Result<(), String> {
        let recordings = &door.lifecycle.recordings;
        let required = recordings.policy().required;
        let Some(session) = session else {
            return if required && terminal.is_some() {
                Err("the session cannot be recorded (the audit trail is unavailable)".into())
            } else {
                Ok(())
            };
        };
        if let Some(terminal) = terminal
            && recordings.records()
        {
            let mut header = Header::new(
                terminal.cols,
                terminal.rows,
                Timestamp::now().unix_seconds(),
            );
            header.env.term = Some(terminal.term.clone());
            header.command = program.command.clone();
            header.title = Some(title);
            header.account = Some(account.to_owned());
            match recordings.start(session, seq, &header) {
                Ok(recorder) => {
                    let _ = self.recorder.set(recorder);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a session recording");
                    if required {
                        // A full recording disk says so; other errors name paths.
                        let why = match &e {
                            RecordingError::NoRoom(shortage) => format!(" ({shortage})"),
                            _ => String::new(),
                        };
                        return Err(format!(
                            "the session cannot be recorded{why}, and this gateway \
                             records every terminal session"
                        ));
                    }
                }
            }
        }
        let row = NewSshChannel {
            session_id: session.clone(),
            seq,
            kind: program.kind,
            command: program.command,
            terminal: terminal.is_some(),
        };
        match door.lifecycle.store.open_ssh_channel(&row).await {
            Ok(()) => {
                let _ = self.row.set((session.clone(), seq));
            }
            Err(e) => tracing::warn!(error = %e, "cannot record a session channel for audit"),
        }
        Ok(())
    }

    /// [`ChannelAudit::start`] for a program without a terminal, which nothing can
    /// refuse (there is no recording to make): its row is written while the program
    /// starts instead of before, keeping a store write off every exec's path.
    pub fn open_in_background(
        self: &Arc<Self>,
        door: Arc<FrontDoor>,
        session: Option<SshSessionId>,
        account: String,
        seq: u32,
        program: Program,
        title: String,
    ) {
        let audit = self.clone();
        let task = tokio::spawn(async move {
            let started = audit
                .start(&door, session.as_ref(), &account, seq, program, None, title)
                .await;
            debug_assert!(started.is_ok(), "only a terminal's recording refuses");
        });
        if let Ok(mut opening) = self.opening.lock() {
            *opening = Some(task);
        }
    }

    /// The window changed.
    pub async fn resize(&self, cols: u32, rows: u32) {
        if let Some(recorder) = self.recorder.get() {
            recorder.resize(cols, rows).await;
        }
    }

    /// Closes the channel's row with what it moved and how it ended.
    pub async fn finish(&self, store: &Store, bytes_out: u64, exit: Exit) {
        let opening = self.opening.lock().ok().and_then(|mut o| o.take());
        if let Some(task) = opening {
            let _ = task.await;
        }
        let Some((session, seq)) = self.row.get() else {
            return;
        };
        let end = SessionEnd {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            exit: exit.as_session_exit(),
        };
        if let Err(e) = store.close_ssh_channel(session, *seq, &end).await {
            tracing::warn!(error = %e, "cannot close a session channel's audit record");
        }
    }
}
