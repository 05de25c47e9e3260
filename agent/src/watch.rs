//! `warren-agent watch <dir>`: the sandbox half of `warren mirror`. Watches a tree
//! with inotify (a watch per directory, added as directories appear) and prints
//! one record per change on stdout, each `REV TAB OP TAB PATH [TAB PATH] NUL`,
//! paths relative to the root:
//! - `W path`: something at `path` was written, created or changed mode; the client
//!   looks at what is there now (a new directory: its whole subtree).
//! - `D path`: `path` was removed or moved out of the tree.
//! - `M from to`: a rename inside the tree.
//! - `O`: the kernel's queue overflowed; the client rescans.
//!
//! `REV` counts up from 1 per watcher. It never blocks the sandbox's programs:
//! inotify queues in the kernel, and stdout is flushed after each read batch.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

const MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_DONT_FOLLOW;

/// How long a `MOVED_FROM` waits for its `MOVED_TO` before it counts as a removal.
const PAIR_WAIT: Duration = Duration::from_millis(20);

struct Watcher {
    fd: libc::c_int,
    root: PathBuf,
    /// Watch descriptor → directory path relative to the root ("" for the root).
    dirs: HashMap<i32, OsString>,
    rev: u64,
    out: std::io::BufWriter<std::io::Stdout>,
}

pub fn run(root: &Path) -> anyhow::Result<()> {
    // SAFETY: plain syscall; the descriptor is owned by this process until exit.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        bail!("inotify_init1: {}", std::io::Error::last_os_error());
    }
    let root = root
        .canonicalize()
        .with_context(|| format!("watching {}", root.display()))?;
    let mut w = Watcher {
        fd,
        root,
        dirs: HashMap::new(),
        rev: 0,
        out: std::io::BufWriter::new(std::io::stdout()),
    };
    w.add_tree(OsString::new(), false)?;
    // A first record says the watches are in place: changes after it are reported.
    w.emit("S", &[])?;
    w.out.flush()?;
    w.read_loop()
}

