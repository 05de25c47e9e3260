//! The SSH session audit trail: who reached which sandbox from where, when, how much
//! went each way, and how it ended.

use sqlx::any::AnyRow;
use warren_keys::SandboxId;

use super::ids::{SshSessionId, UserId};
use super::model::{
    NewSshChannel, NewSshSession, SessionEnd, SessionExit, SshChannel, SshSession, Timestamp,
};
use super::{Store, StoreError, row};

const SESSION_COLUMNS: &str = "id, user_id, sandbox_id, source_addr, started_at, ended_at, \
     bytes_in, bytes_out, exit_status, exit_signal";

const CHANNEL_COLUMNS: &str = "session_id, seq, kind, command, terminal, started_at, ended_at, \
     bytes_in, bytes_out, exit_status, exit_signal";

fn exit_from_row(r: &AnyRow) -> Result<Option<SessionExit>, sqlx::Error> {
    Ok(
        match (
            row::opt_unsigned(r, "exit_status")?,
            row::opt_text(r, "exit_signal")?,
        ) {
            (Some(status), _) => Some(SessionExit::Status(status)),
            (None, Some(signal)) => Some(SessionExit::Signal(signal)),
            (None, None) => None,
        },
    )
}

fn exit_columns(exit: Option<&SessionExit>) -> (Option<i64>, Option<&str>) {
    match exit {
        Some(SessionExit::Status(s)) => (Some(i64::from(*s)), None),
        Some(SessionExit::Signal(s)) => (None, Some(s.as_str())),
        None => (None, None),
    }
}

fn channel_from_row(r: &AnyRow) -> Result<SshChannel, sqlx::Error> {
    Ok(SshChannel {
        session_id: row::parsed(r, "session_id")?,
        seq: row::unsigned(r, "seq")?,
        kind: row::parsed(r, "kind")?,
        command: row::opt_text(r, "command")?,
        terminal: row::flag(r, "terminal")?,
        started_at: row::time(r, "started_at")?,
        ended_at: row::opt_time(r, "ended_at")?,
        bytes_in: row::unsigned(r, "bytes_in")?,
        bytes_out: row::unsigned(r, "bytes_out")?,
        exit: exit_from_row(r)?,
    })
}

fn session_from_row(r: &AnyRow) -> Result<SshSession, sqlx::Error> {
    let exit = exit_from_row(r)?;
    Ok(SshSession {
        id: row::parsed(r, "id")?,
        user_id: row::opt_parsed(r, "user_id")?,
        sandbox_id: row::parsed(r, "sandbox_id")?,
        source_addr: row::parsed(r, "source_addr")?,
        started_at: row::time(r, "started_at")?,
        ended_at: row::opt_time(r, "ended_at")?,
        bytes_in: row::unsigned(r, "bytes_in")?,
        bytes_out: row::unsigned(r, "bytes_out")?,
        exit,
    })
}

impl Store {
    /// Records the start of an SSH session. An unknown user or sandbox is `NotFound`.
    pub async fn open_ssh_session(&self, new: &NewSshSession) -> Result<SshSession, StoreError> {
        let session = SshSession {
            id: SshSessionId::generate(),
            user_id: new.user_id.clone(),
            sandbox_id: new.sandbox_id.clone(),
            source_addr: new.source_addr,
            started_at: Timestamp::now(),
            ended_at: None,
            bytes_in: 0,
            bytes_out: 0,
            exit: None,
        };
        sqlx::query(
            "INSERT INTO ssh_sessions (id, user_id, sandbox_id, source_addr, started_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(session.id.as_str())
        .bind(session.user_id.as_ref().map(UserId::as_str))
        .bind(session.sandbox_id.as_str())
        .bind(session.source_addr.to_string())
        .bind(session.started_at.unix_seconds())
        .execute(&self.pool)
        .await
        .map_err(|e| {
            StoreError::from_write(e, || "SSH session exists".into(), "user or sandbox")
        })?;
        Ok(session)
    }

    /// Records the end of an SSH session. `NotFound` for an unknown session,
    /// `Conflict` for one already closed (the first record stands).
    pub async fn close_ssh_session(
        &self,
        id: &SshSessionId,
        end: &SessionEnd,
    ) -> Result<(), StoreError> {
        let (status, signal) = exit_columns(end.exit.as_ref());
        let done = sqlx::query(
            "UPDATE ssh_sessions SET ended_at = $1, bytes_in = $2, bytes_out = $3, \
             exit_status = $4, exit_signal = $5 WHERE id = $6 AND ended_at IS NULL",
        )
        .bind(Timestamp::now().unix_seconds())
        .bind(row::to_i64(end.bytes_in))
        .bind(row::to_i64(end.bytes_out))
        .bind(status)
        .bind(signal)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        let exists = sqlx::query("SELECT id FROM ssh_sessions WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        Err(if exists {
            StoreError::Conflict("SSH session already closed".into())
        } else {
            StoreError::NotFound("SSH session")
        })
    }

    /// A sandbox's SSH sessions, oldest first.
    pub async fn list_ssh_sessions(
        &self,
        sandbox: &SandboxId,
    ) -> Result<Vec<SshSession>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM ssh_sessions WHERE sandbox_id = $1 \
             ORDER BY started_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(sandbox.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(session_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// One SSH session's audit record.
    pub async fn get_ssh_session(&self, id: &SshSessionId) -> Result<SshSession, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM ssh_sessions WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("SSH session"))?;
        Ok(session_from_row(&row)?)
    }

    /// Records that a session channel started its program. `Conflict` if the
    /// session already has a channel `seq`; `NotFound` for an unknown session.
    pub async fn open_ssh_channel(&self, new: &NewSshChannel) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ssh_channels (session_id, seq, kind, command, terminal, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new.session_id.as_str())
        .bind(i64::from(new.seq))
        .bind(new.kind.as_str())
        .bind(new.command.as_deref())
        .bind(i64::from(new.terminal))
        .bind(Timestamp::now().unix_seconds())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_write(e, || "SSH channel exists".into(), "SSH session"))?;
        Ok(())
    }

    /// Records how a session channel ended (the first record stands).
    pub async fn close_ssh_channel(
        &self,
        session: &SshSessionId,
        seq: u32,
        end: &SessionEnd,
    ) -> Result<(), StoreError> {
        let (status, signal) = exit_columns(end.exit.as_ref());
        let done = sqlx::query(
            "UPDATE ssh_channels SET ended_at = $1, bytes_in = $2, bytes_out = $3, \
             exit_status = $4, exit_signal = $5 \
             WHERE session_id = $6 AND seq = $7 AND ended_at IS NULL",
        )
        .bind(Timestamp::now().unix_seconds())
        .bind(row::to_i64(end.bytes_in))
        .bind(row::to_i64(end.bytes_out))
        .bind(status)
        .bind(signal)
        .bind(session.as_str())
        .bind(i64::from(seq))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound("open SSH channel"))
        }
    }

    /// A session's channels, in order.
    pub async fn list_ssh_channels(
        &self,
        session: &SshSessionId,
    ) -> Result<Vec<SshChannel>, StoreError> {
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS} FROM ssh_channels WHERE session_id = $1 ORDER BY seq"
        );
        let rows = sqlx::query(&sql)
            .bind(session.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(channel_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }
}
