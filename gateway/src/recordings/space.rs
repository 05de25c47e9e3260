//! The disk the recordings may use: all of them together stay under a total (the
//! oldest finished ones are deleted first to make room), and their file system
//! keeps a floor of free space for everything else on it (the store, when the
//! recordings share its disk): under the floor, recording stops rather than
//! deleting anything. The size of one recording is its writer's to bound.
//!
//! Recordings are audit evidence, and one account must not erase another's by
//! filling the total. Each belongs to an account (the owner of the sandbox it
//! records, named in its header), and the total is shared fairly: an account's
//! fair share is the total over the number of accounts holding recordings. To make
//! room, the writing account's own finished recordings go first, oldest first;
//! another account's only while that account holds more than its share. An
//! account within its share may write past the total when what holds it up is
//! beyond reach (others' live recordings): then only the floor refuses it.
//!
//! Sizes are bytes on disk (a NUL of output is six bytes of asciicast), counted by
//! the writers as they write and counted again from the files at every scan.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Recordings being written, by path, with their account: never deleted.
    active: Mutex<HashMap<PathBuf, String>>,
    /// Bytes of each account's recordings, written or found.
    usage: Mutex<HashMap<String, u64>>,
    /// The account of each finished recording a scan read (its header).
    accounts: Mutex<HashMap<PathBuf, String>>,
    /// Whether a scan may find something to delete (false after one that found
    /// nothing, until a recording finishes): a writer within its share over a
    /// total it cannot bring down does not scan at each write.
    evictable: AtomicBool,
    /// One scan at a time.
    scanning: Mutex<()>,
}

/// A finished recording, as a scan finds it.
struct Found {
    path: PathBuf,
    account: String,
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
            usage: Mutex::default(),
            accounts: Mutex::default(),
            evictable: AtomicBool::new(true),
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

    /// The recording at `path`, of `account`'s sandbox, is being written.
    pub fn begin(&self, path: PathBuf, account: &str) {
        crate::unpoisoned(&self.active).insert(path, account.to_owned());
    }

    /// The recording at `path` is finished: the oldest may be deleted.
    pub fn end(&self, path: &Path) {
        if let Some(account) = crate::unpoisoned(&self.active).remove(path) {
            crate::unpoisoned(&self.accounts).insert(path.to_owned(), account);
        }
        self.evictable.store(true, Ordering::Relaxed);
    }

    pub fn is_active(&self, path: &Path) -> bool {
        crate::unpoisoned(&self.active).contains_key(path)
    }

    pub fn wrote(&self, n: u64, account: &str) {
        self.total.fetch_add(n, Ordering::Relaxed);
        *crate::unpoisoned(&self.usage)
            .entry(account.to_owned())
            .or_default() += n;
    }

    /// Bytes of `account`'s recordings, as counted.
    fn usage(&self, account: &str) -> u64 {
        crate::unpoisoned(&self.usage)
            .get(account)
            .copied()
            .unwrap_or(0)
    }

    /// The total over the accounts holding recordings (`account` among them).
    fn fair_share(&self, account: &str) -> u64 {
        let usage = crate::unpoisoned(&self.usage);
        let others = usage.keys().filter(|a| a.as_str() != account).count();
        self.max_total / (others as u64 + 1)
    }

    /// Whether `need` more bytes of `account`'s fit, without deleting anything:
    /// under the total, or within the account's fair share; and above the floor.
    pub fn fits(&self, need: u64, account: &str) -> Result<(), Shortage> {
        if self.total().saturating_add(need) > self.max_total
            && self.usage(account).saturating_add(need) > self.fair_share(account)
        {
            return Err(Shortage::Total(self.max_total));
        }
        self.above_floor(need)
    }

    fn above_floor(&self, need: u64) -> Result<(), Shortage> {
        // Where free space cannot be read, writing will say what is wrong.
        match free_space(&self.root) {
            Ok(free) if free < self.min_free.saturating_add(need) => {
                Err(Shortage::Disk(self.min_free))
            }
            _ => Ok(()),
        }
    }

