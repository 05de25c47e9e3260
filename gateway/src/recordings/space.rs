//! The disk the recordings may use: all of them together stay under a total (the
//! oldest finished ones are deleted first to make room), and their file system
//! keeps a floor of free space for everything else on it (the store, when the
//! recordings share its disk): under the floor, recording stops rather than
//! deleting anything. The size of one recording is its writer's to bound.
//!
//! Sizes are bytes on disk (a NUL of output is six bytes of asciicast), counted by
//! the writers as they write and counted again from the files at every scan.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Why a recording cannot grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// The recordings together are at their total, and nothing finished is left to
    /// delete.
    Total(u64),
    /// Their file system's free space is under the floor.
    Disk(u64),
}

impl std::fmt::Display for Shortage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shortage::Total(max) => write!(
                f,
                "the gateway's recordings reached their total of {} (--recording-max-total)",
                Size(*max)
            ),
            Shortage::Disk(floor) => write!(
                f,
                "the recordings' disk has less than {} free (--recording-min-free)",
                Size(*floor)
            ),
        }
    }
}

/// A size in bytes as people write it: 64 MiB.
pub struct Size(pub u64);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
        let mut n = self.0;
        let mut unit = 0;
        while n >= 1024 && n.is_multiple_of(1024) && unit < UNITS.len() - 1 {
            n /= 1024;
            unit += 1;
        }
        write!(f, "{n} {}", UNITS[unit])
    }
}

#[derive(Debug)]
pub struct Space {
    root: PathBuf,
    max_total: u64,
    min_free: u64,
    /// Bytes of all recordings, written or found.
    total: AtomicU64,
    /// Recordings being written: never deleted.
    active: Mutex<HashSet<PathBuf>>,
    /// One scan at a time.
    scanning: Mutex<()>,
}

/// A finished recording, as a scan finds it.
struct Found {
    path: PathBuf,
    size: u64,
    written: SystemTime,
}

