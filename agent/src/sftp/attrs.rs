//! File attributes: metadata to SFTP attributes, `ls -l` lines, and applying SETSTAT.

use std::fs::{File, FileTimes, Metadata, Permissions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh_sftp::protocol::FileAttributes;

use super::accounts::Accounts;
use super::error::{Result, SftpError};
use super::sys;

/// Everything SFTP v3 can say about a file. `permissions` carries the whole `st_mode`,
/// file type bits included, as OpenSSH sends it; clients read the type from it.
pub(super) fn from_metadata(md: &Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(md.size()),
        uid: Some(md.uid()),
        user: None,
        gid: Some(md.gid()),
        group: None,
        permissions: Some(md.mode()),
        atime: Some(wire_time(md.atime())),
        mtime: Some(wire_time(md.mtime())),
    }
}

/// SFTP v3 times are unsigned 32-bit seconds; clamp rather than wrap.
fn wire_time(secs: i64) -> u32 {
    u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
}

/// How SETSTAT reaches the file: by path (following or not following a final symlink),
/// or through an open handle (FSETSTAT).
#[derive(Clone, Copy)]
pub(super) enum Target<'a> {
    Path { path: &'a Path, follow: bool },
    File(&'a File),
}

/// Applies SETSTAT attributes in OpenSSH's order (size, mode, times, owner), stopping
/// at the first failure so the client learns which change was refused.
pub(super) fn apply(target: Target<'_>, attrs: &FileAttributes) -> Result<()> {
    if let Some(size) = attrs.size {
        match target {
            Target::File(file) => file.set_len(size)?,
            Target::Path {
                path,
                follow: false,
            } if is_symlink(path) => {
                return Err(SftpError::Failure(
                    "cannot set the size of a symlink".into(),
                ));
            }
            Target::Path { path, .. } => sys::truncate(path, size)?,
        }
    }
    if let Some(mode) = attrs.permissions {
        let mode = mode & 0o7777;
        match target {
            Target::File(file) => file.set_permissions(Permissions::from_mode(mode))?,
            Target::Path { path, follow: true } => {
                std::fs::set_permissions(path, Permissions::from_mode(mode))?;
            }
            Target::Path {
                path,
                follow: false,
            } => sys::chmod_nofollow(path, mode)?,
        }
    }
    if attrs.atime.is_some() || attrs.mtime.is_some() {
        // The v3 wire format sends both or neither; a missing one would arrive as 0.
        let atime = attrs.atime.unwrap_or(0);
        let mtime = attrs.mtime.unwrap_or(0);
        match target {
            Target::File(file) => file.set_times(
                FileTimes::new()
                    .set_accessed(system_time(atime))
                    .set_modified(system_time(mtime)),
            )?,
            Target::Path { path, follow } => sys::set_times(path, atime, mtime, follow)?,
        }
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        // Unprivileged, so this only works for our own uid and groups; anything else is
        // the kernel's EPERM, reported as "permission denied".
        let (uid, gid) = (attrs.uid, attrs.gid);
        match target {
            Target::File(file) => std::os::unix::fs::fchown(file, uid, gid)?,
            Target::Path { path, follow: true } => std::os::unix::fs::chown(path, uid, gid)?,
            Target::Path {
                path,
                follow: false,
            } => std::os::unix::fs::lchown(path, uid, gid)?,
        }
    }
    Ok(())
}

fn is_symlink(path: &Path) -> bool {
    path.symlink_metadata()
        .is_ok_and(|md| md.file_type().is_symlink())
}

fn system_time(secs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(secs))
}

/// The `ls -l` line OpenSSH's server sends as a directory entry's longname, which its
/// client prints verbatim for `ls -l`:
/// `-rw-r--r--    1 user     group        1234 Jan  2 15:04 name`.
pub(super) fn longname(name: &str, md: &Metadata, accounts: &mut Accounts, now: i64) -> String {
    // Unknown ids show as numbers, as ls shows them.
    let user = accounts
        .user(md.uid())
        .map_or_else(|| md.uid().to_string(), str::to_owned);
    let group = accounts
        .group(md.gid())
        .map_or_else(|| md.gid().to_string(), str::to_owned);
    // Recent files show the time, older (or future) ones the year, as ls does.
    const HALF_YEAR: i64 = 365 * 24 * 60 * 60 / 2;
    let format = if now - HALF_YEAR < md.mtime() && md.mtime() <= now {
        c"%b %e %H:%M"
    } else {
        c"%b %e  %Y"
    };
    let time = sys::format_local_time(md.mtime(), format).unwrap_or_default();
    format!(
        "{} {:>3} {:<8} {:<8} {:>8} {} {}",
        mode_string(md.mode()),
        md.nlink(),
        user,
        group,
        md.size(),
        time,
        name
    )
}

/// `strmode(3)`: ten characters plus the trailing space BSD reserves for an ACL mark.
fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        libc::S_IFREG => '-',
        _ => '?',
    };
    let bit = |mask: u32, c: char| if mode & mask != 0 { c } else { '-' };
    // The execute slot also shows setuid/setgid/sticky: lower case when executable too.
    let special = |exec: u32, special: u32, on: char, off: char| match (
        mode & exec != 0,
        mode & special != 0,
    ) {
        (true, true) => on,
        (false, true) => off,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
        ' ',
    ]
    .iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings_match_ls() {
        assert_eq!(mode_string(0o100644), "-rw-r--r-- ");
        assert_eq!(mode_string(0o040755), "drwxr-xr-x ");
        assert_eq!(mode_string(0o120777), "lrwxrwxrwx ");
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x ");
        assert_eq!(mode_string(0o041777), "drwxrwxrwt ");
        assert_eq!(mode_string(0o102640), "-rw-r-S--- ");
    }

    #[test]
    fn times_outside_u32_are_clamped() {
        assert_eq!(wire_time(-5), 0);
        assert_eq!(wire_time(1 << 40), u32::MAX);
        assert_eq!(wire_time(1_700_000_000), 1_700_000_000);
    }
}
