//! Fetching one sandbox file into a local part file, with reads pipelined (several
//! requests in flight) so a large file is not one round trip per 255 KiB. What is
//! read is bounded by the size the listing gave: a file that grows while it is
//! read, or that became a link to `/dev/zero`, cannot make the mirror write more;
//! and what the open handle is must be a regular file.

use std::fs::File;
use std::os::unix::fs::FileExt;

use futures::StreamExt;

use crate::error::SyncError;
use crate::remote::Sftp;

/// Reads in flight for one file.
const READS_IN_FLIGHT: usize = 16;

/// Reads at most `limit` bytes of `remote` into `file`; returns how many.
pub async fn fetch(sftp: &Sftp, remote: &str, file: &File, limit: u64) -> Result<u64, SyncError> {
    let handle = sftp
        .raw()
        .open(
            remote,
            russh_sftp::protocol::OpenFlags::READ,
            Default::default(),
        )
        .await
        .map_err(SyncError::remote("open", remote))?
        .handle;
    // Opened through whatever is there now: what the handle is counts, not what
    // the listing said (a character device is not read at all).
    match sftp.raw().fstat(handle.as_str()).await {
        Ok(a) if a.attrs.file_type().is_file() => {}
        Ok(_) => {
            let _ = sftp.raw().close(handle).await;
            return Err(SyncError::NotRegular(remote.to_owned()));
        }
        Err(e) => {
            let _ = sftp.raw().close(handle).await;
            return Err(SyncError::remote("fstat", remote)(e));
        }
    }
    let local = |e| SyncError::Local("(part file)".into(), e);
    let len = sftp.write_len as u64;
    let mut offset = 0u64;
    let mut total = 0u64;
    let mut reads = futures::stream::FuturesOrdered::new();
    let mut eof = false;
    let result: Result<(), SyncError> = async {
        loop {
            while !eof && reads.len() < READS_IN_FLIGHT && offset < limit {
                let (h, at) = (handle.clone(), offset);
                let want = len.min(limit - at);
                reads.push_back(
                    async move { (at, want, sftp.raw().read(h, at, want as u32).await) },
                );
                offset += want;
            }
            let Some((at, want, read)) = reads.next().await else {
                break;
            };
            match read {
                Ok(data) => {
                    // A server answering more than asked is cut to what was asked.
                    let n = (data.data.len() as u64).min(want);
                    file.write_all_at(&data.data[..n as usize], at)
                        .map_err(local)?;
                    total = total.max(at + n);
                    if n < want {
                        // A short read is the end (regular files in the sandbox).
                        eof = true;
                    }
                }
                Err(russh_sftp::client::error::Error::Status(s))
                    if s.status_code == russh_sftp::protocol::StatusCode::Eof =>
                {
                    eof = true;
                }
                Err(e) => return Err(SyncError::remote("read", remote)(e)),
            }
        }
        Ok(())
    }
    .await;
    let _ = sftp.raw().close(handle).await;
    result?;
    file.set_len(total).map_err(local)?;
    Ok(total)
}
