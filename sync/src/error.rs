//! The library's errors: what a caller can tell apart.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
    #[error("sftp: {0}")]
    Sftp(#[from] russh_sftp::client::error::Error),
    #[error("sftp {op} {path}: {source}")]
    Remote {
        op: &'static str,
        path: String,
        source: russh_sftp::client::error::Error,
    },
    #[error("no host key is pinned for {0}: give the gateway's key (known_hosts)")]
    NoHostKey(String),
    #[error("the gateway refused the login to {0}")]
    Refused(String),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("key {0}: {1}")]
    Key(PathBuf, String),
    #[error("{0}: {1}")]
    Local(PathBuf, std::io::Error),
    #[error("walking the local tree: {0}")]
    Walk(#[from] ignore::Error),
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("{0} is not valid UTF-8 (SFTP names are text)")]
    NotUtf8(PathBuf),
    #[error("the agent's helper failed: {0}")]
    Helper(String),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("{0}: not a regular file when opened (a link to a device or a pipe?); not mirrored")]
    NotRegular(String),
    #[error("{what} from the sandbox is over its limit ({limit}); refused")]
    TooLarge { what: &'static str, limit: usize },
    #[error("cancelled")]
    Cancelled,
}

impl SyncError {
    pub(crate) fn remote(
        op: &'static str,
        path: &str,
    ) -> impl FnOnce(russh_sftp::client::error::Error) -> SyncError {
        let path = path.to_owned();
        move |source| SyncError::Remote { op, path, source }
    }

    /// Whether another attempt over a new connection may succeed (the network, not
    /// the files).
    pub fn is_transient(&self) -> bool {
        use russh_sftp::client::error::Error as E;
        let sftp_transient = |e: &E| matches!(e, E::Timeout | E::IO(_) | E::UnexpectedBehavior(_));
        match self {
            SyncError::Ssh(_) | SyncError::Timeout(_) => true,
            SyncError::Sftp(e) => sftp_transient(e),
            SyncError::Remote { source, .. } => sftp_transient(source),
            _ => false,
        }
    }
}
