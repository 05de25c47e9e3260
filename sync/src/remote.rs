//! The sandbox side over SFTP: list a tree, and the few operations a sync makes,
//! each one request that many callers can have in flight on one session at once
//! (russh-sftp matches replies by request id), so small files are pipelined rather
//! than sent one round trip each.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpErr;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

use crate::error::SyncError;
use crate::tree::{Kind, Tree, is_part_name, part_target, plain_name};

/// An SFTP session and the largest write the server takes.
#[derive(Clone)]
pub struct Sftp {
    raw: Arc<RawSftpSession>,
    pub write_len: usize,
}

/// A remote listing: the tree, and our temp files found in it (final name → size).
#[derive(Debug, Default)]
pub struct Listing {
    pub tree: Tree,
    pub parts: std::collections::BTreeMap<String, u64>,
}

/// How many directories are read at once while listing.
const LIST_CONCURRENCY: usize = 32;

/// Most entries a listing holds (a sandbox could answer `readdir` forever).
pub const MAX_ENTRIES: usize = 2_000_000;

/// Longest relative path taken from a sandbox (PATH_MAX).
pub const MAX_PATH: usize = 4096;

pub fn is_missing(e: &SftpErr) -> bool {
    matches!(e, SftpErr::Status(s) if s.status_code == StatusCode::NoSuchFile)
}

pub fn kind_of(attrs: &FileAttributes) -> Option<Kind> {
    let ft = attrs.file_type();
    let mode = attrs.permissions.unwrap_or(0) & 0o7777;
    let mtime = i64::from(attrs.mtime.unwrap_or(0));
    if ft.is_dir() {
        Some(Kind::Dir { mode, mtime })
    } else if ft.is_file() {
        Some(Kind::File {
            size: attrs.size.unwrap_or(0),
            mtime,
            mode,
        })
    } else if ft.is_symlink() {
        // The target is read separately (readdir gives only the attributes).
        Some(Kind::Symlink {
            target: String::new(),
        })
    } else {
        None
    }
}

/// `root/rel`, or `root` for the empty relative path.
pub fn join(root: &str, rel: &str) -> String {
    if rel.is_empty() {
        root.to_owned()
    } else if root.ends_with('/') {
        format!("{root}{rel}")
    } else {
        format!("{root}/{rel}")
    }
}

