//! Sending one file: into its hidden temp name (`.name.warren-part`), only the
//! chunks the remote copy lacks, then mode and mtime, then a rename onto the final
//! name, so nothing half-written is ever visible under it. Writes are pipelined:
//! up to [`Window`] requests are in flight across all files at once.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::Semaphore;

use crate::chunks::{self, CHUNK, Chunks};
use crate::error::SyncError;
use crate::progress::Tracker;
use crate::remote::Sftp;

/// Write requests in flight on one session, across files.
pub type Window = Arc<Semaphore>;

pub const WINDOW_REQUESTS: usize = 64;

pub struct FileJob<'a> {
    pub local: &'a Path,
    pub remote: String,
    pub part: String,
    pub mode: u32,
    pub mtime: i64,
    /// What the part already holds (a resumed or seeded part); `None` writes it all.
    pub have: Option<Chunks>,
    /// The local file's chunk hashes when they are already known: chunks the part
    /// holds are then skipped without being read again.
    pub mine: Option<Chunks>,
}

/// Whether chunk `index` (at `offset`, `len` bytes) of the local file, hashed
/// `mine`, is already in the part that holds `have`.
fn known_equal(mine: &Chunks, have: &Chunks, index: usize, offset: u64, len: u64) -> bool {
    offset + len <= have.size
        && matches!(
            (mine.hashes.get(index), have.hashes.get(index)),
            (Some(a), Some(b)) if a == b
        )
}

/// What sending one file cost.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub bytes: u64,
}

pub async fn send_file(
    sftp: &Sftp,
    window: &Window,
    tracker: &Arc<Tracker>,
    job: FileJob<'_>,
) -> Result<Sent, SyncError> {
    let mut file = tokio::fs::File::open(job.local)
        .await
        .map_err(|e| SyncError::Local(job.local.to_owned(), e))?;
    let handle = sftp.open_write(&job.part, job.have.is_none()).await?;
    let mut sent = Sent::default();
    let mut writes = Vec::new();
    let mut offset = 0u64;
    let mut buf = Vec::with_capacity(CHUNK as usize);
    let mut index = 0usize;
    let result: Result<(), SyncError> = async {
        let mut moved = false;
        loop {
            if let (Some(mine), Some(have)) = (&job.mine, &job.have) {
                let len = mine.size.saturating_sub(offset).min(CHUNK);
                if len > 0 && known_equal(mine, have, index, offset, len) {
                    tracker.add_bytes(len);
                    offset += len;
                    index += 1;
                    moved = true;
                    continue;
                }
                if std::mem::take(&mut moved) {
                    file.seek(std::io::SeekFrom::Start(offset))
                        .await
                        .map_err(|e| SyncError::Local(job.local.to_owned(), e))?;
                }
            }
            // The next chunk, or what is left of the file.
            buf.clear();
            let n = (&mut file)
                .take(CHUNK)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| SyncError::Local(job.local.to_owned(), e))?;
            if n == 0 {
                break;
            }
            let data = &buf[..n];
            let same = job.have.as_ref().is_some_and(|have| {
                let end = offset + n as u64;
                end <= have.size
                    && have
                        .hashes
                        .get(index)
                        .is_some_and(|h| *h == chunks::hash(data))
            });
            if !same {
                for (i, piece) in data.chunks(sftp.write_len).enumerate() {
                    let permit = window
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| SyncError::Cancelled)?;
                    let at = offset + (i * sftp.write_len) as u64;
                    let (sftp, handle, piece) = (sftp.clone(), handle.clone(), piece.to_vec());
                    let tracker = tracker.clone();
                    writes.push(tokio::spawn(async move {
                        let len = piece.len() as u64;
                        let r = sftp.write(&handle, at, piece).await;
                        drop(permit);
                        // Counted when the sandbox has it, not when it is queued.
                        if r.is_ok() {
                            tracker.add_bytes(len);
                        }
                        r
                    }));
                }
                sent.bytes += n as u64;
            } else {
                tracker.add_bytes(n as u64);
            }
            offset += n as u64;
            index += 1;
            if (n as u64) < CHUNK {
                break;
            }
        }
        for write in writes.drain(..) {
            write
                .await
                .map_err(|_| SyncError::Cancelled)?
                .map_err(SyncError::remote("write", &job.part))?;
        }
        if job.have.as_ref().is_some_and(|have| have.size > offset) {
            sftp.truncate(&handle, offset)
                .await
                .map_err(SyncError::remote("truncate", &job.part))?;
        }
        Ok(())
    }
    .await;
    // Waits for writes still in flight after an error, so none lands after the
    // handle is closed.
    for write in writes {
        let _ = write.await;
    }
    let closed = sftp.close(handle).await;
    result?;
    closed.map_err(SyncError::remote("close", &job.part))?;
    sftp.set_mode_mtime(&job.part, job.mode, job.mtime).await?;
    sftp.rename(&job.part, &job.remote).await?;
    tracker.file_done();
    Ok(sent)
}