impl Space {
    /// The recordings under `root`, counted now.
    pub fn new(root: PathBuf, max_total: u64, min_free: u64) -> Space {
        let space = Space {
            root,
            max_total,
            min_free,
            total: AtomicU64::new(0),
            active: Mutex::default(),
            scanning: Mutex::default(),
        };
        // Nobody else holds it yet: no need to take `scanning`.
        space.scan();
        space
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes of all recordings, as counted.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn begin(&self, path: PathBuf) {
        crate::unpoisoned(&self.active).insert(path);
    }

    /// The recording at `path` is finished: the oldest may be deleted.
    pub fn end(&self, path: &Path) {
        crate::unpoisoned(&self.active).remove(path);
    }

    pub fn is_active(&self, path: &Path) -> bool {
        crate::unpoisoned(&self.active).contains(path)
    }

    pub fn wrote(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether `need` more bytes fit, without deleting anything.
    pub fn fits(&self, need: u64) -> Result<(), Shortage> {
        if self.total().saturating_add(need) > self.max_total {
            return Err(Shortage::Total(self.max_total));
        }
        // Where free space cannot be read, writing will say what is wrong.
        match free_space(&self.root) {
            Ok(free) if free < self.min_free.saturating_add(need) => {
                Err(Shortage::Disk(self.min_free))
            }
            _ => Ok(()),
        }
    }

    /// Makes room for `need` more bytes: deletes the oldest finished recordings
    /// while the total is over (down to nine tenths of it, so that the next writes
    /// do not scan again). Blocking: file system work.
    pub fn make_room(&self, need: u64) -> Result<(), Shortage> {
        match self.fits(need) {
            Err(Shortage::Total(_)) => {}
            other => return other,
        }
        let _scanning = crate::unpoisoned(&self.scanning);
        let target = (self.max_total - self.max_total / 10).saturating_sub(need);
        let mut deleted = 0;
        for old in self.scan() {
            if self.total() <= target {
                break;
            }
            if self.delete(&old) {
                deleted += 1;
            }
        }
        if deleted > 0 {
            tracing::info!(
                deleted,
                total = self.total(),
                max_total = self.max_total,
                "oldest recordings deleted to stay under the total"
            );
        }
        self.fits(need)
    }

    /// Deletes recordings last written more than `retention` before `now`, then the
    /// oldest while the total is over; returns how many it deleted.
    pub fn sweep(&self, now: SystemTime, retention: Duration) -> usize {
        let _scanning = crate::unpoisoned(&self.scanning);
        let mut deleted = 0;
        for old in self.scan() {
            let expired = now
                .duration_since(old.written)
                .is_ok_and(|age| age > retention);
            if (expired || self.total() > self.max_total) && self.delete(&old) {
                deleted += 1;
            }
        }
        deleted
    }

    /// Counts every recording again (correcting the total) and returns the finished
    /// ones, oldest first. Session folders left empty are removed. Call holding
    /// `scanning`.
    fn scan(&self) -> Vec<Found> {
        let counted_before = self.total();
        let mut on_disk = 0u64;
        let mut finished = Vec::new();
        let active = crate::unpoisoned(&self.active).clone();
        let Ok(sessions) = std::fs::read_dir(&self.root) else {
            return finished;
        };
        for session in sessions.flatten() {
            let dir = session.path();
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut empty = true;
            for file in files.flatten() {
                empty = false;
                let Ok(meta) = file.metadata() else { continue };
                on_disk += meta.len();
                let path = file.path();
                if !active.contains(&path) {
                    finished.push(Found {
                        path,
                        size: meta.len(),
                        written: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            }
            if empty && !active.iter().any(|p| p.starts_with(&dir)) {
                // Fails (and stays) if a recording was started in it meanwhile.
                let _ = std::fs::remove_dir(&dir);
            }
        }
        // What writers added while this scan ran is kept: counted twice at worst
        // (the safe way), until the next scan.
        let during = self.total().wrapping_sub(counted_before);
        self.total
            .store(on_disk.wrapping_add(during), Ordering::Relaxed);
        finished.sort_by_key(|f| f.written);
        finished
    }

    fn delete(&self, old: &Found) -> bool {
        match std::fs::remove_file(&old.path) {
            Ok(()) => {
                let _ = self
                    .total
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                        Some(t.saturating_sub(old.size))
                    });
                if let Some(dir) = old.path.parent() {
                    // Fails (and stays) while it still holds recordings.
                    let _ = std::fs::remove_dir(dir);
                }
                true
            }
            Err(e) => {
                tracing::warn!(path = %old.path.display(), error = %e,
                    "cannot delete a recording");
                false
            }
        }
    }
}

/// Bytes an unprivileged writer may still use on `path`'s file system (that of its
/// nearest existing folder, before the recordings' own is made).
fn free_space(path: &Path) -> std::io::Result<u64> {
    let mut error = None;
    for at in path.ancestors() {
        match statvfs_free(at) {
            Ok(free) => return Ok(free),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(error.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()))
}

fn statvfs_free(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    Ok(free)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn recording(root: &Path, session: &str, size: usize, age_s: u64) -> PathBuf {
        let dir = root.join(session);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("1.cast");
        std::fs::write(&path, vec![b'x'; size]).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
        path
    }

    #[test]
    fn the_oldest_finished_recordings_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let oldest = recording(root, "ses_a", 400, 300);
        let active = recording(root, "ses_b", 400, 200);
        let newer = recording(root, "ses_c", 400, 100);
        let space = Space::new(root.to_owned(), 1000, 0);
        assert_eq!(space.total(), 1200);
        space.begin(active.clone());
        assert_eq!(space.fits(1), Err(Shortage::Total(1000)));
        // Room for 100 more: the oldest finished one goes, the active one stays.
        space.make_room(100).unwrap();
        assert!(!oldest.exists() && !root.join("ses_a").exists());
        assert!(active.exists() && newer.exists());
        assert_eq!(space.total(), 800);
        // Nothing finished left to delete: the shortage says which bound.
        space.begin(newer.clone());
        space.wrote(150);
        assert_eq!(space.make_room(600), Err(Shortage::Total(1000)));
        assert!(active.exists() && newer.exists());
        // A scan counts from the files (the 150 were never written).
        assert_eq!(space.total(), 800);
        // The sweep deletes by age.
        space.end(&active);
        space.end(&newer);
        assert_eq!(space.sweep(SystemTime::now(), Duration::from_secs(150)), 1);
        assert!(!active.exists() && newer.exists());
        assert_eq!(space.total(), 400);
    }

    #[test]
    fn under_the_floor_nothing_fits_and_nothing_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let kept = recording(dir.path(), "ses_a", 10, 1000);
        let space = Space::new(dir.path().to_owned(), u64::MAX, u64::MAX / 2);
        assert_eq!(space.make_room(1), Err(Shortage::Disk(u64::MAX / 2)));
        assert!(kept.exists());
        assert!(
            Shortage::Disk(1 << 30)
                .to_string()
                .contains("less than 1 GiB free")
        );
        assert_eq!(Size(64 << 20).to_string(), "64 MiB");
        assert_eq!(Size(1000).to_string(), "1000 bytes");
    }
}
