//! Small files in a stream: a seed sends every file below
//! [`CHUNKED_FROM`](crate::plan::CHUNKED_FROM) that has nothing to resume through
//! `warren-agent unpack` (an exec channel; see the agent's unpack.rs) rather than
//! as five SFTP requests each. The files are dealt over a few streams, so the
//! sandbox's disk work overlaps; each file lands under its temp name and is renamed
//! when whole, as over SFTP. A file the helper did not answer `ok` for (no helper
//! in the sandbox, a failed write, a file that changed while read) is left to the
//! SFTP path, which reports any error the usual way.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::join_all;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};

use crate::chunks::agent_word;
use crate::connect::Connection;
use crate::error::SyncError;
use crate::progress::Tracker;

/// Longest answer line taken from the helper.
const MAX_ANSWER: u64 = 4096;

/// Streams at once (each one exec channel and one writer in the sandbox).
pub const STREAMS: usize = 4;

pub struct SmallFile {
    /// The path inside the tree, for progress.
    pub path: String,
    pub local: PathBuf,
    pub remote: String,
    pub part: String,
    pub mode: u32,
    pub mtime: i64,
    pub size: u64,
}

/// Sends `files`; returns, per file in the order given, whether it landed.
pub async fn send(
    conn: &Connection,
    agent: Option<&str>,
    files: &[SmallFile],
    tracker: &Arc<Tracker>,
) -> Vec<bool> {
    if files.is_empty() {
        return Vec::new();
    }
    let mut lanes: Vec<Vec<usize>> = vec![Vec::new(); STREAMS.min(files.len())];
    for i in 0..files.len() {
        let n = lanes.len();
        lanes[i % n].push(i);
    }
    let command = format!("{} unpack", agent_word(agent));
    let results = join_all(
        lanes
            .iter()
            .map(|lane| stream(conn, &command, files, lane, tracker)),
    )
    .await;
    let mut landed = vec![false; files.len()];
    for (lane, result) in lanes.iter().zip(results) {
        match result {
            Ok(answers) => {
                for (i, ok) in lane.iter().zip(answers) {
                    landed[*i] = ok;
                }
            }
            Err(e) => tracing::debug!("unpack stream failed, its files go over SFTP: {e}"),
        }
    }
    landed
}

/// One stream: writes the lane's files as records while reading the helper's
/// answers; an answer missing at the end counts as not landed.
async fn stream(
    conn: &Connection,
    command: &str,
    files: &[SmallFile],
    lane: &[usize],
    tracker: &Arc<Tracker>,
) -> Result<Vec<bool>, SyncError> {
    let (mut read, write) = conn.exec_channel(command).await?.split();
    // What was sent, in order (a file that could not be read is not sent at all).
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let send = async {
        let mut out = BufWriter::with_capacity(256 * 1024, write.make_writer());
        for (k, &i) in lane.iter().enumerate() {
            let f = &files[i];
            let Ok(data) = tokio::fs::read(&f.local).await else {
                continue;
            };
            if data.len() as u64 != f.size {
                continue; // changed since the scan: SFTP sends it as it is now
            }
            tracker.set_current(&f.path);
            let mut header = Vec::with_capacity(f.part.len() + f.remote.len() + 40);
            header.extend_from_slice(f.part.as_bytes());
            header.push(0);
            header.extend_from_slice(f.remote.as_bytes());
            header.push(0);
            header.extend_from_slice(format!("{:o} {} {}", f.mode, f.mtime, f.size).as_bytes());
            header.push(0);
            out.write_all(&header).await?;
            out.write_all(&data).await?;
            let _ = sent_tx.send(k);
        }
        drop(sent_tx);
        // Shutting the writer down sends EOF: the helper answers the rest and exits.
        out.shutdown().await
    };
    let mut landed = vec![false; lane.len()];
    let receive = async {
        let mut reader = BufReader::new(read.make_reader());
        loop {
            // An answer is a short line; one without an end is not our helper.
            let mut raw = Vec::new();
            (&mut reader)
                .take(MAX_ANSWER)
                .read_until(b'\n', &mut raw)
                .await?;
            if raw.is_empty() {
                break;
            }
            if raw.pop() != Some(b'\n') {
                return Err(std::io::Error::other("an answer longer than 4 KiB"));
            }
            let line = String::from_utf8_lossy(&raw);
            let Some(k) = sent_rx.recv().await else {
                break; // more answers than records: not our helper
            };
            if line == "ok" {
                let f = &files[lane[k]];
                landed[k] = true;
                tracker.add_bytes(f.size);
                tracker.file_done();
            } else {
                tracing::debug!(path = %files[lane[k]].path, answer = %line, "unpack refused a file");
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let (sent, received) = tokio::join!(send, receive);
    sent.and(received)
        .map_err(|e| SyncError::Helper(format!("unpack: {e}")))?;
    Ok(landed)
}
