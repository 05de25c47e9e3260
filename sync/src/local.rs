//! The local side of a mirror: the one door through which it touches the local
//! disk. A [`LocalDir`] holds a descriptor of the local directory; every
//! operation takes a relative name from the sandbox, checks it (plain components,
//! none of them our temp names) and walks it one component at a time with
//! `openat(O_NOFOLLOW | O_DIRECTORY)`, so nothing it opens, makes, renames or
//! removes can be outside that directory or reached through a link, whatever the
//! tree holds. Files land through a part file made with `O_CREAT | O_EXCL |
//! O_NOFOLLOW` under a random name and renamed into place; modes are masked to
//! `0777`. Links are made only by [`LocalDir::link`], and only when
//! [`link_stays_beneath`](crate::tree::link_stays_beneath) says so (the caller).

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::tree::{Kind, NAME_MAX, PART_SUFFIX, has_part_component};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("not a plain relative path")]
    BadName,
    #[error("reached through a link or a file; not followed")]
    ThroughLink,
    #[error("{0}")]
    Io(std::io::Error),
}

impl LocalError {
    /// Whether trying again later may work (a locked or unwritable file).
    pub fn is_retryable(&self) -> bool {
        matches!(self, LocalError::Io(e) if matches!(
            e.raw_os_error(),
            Some(libc::EACCES | libc::EPERM | libc::EBUSY | libc::ETXTBSY | libc::EROFS | libc::EAGAIN)
        ))
    }
}

impl From<Errno> for LocalError {
    fn from(e: Errno) -> LocalError {
        LocalError::Io(e.into())
    }
}

/// Deepest path the mirror makes (each level is a descriptor while it is walked
/// or removed).
pub const MAX_DEPTH: usize = 256;

/// What is at a local name, not following a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    File,
    Dir,
    Link,
    Other,
}

#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub kind: Type,
    pub size: u64,
    pub mtime: i64,
    pub mode: u32,
}

/// The mirror's local directory, by descriptor.
pub struct LocalDir {
    root: OwnedFd,
}

/// `rel` split into its checked components.
fn components(rel: &str) -> Result<Vec<&str>, LocalError> {
    let parts: Vec<&str> = rel.split('/').collect();
    let plain = |p: &&str| {
        !p.is_empty() && *p != "." && *p != ".." && p.len() <= NAME_MAX && !p.contains('\0')
    };
    if rel.is_empty() || parts.len() > MAX_DEPTH || !parts.iter().all(plain) {
        return Err(LocalError::BadName);
    }
    if has_part_component(rel) {
        return Err(LocalError::BadName);
    }
    Ok(parts)
}

/// Whether `rel` is a name the mirror would take (plain components, not too deep,
/// none of them our temp names).
pub fn is_plain(rel: &str) -> bool {
    components(rel).is_ok()
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// One directory below `dir`, never through a link.
fn open_dir(dir: impl AsFd, name: &str) -> Result<OwnedFd, LocalError> {
    rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR | Errno::MLINK => LocalError::ThroughLink,
        e => e.into(),
    })
}

