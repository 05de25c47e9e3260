//! Reading what a sandbox can write. A Docker sandbox's run directory is
//! bind-mounted into its container, so root in the container can put anything
//! there: links to the host's Docker socket or the runner's key, FIFOs, huge files.
//! The runner opens names in it only through these functions: never following a
//! link, checking the file type, bounding what it reads.
//!
//! What the runner itself must trust (its own markers) does not live there at all:
//! see `DockerBackend::private_dir`.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Opens `name` in `dir` with `flags`, refusing a link at that name.
fn open_nofollow(dir: &Path, name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    if name.contains('/') || name == ".." || name == "." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a plain name",
        ));
    }
    let dir = File::open(dir)?;
    let name = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: openat on a valid directory fd and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the regular file `name` in `dir`, at most `max` bytes; a link, a FIFO, a
/// device or a longer file is an error.
pub fn read_small(dir: &Path, name: &str, max: u64) -> io::Result<String> {
    // O_NONBLOCK: opening a FIFO planted there must not hang the runner.
    let file = File::from(open_nofollow(dir, name, libc::O_RDONLY | libc::O_NONBLOCK)?);
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    if meta.len() > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "file too large"));
    }
    let mut text = String::new();
    file.take(max).read_to_string(&mut text)?;
    Ok(text)
}

/// The modification time of `name` in `dir` itself (a link's own, never its
/// target's).
pub fn modified(dir: &Path, name: &str) -> io::Result<std::time::SystemTime> {
    std::fs::symlink_metadata(dir.join(name))?.modified()
}

/// Connects to the unix socket `name` in `dir`. The socket file is opened with
/// `O_PATH | O_NOFOLLOW` and must be a socket; the connection goes through that
/// descriptor (`/proc/self/fd/N`), so swapping the name for a link to another
/// socket (the host's Docker socket) between the check and the connect changes
/// nothing.
pub async fn connect_socket(dir: &Path, name: &str) -> io::Result<tokio::net::UnixStream> {
    let fd = open_nofollow(dir, name, libc::O_PATH)?;
    // SAFETY: stat buffer filled by fstat before it is read.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on the descriptor we own.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a socket"));
    }
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let stream =
        tokio::net::UnixStream::connect(Path::new(std::ffi::OsStr::from_bytes(path.as_bytes())))
            .await;
    drop(fd);
    stream
}

/// Whether `name` in `dir` is a socket (not following a link).
pub fn is_socket(dir: &Path, name: &str) -> bool {
    std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_and_large_files_are_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let d = dir.path();
        std::fs::write(d.join("user"), "1000:1000\n").unwrap();
        assert_eq!(read_small(d, "user", 64).unwrap(), "1000:1000\n");
        std::fs::write(d.join("secret"), "host secret").unwrap();
        std::os::unix::fs::symlink(d.join("secret"), d.join("link")).unwrap();
        assert!(read_small(d, "link", 64).is_err());
        assert!(read_small(d, "../x", 64).is_err());
        std::fs::write(d.join("big"), vec![b'x'; 100]).unwrap();
        assert!(read_small(d, "big", 64).is_err());
        let fifo = CString::new(d.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(read_small(d, "fifo", 64).is_err());
    }

    #[tokio::test]
    async fn a_link_to_another_socket_is_not_followed() {
        let dir = tempfile::TempDir::new().unwrap();
        let other = tempfile::TempDir::new().unwrap();
        let _host =
            std::os::unix::net::UnixListener::bind(other.path().join("docker.sock")).unwrap();
        std::os::unix::fs::symlink(
            other.path().join("docker.sock"),
            dir.path().join("agent.sock"),
        )
        .unwrap();
        assert!(connect_socket(dir.path(), "agent.sock").await.is_err());
        assert!(!is_socket(dir.path(), "agent.sock"));
        std::fs::remove_file(dir.path().join("agent.sock")).unwrap();
        let _agent = tokio::net::UnixListener::bind(dir.path().join("agent.sock")).unwrap();
        assert!(connect_socket(dir.path(), "agent.sock").await.is_ok());
        assert!(is_socket(dir.path(), "agent.sock"));
    }
}