    /// Makes room for `need` more bytes of `account`'s while the total is over
    /// (down to nine tenths of it, so that the next writes do not scan again):
    /// deletes `account`'s own oldest finished recordings, then the oldest of
    /// accounts over their fair share, never below it. Blocking: file system work.
    pub fn make_room(&self, need: u64, account: &str) -> Result<(), Shortage> {
        if self.total().saturating_add(need) <= self.max_total
            || !self.evictable.load(Ordering::Relaxed)
        {
            return self.fits(need, account);
        }
        let _scanning = crate::unpoisoned(&self.scanning);
        let target = (self.max_total - self.max_total / 10).saturating_sub(need);
        let finished = self.scan();
        let mut deleted = 0;
        let (own, mut others): (Vec<&Found>, Vec<&Found>) =
            finished.iter().partition(|f| f.account == account);
        for old in own {
            if self.total() <= target {
                break;
            }
            deleted += usize::from(self.delete(old));
        }
        // Then the oldest of the account furthest over the share, while one is.
        let share = self.fair_share(account);
        while self.total() > target {
            let Some(hog) = others
                .iter()
                .map(|&f| f.account.as_str())
                .max_by_key(|a| self.usage(a))
                .filter(|a| self.usage(a) > share)
            else {
                break;
            };
            let Some(i) = others.iter().position(|f| f.account == hog) else {
                break;
            };
            deleted += usize::from(self.delete(others.remove(i)));
        }
        if self.total() > target {
            // Nothing more may go until a recording finishes.
            self.evictable.store(false, Ordering::Relaxed);
        }
        if deleted > 0 {
            tracing::info!(
                deleted,
                account,
                total = self.total(),
                max_total = self.max_total,
                "oldest recordings deleted to stay under the total"
            );
        }
        self.fits(need, account)
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
        let mut usage: HashMap<String, u64> = HashMap::new();
        let mut finished = Vec::new();
        let active = crate::unpoisoned(&self.active).clone();
        let mut accounts = std::mem::take(&mut *crate::unpoisoned(&self.accounts));
        let mut seen = HashMap::new();
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
                if let Some(account) = active.get(&path) {
                    *usage.entry(account.clone()).or_default() += meta.len();
                    continue;
                }
                let account = accounts
                    .remove(&path)
                    .unwrap_or_else(|| account_in_header(&path));
                *usage.entry(account.clone()).or_default() += meta.len();
                seen.insert(path.clone(), account.clone());
                finished.push(Found {
                    path,
                    account,
                    size: meta.len(),
                    written: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
            if empty && !active.keys().any(|p| p.starts_with(&dir)) {
                // Fails (and stays) if a recording was started in it meanwhile.
                let _ = std::fs::remove_dir(&dir);
            }
        }
        // What writers added while this scan ran is kept: counted twice at worst
        // (the safe way), until the next scan.
        let during = self.total().wrapping_sub(counted_before);
        self.total
            .store(on_disk.wrapping_add(during), Ordering::Relaxed);
        // Per account, what was written meanwhile is dropped: the next scan counts it.
        *crate::unpoisoned(&self.usage) = usage;
        // What `accounts` still holds is gone from disk; what ended meanwhile is
        // already back in `self.accounts`.
        drop(accounts);
        let mut known = crate::unpoisoned(&self.accounts);
        for (path, account) in seen {
            known.entry(path).or_insert(account);
        }
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
                if let Some(used) = crate::unpoisoned(&self.usage).get_mut(&old.account) {
                    *used = used.saturating_sub(old.size);
                }
                crate::unpoisoned(&self.accounts).remove(&old.path);
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

/// The account a recording's header names; "" when it names none (written before
/// recordings had one, or unreadable): those share one fair share.
fn account_in_header(path: &Path) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(8192).read_to_end(&mut head));
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    read.ok()
        .and_then(|_| serde_json::from_slice::<super::asciicast::Header>(line).ok())
        .and_then(|h| h.account)
        .unwrap_or_default()
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
        recording_holding(root, session, &vec![b'x'; size], age_s)
    }

    fn recording_holding(root: &Path, session: &str, bytes: &[u8], age_s: u64) -> PathBuf {
        let dir = root.join(session);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("1.cast");
        std::fs::write(&path, bytes).unwrap();
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
        space.begin(active.clone(), "");
        assert_eq!(space.fits(1, ""), Err(Shortage::Total(1000)));
        // Room for 100 more: the oldest finished one goes, the active one stays.
        space.make_room(100, "").unwrap();
        assert!(!oldest.exists() && !root.join("ses_a").exists());
        assert!(active.exists() && newer.exists());
        assert_eq!(space.total(), 800);
        // Nothing finished left to delete: the shortage says which bound.
        space.begin(newer.clone(), "");
        space.wrote(150, "");
        assert_eq!(space.make_room(600, ""), Err(Shortage::Total(1000)));
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

    /// A recording of `account`'s: its header, then `size` bytes in all.
    fn recording_of(root: &Path, session: &str, account: &str, size: usize, age_s: u64) -> PathBuf {
        let mut header = super::super::asciicast::Header::new(80, 24, 0);
        header.account = Some(account.into());
        let mut bytes = header.line().into_bytes();
        bytes.resize(size, b'x');
        recording_holding(root, session, &bytes, age_s)
    }

    #[test]
    fn one_account_filling_the_total_erases_and_locks_out_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let alice = [
            recording_of(root, "ses_a1", "alice", 200, 400),
            recording_of(root, "ses_a2", "alice", 200, 300),
        ];
        let mallory_old = recording_of(root, "ses_m1", "mallory", 300, 200);
        let mallory_live = recording_of(root, "ses_m2", "mallory", 300, 100);
        let space = Space::new(root.to_owned(), 1000, 0);
        assert_eq!(space.total(), 1000);
        space.begin(mallory_live.clone(), "mallory");
        // Mallory's own finished recording goes first, though Alice's are older.
        space.make_room(100, "mallory").unwrap();
        assert!(!mallory_old.exists() && alice.iter().all(|p| p.exists()));
        // Her live recording floods: past her share (500 of 1000), she is
        // refused, and Alice (400, within hers) loses nothing.
        let live = std::fs::File::options()
            .append(true)
            .open(&mallory_live)
            .unwrap();
        std::io::Write::write_all(&mut &live, &[b'x'; 500]).unwrap();
        space.wrote(500, "mallory");
        assert_eq!(space.make_room(50, "mallory"), Err(Shortage::Total(1000)));
        assert!(alice.iter().all(|p| p.exists()));
        // A third account's new session is not refused: it is within its share.
        assert_eq!(space.make_room(50, "bob"), Ok(()));
        assert_eq!(space.fits(50, "alice"), Ok(()));
        // Once finished, what Mallory holds beyond her share is deleted for
        // others, hers first (the furthest over); Alice's stays.
        space.end(&mallory_live);
        std::fs::write(&mallory_live, vec![b'x'; 800]).unwrap();
        space.make_room(50, "bob").unwrap();
        assert!(!mallory_live.exists() && alice.iter().all(|p| p.exists()));
        assert_eq!(space.total(), 400);
    }

    #[test]
    fn under_the_floor_nothing_fits_and_nothing_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let kept = recording(dir.path(), "ses_a", 10, 1000);
        let space = Space::new(dir.path().to_owned(), u64::MAX, u64::MAX / 2);
        assert_eq!(space.make_room(1, ""), Err(Shortage::Disk(u64::MAX / 2)));
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
