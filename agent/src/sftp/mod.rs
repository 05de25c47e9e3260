//! The SFTP file server, run as `warren-agent sftp-server`.
//!
//! Like OpenSSH's `sftp-server`, this runs as its own process: the SSH side starts it as
//! the sandbox user (privileges already dropped, cwd = the session's working directory,
//! `HOME` set) and connects the channel to its stdin/stdout. So every file operation here
//! is an ordinary system call with the user's own permissions; there is no chroot and no
//! policy beyond the kernel's.
//!
//! russh-sftp supplies the protocol types (packet decoding and encoding). Its own server
//! loop (`russh_sftp::server::run`) handles one request at a time and flushes after each
//! reply, so the session loop is ours ([`session`]): requests are read, executed and
//! answered in a three-stage pipeline, which keeps OpenSSH's 64 outstanding reads or
//! writes flowing.
//!
//! Map: [`session`] frames packets and runs the pipeline; [`handler`] answers one
//! request; [`extensions`] the `@openssh.com` extensions; [`handles`] the open handle
//! table; [`attrs`] file attributes and `ls -l` lines; [`accounts`] user and group
//! names; [`paths`] path resolution; [`error`] SFTP status codes; [`sys`] the few libc
//! calls std lacks; [`stdio`] the stdin/stdout transport.

mod accounts;
mod attrs;
mod error;
mod extensions;
mod handler;
mod handles;
mod paths;
mod session;
mod stdio;
mod sys;

use std::path::PathBuf;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncWrite};

use self::paths::Roots;

/// Largest packet a client may send (OpenSSH's `SFTP_MAX_MSG_LENGTH`); a longer one ends
/// the session, since the stream cannot be resynchronised.
const MAX_PACKET_LEN: u32 = 256 * 1024;
/// Largest read or write we advertise, and the cap on what one read returns whatever
/// the client asks: it keeps a `DATA` reply inside [`MAX_PACKET_LEN`].
const MAX_DATA_LEN: u32 = MAX_PACKET_LEN - 1024;
/// Open file and directory handles one session may hold at once.
const MAX_HANDLES: usize = 1024;

/// Serves one SFTP session over stdin/stdout until the client closes it.
///
/// Relative paths resolve against the current directory (where the SSH side started
/// us: the session's working directory), `~` against `$HOME`.
pub async fn serve_stdio() -> anyhow::Result<()> {
    let cwd = std::env::current_dir();
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|home| home.is_absolute());
    let roots = match (cwd, home) {
        (Ok(cwd), Some(home)) => Roots { cwd, home },
        (Ok(cwd), None) => Roots {
            home: cwd.clone(),
            cwd,
        },
        // The working directory was removed under us: start from home instead.
        (Err(_), Some(home)) => Roots {
            cwd: home.clone(),
            home,
        },
        (Err(err), None) => return Err(err).context("no current directory and no HOME"),
    };
    let (reader, writer) = stdio::split().context("setting up stdin/stdout for SFTP")?;
    serve_from(tokio::io::join(reader, writer), roots).await
}

/// Same, over any byte stream (used by tests and by serve_stdio).
///
/// `home` is where relative paths and `~` resolve.
#[cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "the binary serves stdio; tests and embedders use this"
    )
)]
pub async fn serve<S>(stream: S, home: PathBuf) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_from(
        stream,
        Roots {
            cwd: home.clone(),
            home,
        },
    )
    .await
}

async fn serve_from<S>(stream: S, roots: Roots) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    session::run(reader, writer, roots).await
}

#[cfg(test)]
mod tests;
