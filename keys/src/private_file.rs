//! Key files on disk: readable only by their owner, created once and atomically.
//!
//! Shared by host keys and the token signing key; each module maps [`FileError`] into
//! its own error type.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::random::random_bytes;

pub(crate) enum FileError {
    Io { path: PathBuf, source: io::Error },
    InsecurePermissions { path: PathBuf, mode: u32 },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The file's contents, or `None` if it does not exist. Refuses files that group or
/// others can access at all, as OpenSSH does for private keys.
pub(crate) fn read_private(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    // Check the open handle, not the path, so the file checked is the file read.
    let metadata = file.metadata().map_err(io_error(path))?;
    if !metadata.is_file() {
        let not_file = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
        return Err(io_error(path)(not_file));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(FileError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut contents = Vec::new();
    file.read_to_end(&mut contents).map_err(io_error(path))?;
    Ok(Some(contents))
}

/// Creates `path` with mode 0600 holding `contents`, creating missing parent
/// directories with mode 0700. Returns `false`, writing nothing, if `path` already
/// exists (another process won the race; the caller should load its file).
pub(crate) fn create_private(path: &Path, contents: &[u8]) -> Result<bool, FileError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(dir))?;

    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let suffix: String = random_bytes::<8>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tmp = dir.join(format!(".{name}.tmp-{suffix}"));
    let created = write_and_link(&tmp, path, contents);
    // After a hard link (or a failure) the temporary name must go; after a rename it is
    // already gone, so the error is expected and ignored.
    let _ = fs::remove_file(&tmp);
    if let Ok(dir) = File::open(dir) {
        // Best effort: make the new directory entry durable.
        let _ = dir.sync_all();
    }
    created.map_err(io_error(path))
}

fn write_and_link(tmp: &Path, path: &Path, contents: &[u8]) -> io::Result<bool> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    // A hard link, unlike rename, never replaces an existing file: two processes that
    // generate a key at once end up agreeing on one.
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        // Filesystems without hard links: rename is still atomic, last writer wins.
        Err(_) => fs::rename(tmp, path).map(|()| true),
    }
}
