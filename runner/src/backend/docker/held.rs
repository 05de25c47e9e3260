//! What a container's processes hold of the host's disk that no tree walk sees:
//! files deleted while open (`exec 3>f; rm f; cat /dev/zero >&3`) or still mapped
//! after their descriptor closed. Their blocks stay allocated in the writable layer
//! until the last holder lets go, but no directory names them any more.
//!
//! The processes are the members of the container's cgroup (and its children),
//! which nothing in the container can leave: its cgroup file system is read-only
//! there. Each open file is looked at through `/proc/<pid>/fd/<n>` (and
//! `/proc/<pid>/map_files/<range>` for mappings): a `stat` of those magic links is
//! an `fstat` of the open file, so nothing the container names is ever walked.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `statfs` type of tmpfs (and of memfd and shared memory): memory, which the
/// container's memory limit already bounds, not disk.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The cgroup directory holding the processes of the container whose first
/// process is `pid`: its `pids` hierarchy under cgroup v1, the unified one under v2
/// (or a hybrid's `unified`). `None` when none of them is there.
pub(super) fn cgroup_dir(pid: i64) -> io::Result<Option<PathBuf>> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let mut candidates = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "pids") {
            candidates.insert(0, Path::new("/sys/fs/cgroup/pids").join(path));
        } else if controllers.is_empty() {
            candidates.push(Path::new("/sys/fs/cgroup").join(path));
            candidates.push(Path::new("/sys/fs/cgroup/unified").join(path));
        }
    }
    Ok(candidates
        .into_iter()
        .find(|dir| dir.join("cgroup.procs").is_file()))
}

/// The processes in the cgroup `dir` and the cgroups beneath it.
fn members(dir: &Path) -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        let procs = match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(procs) => procs,
            // A child cgroup removed meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Gone with its container: nothing held.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    Ok(pids)
}

/// Bytes of deleted regular files the processes of cgroup `dir` hold open or
/// mapped, each file once, leaving out those on the file system of device
/// `own_dev` (the sandbox's disk, measured whole) and those in memory (tmpfs).
/// Stops counting once past `limit`. A process or descriptor that goes away
/// meanwhile is skipped.
pub(super) fn deleted_held(dir: &Path, own_dev: Option<u64>, limit: u64) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    for pid in members(dir)? {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        for file in held_files(&proc_dir) {
            let Some(size) = deleted_size(&file, own_dev, &mut seen) else {
                continue;
            };
            total = total.saturating_add(size);
            if total > limit {
                return Ok(total);
            }
        }
    }
    Ok(total)
}

/// The magic links to what the process at `proc_dir` has open or mapped from a
/// deleted file. Gone processes have none.
fn held_files(proc_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(proc_dir.join("fd"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    // Mappings of deleted files (their descriptors may be closed already).
    if let Ok(maps) = fs::read_to_string(proc_dir.join("maps")) {
        let ranges: HashSet<&str> = maps
            .lines()
            .filter(|l| l.ends_with(" (deleted)"))
            .filter_map(|l| l.split(' ').next())
            .collect();
        files.extend(
            ranges
                .into_iter()
                .map(|r| proc_dir.join("map_files").join(r)),
        );
    }
    files
}

/// The size of the file behind the magic link `link` if it is a deleted regular
/// file on disk not yet counted, recording it in `seen`.
fn deleted_size(link: &Path, own_dev: Option<u64>, seen: &mut HashSet<(u64, u64)>) -> Option<u64> {
    // The kernel marks the link of an unlinked file (FUSE file systems keep
    // reporting a link count of 1). A live file named so is counted twice: that
    // only costs the sandbox itself.
    let target = fs::read_link(link).ok()?;
    if !target
        .as_os_str()
        .as_encoded_bytes()
        .ends_with(b" (deleted)")
    {
        return None;
    }
    // stat of the magic link: the open file itself.
    let meta = fs::metadata(link).ok()?;
    if !meta.is_file() || Some(meta.dev()) == own_dev || in_memory(link) {
        return None;
    }
    seen.insert((meta.dev(), meta.ino()))
        .then(|| meta.blocks().saturating_mul(512))
}

/// Whether the open file behind `link` lives in memory (tmpfs, memfd).
fn in_memory(link: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(link.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` is a valid buffer for one statfs.
    if unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let kind = i64::from(st.f_type as i64);
    kind == TMPFS_MAGIC
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn deleted_open_files_are_counted_once() {
        // Not /tmp, which may be tmpfs (memory, not counted).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("gone");
        let mut file = fs::File::create(&path).unwrap();
        file.write_all(&vec![1u8; 300_000]).unwrap();
        file.sync_all().unwrap();
        let again = fs::File::open(&path).unwrap();
        let me = PathBuf::from("/proc/self");
        let count = |own_dev| {
            let mut seen = HashSet::new();
            held_files(&me)
                .iter()
                .filter_map(|f| deleted_size(f, own_dev, &mut seen))
                .sum::<u64>()
        };
        assert_eq!(count(None), 0, "a live file is not counted here");
        fs::remove_file(&path).unwrap();
        let used = count(None);
        assert!((300_000..400_000).contains(&used), "{used}");
        // On the sandbox's own disk it is measured there instead.
        let dev = file.metadata().unwrap().dev();
        assert_eq!(count(Some(dev)), 0);
        drop((file, again));
        assert_eq!(count(None), 0);
    }

    #[test]
    fn this_process_has_a_cgroup() {
        let dir = cgroup_dir(i64::from(std::process::id())).unwrap();
        if let Some(dir) = dir {
            let pids = members(&dir).unwrap();
            assert!(pids.contains(&std::process::id()), "{pids:?}");
        }
    }
}