impl Watcher {
    /// Watches `rel` and every directory under it. With `report`, everything found
    /// is reported as written (it appeared before its watch existed).
    fn add_tree(&mut self, rel: OsString, report: bool) -> anyhow::Result<()> {
        let mut stack = vec![rel];
        while let Some(rel) = stack.pop() {
            let full = self.root.join(&rel);
            let Ok(c) = CString::new(full.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: a valid C string; the kernel copies it.
            let wd = unsafe { libc::inotify_add_watch(self.fd, c.as_ptr(), MASK) };
            if wd < 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::ENOSPC) {
                    bail!("too many directories to watch (fs.inotify.max_user_watches)");
                }
                // Gone or unreadable meanwhile: nothing to watch there.
                continue;
            }
            self.dirs.insert(wd, rel.clone());
            let Ok(entries) = std::fs::read_dir(&full) else {
                continue;
            };
            for entry in entries.flatten() {
                let child = join(&rel, &entry.file_name());
                if report {
                    self.emit("W", &[&child])?;
                }
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(child);
                }
            }
        }
        Ok(())
    }

    fn emit(&mut self, op: &str, paths: &[&OsStr]) -> std::io::Result<()> {
        self.rev += 1;
        write!(self.out, "{}\t{op}", self.rev)?;
        for p in paths {
            self.out.write_all(b"\t")?;
            self.out.write_all(p.as_bytes())?;
        }
        self.out.write_all(b"\0")
    }

    fn read_loop(&mut self) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        // A MOVED_FROM waiting for its pair: (cookie, path, is_dir).
        let mut moved: Option<(u32, OsString, bool)> = None;
        loop {
            let timeout = if moved.is_some() {
                PAIR_WAIT.as_millis() as i32
            } else {
                -1
            };
            let mut pfd = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, timeout) };
            if ready == 0 {
                if let Some((_, from, is_dir)) = moved.take() {
                    self.moved_out(&from, is_dir)?;
                    self.out.flush()?;
                }
                continue;
            }
            // SAFETY: reading into our own buffer of its length.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                bail!("reading inotify: {err}");
            }
            let mut at = 0usize;
            let n = n as usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n {
                // SAFETY: the kernel wrote a whole event here; read it unaligned.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let name_bytes = &buf[at + header..(at + header + event.len as usize).min(n)];
                let name_len = name_bytes
                    .iter()
                    .position(|b| *b == 0)
                    .unwrap_or(name_bytes.len());
                let name = OsStr::from_bytes(&name_bytes[..name_len]).to_owned();
                at += header + event.len as usize;
                self.handle(&event, name, &mut moved)?;
            }
            self.out.flush()?;
        }
    }

    fn handle(
        &mut self,
        event: &libc::inotify_event,
        name: OsString,
        moved: &mut Option<(u32, OsString, bool)>,
    ) -> anyhow::Result<()> {
        if event.mask & libc::IN_Q_OVERFLOW != 0 {
            self.emit("O", &[])?;
            return Ok(());
        }
        if event.mask & libc::IN_IGNORED != 0 {
            self.dirs.remove(&event.wd);
            return Ok(());
        }
        let Some(dir) = self.dirs.get(&event.wd).cloned() else {
            return Ok(());
        };
        if event.mask & libc::IN_DELETE_SELF != 0 {
            return Ok(());
        }
        let path = join(&dir, &name);
        let is_dir = event.mask & libc::IN_ISDIR != 0;
        // A rename's second half pairs with a waiting first half.
        if event.mask & libc::IN_MOVED_TO != 0 {
            match moved.take() {
                Some((cookie, from, from_dir)) if cookie == event.cookie => {
                    if from_dir {
                        self.rename_dirs(&from, &path);
                    }
                    self.emit("M", &[&from, &path])?;
                }
                other => {
                    if let Some((_, from, from_dir)) = other {
                        self.moved_out(&from, from_dir)?;
                    }
                    self.emit("W", &[&path])?;
                    if is_dir {
                        self.add_tree(path, true)?;
                    }
                }
            }
            return Ok(());
        }
        if let Some((_, from, from_dir)) = moved.take() {
            self.moved_out(&from, from_dir)?;
        }
        if event.mask & libc::IN_MOVED_FROM != 0 {
            *moved = Some((event.cookie, path, is_dir));
        } else if event.mask & libc::IN_DELETE != 0 {
            self.emit("D", &[&path])?;
        } else if event.mask & libc::IN_CREATE != 0 {
            // Files are reported when closed after writing; directories and links now.
            let full = self.root.join(&path);
            let link = std::fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink());
            if is_dir {
                self.emit("W", &[&path])?;
                self.add_tree(path, true)?;
            } else if link {
                self.emit("W", &[&path])?;
            }
        } else if event.mask & (libc::IN_CLOSE_WRITE | libc::IN_ATTRIB) != 0 {
            self.emit("W", &[&path])?;
        }
        Ok(())
    }

    fn moved_out(&mut self, from: &OsStr, is_dir: bool) -> std::io::Result<()> {
        if is_dir {
            let prefix = join(from, OsStr::new(""));
            self.dirs.retain(|_, d| {
                d.as_os_str() != from && !d.as_bytes().starts_with(prefix.as_bytes())
            });
        }
        self.emit("D", &[from])
    }

    /// Keeps the watches of a renamed directory's subtree pointing at its new path.
    fn rename_dirs(&mut self, from: &OsStr, to: &OsStr) {
        let prefix = join(from, OsStr::new(""));
        for d in self.dirs.values_mut() {
            if d.as_os_str() == from {
                *d = to.to_owned();
            } else if let Some(rest) = d.as_bytes().strip_prefix(prefix.as_bytes()) {
                let mut new = to.as_bytes().to_vec();
                new.push(b'/');
                new.extend_from_slice(rest);
                *d = OsString::from_vec(new);
            }
        }
    }
}

fn join(dir: &OsStr, name: &OsStr) -> OsString {
    if dir.is_empty() {
        return name.to_owned();
    }
    let mut out = dir.as_bytes().to_vec();
    out.push(b'/');
    out.extend_from_slice(name.as_bytes());
    OsString::from_vec(out)
}
