//! The session's open handles: what a handle string names, and how many may be open.

use std::collections::HashMap;
use std::fs::{File, ReadDir};
use std::path::PathBuf;

use super::error::{Result, SftpError};

/// What a handle refers to.
pub(super) enum Handle {
    File(OpenFile),
    Dir(OpenDir),
}

pub(super) struct OpenFile {
    pub(super) file: File,
    /// Opened with APPEND: writes go to the end whatever offset the client names.
    pub(super) append: bool,
}

pub(super) struct OpenDir {
    pub(super) path: PathBuf,
    pub(super) entries: ReadDir,
    /// `.` and `..` are listed first, like readdir(3) does (std's ReadDir skips them).
    pub(super) dots_sent: bool,
}

/// Handles are opaque strings: a per-session counter in hex, never reused, so a stale
/// handle cannot reach a file opened later. Dropping the table closes everything.
pub(super) struct HandleTable {
    open: HashMap<String, Handle>,
    next: u64,
    limit: usize,
}

impl HandleTable {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            open: HashMap::new(),
            next: 0,
            limit,
        }
    }

    pub(super) fn insert(&mut self, handle: Handle) -> Result<String> {
        if self.open.len() >= self.limit {
            return Err(SftpError::TooManyHandles(self.limit));
        }
        let name = format!("{:x}", self.next);
        self.next += 1;
        self.open.insert(name.clone(), handle);
        Ok(name)
    }

    pub(super) fn remove(&mut self, name: &str) -> Result<Handle> {
        self.open.remove(name).ok_or(SftpError::InvalidHandle)
    }

    pub(super) fn file(&self, name: &str) -> Result<&OpenFile> {
        match self.open.get(name) {
            Some(Handle::File(file)) => Ok(file),
            Some(Handle::Dir(_)) => Err(SftpError::WrongHandleKind("file")),
            None => Err(SftpError::InvalidHandle),
        }
    }

    pub(super) fn dir_mut(&mut self, name: &str) -> Result<&mut OpenDir> {
        match self.open.get_mut(name) {
            Some(Handle::Dir(dir)) => Ok(dir),
            Some(Handle::File(_)) => Err(SftpError::WrongHandleKind("directory")),
            None => Err(SftpError::InvalidHandle),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn some_dir() -> Handle {
        let dir = std::env::temp_dir();
        Handle::Dir(OpenDir {
            entries: std::fs::read_dir(&dir).unwrap(),
            path: dir,
            dots_sent: false,
        })
    }

    #[test]
    fn limit_unknown_and_stale_handles() {
        let mut table = HandleTable::new(2);
        let a = table.insert(some_dir()).unwrap();
        let b = table.insert(some_dir()).unwrap();
        assert_ne!(a, b);
        assert!(matches!(
            table.insert(some_dir()),
            Err(SftpError::TooManyHandles(2))
        ));
        assert!(table.remove(&a).is_ok());
        assert!(matches!(table.remove(&a), Err(SftpError::InvalidHandle)));
        let c = table.insert(some_dir()).unwrap();
        assert_ne!(c, a, "handle names are never reused");
        assert!(matches!(table.file(&b), Err(SftpError::WrongHandleKind(_))));
        assert!(matches!(
            table.dir_mut("nonsense"),
            Err(SftpError::InvalidHandle)
        ));
    }
}
