//! Why a request failed, and the SFTP status code a client sees for it.

use std::io;

use russh_sftp::protocol::{Status, StatusCode};

/// A failed request. Every variant becomes one `SSH_FXP_STATUS` reply; none ends the
/// session.
#[derive(Debug, thiserror::Error)]
pub(super) enum SftpError {
    #[error("{}", describe(.0))]
    Io(#[from] io::Error),
    /// End of file on read, end of listing on readdir.
    #[error("end of file")]
    Eof,
    #[error("invalid handle")]
    InvalidHandle,
    #[error("handle is not a {0} handle")]
    WrongHandleKind(&'static str),
    #[error("too many open handles (at most {0} per session)")]
    TooManyHandles(usize),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    BadMessage(String),
    #[error("{0}")]
    Failure(String),
}

pub(super) type Result<T> = std::result::Result<T, SftpError>;

impl SftpError {
    pub(super) fn code(&self) -> StatusCode {
        match self {
            Self::Io(err) => io_code(err),
            Self::Eof => StatusCode::Eof,
            Self::InvalidHandle
            | Self::WrongHandleKind(_)
            | Self::TooManyHandles(_)
            | Self::Failure(_) => StatusCode::Failure,
            Self::Unsupported(_) => StatusCode::OpUnsupported,
            Self::BadMessage(_) => StatusCode::BadMessage,
        }
    }

    pub(super) fn into_status(self, id: u32) -> Status {
        Status {
            id,
            status_code: self.code(),
            error_message: self.to_string(),
            language_tag: "en".to_owned(),
        }
    }
}

/// The errno mapping OpenSSH's sftp-server uses, so clients react the same way.
fn io_code(err: &io::Error) -> StatusCode {
    match err.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => StatusCode::NoSuchFile,
        Some(libc::EPERM | libc::EACCES) => StatusCode::PermissionDenied,
        Some(libc::ENOSYS | libc::EOPNOTSUPP) => StatusCode::OpUnsupported,
        Some(_) => StatusCode::Failure,
        None => match err.kind() {
            io::ErrorKind::NotFound => StatusCode::NoSuchFile,
            io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
            // std's own checks, e.g. a NUL byte inside a path.
            io::ErrorKind::InvalidInput => StatusCode::BadMessage,
            _ => StatusCode::Failure,
        },
    }
}

/// `strerror` text without std's " (os error N)" suffix: it is what `ls` would say.
fn describe(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(end) => text[..end].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_status_and_plain_message() {
        let err = SftpError::from(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(err.code(), StatusCode::NoSuchFile);
        assert_eq!(err.to_string(), "No such file or directory");
        let err = SftpError::from(io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(err.code(), StatusCode::PermissionDenied);
        let err = SftpError::from(io::Error::from_raw_os_error(libc::ENOTEMPTY));
        assert_eq!(err.code(), StatusCode::Failure);
        assert_eq!(err.to_string(), "Directory not empty");
    }
}