fn meta_of(st: &rustix::fs::Stat) -> Meta {
    let kind = match FileType::from_raw_mode(st.st_mode as rustix::fs::RawMode) {
        FileType::RegularFile => Type::File,
        FileType::Directory => Type::Dir,
        FileType::Symlink => Type::Link,
        _ => Type::Other,
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Meta {
        kind,
        size: st.st_size as u64,
        mtime: st.st_mtime as i64,
        mode: st.st_mode as u32 & 0o7777,
    }
}

fn stat_at(dir: impl AsFd, name: &str) -> Result<Option<Meta>, LocalError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(meta_of(&st))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A name no sandbox can know in advance: `.<16 hex>.warren-part`. (Were it
/// guessed, `O_EXCL | O_NOFOLLOW` would refuse it rather than follow it.)
fn random_part_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // std's RandomState keys come from the OS's random source.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!(".{:016x}{PART_SUFFIX}", h.finish())
}

/// Removes `name` in `dir` and, for a directory, all it holds; links are removed,
/// never followed.
fn remove_at(dir: &OwnedFd, name: &str, depth: usize) -> Result<(), LocalError> {
    let Some(meta) = stat_at(dir, name)? else {
        return Ok(());
    };
    if meta.kind != Type::Dir {
        return match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    if depth > MAX_DEPTH {
        return Err(LocalError::BadName);
    }
    let sub = open_dir(dir, name)?;
    for name in entries(&sub)? {
        remove_at(&sub, &name, depth + 1)?;
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The names in an open directory (not `.` or `..`; not UTF-8: skipped).
fn entries(dir: &OwnedFd) -> Result<Vec<String>, LocalError> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name: &CStr = entry.file_name();
        let Ok(name) = name.to_str() else { continue };
        if name != "." && name != ".." {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

impl LocalDir {
    /// Makes `path` (the user's own choice: followed as given) and holds it.
    pub fn open(path: &Path) -> std::io::Result<LocalDir> {
        std::fs::create_dir_all(path)?;
        let root = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(LocalDir { root })
    }

    /// The directory holding `rel` and its last component; the directories on the
    /// way are made (`create`) or their absence is `None`.
    fn parent<'r>(
        &self,
        rel: &'r str,
        create: bool,
    ) -> Result<Option<(OwnedFd, &'r str)>, LocalError> {
        let parts = components(rel)?;
        let (name, dirs) = parts.split_last().ok_or(LocalError::BadName)?;
        let mut at = rustix::fs::openat(&self.root, ".", DIR_FLAGS, Mode::empty())?;
        for dir in dirs {
            at = match open_dir(&at, dir) {
                Ok(fd) => fd,
                Err(LocalError::Io(e)) if create && e.kind() == std::io::ErrorKind::NotFound => {
                    match rustix::fs::mkdirat(&at, *dir, Mode::from_raw_mode(0o777)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    open_dir(&at, dir)?
                }
                Err(LocalError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
        }
        Ok(Some((at, name)))
    }

    /// What is at `rel`, not following a link; `None` when nothing is.
    pub fn stat(&self, rel: &str) -> Result<Option<Meta>, LocalError> {
        match self.parent(rel, false)? {
            Some((dir, name)) => stat_at(&dir, name),
            None => Ok(None),
        }
    }

    /// A link's text, if `rel` is a link.
    pub fn read_link(&self, rel: &str) -> Option<String> {
        let (dir, name) = self.parent(rel, false).ok()??;
        let text = rustix::fs::readlinkat(&dir, name, Vec::new()).ok()?;
        text.into_string().ok()
    }

    /// A new part file for `rel` beside it (parents made as needed), to be
    /// written and then [`Part::commit`]ted; removed if dropped before.
    pub fn part(&self, rel: &str) -> Result<Part, LocalError> {
        let (dir, name) = self.parent(rel, true)?.ok_or(LocalError::BadName)?;
        let part = random_part_name();
        let fd = rustix::fs::openat(
            &dir,
            part.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(Part {
            dir,
            part,
            name: name.to_owned(),
            file: Some(File::from(fd)),
        })
    }

    /// A link at `rel` with text `target`, replacing what is there.
    pub fn link(&self, rel: &str, target: &str) -> Result<(), LocalError> {
        let (dir, name) = self.parent(rel, true)?.ok_or(LocalError::BadName)?;
        let part = random_part_name();
        rustix::fs::symlinkat(target, &dir, part.as_str())?;
        let placed = replace_with(&dir, &part, name);
        if placed.is_err() {
            let _ = rustix::fs::unlinkat(&dir, part.as_str(), AtFlags::empty());
        }
        placed
    }

    /// A directory at `rel` (what is there of another kind is removed first),
    /// with `mode` masked to `0777` and always searchable and writable by us.
    pub fn dir(&self, rel: &str, mode: u32) -> Result<(), LocalError> {
        let (dir, name) = self.parent(rel, true)?.ok_or(LocalError::BadName)?;
        match stat_at(&dir, name)? {
            Some(m) if m.kind == Type::Dir => {}
            Some(_) => {
                remove_at(&dir, name, 0)?;
                rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))?;
            }
            None => match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            },
        }
        let fd = open_dir(&dir, name)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode((mode & 0o777) | 0o700))?;
        Ok(())
    }

    /// Removes whatever is at `rel` (a directory with its contents).
    pub fn remove(&self, rel: &str) -> Result<(), LocalError> {
        match self.parent(rel, false)? {
            Some((dir, name)) => remove_at(&dir, name, 0),
            None => Ok(()),
        }
    }

    /// Moves `from` to `to` (replacing a file there); `false` when `from` is gone.
    pub fn rename(&self, from: &str, to: &str) -> Result<bool, LocalError> {
        let Some((from_dir, from_name)) = self.parent(from, false)? else {
            return Ok(false);
        };
        if stat_at(&from_dir, from_name)?.is_none() {
            return Ok(false);
        }
        let (to_dir, to_name) = self.parent(to, true)?.ok_or(LocalError::BadName)?;
        rustix::fs::renameat(&from_dir, from_name, &to_dir, to_name)?;
        Ok(true)
    }

    /// Keeps a locally modified `rel` as `rel.warren-backup`; returns that name.
    pub fn backup(&self, rel: &str) -> Result<String, LocalError> {
        let (dir, name) = self.parent(rel, false)?.ok_or(LocalError::BadName)?;
        let to = format!("{name}.warren-backup");
        if to.len() > NAME_MAX {
            return Err(LocalError::BadName);
        }
        rustix::fs::renameat(&dir, name, &dir, to.as_str())?;
        Ok(format!("{rel}.warren-backup"))
    }

    /// The links at or below `rel`, with their text (for a move, whose links must
    /// still keep the rule at their new depth). Fails rather than leave out what
    /// it could not read: a directory it cannot open, or one past [`MAX_DEPTH`],
    /// may hold the very link that a move would carry out of the tree.
    pub fn links_under(&self, rel: &str) -> Result<Vec<(String, String)>, LocalError> {
        let mut out = Vec::new();
        let Some(meta) = self.stat(rel)? else {
            return Ok(out);
        };
        match meta.kind {
            Type::Link => out.extend(self.read_link(rel).map(|t| (String::new(), t))),
            Type::Dir => {
                let tree = walk(Walk::Complete, |sub| {
                    self.open_dir(&if sub.is_empty() {
                        rel.to_owned()
                    } else {
                        format!("{rel}/{sub}")
                    })
                })?;
                for (sub, kind) in tree {
                    if let Kind::Symlink { target } = kind {
                        out.push((format!("/{sub}"), target));
                    }
                }
            }
            _ => {}
        }
        Ok(out)
    }

    /// The whole local tree, links not followed; our part files and backups left
    /// out.
    pub fn tree(&self) -> Result<BTreeMap<String, Kind>, LocalError> {
        walk(Walk::BestEffort, |rel| self.open_dir(rel))
    }

    /// The directory `rel` ("" for the root), never through a link.
    fn open_dir(&self, rel: &str) -> Result<OwnedFd, LocalError> {
        if rel.is_empty() {
            return Ok(rustix::fs::openat(
                &self.root,
                ".",
                DIR_FLAGS,
                Mode::empty(),
            )?);
        }
        let (dir, name) = self.parent(rel, false)?.ok_or(LocalError::BadName)?;
        open_dir(&dir, name)
    }
}

/// What a walk does with a directory it cannot read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Leaves it out (comparing trees: what is missing is pulled again).
    BestEffort,
    /// Fails, unless it is simply gone (checking links: a part left out could
    /// hold the link that matters).
    Complete,
}

/// Everything below the directory `open("")` gives, by path relative to it;
/// each directory is opened (by `open(rel)`) only when its turn comes, so a wide
/// tree does not hold a descriptor per directory.
fn walk(
    how: Walk,
    open: impl Fn(&str) -> Result<OwnedFd, LocalError>,
) -> Result<BTreeMap<String, Kind>, LocalError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(String::new(), 0usize)];
    while let Some((rel, depth)) = stack.pop() {
        let dir = match open(&rel) {
            Ok(dir) => dir,
            Err(LocalError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
            // Replaced since it was listed: nothing of it to compare.
            Err(_) if !rel.is_empty() && how == Walk::BestEffort => continue,
            Err(e) => return Err(e),
        };
        for name in entries(&dir)? {
            if crate::tree::is_part_name(&name) || name.ends_with(".warren-backup") {
                continue;
            }
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let Some(meta) = stat_at(&dir, &name)? else {
                continue;
            };
            let kind = match meta.kind {
                Type::Link => {
                    let text = rustix::fs::readlinkat(&dir, name.as_str(), Vec::new())
                        .ok()
                        .and_then(|t| t.into_string().ok())
                        .unwrap_or_default();
                    Kind::Symlink { target: text }
                }
                Type::Dir => {
                    // Deeper than the mirror makes: not ours to compare,
                    // but not known to be free of links either.
                    if depth + 1 < MAX_DEPTH {
                        stack.push((child.clone(), depth + 1));
                    } else if how == Walk::Complete {
                        return Err(LocalError::BadName);
                    }
                    Kind::Dir {
                        mode: meta.mode,
                        mtime: meta.mtime,
                    }
                }
                _ => Kind::File {
                    size: meta.size,
                    mtime: meta.mtime,
                    mode: meta.mode,
                },
            };
            out.insert(child, kind);
        }
    }
    Ok(out)
}

/// Renames `part` over `name` in `dir`; a directory in the way is removed first.
fn replace_with(dir: &OwnedFd, part: &str, name: &str) -> Result<(), LocalError> {
    if stat_at(dir, name)?.is_some_and(|m| m.kind == Type::Dir) {
        remove_at(dir, name, 0)?;
    }
    rustix::fs::renameat(dir, part, dir, name)?;
    Ok(())
}

/// A file being written under a random temp name beside its final one.
pub struct Part {
    dir: OwnedFd,
    part: String,
    name: String,
    file: Option<File>,
}

impl Part {
    pub fn file(&self) -> &File {
        // Present until commit, which consumes the part.
        self.file.as_ref().unwrap_or_else(|| unreachable!())
    }

    /// Sets mode (masked to `0777`: no setuid, setgid or sticky bit from a
    /// sandbox) and mtime, then renames the part over the final name.
    pub fn commit(mut self, mode: u32, mtime: i64) -> Result<(), LocalError> {
        let file = self.file.take().ok_or(LocalError::BadName)?;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.max(0) as u64);
        file.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
            .map_err(LocalError::Io)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(LocalError::Io)?;
        drop(file);
        replace_with(&self.dir, &self.part, &self.name)?;
        // Renamed: nothing left for Drop to remove.
        self.part.clear();
        Ok(())
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.part.is_empty() {
            let _ = rustix::fs::unlinkat(&self.dir, self.part.as_str(), AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;

    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("warren-sync-local-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        dir
    }

    #[test]
    fn names_from_the_sandbox_are_checked() {
        let base = scratch("names");
        let local = LocalDir::open(&base.join("w")).unwrap_or_else(|e| panic!("{e}"));
        assert!(local.dir("a/b", 0o755).is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "./a",
            "a//b",
            ".x.warren-part",
            "d/.x.warren-part/y",
        ] {
            assert!(matches!(local.part(bad), Err(LocalError::BadName)), "{bad}");
        }
        // A link on the way is not followed, to anywhere.
        std::os::unix::fs::symlink("/etc", base.join("w/l")).unwrap_or_default();
        std::os::unix::fs::symlink("a", base.join("w/in")).unwrap_or_default();
        for through in ["l/passwd", "in/b/x"] {
            assert!(
                matches!(local.part(through), Err(LocalError::ThroughLink)),
                "{through}"
            );
            assert!(matches!(
                local.remove(through),
                Err(LocalError::ThroughLink)
            ));
        }
        // The link itself may be replaced, and removing it leaves its target.
        assert!(local.remove("l").is_ok());
        assert!(Path::new("/etc/passwd").exists());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn parts_are_new_files_with_safe_modes_and_go_when_dropped() {
        let base = scratch("parts");
        let local = LocalDir::open(&base.join("w")).unwrap_or_else(|e| panic!("{e}"));
        let part = local.part("d/f").unwrap_or_else(|e| panic!("{e}"));
        part.file().write_all(b"x").unwrap_or_default();
        part.commit(0o6755, 1_000_000)
            .unwrap_or_else(|e| panic!("{e}"));
        let meta = std::fs::symlink_metadata(base.join("w/d/f")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        let dropped = local.part("d/g").unwrap_or_else(|e| panic!("{e}"));
        drop(dropped);
        let names = std::fs::read_dir(base.join("w/d"))
            .map(|r| r.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
        assert_ne!(random_part_name(), random_part_name());
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Every link the rule lets the mirror make, in any order and combination,
    /// resolves inside the directory (checked by the kernel, following them).
    #[test]
    fn links_that_keep_the_rule_resolve_inside_whatever_else_is_there() {
        let base = scratch("links");
        std::fs::write(base.join("canary"), "outside").unwrap_or_default();
        let root = base.join("w");
        let local = LocalDir::open(&root).unwrap_or_else(|e| panic!("{e}"));
        let links = [
            ("d/u", ".."),
            ("x", "d/u/../canary"),
            ("d/v", "../d/u"),
            ("d/e/w", "../../d/u"),
            ("y", "d/v/d/u"),
            ("d/e/z", "../.."),
            ("p", "d/e/z/d/e/z"),
            ("q", "/etc"),
            ("r", "../canary"),
            ("s", "p/../canary"),
        ];
        for (rel, target) in links {
            if crate::tree::link_stays_beneath(rel, target) {
                local
                    .link(rel, target)
                    .unwrap_or_else(|e| panic!("{rel}: {e}"));
            }
        }
        let root = root.canonicalize().unwrap_or_else(|e| panic!("{e}"));
        let tree = local.tree().unwrap_or_default();
        let mut checked = 0;
        for (rel, kind) in &tree {
            if let Kind::Symlink { .. } = kind
                && let Ok(real) = root.join(rel).canonicalize()
            {
                assert!(real.starts_with(&root), "{rel} -> {}", real.display());
                checked += 1;
            }
        }
        assert!(checked >= 4, "{tree:?}");
        assert!(!tree.contains_key("x") && !tree.contains_key("q"));
        let _ = std::fs::remove_dir_all(&base);
    }
}
