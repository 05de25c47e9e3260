//! The local side of a mirror: paths the sandbox names are checked before they
//! are touched (no `..`, no absolute names, no local link on the way: a sandbox
//! must never make the mirror write outside its directory), and files are put in
//! place through a temp file and an atomic rename.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::tree::PART_SUFFIX;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{0:?} is not a plain relative path")]
    BadName(String),
    #[error("{0} is reached through a link; not followed")]
    ThroughLink(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

impl LocalError {
    /// Whether trying again later may work (a locked or unwritable file).
    pub fn is_retryable(&self) -> bool {
        matches!(self, LocalError::Io(_, e) if matches!(
            e.raw_os_error(),
            Some(libc::EACCES | libc::EPERM | libc::EBUSY | libc::ETXTBSY | libc::EROFS | libc::EAGAIN)
        ))
    }
}

/// `root/rel` once `rel` is checked and no directory on the way is a link.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, LocalError> {
    let relative = Path::new(rel);
    if rel.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(LocalError::BadName(rel.to_owned()));
    }
    let mut at = root.to_owned();
    let mut parts = relative.components().peekable();
    while let Some(part) = parts.next() {
        at.push(part);
        if parts.peek().is_some()
            && let Ok(meta) = std::fs::symlink_metadata(&at)
            && meta.file_type().is_symlink()
        {
            return Err(LocalError::ThroughLink(at));
        }
    }
    Ok(at)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |e| LocalError::Io(path.to_owned(), e)
}

/// The temp name beside `path`.
pub fn part_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{PART_SUFFIX}"))
}

/// Makes `path`'s parent directories (checked already by [`resolve`]).
pub fn make_parents(path: &Path) -> Result<(), LocalError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    Ok(())
}

/// Sets mode and mtime on the written temp file, then renames it over `path`.
pub fn commit(part: &Path, path: &Path, mode: u32, mtime: i64) -> Result<(), LocalError> {
    let file = std::fs::File::options()
        .write(true)
        .open(part)
        .map_err(io(part))?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.max(0) as u64);
    file.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .map_err(io(part))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(part))?;
    drop(file);
    std::fs::rename(part, path).map_err(|e| {
        let _ = std::fs::remove_file(part);
        LocalError::Io(path.to_owned(), e)
    })
}

/// A link at `path` with text `target`, replacing what is there atomically.
pub fn link(path: &Path, target: &str) -> Result<(), LocalError> {
    let part = part_of(path);
    let _ = std::fs::remove_file(&part);
    std::os::unix::fs::symlink(target, &part).map_err(io(&part))?;
    std::fs::rename(&part, path).map_err(io(path))
}

/// Removes whatever is at `path` (a directory with its contents).
pub fn remove(path: &Path) -> Result<(), LocalError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LocalError::Io(path.to_owned(), e)),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io(path)),
        Ok(_) => std::fs::remove_file(path).map_err(io(path)),
    }
}

/// A directory at `path` (what was there of another kind is removed first).
pub fn dir(path: &Path, mode: u32) -> Result<(), LocalError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            remove(path)?;
            std::fs::create_dir(path).map_err(io(path))?;
        }
        Err(_) => std::fs::create_dir_all(path).map_err(io(path))?,
    }
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o700));
    Ok(())
}

/// Keeps a locally modified `path` as `path.warren-backup` before it is replaced.
pub fn backup(path: &Path) -> Result<PathBuf, LocalError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let to = path.with_file_name(format!("{name}.warren-backup"));
    std::fs::rename(path, &to).map_err(io(path))?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_sandbox_are_checked() {
        let dir = tempfile_dir();
        assert!(resolve(&dir, "a/b").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a"] {
            assert!(resolve(&dir, bad).is_err(), "{bad}");
        }
        std::os::unix::fs::symlink("/etc", dir.join("l")).unwrap_or_default();
        assert!(matches!(
            resolve(&dir, "l/passwd"),
            Err(LocalError::ThroughLink(_))
        ));
        assert!(
            resolve(&dir, "l").is_ok(),
            "the link itself may be replaced"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-sync-local-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    }
}
