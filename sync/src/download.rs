//! Fetching one sandbox file into a local temp file, with reads pipelined (several
//! requests in flight) so a large file is not one round trip per 255 KiB.

use std::os::unix::fs::FileExt;
use std::path::Path;

use futures::StreamExt;

use crate::error::SyncError;
use crate::remote::Sftp;

/// Reads in flight for one file.
const READS_IN_FLIGHT: usize = 16;

pub async fn fetch(sftp: &Sftp, remote: &str, part: &Path) -> Result<u64, SyncError> {
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
    let file = std::fs::File::create(part).map_err(|e| SyncError::Local(part.to_owned(), e))?;
    let len = sftp.write_len as u64;
    let mut offset = 0u64;
    let mut total = 0u64;
    let mut reads = futures::stream::FuturesOrdered::new();
    let mut eof = false;
    let result: Result<(), SyncError> = async {
        loop {
            while !eof && reads.len() < READS_IN_FLIGHT {
                let (h, at) = (handle.clone(), offset);
                reads.push_back(async move { (at, sftp.raw().read(h, at, len as u32).await) });
                offset += len;
            }
            let Some((at, read)) = reads.next().await else {
                break;
            };
            match read {
                Ok(data) => {
                    let n = data.data.len() as u64;
                    file.write_all_at(&data.data, at)
                        .map_err(|e| SyncError::Local(part.to_owned(), e))?;
                    total = total.max(at + n);
                    if n < len {
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
    if let Err(e) = result {
        let _ = std::fs::remove_file(part);
        return Err(e);
    }
    file.set_len(total)
        .map_err(|e| SyncError::Local(part.to_owned(), e))?;
    Ok(total)
}
