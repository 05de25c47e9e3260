//! The audit trail as owners and admins read it: a sandbox's SSH sessions, each
//! with its channels (what ran, how it ended) and which of them were recorded, and
//! the recordings themselves.
//!
//! An owner sees their sandboxes' sessions, an admin everyone's; an unknown session
//! and someone else's look the same.

use warren_keys::SandboxId;
use warren_store::{SshChannel, SshSession, SshSessionId, StoreError, User};

use super::{Error, ErrorCode, Lifecycle, Result};
use crate::recordings::RecordingError;

/// One SSH session with its channels.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub session: SshSession,
    pub channels: Vec<SshChannel>,
    /// The channels (their `seq`) whose recording is kept.
    pub recorded: Vec<u32>,
}

/// A recording opened for reading.
#[derive(Debug)]
pub struct OpenRecording {
    pub session: SshSessionId,
    pub channel: u32,
    pub file: tokio::fs::File,
}

impl Lifecycle {
    /// The SSH sessions of sandbox `id`, oldest first.
    pub async fn ssh_sessions(&self, caller: &User, id: &str) -> Result<Vec<SessionRecord>> {
        let id = SandboxId::parse(id).map_err(|_| Error::not_found("sandbox"))?;
        let sandbox = self.audited(caller, &id).await?;
        let sessions = self.store.list_ssh_sessions(&sandbox.id).await?;
        let mut records = Vec::with_capacity(sessions.len());
        for session in sessions {
            records.push(self.session_record(session).await?);
        }
        Ok(records)
    }

    /// One SSH session, by id.
    pub async fn ssh_session(&self, caller: &User, id: &str) -> Result<SessionRecord> {
        let session = self.readable_session(caller, id).await?;
        self.session_record(session).await
    }

    async fn readable_session(&self, caller: &User, id: &str) -> Result<SshSession> {
        let not_found = || Error::not_found("session");
        let id = SshSessionId::parse(id).map_err(|_| not_found())?;
        let session = match self.store.get_ssh_session(&id).await {
            Ok(session) => session,
            Err(StoreError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        match self.audited(caller, &session.sandbox_id).await {
            Ok(_) => Ok(session),
            Err(e) if e.code == ErrorCode::NotFound => Err(not_found()),
            Err(e) => Err(e),
        }
    }

    async fn session_record(&self, session: SshSession) -> Result<SessionRecord> {
        let channels = self.store.list_ssh_channels(&session.id).await?;
        let recordings = self.recordings.clone();
        let id = session.id.clone();
        let mut recorded = tokio::task::spawn_blocking(move || recordings.channels(&id))
            .await
            .unwrap_or_default();
        // Another gateway's recordings of it, from the store (a tier).
        if let Some(store) = self.recordings.archive() {
            recorded.extend(store.stored_recordings(&session.id).await?);
            recorded.sort_unstable();
            recorded.dedup();
        }
        Ok(SessionRecord {
            session,
            channels,
            recorded,
        })
    }

    /// The recording of channel `channel` of session `id` (default: its first
    /// recorded channel).
    pub async fn recording(
        &self,
        caller: &User,
        id: &str,
        channel: Option<u32>,
    ) -> Result<OpenRecording> {
        let record = self.ssh_session(caller, id).await?;
        let none = || {
            let why = if self.recordings.records() {
                "only terminal sessions are recorded, and kept for the retention time"
            } else {
                "this gateway records no sessions"
            };
            Error::new(ErrorCode::NotFound, format!("recording not found: {why}"))
        };
        let channel = match channel {
            Some(n) => n,
            None => *record.recorded.first().ok_or_else(none)?,
        };
        let opened = match self.recordings.open(&record.session.id, channel).await {
            Err(RecordingError::NotFound | RecordingError::Off) => {
                self.stored_recording(&record.session.id, channel).await
            }
            other => other,
        };
        match opened {
            Ok(file) => Ok(OpenRecording {
                session: record.session.id,
                channel,
                file,
            }),
            Err(RecordingError::NotFound | RecordingError::Off) => Err(none()),
            Err(e) => {
                tracing::error!(error = %e, "cannot read a recording");
                Err(Error::internal())
            }
        }
    }

    /// A recording another gateway of the tier copied into the store, spooled to
    /// an anonymous file to be read like a local one.
    async fn stored_recording(
        &self,
        session: &SshSessionId,
        channel: u32,
    ) -> std::result::Result<tokio::fs::File, RecordingError> {
        let Some(store) = self.recordings.archive() else {
            return Err(RecordingError::NotFound);
        };
        let bytes = match store.stored_recording(session, channel).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(RecordingError::NotFound),
            Err(e) => {
                tracing::error!(error = %e, "cannot read a stored recording");
                return Err(RecordingError::NotFound);
            }
        };
        let spooled = tokio::task::spawn_blocking(move || {
            use std::io::{Seek, Write};
            let mut file = tempfile::tempfile()?;
            file.write_all(&bytes)?;
            file.rewind()?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(|e| RecordingError::Io("(spool)".into(), std::io::Error::other(e)))?
        .map_err(|e| RecordingError::Io("(spool)".into(), e))?;
        Ok(tokio::fs::File::from_std(spooled))
    }
}
