//! The few system calls std does not offer, as small safe wrappers (Linux).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Closes `file`, reporting the error a plain drop would swallow (e.g. a failed
/// write-back on a network filesystem).
pub(super) fn close(file: File) -> io::Result<()> {
    let fd = file.into_raw_fd();
    // SAFETY: `fd` came from `into_raw_fd`, so we own it and nothing else will close it.
    check(unsafe { libc::close(fd) })
}

/// `truncate(2)`: sets a file's size by path.
pub(super) fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let path = c_path(path)?;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::truncate(path.as_ptr(), len) })
}

/// `utimensat(2)` with whole-second times; `follow` = false changes a symlink itself.
pub(super) fn set_times(path: &Path, atime: u32, mtime: u32, follow: bool) -> io::Result<()> {
    let path = c_path(path)?;
    let times = [timespec(atime), timespec(mtime)];
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: `path` is NUL-terminated and `times` holds the two entries utimensat reads.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), flags) })
}

fn timespec(secs: u32) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::from(secs),
        tv_nsec: 0,
    }
}

/// `fchmodat(2)` without following a final symlink (Linux refuses that for symlinks
/// themselves with EOPNOTSUPP, which becomes "operation unsupported").
pub(super) fn chmod_nofollow(path: &Path, mode: u32) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    check(unsafe {
        libc::fchmodat(
            libc::AT_FDCWD,
            path.as_ptr(),
            mode as libc::mode_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// `renameat2(RENAME_NOREPLACE)`: SFTP's plain RENAME must not overwrite.
/// Returns `Ok(false)` if the filesystem cannot do it atomically.
pub(super) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both paths are valid NUL-terminated strings for the duration of the call.
    let ret = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    match check(ret) {
        Ok(()) => Ok(true),
        Err(err) if matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Filesystem statistics, in the field order of OpenSSH's `statvfs@openssh.com` reply.
pub(super) struct FsStats(pub [u64; 11]);

pub(super) fn statvfs(path: &Path) -> io::Result<FsStats> {
    let path = c_path(path)?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid, writable statvfs.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    Ok(fs_stats(&st))
}

pub(super) fn fstatvfs(file: &File) -> io::Result<FsStats> {
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the borrow of `file`; `st` is a valid, writable statvfs.
    check(unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) })?;
    Ok(fs_stats(&st))
}

#[allow(clippy::unnecessary_cast)] // field widths differ between libcs
fn fs_stats(st: &libc::statvfs) -> FsStats {
    // OpenSSH's portable flag bits: 1 = read-only, 2 = nosuid.
    let mut flags = 0;
    if st.f_flag & libc::ST_RDONLY != 0 {
        flags |= 1;
    }
    if st.f_flag & libc::ST_NOSUID != 0 {
        flags |= 2;
    }
    FsStats([
        st.f_bsize as u64,
        st.f_frsize as u64,
        st.f_blocks as u64,
        st.f_bfree as u64,
        st.f_bavail as u64,
        st.f_files as u64,
        st.f_ffree as u64,
        st.f_favail as u64,
        st.f_fsid as u64,
        flags,
        st.f_namemax as u64,
    ])
}

/// Formats a Unix time as local time with `strftime(3)`.
pub(super) fn format_local_time(secs: i64, format: &CStr) -> Option<String> {
    let time = libc::time_t::try_from(secs).ok()?;
    // SAFETY: an all-zero tm is a valid value of this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::localtime_r(&time, &mut tm) }.is_null() {
        return None;
    }
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: `buf` is writable for its length, `format` is NUL-terminated, `tm` is filled.
    let len = unsafe { libc::strftime(buf.as_mut_ptr(), buf.len(), format.as_ptr(), &tm) };
    if len == 0 {
        return None;
    }
    let bytes: Vec<u8> = buf[..len].iter().map(|&c| c as u8).collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// A path from the raw bytes a client sent.
pub(super) fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

/// Asks for a bigger kernel buffer on a pipe (`F_SETPIPE_SZ`) or a socket's send side
/// (`SO_SNDBUF`), so one 255 KiB reply fits in one write. Best effort: the kernel caps
/// both (`/proc/sys/fs/pipe-max-size`, `net.core.wmem_max`), and a refusal is harmless.
pub(super) fn grow_buffer(fd: &impl AsRawFd, is_socket: bool, bytes: i32) {
    let fd = fd.as_raw_fd();
    // SAFETY: plain fcntl/setsockopt on an fd we hold open; `bytes` outlives the call.
    unsafe {
        if is_socket {
            let len = std::mem::size_of::<i32>() as libc::socklen_t;
            let value = (&raw const bytes).cast();
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, value, len);
        } else {
            libc::fcntl(fd, libc::F_SETPIPE_SZ, bytes);
        }
    }
}
