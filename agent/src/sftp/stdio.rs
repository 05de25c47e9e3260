//! stdin/stdout as an async byte stream for the session.
//!
//! The SSH side (and `sftp -D`) hands us a pipe or a socket. Those are registered with
//! tokio's reactor in non-blocking mode, so reads and writes are plain system calls
//! when data is ready. tokio's own `stdin()`/`stdout()` would pass every read and write
//! through the blocking thread pool (and std's stdout through a line buffer), which
//! costs a thread handoff per chunk. Anything else (a file, a terminal) falls back to
//! blocking-pool I/O, which is correct, just slower.
//!
//! stdout's kernel buffer is also enlarged where the kernel lets us: with the default
//! 64 KiB pipe or ~200 KiB socket buffer, each 255 KiB DATA reply took several partial
//! writes and reactor wake-ups, which made downloads measurably slower than OpenSSH's
//! blocking writes.
//!
//! Non-blocking mode is a property of the open file description, shared with anything
//! else holding the same pipe or socket; in sftp-server mode only we use them.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tokio::net::unix::pipe;

use super::sys;

/// Kernel buffer we ask for on stdout: a few whole 255 KiB DATA replies.
const OUTPUT_BUFFER: i32 = 1024 * 1024;

pub(super) type Reader = Box<dyn AsyncRead + Unpin + Send>;
pub(super) type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// Our own duplicates of stdin and stdout, as an async reader and writer.
pub(super) fn split() -> io::Result<(Reader, Writer)> {
    let stdin = io::stdin().as_fd().try_clone_to_owned()?;
    let stdout = io::stdout().as_fd().try_clone_to_owned()?;
    Ok((reader(stdin)?, writer(stdout)?))
}

fn reader(fd: OwnedFd) -> io::Result<Reader> {
    let file = File::from(fd);
    let kind = file.metadata()?.file_type();
    Ok(if kind.is_fifo() {
        Box::new(pipe::Receiver::from_file(file)?)
    } else if kind.is_socket() {
        Box::new(socket(file)?)
    } else {
        Box::new(tokio::fs::File::from_std(file))
    })
}

fn writer(fd: OwnedFd) -> io::Result<Writer> {
    let file = File::from(fd);
    let kind = file.metadata()?.file_type();
    if kind.is_fifo() || kind.is_socket() {
        sys::grow_buffer(&file, kind.is_socket(), OUTPUT_BUFFER);
    }
    Ok(if kind.is_fifo() {
        Box::new(pipe::Sender::from_file(file)?)
    } else if kind.is_socket() {
        Box::new(socket(file)?)
    } else {
        Box::new(tokio::fs::File::from_std(file))
    })
}

/// A stream socket as a tokio stream. Reads and writes on it are plain read(2) and
/// write(2), so this serves any stream socket, not only a Unix one.
fn socket(file: File) -> io::Result<UnixStream> {
    let socket = std::os::unix::net::UnixStream::from(OwnedFd::from(file));
    socket.set_nonblocking(true)?;
    UnixStream::from_std(socket)
}