fn ssh_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Sftp {
    pub fn new(raw: RawSftpSession, write_len: usize) -> Sftp {
        Sftp {
            raw: Arc::new(raw),
            write_len,
        }
    }

    pub fn raw(&self) -> &RawSftpSession {
        &self.raw
    }

    /// What is at `path`, without following a link; `None` if nothing is.
    pub async fn lstat(&self, path: &str) -> Result<Option<Kind>, SyncError> {
        match self.raw.lstat(path).await {
            Ok(a) => Ok(kind_of(&a.attrs)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(SyncError::remote("lstat", path)(e)),
        }
    }

    /// Makes `path` and its missing parents (as `mkdir -p`).
    pub async fn mkdir_all(&self, path: &str) -> Result<(), SyncError> {
        let mut missing = Vec::new();
        let mut at = path.trim_end_matches('/').to_owned();
        loop {
            match self.lstat(&at).await? {
                Some(Kind::Dir { .. }) => break,
                Some(_) => return Err(SyncError::NotADirectory(at)),
                None => {}
            }
            missing.push(at.clone());
            match at.rsplit_once('/') {
                Some((parent, _)) if !parent.is_empty() => at = parent.to_owned(),
                _ => break,
            }
        }
        for dir in missing.iter().rev() {
            self.mkdir(dir, 0o755).await?;
        }
        Ok(())
    }

    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<(), SyncError> {
        let attrs = FileAttributes {
            permissions: Some(mode),
            ..FileAttributes::empty()
        };
        self.raw
            .mkdir(path, attrs)
            .await
            .map_err(SyncError::remote("mkdir", path))?;
        Ok(())
    }

    /// Lists everything under `root` (which must be a directory), reading up to
    /// [`LIST_CONCURRENCY`] directories at once; link targets are read too.
    pub async fn list(&self, root: &str) -> Result<Listing, SyncError> {
        let mut listing = Listing::default();
        let mut queue: VecDeque<String> = VecDeque::from([String::new()]);
        let mut reading = FuturesUnordered::new();
        let mut links = Vec::new();
        let read = Arc::new(AtomicUsize::new(0));
        loop {
            while reading.len() < LIST_CONCURRENCY {
                let Some(rel) = queue.pop_front() else { break };
                let this = self.clone();
                let path = join(root, &rel);
                let read = read.clone();
                reading.push(async move { (rel, this.read_dir(&path, &read).await) });
            }
            let Some((dir_rel, entries)) = reading.next().await else {
                break;
            };
            for (name, attrs) in entries? {
                // Names are the sandbox's choice: one plain component each, or
                // nothing (`.`, `..`, `a/b` and over-long paths are left out).
                if !plain_name(&name) || dir_rel.len() + name.len() >= MAX_PATH {
                    continue;
                }
                let rel = if dir_rel.is_empty() {
                    name
                } else {
                    format!("{dir_rel}/{name}")
                };
                let Some(kind) = kind_of(&attrs) else {
                    continue;
                };
                // Our temp names, of every type, are never part of a tree; a
                // seed resumes from the regular ones.
                if is_part_name(rel.rsplit('/').next().unwrap_or_default()) {
                    if let (Some(target), Kind::File { size, .. }) = (part_target(&rel), &kind) {
                        listing.parts.insert(target, *size);
                    }
                    continue;
                }
                match kind {
                    Kind::Dir { .. } => queue.push_back(rel.clone()),
                    Kind::Symlink { .. } => links.push(rel.clone()),
                    Kind::File { .. } => {}
                }
                listing.tree.insert(rel, kind);
            }
        }
        let mut reads: FuturesUnordered<_> = links
            .into_iter()
            .map(|rel| {
                let path = join(root, &rel);
                async move { (rel, self.raw.readlink(path).await) }
            })
            .collect();
        while let Some((rel, name)) = reads.next().await {
            if let Ok(name) = name
                && let Some(file) = name.files.into_iter().next()
            {
                listing.tree.insert(
                    rel,
                    Kind::Symlink {
                        target: file.filename,
                    },
                );
            }
        }
        Ok(listing)
    }

    /// One directory's entries; `read` counts the entries of the whole listing,
    /// whose directories are read at once, so that together they stay bounded.
    async fn read_dir(
        &self,
        path: &str,
        read: &AtomicUsize,
    ) -> Result<Vec<(String, FileAttributes)>, SyncError> {
        let handle = self
            .raw
            .opendir(path)
            .await
            .map_err(SyncError::remote("opendir", path))?
            .handle;
        let mut out = Vec::new();
        loop {
            match self.raw.readdir(handle.as_str()).await {
                Ok(name) => {
                    let n = name.files.len();
                    if read.fetch_add(n, Ordering::Relaxed) + n > MAX_ENTRIES {
                        let _ = self.raw.close(handle).await;
                        return Err(SyncError::TooLarge {
                            what: "the sandbox's listing",
                            limit: MAX_ENTRIES,
                        });
                    }
                    out.extend(name.files.into_iter().map(|f| (f.filename, f.attrs)));
                }
                Err(SftpErr::Status(s)) if s.status_code == StatusCode::Eof => break,
                Err(e) => return Err(SyncError::remote("readdir", path)(e)),
            }
        }
        let _ = self.raw.close(handle).await;
        Ok(out)
    }

    pub async fn remove_file(&self, path: &str) -> Result<(), SyncError> {
        match self.raw.remove(path).await {
            Ok(_) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(SyncError::remote("remove", path)(e)),
        }
    }

    pub async fn remove_dir(&self, path: &str) -> Result<(), SyncError> {
        match self.raw.rmdir(path).await {
            Ok(_) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(SyncError::remote("rmdir", path)(e)),
        }
    }

    /// A link at `path` whose text is `target`.
    pub async fn symlink(&self, path: &str, target: &str) -> Result<(), SyncError> {
        // OpenSSH's (and the agent's) order: the link's text first, then where it goes.
        self.raw
            .symlink(target, path)
            .await
            .map_err(SyncError::remote("symlink", path))?;
        Ok(())
    }

    /// Renames over whatever is at `to` (POSIX rename; plain SFTP rename refuses).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), SyncError> {
        let mut data = Vec::with_capacity(8 + from.len() + to.len());
        ssh_string(&mut data, from);
        ssh_string(&mut data, to);
        match self.raw.extended("posix-rename@openssh.com", data).await {
            Ok(_) => Ok(()),
            Err(e) => Err(SyncError::remote("rename", to)(e)),
        }
    }

    /// Sets the mode and the modification time (access time = modification time).
    pub async fn set_mode_mtime(&self, path: &str, mode: u32, mtime: i64) -> Result<(), SyncError> {
        let t = u32::try_from(mtime.max(0)).unwrap_or(u32::MAX);
        let attrs = FileAttributes {
            permissions: Some(mode),
            atime: Some(t),
            mtime: Some(t),
            ..FileAttributes::empty()
        };
        self.raw
            .setstat(path, attrs)
            .await
            .map_err(SyncError::remote("setstat", path))?;
        Ok(())
    }

    /// Opens `path` for writing, created 0600 when missing, truncated when `truncate`.
    pub async fn open_write(&self, path: &str, truncate: bool) -> Result<String, SyncError> {
        let mut flags = OpenFlags::WRITE | OpenFlags::CREATE;
        if truncate {
            flags |= OpenFlags::TRUNCATE;
        }
        let attrs = FileAttributes {
            permissions: Some(0o600),
            ..FileAttributes::empty()
        };
        Ok(self
            .raw
            .open(path, flags, attrs)
            .await
            .map_err(SyncError::remote("open", path))?
            .handle)
    }

    pub async fn write(&self, handle: &str, offset: u64, data: Vec<u8>) -> Result<(), SftpErr> {
        self.raw.write(handle, offset, data).await.map(|_| ())
    }

    /// Cuts the open file at `size` (for a resumed part longer than what stays).
    pub async fn truncate(&self, handle: &str, size: u64) -> Result<(), SftpErr> {
        let attrs = FileAttributes {
            size: Some(size),
            ..FileAttributes::empty()
        };
        self.raw.fsetstat(handle, attrs).await.map(|_| ())
    }

    pub async fn close(&self, handle: String) -> Result<(), SftpErr> {
        self.raw.close(handle).await.map(|_| ())
    }
}
