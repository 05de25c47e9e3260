//! Finished terminal recordings kept in the store, so that every gateway of a tier
//! serves a recording whichever gateway relayed the session.
//!
//! For: the recording gateway copies a recording here once it is finished (only
//! on PostgreSQL: a single SQLite gateway has the file), any gateway reads it
//! back, the tier's leaseholder deletes those past the retention. The text is
//! base64 in pieces of at most [`CHUNK`] bytes (the Any driver binds no binary
//! type on both backends). Not for: recordings being written (they are files
//! until they end), or deciding who may read one (the lifecycle's `audited`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::ids::SshSessionId;
use super::model::Timestamp;
use super::{Store, StoreError};

/// The most bytes of a recording in one row (before encoding).
pub const CHUNK: usize = 1 << 20;

impl Store {
    /// Stores piece `seq` (from 0) of the recording of channel `channel` of
    /// `session`; storing a piece again replaces it.
    pub async fn put_recording_chunk(
        &self,
        session: &SshSessionId,
        channel: u32,
        seq: u32,
        data: &[u8],
    ) -> Result<(), StoreError> {
        if data.len() > CHUNK {
            return Err(StoreError::Invalid("recording chunk (too long)".into()));
        }
        sqlx::query(
            "INSERT INTO recording_chunks (session_id, channel, seq, data, stored_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (session_id, channel, seq) DO UPDATE SET data = $4, stored_at = $5",
        )
        .bind(session.as_str())
        .bind(i64::from(channel))
        .bind(i64::from(seq))
        .bind(STANDARD.encode(data))
        .bind(Timestamp::now().unix_seconds())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_write(e, || "recording chunk".into(), "SSH session"))?;
        Ok(())
    }

    /// The channels of `session` whose recording is in the store, in order.
    pub async fn stored_recordings(&self, session: &SshSessionId) -> Result<Vec<u32>, StoreError> {
        let channels: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT channel FROM recording_chunks WHERE session_id = $1 ORDER BY channel",
        )
        .bind(session.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(channels
            .into_iter()
            .filter_map(|c| u32::try_from(c).ok())
            .collect())
    }

    /// The recording of channel `channel` of `session`, whole, if it is stored.
    pub async fn stored_recording(
        &self,
        session: &SshSessionId,
        channel: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let pieces: Vec<String> = sqlx::query_scalar(
            "SELECT data FROM recording_chunks WHERE session_id = $1 AND channel = $2 \
             ORDER BY seq",
        )
        .bind(session.as_str())
        .bind(i64::from(channel))
        .fetch_all(&self.pool)
        .await?;
        if pieces.is_empty() {
            return Ok(None);
        }
        let mut whole = Vec::new();
        for piece in pieces {
            let bytes = STANDARD
                .decode(piece)
                .map_err(|_| StoreError::Invalid("stored recording (not base64)".into()))?;
            whole.extend_from_slice(&bytes);
        }
        Ok(Some(whole))
    }

    /// Deletes the recordings stored before `before`; returns how many pieces.
    pub async fn delete_stored_recordings(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM recording_chunks WHERE (session_id, channel) IN \
             (SELECT session_id, channel FROM recording_chunks WHERE stored_at < $1)",
        )
        .bind(before.unix_seconds())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
